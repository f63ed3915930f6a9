//! Traffic policies at connect time (issue 7), end to end: the real daemon
//! and eBPF programs, backends and clients in per-test network namespaces
//! (only `lo` up), real sockets.
//!
//! - circuit breaking: `max_connections` per client netns and cluster;
//! - local rate limit: a token bucket per client netns and filter chain;
//! - LEAST_REQUEST: fewest active connections among random picks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::yaml::*;
use common::*;

const READY: Duration = Duration::from_secs(20);
const VIP: &str = "10.96.7.1:80";

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
    fn start(prefix: &str, backends: &[&str], yaml: &str) -> Mesh {
        let netns = NetNs::new(prefix);
        let backends = Backends::start(Some(&netns), backends);
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let xds = temp_file(".yaml", yaml);
        let mut daemon = Daemon::start_with_args(xds.path(), &bpffs, &cgroup, &[]);
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

    fn dial(&self, count: u32, extra: &[&str]) -> DialReport {
        dial_with(Some(&self.netns), Some(&self.cgroup), VIP, count, extra)
    }

    fn bpf(&self) -> serde_json::Value {
        let (status, body) = self.daemon.get("/debug/config_dump/bpf/kernel-native");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `pred` holds for the bpf dump; returns that dump.
    fn wait_bpf(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dump = self.bpf();
            if pred(&dump) {
                return dump;
            }
            assert!(Instant::now() < deadline, "{what} never held: {dump}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rewrite(&self, yaml: &str) {
        replace_file(self.xds.path(), yaml);
    }

    fn wait_version(&self, version: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dump = self.daemon.config_dump();
            if dump["version"].as_u64().unwrap_or(0) >= version {
                return dump;
            }
            assert!(Instant::now() < deadline, "no version {version}: {dump}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `kmesh-traffic dial` in the background, keeping its connections open for
/// `keep_open_ms` after the last connect. Killed by PID if still running on drop.
struct Holder(Option<Child>);

impl Holder {
    fn start(netns: &NetNs, cgroup: &Cgroup, count: u32, keep_open_ms: u64) -> Holder {
        Holder::start_to(netns, cgroup, VIP, count, keep_open_ms)
    }

    fn start_to(
        netns: &NetNs,
        cgroup: &Cgroup,
        target: &str,
        count: u32,
        keep_open_ms: u64,
    ) -> Holder {
        let child = Command::new(TRAFFIC_BIN)
            .args(["dial", "--netns", netns.name()])
            .arg("--cgroup")
            .arg(cgroup.path())
            .args(["--count", &count.to_string()])
            .args(["--keep-open-ms", &keep_open_ms.to_string()])
            .arg(target)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning kmesh-traffic dial");
        Holder(Some(child))
    }

    /// Waits for it to close its connections and exit; its report.
    fn finish(mut self) -> DialReport {
        let child = self.0.take().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Holder {
    /// Ends it now (by PID): the kernel closes its connections.
    fn close(mut self) {
        if let Some(child) = &mut self.0 {
            terminate(child, Duration::from_secs(2));
        }
        self.0 = None;
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            terminate(child, Duration::from_secs(2));
        }
    }
}

/// A STATIC cluster with extra cluster-level YAML (indented two spaces).
fn cluster_with(name: &str, extra: &str, endpoints: &[Ep]) -> String {
    static_cluster(name, endpoints).replacen("  lb_policy: ROUND_ROBIN", extra, 1)
}

fn find(
    list: &serde_json::Value,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Vec<&serde_json::Value> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|e| pred(e))
        .collect()
}

fn netns_active(dump: &serde_json::Value, cluster: &str) -> Vec<u64> {
    find(&dump["netns_connections"], |e| e["cluster"] == cluster)
        .iter()
        .map(|e| e["active"].as_u64().unwrap())
        .collect()
}

#[test]
fn max_connections_5_per_client_netns_refuses_the_sixth_with_eperm_at_once() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("cb", "10.96.7.1", 80, "cb"),
        cluster_with(
            "cb",
            "  circuit_breakers: { thresholds: [{ max_connections: 5, max_requests: 100 }] }",
            &[("127.0.0.2", 8080, 0, 0), ("127.0.0.3", 8080, 0, 0)],
        ),
    ]);
    let backends = ["127.0.0.2:8080=a", "127.0.0.3:8080=b"];
    let mesh = Mesh::start("kn-cb", &backends, &yaml);

    // The compiled view shows the limit and what has no L4 meaning.
    let dump = mesh.daemon.config_dump();
    let cl = &dump["clusters"]["cb"];
    assert_eq!(cl["circuit_breakers"]["max_connections"], 5, "{cl}");
    assert!(
        cl["ignored"].to_string().contains("max_requests"),
        "max_requests is listed as ignored: {cl}"
    );

    // Five held connections: four for long, one for a short while.
    let long = Holder::start(&mesh.netns, &mesh.cgroup, 4, 8000);
    let short = Holder::start(&mesh.netns, &mesh.cgroup, 1, 1500);
    mesh.wait_bpf("5 active connections", |d| netns_active(d, "cb") == [5]);

    // The sixth fails at once with EPERM.
    let started = Instant::now();
    let sixth = mesh.dial(1, &[]);
    let took = started.elapsed();
    assert_eq!(sixth.connected, 0, "{sixth:?}");
    assert_eq!(sixth.error("EPERM"), 1, "{sixth:?}");
    assert!(
        took < Duration::from_millis(1000),
        "refused at once: {took:?}"
    );

    let bpf = mesh.bpf();
    assert!(bpf["stats"]["cx_overflow"].as_u64().unwrap() >= 1, "{bpf}");
    let cc = find(&bpf["cluster_connections"], |c| c["cluster"] == "cb");
    assert_eq!(cc[0]["cx_overflow"], 1, "{bpf}");
    let nc = find(&bpf["netns_connections"], |c| c["cluster"] == "cb");
    assert_eq!(nc[0]["overflow"], 1, "{bpf}");
    let hdr = &find(&bpf["clusters"], |c| c["key"] == "cb")[0]["records"][0][1];
    assert_eq!(hdr["max_connections"], 5, "{bpf}");

    // Another client netns has its own budget (same endpoint addresses,
    // served inside that netns).
    let other = NetNs::new("kn-cb-other");
    let _other_backends = Backends::start(Some(&other), &backends);
    let r = dial_with(
        Some(&other),
        Some(&mesh.cgroup),
        VIP,
        5,
        &["--keep-open-ms", "300"],
    );
    assert_eq!(r.connected, 5, "{r:?}");
    assert_eq!(r.total_errors(), 0, "{r:?}");

    // After the short-lived connection closes, a new one succeeds (the four
    // long ones are still open) and the budget is full again.
    assert_eq!(short.finish().connected, 1);
    mesh.wait_bpf("4 active", |d| netns_active(d, "cb").contains(&4));
    let r = mesh.dial(1, &["--keep-open-ms", "1500"]);
    assert_eq!(r.connected, 1, "{r:?}");
    assert_eq!(long.finish().connected, 4);
    let bpf = mesh.wait_bpf("all closed", |d| {
        netns_active(d, "cb").iter().all(|&a| a == 0)
    });
    assert_eq!(netns_active(&bpf, "cb").len(), 2, "two netns: {bpf}");
}

#[test]
fn local_rate_limit_10_tokens_5_per_second_refuses_over_the_limit() {
    if !require_root() {
        return;
    }
    let listener_yaml = r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "rl"
  address: { socket_address: { address: "10.96.7.1", port_value: 80 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.local_ratelimit
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
        stat_prefix: rl
        token_bucket: { max_tokens: 10, tokens_per_fill: 1, fill_interval: 0.2s }
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: rl
        cluster: "rl""#;
    let yaml = config(&[
        listener_yaml.to_string(),
        static_cluster("rl", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start("kn-rl", &["127.0.0.2:8080=a"], &yaml);

    let dump = mesh.daemon.config_dump();
    let action = &dump["listeners"][0]["matches"][0]["action"];
    assert_eq!(
        action["rate_limited"]["limit"]["max_tokens"], 10,
        "{action}"
    );

    // A burst of 20: the full bucket's 10 succeed (one more if a fill
    // interval passed during the burst), the rest fail with EPERM.
    let started = Instant::now();
    let burst = mesh.dial(20, &[]);
    let took = started.elapsed();
    let extra = (took.as_millis() / 200) as u64;
    assert!(
        burst.connected >= 10 && burst.connected <= 10 + extra,
        "{burst:?} in {took:?}"
    );
    assert_eq!(burst.error("EPERM"), 20 - burst.connected, "{burst:?}");

    // Steady state: 30 attempts over ~3 s at 10/s, the bucket refills 5/s.
    let started = Instant::now();
    let steady = mesh.dial(30, &["--interval-ms", "100"]);
    let secs = started.elapsed().as_secs_f64();
    let rate = steady.connected as f64 / secs;
    assert!(
        (3.5..=6.5).contains(&rate),
        "~5/s expected, got {rate:.2}/s: {steady:?} over {secs:.2}s"
    );

    let bpf = mesh.bpf();
    assert!(
        bpf["stats"]["rate_limited"].as_u64().unwrap() >= 20,
        "{bpf}"
    );
    let buckets = bpf["rate_limit_buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{bpf}");
    assert!(buckets[0]["limited"].as_u64().unwrap() >= 20, "{bpf}");
    let listener = &bpf["listeners"][0]["records"];
    let filter = listener
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[1]["record"] == "filter")
        .unwrap();
    assert_eq!(filter[1]["rate_limit"]["max_tokens"], 10, "{bpf}");
    assert_eq!(
        filter[1]["rate_limit"]["fill_interval_ns"], 200_000_000u64,
        "{bpf}"
    );

    // Another client netns has its own full bucket.
    let other = NetNs::new("kn-rl-other");
    let _b = Backends::start(Some(&other), &["127.0.0.2:8080=a"]);
    let r = dial_with(Some(&other), Some(&mesh.cgroup), VIP, 10, &[]);
    assert_eq!(r.connected, 10, "{r:?}");
}

#[test]
fn least_request_steers_new_connections_away_from_a_busy_endpoint() {
    if !require_root() {
        return;
    }
    let lr = "  lb_policy: LEAST_REQUEST\n  least_request_lb_config: { choice_count: 5 }";
    let only_a = config(&[
        listener("lr", "10.96.7.1", 80, "lr"),
        cluster_with("lr", lr, &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start("kn-lr", &["127.0.0.2:8080=a", "127.0.0.3:8080=b"], &only_a);
    let dump = mesh.daemon.config_dump();
    assert_eq!(
        dump["clusters"]["lr"]["lb_policy"]["LEAST_REQUEST"]["choice_count"], 5,
        "{dump}"
    );

    // Endpoint a holds six open connections...
    let busy = Holder::start(&mesh.netns, &mesh.cgroup, 6, 6000);
    let a_active = |d: &serde_json::Value| {
        find(&d["endpoint_connections"], |e| {
            e["cluster"] == "lr" && e["address"] == "127.0.0.2:8080"
        })
        .first()
        .map(|e| e["active"].as_u64().unwrap())
    };
    mesh.wait_bpf("a holds 6", |d| a_active(d) == Some(6));

    // ...then b joins: the per-endpoint counts survive the rewrite, and new
    // connections go to b (a wins only when all five picks land on it).
    mesh.rewrite(&config(&[
        listener("lr", "10.96.7.1", 80, "lr"),
        cluster_with(
            "lr",
            lr,
            &[("127.0.0.2", 8080, 0, 0), ("127.0.0.3", 8080, 0, 0)],
        ),
    ]));
    mesh.wait_version(2);
    let r = mesh.dial(20, &[]);
    assert_eq!(r.connected, 20, "{r:?}");
    assert!(
        r.backend("b") >= 17,
        "new connections avoid the busy a: {r:?}"
    );
    assert_eq!(a_active(&mesh.bpf()), Some(6));
    assert_eq!(busy.finish().connected, 6);
}

/// The one backend a client netns reached, asserting it reached only one.
fn only_backend(r: &DialReport, count: u64, what: &str) -> String {
    assert_eq!(r.connected, count, "{what}: {r:?}");
    assert_eq!(r.backends.len(), 1, "{what} stays on one endpoint: {r:?}");
    r.backends.keys().next().unwrap().clone()
}

/// MAGLEV and RING_HASH hash the client's network namespace: one client
/// netns stays on one endpoint, and removing an endpoint moves only the
/// clients that were on it.
fn consistent_hash_keeps_clients_on_their_endpoint(prefix: &str, policy: &str, dumped: &str) {
    if !require_root() {
        return;
    }
    let eps = [
        ("127.0.0.2", 8080, 0, 0),
        ("127.0.0.3", 8080, 0, 0),
        ("127.0.0.4", 8080, 0, 0),
    ];
    let names = ["127.0.0.2:8080=a", "127.0.0.3:8080=b", "127.0.0.4:8080=c"];
    let with = |eps: &[Ep]| {
        config(&[
            listener("hash", "10.96.7.1", 80, "hash"),
            cluster_with("hash", policy, eps),
        ])
    };
    let mesh = Mesh::start(prefix, &names, &with(&eps));
    let dump = mesh.daemon.config_dump();
    assert!(
        dump["clusters"]["hash"]["lb_policy"][dumped].is_object(),
        "{dump}"
    );
    let bpf = mesh.bpf();
    let cluster = find(&bpf["clusters"], |c| c["key"] == "hash")[0].clone();
    let level = find(&cluster["records"], |r| r[1]["record"] == "level")[0].clone();
    assert!(level[1]["table_size"].as_u64().unwrap() > 0, "{bpf}");
    assert!(
        !find(&cluster["records"], |r| r[1]["record"] == "hash_table").is_empty(),
        "{bpf}"
    );

    // One client netns: 100 connects, one endpoint.
    let first = only_backend(&mesh.dial(100, &[]), 100, "the first client");

    // Eight client netns (the mesh's own and seven more), each with its own
    // copy of the backends on its loopback.
    let mut clients: Vec<(Option<NetNs>, Option<Backends>)> = vec![(None, None)];
    for i in 0..7 {
        let ns = NetNs::new(&format!("{prefix}-{i}"));
        let b = Backends::start(Some(&ns), &names);
        clients.push((Some(ns), Some(b)));
    }
    let dial_all = || -> Vec<String> {
        clients
            .iter()
            .map(|(ns, _)| {
                let ns = ns.as_ref().unwrap_or(&mesh.netns);
                let r = dial_with(Some(ns), Some(&mesh.cgroup), VIP, 10, &[]);
                only_backend(&r, 10, ns.name())
            })
            .collect()
    };
    let before = dial_all();
    assert_eq!(before[0], first);
    let mut spread: Vec<&String> = before.iter().collect();
    spread.sort();
    spread.dedup();
    assert!(
        spread.len() >= 2,
        "8 clients spread over endpoints: {before:?}"
    );

    // Remove the endpoint with the most clients.
    let (gone, gone_at) = [("a", 0usize), ("b", 1), ("c", 2)]
        .into_iter()
        .max_by_key(|(n, _)| before.iter().filter(|b| b == n).count())
        .unwrap();
    let mut fewer = eps.to_vec();
    fewer.remove(gone_at);
    mesh.rewrite(&with(&fewer));
    mesh.wait_version(2);
    let after = dial_all();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b == gone {
            assert_ne!(a, gone, "client {i} moved off the removed endpoint");
        } else {
            assert_eq!(
                a, b,
                "client {i} was not on {gone}: it stays ({before:?} -> {after:?})"
            );
        }
    }
}

#[test]
fn maglev_keeps_a_client_netns_on_one_endpoint_and_moves_only_the_removed_ones() {
    consistent_hash_keeps_clients_on_their_endpoint(
        "kn-maglev",
        "  lb_policy: MAGLEV\n  maglev_lb_config: { table_size: 65537 }",
        "MAGLEV",
    );
}

#[test]
fn ring_hash_keeps_a_client_netns_on_one_endpoint_and_moves_only_the_removed_ones() {
    consistent_hash_keeps_clients_on_their_endpoint(
        "kn-ring",
        "  lb_policy: RING_HASH\n  ring_hash_lb_config: { minimum_ring_size: 1024 }",
        "RING_HASH",
    );
}

/// Outlier detection on connect failures: an endpoint with nothing listening
/// refuses connects (ECONNREFUSED) until it has failed `consecutive_5xx`
/// times in a row; then it is ejected and new connections avoid it; after
/// `base_ejection_time` it is tried again.
#[test]
fn an_endpoint_that_refuses_connects_is_ejected_and_comes_back() {
    if !require_root() {
        return;
    }
    // 127.0.0.4:8080 has no listener.
    let od = "  lb_policy: ROUND_ROBIN\n  outlier_detection: { consecutive_5xx: 3, base_ejection_time: 2s }";
    let cfg = config(&[
        listener("od", "10.96.7.1", 80, "od"),
        cluster_with(
            "od",
            od,
            &[("127.0.0.2", 8080, 0, 0), ("127.0.0.4", 8080, 0, 0)],
        ),
    ]);
    let mesh = Mesh::start("kn-od", &["127.0.0.2:8080=a"], &cfg);
    let dump = mesh.daemon.config_dump();
    let od_dump = &dump["clusters"]["od"]["outlier_detection"];
    assert_eq!(od_dump["consecutive_failures"], 3, "{dump}");
    assert_eq!(od_dump["base_ejection_ms"], 2000, "{dump}");
    // Default max_ejection_percent 10% of 2 endpoints: still one may go.
    assert_eq!(od_dump["max_ejected"], 1, "{dump}");

    let dead = |d: &serde_json::Value| {
        find(&d["outliers"], |o| {
            o["cluster"] == "od" && o["address"] == "127.0.0.4:8080"
        })
        .first()
        .map(|o| (*o).clone())
    };

    // Round robin alternates: three refused connects to the dead endpoint
    // (the first six connects), then it is ejected.
    let r = mesh.dial(6, &[]);
    assert_eq!(r.backend("a"), 3, "{r:?}");
    assert_eq!(r.error("ECONNREFUSED"), 3, "{r:?}");
    let o = mesh.wait_bpf("ejected", |d| {
        dead(d).is_some_and(|o| o["ejected_for_ms"].as_u64().unwrap() > 0)
    });
    let o = dead(&o).unwrap();
    assert_eq!(o["times_ejected"], 1, "{o}");

    // While ejected every new connection goes to a.
    let r = mesh.dial(20, &[]);
    assert_eq!(r.connected, 20, "{r:?}");
    assert_eq!(r.backend("a"), 20, "{r:?}");

    // After base_ejection_time it is tried again (and refuses again).
    let deadline = Instant::now() + Duration::from_secs(5);
    while dead(&mesh.bpf()).unwrap()["ejected_for_ms"]
        .as_u64()
        .unwrap()
        > 0
    {
        assert!(Instant::now() < deadline, "ejection never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = mesh.dial(6, &[]);
    assert!(r.error("ECONNREFUSED") >= 1, "back in the rotation: {r:?}");
    assert_eq!(r.connected + r.total_errors(), 6, "{r:?}");
    // The second ejection lasts twice as long.
    let d = mesh.wait_bpf("ejected again", |d| {
        dead(d).is_some_and(|o| o["times_ejected"] == 2)
    });
    let ms = dead(&d).unwrap()["ejected_for_ms"].as_u64().unwrap();
    assert!(ms > 2000 && ms <= 4000, "{d}");
}

/// `(active, total)` of the endpoint counter of `address` in `cluster`.
fn endpoint_counter(dump: &serde_json::Value, cluster: &str, address: &str) -> Option<(u64, u64)> {
    find(&dump["endpoint_connections"], |e| {
        e["cluster"] == cluster && e["address"] == address
    })
    .first()
    .map(|e| (e["active"].as_u64().unwrap(), e["total"].as_u64().unwrap()))
}

/// Issue 14 item 3: the counters of an endpoint that left the configuration
/// do not stay in the kernel. After a restart onto a configuration that
/// replaced the endpoint they are gone; an endpoint removed while it still
/// has a connection keeps its counter until that connection closes, then
/// that goes too.
#[test]
fn counters_of_a_removed_endpoint_leave_the_kernel_once_it_has_no_connection() {
    if !require_root() {
        return;
    }
    let with = |addr: &str| {
        config(&[
            listener("ep", "10.96.7.1", 80, "ep"),
            cluster_with("ep", "  lb_policy: LEAST_REQUEST", &[(addr, 9300, 0, 0)]),
        ])
    };
    let backends = [
        "127.0.0.41:9300=a41",
        "127.0.0.42:9300=a42",
        "127.0.0.43:9300=a43",
    ];
    let mut mesh = Mesh::start("kn-epgc", &backends, &with("127.0.0.41"));
    assert_eq!(mesh.dial(5, &[]).backend("a41"), 5);
    mesh.wait_bpf(".41 counted", |d| {
        endpoint_counter(d, "ep", "127.0.0.41:9300") == Some((0, 5))
    });

    // A restart onto a configuration that replaced .41 by .42.
    mesh.daemon.stop();
    mesh.rewrite(&with("127.0.0.42"));
    mesh.daemon = Daemon::start(mesh.xds.path(), &mesh.bpffs, &mesh.cgroup);
    mesh.daemon.wait_ready(READY);
    let bpf = mesh.bpf();
    assert_eq!(
        endpoint_counter(&bpf, "ep", "127.0.0.41:9300"),
        None,
        "the replaced endpoint's counter is gone after the restart: {}",
        bpf["endpoint_connections"]
    );

    // .42 is replaced while a connection to it is open: its counter stays
    // while the connection lives (active 1), and goes once it closes.
    let held = Holder::start(&mesh.netns, &mesh.cgroup, 1, 60_000);
    mesh.wait_bpf(".42 holds one", |d| {
        endpoint_counter(d, "ep", "127.0.0.42:9300") == Some((1, 1))
    });
    mesh.rewrite(&with("127.0.0.43"));
    mesh.wait_version(2);
    assert_eq!(mesh.dial(3, &[]).backend("a43"), 3);
    let bpf = mesh.bpf();
    assert_eq!(
        endpoint_counter(&bpf, "ep", "127.0.0.42:9300"),
        Some((1, 1)),
        "a live connection keeps its counter: {}",
        bpf["endpoint_connections"]
    );
    held.close();
    let bpf = mesh.wait_bpf(".42 gone once closed", |d| {
        endpoint_counter(d, "ep", "127.0.0.42:9300").is_none()
    });
    let left: Vec<&str> = find(&bpf["endpoint_connections"], |_| true)
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["127.0.0.43:9300"], "only live state: {bpf}");
}

/// Every connection counter of the bpf dump (active and total/overflow).
fn counters(dump: &serde_json::Value) -> Vec<u64> {
    let mut out = Vec::new();
    for list in [
        "netns_connections",
        "endpoint_connections",
        "cluster_connections",
    ] {
        for e in dump[list].as_array().unwrap() {
            for field in ["active", "total", "overflow"] {
                out.extend(e[field].as_u64());
            }
        }
    }
    out
}

/// Issue 14 item 4: a connection whose counters were evicted from the LRU
/// maps (shrunk with the capacity flags) while it was open, then recreated
/// by another connection, does not make them wrap when it closes: the
/// circuit breaker keeps admitting up to its limit and the dump shows sane
/// counts.
#[test]
fn counters_evicted_under_an_open_connection_never_wrap_and_the_breaker_keeps_admitting() {
    if !require_root() {
        return;
    }
    const CLUSTERS: usize = 32;
    let vip = |i: usize| format!("10.96.8.{i}:80");
    let mut resources = Vec::new();
    for i in 0..CLUSTERS {
        let name = format!("cb{i}");
        resources.push(listener(&name, &format!("10.96.8.{i}"), 80, &name));
        resources.push(cluster_with(
            &name,
            "  circuit_breakers: { thresholds: [{ max_connections: 2 }] }",
            &[("127.0.0.2", 8080, 0, 0)],
        ));
    }
    let netns = NetNs::new("kn-lru");
    let _backends = Backends::start(Some(&netns), &["127.0.0.2:8080=a"]);
    let cgroup = Cgroup::new("kn-lru");
    let bpffs = BpfFsDir::new("kn-lru");
    let xds = temp_file(".yaml", &config(&resources));
    let mut daemon = Daemon::start_with_args(
        xds.path(),
        &bpffs,
        &cgroup,
        &[
            "--max-netns-cluster-counters",
            "4",
            "--max-endpoint-counters",
            "4",
        ],
    );
    daemon.wait_ready(READY);
    let bpf = || -> serde_json::Value {
        let (status, body) = daemon.get("/debug/config_dump/bpf/kernel-native");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let wait_bpf = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dump = bpf();
            if pred(&dump) {
                return dump;
            }
            assert!(Instant::now() < deadline, "{what} never held: {dump}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let cb0_netns = |d: &serde_json::Value| netns_active(d, "cb0");
    let cb0_endpoint = |d: &serde_json::Value| endpoint_counter(d, "cb0", "127.0.0.2:8080");

    // A holds a connection to cb0...
    let a = Holder::start_to(&netns, &cgroup, &vip(0), 1, 60_000);
    wait_bpf("A counted", &|d| {
        cb0_netns(d) == [1] && cb0_endpoint(d).is_some_and(|(active, _)| active == 1)
    });
    // ...while connections to the other clusters push its counters out.
    let mut evicted = false;
    for i in 1..CLUSTERS {
        let r = dial_with(Some(&netns), Some(&cgroup), &vip(i), 1, &[]);
        assert_eq!(r.connected, 1, "cb{i}: {r:?}");
        let d = bpf();
        if cb0_netns(&d).is_empty() && cb0_endpoint(&d).is_none() {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "cb0's counters were never evicted: {}", bpf());

    // B recreates them and closes; then A closes.
    let b = dial_with(
        Some(&netns),
        Some(&cgroup),
        &vip(0),
        1,
        &["--keep-open-ms", "200"],
    );
    assert_eq!(b.connected, 1, "{b:?}");
    wait_bpf("B closed", &|d| cb0_netns(d) == [0]);
    a.close();
    let d = wait_bpf("A closed", &|d| {
        find(&d["cluster_connections"], |c| c["cluster"] == "cb0")
            .first()
            .is_some_and(|c| c["active"] == 0)
    });
    assert_eq!(cb0_netns(&d), [0], "no wrap: {}", d["netns_connections"]);
    assert_eq!(
        cb0_endpoint(&d).map(|(active, _)| active),
        Some(0),
        "no wrap: {}",
        d["endpoint_connections"]
    );
    assert!(counters(&d).iter().all(|&n| n < 1000), "sane counts: {d}");

    // The breaker still admits up to its limit of 2, and refuses the third.
    let r = dial_with(
        Some(&netns),
        Some(&cgroup),
        &vip(0),
        3,
        &["--keep-open-ms", "300"],
    );
    assert_eq!(r.connected, 2, "{r:?}");
    assert_eq!(r.error("EPERM"), 1, "{r:?}");
    daemon.stop();
}

/// Issue 14 item 4: a max_connections of 2^31 or more (Istio sends
/// 4294967295 on every cluster) is no limit and keeps no per-netns counter.
#[test]
fn a_max_connections_of_2_pow_31_or_more_is_no_limit_and_keeps_no_counter() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("huge", "10.96.7.1", 80, "huge"),
        cluster_with(
            "huge",
            "  circuit_breakers: { thresholds: [{ max_connections: 4294967295 }] }",
            &[("127.0.0.2", 8080, 0, 0)],
        ),
        listener("half", "10.96.7.2", 80, "half"),
        cluster_with(
            "half",
            "  circuit_breakers: { thresholds: [{ max_connections: 2147483648 }] }",
            &[("127.0.0.2", 8080, 0, 0)],
        ),
    ]);
    let mesh = Mesh::start("kn-cbmax", &["127.0.0.2:8080=a"], &yaml);
    assert_eq!(mesh.dial(5, &["--keep-open-ms", "200"]).connected, 5);
    let r = dial_with(
        Some(&mesh.netns),
        Some(&mesh.cgroup),
        "10.96.7.2:80",
        5,
        &[],
    );
    assert_eq!(r.connected, 5, "{r:?}");
    let bpf = mesh.wait_bpf("counted", |d| {
        find(&d["cluster_connections"], |c| c["cluster"] == "half")
            .first()
            .is_some_and(|c| c["total"] == 5)
    });
    assert_eq!(
        bpf["netns_connections"],
        serde_json::json!([]),
        "no per-netns counter: {bpf}"
    );
    let dump = mesh.daemon.config_dump();
    for name in ["huge", "half"] {
        let cl = &dump["clusters"][name];
        assert!(cl["circuit_breakers"].is_null(), "no limit: {cl}");
        assert!(
            cl["ignored"].to_string().contains("max_connections"),
            "listed as ignored: {cl}"
        );
    }
}
