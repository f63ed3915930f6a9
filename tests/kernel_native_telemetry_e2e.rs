//! Connection telemetry end to end: real connections through a VIP, the
//! kernel's connection events read by the daemon, checked on the metrics
//! endpoint (`kmesh_tcp_*`, promtool) and in the access log, with the
//! switches flipped at run time through kmeshctl.
//!
//! Network rules: backends and client live in a per-test netns with only `lo`
//! up; VIPs are steered to loopback endpoints inside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::yaml::*;
use common::*;

const READY: Duration = Duration::from_secs(20);

/// Length of the backend's reply line `svc peer=127.0.0.1:NNNNN\n`: Linux
/// ephemeral ports (32768-60999) always have five digits.
const REPLY_LEN: u64 = 25;

struct Mesh {
    // Field order = drop order: daemon first, then backends, then the rest.
    daemon: Daemon,
    _backends: Backends,
    cgroup: Cgroup,
    netns: NetNs,
    bpffs: BpfFsDir,
    xds: tempfile::NamedTempFile,
}

impl Mesh {
    fn start(prefix: &str, vip: &str, extra: &[&str]) -> Mesh {
        let yaml = config(&[
            listener("vip", vip, 80, "svc"),
            eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
            // Nothing listens on 127.0.0.3:9: connects are refused.
            listener("dead", &vip.replace(".0.", ".1."), 80, "dead"),
            eds_cluster("dead", "ROUND_ROBIN", &[("127.0.0.3", 9, 0, 0)]),
            // Its backend waits for the client to close first.
            listener("late", &vip.replace(".0.", ".2."), 80, "late"),
            eds_cluster("late", "ROUND_ROBIN", &[("127.0.0.4", 8080, 0, 0)]),
            // IPv6: fd00:96::<last octet of the IPv4 VIP> -> [::1]:8081.
            listener("vip6", &vip6(vip), 80, "svc6"),
            eds_cluster("svc6", "ROUND_ROBIN", &[("::1", 8081, 0, 0)]),
        ]);
        let netns = NetNs::new(prefix);
        let backends = Backends::start(Some(&netns), &["127.0.0.2:8080=svc", "[::1]:8081=svc6"]);
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let xds = temp_file(".yaml", &yaml);
        let mut daemon = Daemon::start_with_args(xds.path(), &bpffs, &cgroup, extra);
        daemon.wait_ready(READY);
        Mesh {
            daemon,
            _backends: backends,
            cgroup,
            netns,
            bpffs,
            xds,
        }
    }

    fn dial(&self, target: &str, count: u32, send_bytes: u64) -> DialReport {
        dial_with(
            Some(&self.netns),
            Some(&self.cgroup),
            target,
            count,
            &["--send-bytes", &send_bytes.to_string()],
        )
    }

    fn metrics(&self) -> String {
        let (status, text) = http_get(self.daemon.metrics_addr(), "/status/metric");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The value of the first sample whose line starts with `prefix`, 0 if none.
    fn sample(&self, prefix: &str) -> f64 {
        sample(&self.metrics(), prefix)
    }

    /// Wait until the sample reaches `want` (events arrive asynchronously).
    fn wait_sample(&self, prefix: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics();
            let got = sample(&text, prefix);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix} is {got}, expected {want}:\n{text}\nlog:\n{}",
                self.daemon.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn access_log_lines(&self) -> Vec<String> {
        self.daemon
            .logs()
            .lines()
            .filter(|l| l.starts_with("accesslog: ") || l.starts_with('{'))
            .map(str::to_string)
            .collect()
    }

    fn wait_access_log_lines(&self, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.access_log_lines();
            if lines.len() >= want {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} access log lines, expected {want}; log:\n{}",
                lines.len(),
                self.daemon.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_kmeshctl"))
            .args(["--admin-address", &self.daemon.admin_addr().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kmeshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn vip6(vip4: &str) -> String {
    format!("fd00:96::{}", vip4.rsplit('.').next().unwrap())
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const SVC: &str = "{reporter=\"source\",source_address=\"127.0.0.1\",destination_address=\"127.0.0.2:8080\",destination_service=\"svc\"}";
const DEAD: &str = "{reporter=\"source\",source_address=\"127.0.0.1\",destination_address=\"127.0.0.3:9\",destination_service=\"dead\"}";

#[test]
fn connection_metrics_count_connections_and_bytes_with_labels() {
    if !require_root() {
        return;
    }
    let mesh = Mesh::start("kn-tm-metrics", "10.96.0.31", &[]);
    const N: u32 = 6;
    const M: u64 = 3000;
    assert_eq!(
        mesh.dial("10.96.0.31:80", N, M).backend("svc"),
        u64::from(N)
    );
    assert_eq!(mesh.dial("10.96.1.31:80", 2, 0).error("ECONNREFUSED"), 2);

    let name = |metric: &str, labels: &str| format!("{metric}{labels} ");
    mesh.wait_sample(
        &name("kmesh_tcp_connections_closed_total", SVC),
        f64::from(N),
    );
    mesh.wait_sample(&name("kmesh_tcp_connections_failed_total", DEAD), 2.0);

    // The client closes first (FIN_WAIT1 -> FIN_WAIT2 -> closed, the peer's
    // FIN may come with its ACK): still exactly the payload.
    let _late = Backends::start_with(
        Some(&mesh.netns),
        &["127.0.0.4:8080=svc"],
        &["--client-closes-first"],
    );
    const LATE: &str = "{reporter=\"source\",source_address=\"127.0.0.1\",destination_address=\"127.0.0.4:8080\",destination_service=\"late\"}";
    assert_eq!(
        mesh.dial("10.96.2.31:80", N, M).backend("svc"),
        u64::from(N)
    );
    mesh.wait_sample(
        &name("kmesh_tcp_connections_closed_total", LATE),
        f64::from(N),
    );
    let text = mesh.metrics();
    let at = |metric: &str, labels: &str| sample(&text, &name(metric, labels));
    assert_eq!(
        at("kmesh_tcp_connections_opened_total", SVC),
        f64::from(N),
        "{text}"
    );
    assert_eq!(
        at("kmesh_tcp_sent_bytes_total", SVC),
        (u64::from(N) * M) as f64,
        "{text}"
    );
    assert_eq!(
        at("kmesh_tcp_received_bytes_total", SVC),
        (u64::from(N) * REPLY_LEN) as f64,
        "{text}"
    );
    assert_eq!(at("kmesh_tcp_connections_failed_total", SVC), 0.0);
    assert_eq!(
        at("kmesh_tcp_sent_bytes_total", LATE),
        (u64::from(N) * M) as f64,
        "{text}"
    );
    assert_eq!(
        at("kmesh_tcp_received_bytes_total", LATE),
        (u64::from(N) * REPLY_LEN) as f64,
        "{text}"
    );
    assert_eq!(at("kmesh_tcp_connections_opened_total", DEAD), 0.0);
    assert_eq!(at("kmesh_tcp_connections_closed_total", DEAD), 0.0);
    assert_eq!(at("kmesh_tcp_retransmissions_total", SVC), 0.0);
    assert_eq!(at("kmesh_tcp_packet_loss_total", SVC), 0.0);
    assert_eq!(
        sample(
            &text,
            "kmesh_bpf_connect_events_total{event=\"conn_events_dropped\"} "
        ),
        0.0
    );
    promtool_check(&text);
}

#[test]
fn access_log_and_monitoring_toggle_at_run_time() {
    if !require_root() {
        return;
    }
    let mesh = Mesh::start("kn-tm-toggle", "10.96.0.32", &[]);
    let closed = format!("kmesh_tcp_connections_closed_total{SVC} ");

    // Default: monitoring on, access log off.
    mesh.dial("10.96.0.32:80", 3, 10);
    mesh.wait_sample(&closed, 3.0);
    assert!(mesh.access_log_lines().is_empty(), "{}", mesh.daemon.logs());

    let out = mesh.ctl(&["accesslog", "enable"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "access log enabled"
    );
    assert_eq!(mesh.dial("10.96.0.32:80", 4, 100).backend("svc"), 4);
    let lines = mesh.wait_access_log_lines(4);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for line in &lines {
        assert!(line.starts_with("accesslog: 20"), "{line}");
        for part in [
            "src.addr=127.0.0.1:",
            ", src.workload=-, src.namespace=-, dst.addr=127.0.0.2:8080, dst.service=svc, \
             dst.workload=-, dst.namespace=-, direction=OUTBOUND, sent_bytes=100, \
             received_bytes=25, duration=",
        ] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
        assert!(line.ends_with("ms"), "{line}");
    }
    mesh.wait_sample(&closed, 7.0);

    mesh.ctl(&["accesslog", "disable"]);
    mesh.dial("10.96.0.32:80", 2, 10);
    mesh.wait_sample(&closed, 9.0);
    assert_eq!(mesh.access_log_lines().len(), 4);

    let out = mesh.ctl(&["monitoring", "disable"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "monitoring disabled"
    );
    assert_eq!(mesh.dial("10.96.0.32:80", 3, 10).backend("svc"), 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mesh.sample(&closed), 9.0);

    mesh.ctl(&["monitoring", "enable"]);
    mesh.dial("10.96.0.32:80", 1, 10);
    mesh.wait_sample(&closed, 10.0);
    assert_eq!(
        mesh.sample(&format!("kmesh_tcp_connections_opened_total{SVC} ")),
        10.0
    );

    // A bad request says what to send.
    let (status, body) = admin_post(&mesh, "/accesslog?enable=maybe");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("enable=true"), "{body}");
}

#[test]
fn json_access_log_from_the_start() {
    if !require_root() {
        return;
    }
    let mesh = Mesh::start(
        "kn-tm-json",
        "10.96.0.33",
        &["--accesslog", "true", "--access-log-format", "json"],
    );
    mesh.dial("10.96.0.33:80", 2, 50);
    mesh.dial("10.96.1.33:80", 1, 0);
    assert_eq!(mesh.dial("[fd00:96::33]:80", 1, 20).backend("svc6"), 1);
    let lines = mesh.wait_access_log_lines(4);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("dst.service").is_some())
        .collect();
    assert_eq!(events.len(), 4, "{lines:#?}");
    let ok: Vec<_> = events
        .iter()
        .filter(|e| e["dst.service"] == "svc")
        .collect();
    assert_eq!(ok.len(), 2);
    for e in ok {
        assert_eq!(e["sent_bytes"], 50);
        assert_eq!(e["received_bytes"], REPLY_LEN);
        assert_eq!(e["established"], true);
        assert_eq!(e["dst.original_addr"], "10.96.0.33:80");
        assert_eq!(e["direction"], "OUTBOUND");
    }
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["dst.service"] == "dead")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["established"], false);
    assert_eq!(failed[0]["dst.addr"], "127.0.0.3:9");
    let v6: Vec<_> = events
        .iter()
        .filter(|e| e["dst.service"] == "svc6")
        .collect();
    assert_eq!(v6.len(), 1, "{lines:#?}");
    assert_eq!(v6[0]["dst.addr"], "[::1]:8081");
    assert_eq!(v6[0]["dst.original_addr"], "[fd00:96::33]:80");
    assert!(v6[0]["src.addr"].as_str().unwrap().starts_with("[::1]:"));
    assert_eq!(v6[0]["sent_bytes"], 20);
    // `svc6 peer=[::1]:NNNNN\n`
    assert_eq!(v6[0]["received_bytes"], 22);
}

fn admin_post(mesh: &Mesh, path: &str) -> (u16, String) {
    kmesh::admin_client::post_json(mesh.daemon.admin_addr(), path, "").unwrap()
}

/// Each daemon has its own ring buffer; the per-socket start times are
/// adopted, so a connection opened under the previous daemon is reported
/// closed by the next one.
#[test]
fn a_restarted_daemon_reads_its_own_events_and_reports_connections_it_inherited() {
    if !require_root() {
        return;
    }
    let mut mesh = Mesh::start("kn-tm-restart", "10.96.0.34", &[]);
    let opened = format!("kmesh_tcp_connections_opened_total{SVC} ");
    let closed = format!("kmesh_tcp_connections_closed_total{SVC} ");
    let sent = format!("kmesh_tcp_sent_bytes_total{SVC} ");
    mesh.dial("10.96.0.34:80", 2, 10);
    mesh.wait_sample(&closed, 2.0);

    // One connection stays open across the restart.
    let (netns, cgroup) = (
        mesh.netns.name().to_string(),
        mesh.cgroup.path().to_path_buf(),
    );
    // Held until the new daemon runs (its stdin closes then): a fixed hold
    // raced with a slow restart on a loaded machine, and the close went to
    // the old daemon's ring, which nobody reads any more.
    let mut held = Command::new(env!("CARGO_BIN_EXE_kmesh-traffic"))
        .args(["dial", "--netns", &netns, "--cgroup"])
        .arg(&cgroup)
        .args([
            "--count",
            "1",
            "--send-bytes",
            "7",
            "--keep-open-until-stdin-closes",
        ])
        .arg("10.96.0.34:80")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    mesh.wait_sample(&opened, 3.0);

    let status = mesh.daemon.stop().unwrap();
    assert!(status.success(), "{}", mesh.daemon.logs());
    // Steered with no daemon: these events go to a ring nobody reads.
    assert_eq!(mesh.dial("10.96.0.34:80", 3, 10).backend("svc"), 3);

    mesh.daemon = Daemon::start(mesh.xds.path(), &mesh.bpffs, &mesh.cgroup);
    mesh.daemon.wait_ready(READY);
    drop(held.stdin.take());
    let out = held.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The inherited connection closes under the new daemon: closed, not opened.
    mesh.wait_sample(&closed, 1.0);
    assert_eq!(mesh.sample(&sent), 7.0);
    assert_eq!(mesh.sample(&opened), 0.0);

    mesh.dial("10.96.0.34:80", 4, 10);
    mesh.wait_sample(&closed, 5.0);
    assert_eq!(mesh.sample(&opened), 4.0);
    assert_eq!(mesh.sample(&sent), 47.0);
}
