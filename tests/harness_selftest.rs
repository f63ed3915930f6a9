//! Checks the end-to-end test harness itself, without the daemon: netns,
//! cgroup and bpffs guards, `kmesh-traffic serve`/`dial`, and the HTTP helper.
//! If these fail, the end-to-end tests' failures say nothing about kmesh.

// A test fails by panicking; expect() messages are its context.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;

use common::{dial, dial_with, http_get, Backends, BpfFsDir, Cgroup, NetNs};

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn backends_answer_direct_dials_inside_netns() {
    if !common::require_root() {
        return;
    }
    let ns = NetNs::new("direct");
    let _backends = Backends::start(Some(&ns), &["127.0.0.2:8080=b1", "127.0.0.3:8080=b2"]);

    let r1 = dial(&ns, None, "127.0.0.2:8080", 5);
    assert_eq!(r1.backends, counts(&[("b1", 5)]), "{r1:?}");
    assert_eq!(r1.peer_names, counts(&[("127.0.0.2:8080", 5)]), "{r1:?}");
    assert_eq!(r1.connected, 5, "{r1:?}");
    assert!(r1.errors.is_empty(), "{r1:?}");

    let r2 = dial(&ns, None, "127.0.0.3:8080", 5);
    assert_eq!(r2.backends, counts(&[("b2", 5)]), "{r2:?}");
    assert_eq!(r2.peer_names, counts(&[("127.0.0.3:8080", 5)]), "{r2:?}");
    assert_eq!(r2.connected, 5, "{r2:?}");
    assert!(r2.errors.is_empty(), "{r2:?}");

    // Nothing listens on this port: errors are reported by errno name.
    let refused = dial(&ns, None, "127.0.0.2:8081", 2);
    assert_eq!(
        refused.errors,
        counts(&[("ECONNREFUSED", 2)]),
        "{refused:?}"
    );
    assert_eq!(refused.connected, 0, "{refused:?}");
}

#[test]
fn vip_is_unreachable_from_netns_without_redirect() {
    if !common::require_root() {
        return;
    }
    // The safety net of every end-to-end test: with no redirect, a VIP dial
    // fails locally instead of leaving the machine.
    let ns = NetNs::new("novip");
    let r = dial(&ns, None, "10.96.0.1:80", 5);
    assert_eq!(r.errors, counts(&[("ENETUNREACH", 5)]), "{r:?}");
    assert_eq!(r.connected, 0, "{r:?}");
    assert!(r.backends.is_empty() && r.peer_names.is_empty(), "{r:?}");

    let r6 = dial(&ns, None, "[fd00:96::1]:80", 3);
    assert_eq!(r6.errors, counts(&[("ENETUNREACH", 3)]), "{r6:?}");
    assert_eq!(r6.connected, 0, "{r6:?}");
}

#[test]
fn dial_from_cgroup_without_programs_works() {
    if !common::require_root() {
        return;
    }
    let ns = NetNs::new("cgdial");
    let cg = Cgroup::new("cgdial");
    let _backends = Backends::start(Some(&ns), &["127.0.0.2:8080=b1"]);

    let r = dial(&ns, Some(&cg), "127.0.0.2:8080", 5);
    assert_eq!(r.backends, counts(&[("b1", 5)]), "{r:?}");
    assert_eq!(r.connected, 5, "{r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
    // The client moved itself into the cgroup and has exited; the test
    // process itself never joined it.
    assert!(cg.procs().is_empty(), "cgroup still has {:?}", cg.procs());
}

#[test]
fn ipv6_backend_answers_inside_netns() {
    if !common::require_root() {
        return;
    }
    let ns = NetNs::new("v6");
    ns.add_addr("fd00::2/128");
    let _backends = Backends::start(Some(&ns), &["[fd00::2]:8080=b6"]);

    let r = dial_with(Some(&ns), None, "[fd00::2]:8080", 5, &["--hold-ms", "1"]);
    assert_eq!(r.backends, counts(&[("b6", 5)]), "{r:?}");
    assert_eq!(r.peer_names, counts(&[("[fd00::2]:8080", 5)]), "{r:?}");
    assert_eq!(r.connected, 5, "{r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
}

#[test]
fn guards_remove_what_they_made() {
    if !common::require_root() {
        return;
    }
    let ns = NetNs::new("guard");
    let ns_path = ns.path();
    assert!(ns_path.exists(), "{} missing", ns_path.display());

    let cg = Cgroup::new("guard");
    let cg_path = cg.path().to_path_buf();
    assert!(cg_path.join("cgroup.procs").exists());

    let bpf = BpfFsDir::new("guard");
    let bpf_path = bpf.path().to_path_buf();
    // A nested directory, as a daemon's pins would make, must go too.
    std::fs::create_dir(bpf_path.join("nested")).expect("mkdir in bpffs");

    let backends = Backends::start(Some(&ns), &["127.0.0.2:8080=b1"]);
    let pid = backends.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    drop(backends);
    drop(bpf);
    drop(cg);
    drop(ns);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "backend pid {pid} still alive"
    );
    assert!(!bpf_path.exists(), "{} left behind", bpf_path.display());
    assert!(!cg_path.exists(), "{} left behind", cg_path.display());
    assert!(!ns_path.exists(), "{} left behind", ns_path.display());
}

#[test]
fn http_get_reads_status_and_body() {
    // Loopback only, no root needed.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).expect("read request");
            assert!(n > 0, "client closed before finishing its request");
            req.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&req).into_owned();
        conn.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready")
            .expect("write response");
        req
    });
    let (status, body) = http_get(addr, "/debug/ready");
    assert_eq!(status, 503);
    assert_eq!(body, "not ready");
    let req = server.join().expect("server thread");
    assert!(req.starts_with("GET /debug/ready HTTP/1.0\r\n"), "{req:?}");
}

#[test]
fn connect_loop_times_connects_and_counts_failures() {
    if !common::require_root() {
        return;
    }
    // `kmesh-traffic connect-loop`, the benchmark's connect-cost loop.
    let ns = NetNs::new("cloop");
    let _backends = Backends::start(Some(&ns), &["127.0.0.2:8080=b1"]);
    let run = |target: &str| -> serde_json::Value {
        let out = std::process::Command::new(common::TRAFFIC_BIN)
            .args([
                "connect-loop",
                "--netns",
                ns.name(),
                "--count",
                "300",
                "--warmup",
                "20",
            ])
            .arg(target)
            .output()
            .expect("running kmesh-traffic connect-loop");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("one JSON report")
    };
    let ok = run("127.0.0.2:8080");
    assert_eq!(ok["count"], 300, "{ok}");
    assert_eq!(ok["failed"], 0, "{ok}");
    let (mean, median, p99) = (
        ok["mean_ns"].as_f64().unwrap(),
        ok["median_ns"].as_u64().unwrap(),
        ok["p99_ns"].as_u64().unwrap(),
    );
    assert!(mean > 0.0 && median > 0 && median <= p99, "{ok}");
    assert!(ok["connects_per_s"].as_f64().unwrap() > 0.0, "{ok}");

    // Nothing listens there: every connect fails, by errno name.
    let refused = run("127.0.0.2:8081");
    assert_eq!(refused["failed"], 300, "{refused}");
    assert_eq!(refused["errors"]["ECONNREFUSED"], 300, "{refused}");
}

/// Set by [`a_skip_is_counted_as_skipped_and_is_a_failure_under_ci`] for the
/// one run of [`skips_when_envoy_cannot_be_found`] it makes.
const SKIP_SELFTEST: &str = "KMESH_HARNESS_SKIP_SELFTEST";

/// Passes at once unless [`SKIP_SELFTEST`] is set; then, with `ENVOY_BIN`
/// naming a missing file, takes the Envoy helper's skip path as a test on a
/// machine without Envoy would.
#[test]
fn skips_when_envoy_cannot_be_found() {
    if std::env::var_os(SKIP_SELFTEST).is_none() {
        return;
    }
    if common::envoy::require_envoy().is_none() {
        return;
    }
    panic!("ENVOY_BIN names a missing file, yet Envoy was found");
}

/// A test that prints SKIP and returns is counted as skipped (not passed)
/// by the totals scripts/test.sh prints, and under `CI=true` it fails.
#[test]
fn a_skip_is_counted_as_skipped_and_is_a_failure_under_ci() {
    let log_dir = tempfile::tempdir().unwrap();
    // This test binary, running only the test above, as scripts/test.sh
    // runs every test binary; the totals script over its output.
    let counts = |ci: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "skips_when_envoy_cannot_be_found",
                "--show-output",
                "--test-threads=1",
            ])
            .env(SKIP_SELFTEST, "1")
            .env("ENVOY_BIN", "/nonexistent/kmesh-selftest/envoy")
            .env("CI", ci)
            .output()
            .unwrap();
        let log = log_dir.path().join(format!("ci-{ci}.log"));
        let mut text = out.stdout.clone();
        text.extend_from_slice(&out.stderr);
        std::fs::write(&log, &text).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-counts.sh");
        let totals = std::process::Command::new("bash")
            .arg(script)
            .arg(&log)
            .output()
            .unwrap();
        assert!(totals.status.success(), "{totals:?}");
        // Indented: a line of the inner log starting with SKIP in this
        // test's own failure message would be counted in the real run.
        let shown = String::from_utf8_lossy(&text).replace('\n', "\n    ");
        (
            out.status.success(),
            String::from_utf8_lossy(&totals.stdout).trim().to_string(),
            shown,
        )
    };

    // passed, failed, skipped, SKIP lines
    let (ok, totals, log) = counts("false");
    assert!(ok, "outside CI a skip returns early:\n    {log}");
    assert_eq!(
        totals, "0 0 1 1",
        "the skip is counted as skipped:\n    {log}"
    );

    let (ok, totals, log) = counts("true");
    assert!(!ok, "under CI=true a skip fails the test:\n    {log}");
    assert_eq!(totals, "0 1 0 0", "and is counted as failed:\n    {log}");
}
