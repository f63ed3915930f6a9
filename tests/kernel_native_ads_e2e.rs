//! Kernel-native mode over ADS, end to end: the daemon binary subscribed to
//! the test control plane (tests/common/xds_server.rs) on loopback, real
//! eBPF programs in a per-test cgroup, backends and client in a per-test netns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::envoy::{require_envoy, Envoy};
use common::xds_server::{
    resources_from_yaml, tls_material, XdsServer, CLUSTER, ENDPOINT, LISTENER,
};
use common::yaml::*;
use common::*;

const READY: Duration = Duration::from_secs(20);
const PUSH: Duration = Duration::from_secs(10);

struct AdsMesh {
    daemon: Daemon,
    _backends: Backends,
    cgroup: Cgroup,
    netns: NetNs,
    _bpffs: BpfFsDir,
}

impl AdsMesh {
    fn start(prefix: &str, server: &XdsServer, backends: &[&str]) -> AdsMesh {
        let netns = NetNs::new(prefix);
        let backends = Backends::start(Some(&netns), backends);
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let mut daemon = Daemon::start_ads(
            &server.url(),
            &bpffs,
            &cgroup,
            &["--pod-name", "kmesh-test"],
        );
        daemon.wait_ready(READY);
        AdsMesh {
            daemon,
            _backends: backends,
            cgroup,
            netns,
            _bpffs: bpffs,
        }
    }

    fn dial(&self, target: &str, count: u32) -> DialReport {
        dial(&self.netns, Some(&self.cgroup), target, count)
    }

    /// Dial until `pred` holds; the time it took.
    fn dial_until(
        &self,
        target: &str,
        within: Duration,
        pred: impl Fn(&DialReport) -> bool,
    ) -> Duration {
        dial_until(&self.netns, &self.cgroup, target, 3, within, pred, || {
            self.daemon.logs()
        })
    }
}

fn service(vip: &str, cluster: &str, endpoint: &str) -> String {
    config(&[
        listener(cluster, vip, 80, cluster),
        eds_cluster(cluster, "ROUND_ROBIN", &[(endpoint, 8080, 0, 0)]),
    ])
}

#[test]
fn a_pushed_config_routes_and_an_eds_update_moves_connections_at_once() {
    if !require_root() {
        return;
    }
    let server = XdsServer::start();
    server.set_yaml("v1", &service("10.96.1.1", "svc", "127.0.0.2"));
    let mesh = AdsMesh::start(
        "ads-route",
        &server,
        &["127.0.0.2:8080=one", "127.0.0.3:8080=two"],
    );

    // Subscribed like a sidecar: CDS, EDS (for the EDS cluster), LDS; all ACKed.
    for t in [CLUSTER, ENDPOINT, LISTENER] {
        server.wait_for_ack(t, "v1", PUSH);
    }
    let first = server.wait_for(|r| r.node_id.is_some(), PUSH);
    assert_eq!(
        first.node_id.as_deref(),
        Some("sidecar~127.0.0.1~kmesh-test.kmesh-system~kmesh-system.svc.cluster.local")
    );
    assert_eq!(first.cluster_id_metadata.as_deref(), Some("Kubernetes"));
    let eds = server.wait_for(|r| r.type_url == ENDPOINT, PUSH);
    assert_eq!(eds.resource_names, vec!["svc".to_string()]);

    assert_eq!(mesh.dial("10.96.1.1:80", 10).backend("one"), 10);

    // An EDS-only change reaches the kernel in one update.
    let eds_v2 = resources_from_yaml(&config(&[eds_cluster(
        "svc",
        "ROUND_ROBIN",
        &[("127.0.0.3", 8080, 0, 0)],
    )]))
    .into_iter()
    .filter(|a| a.type_url == ENDPOINT)
    .collect();
    let pushed = Instant::now();
    server.set(ENDPOINT, "v2", eds_v2);
    mesh.dial_until("10.96.1.1:80", Duration::from_secs(5), |r| {
        r.backend("two") == 3
    });
    let took = pushed.elapsed();
    server.wait_for_ack(ENDPOINT, "v2", PUSH);
    assert!(
        took < Duration::from_millis(500),
        "EDS update took {took:?} to reach new connections"
    );
    assert_eq!(
        mesh.dial("10.96.1.1:80", 10).backend("two"),
        10,
        "no connection to the old endpoint"
    );

    let dump = mesh.daemon.config_dump();
    assert_eq!(dump["xds"]["connected"], true, "{dump}");
    let eds_status = &dump["xds"]["types"][ENDPOINT];
    assert_eq!(eds_status["acked_version"], "v2", "{dump}");
    assert_eq!(eds_status["last_result"], "ACK", "{dump}");
}

#[test]
fn an_invalid_push_is_nacked_with_a_useful_error_and_the_old_config_keeps_routing() {
    if !require_root() {
        return;
    }
    let server = XdsServer::start();
    server.set_yaml("v1", &service("10.96.1.2", "svc", "127.0.0.2"));
    let mesh = AdsMesh::start(
        "ads-nack",
        &server,
        &["127.0.0.2:8080=one", "127.0.0.3:8080=two"],
    );
    server.wait_for_ack(LISTENER, "v1", PUSH);
    assert_eq!(mesh.dial("10.96.1.2:80", 5).backend("one"), 5);

    // Endpoint weight 0 is invalid: the whole EDS response is NACKed, naming it.
    let bad = eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.3", 8080, 0, 0)]).replace(
        "port_value: 8080 } } }",
        "port_value: 8080 } } }\n      load_balancing_weight: 0",
    );
    server.set(
        ENDPOINT,
        "v2",
        resources_from_yaml(&config(&[bad]))
            .into_iter()
            .filter(|a| a.type_url == ENDPOINT)
            .collect(),
    );
    let nack = server.wait_for_nack(ENDPOINT, "v2", PUSH);
    let (_, message) = nack.error_detail.clone().unwrap();
    assert!(
        message.contains("\"svc\"") && message.contains("load_balancing_weight"),
        "error_detail must name the resource and field: {message}"
    );
    assert_eq!(
        nack.version_info, "v1",
        "a NACK carries the last accepted version"
    );
    assert_eq!(
        mesh.dial("10.96.1.2:80", 5).backend("one"),
        5,
        "the previous endpoints keep serving"
    );

    // A later valid push is ACKed and applied.
    let good = resources_from_yaml(&config(&[eds_cluster(
        "svc",
        "ROUND_ROBIN",
        &[("127.0.0.3", 8080, 0, 0)],
    )]))
    .into_iter()
    .filter(|a| a.type_url == ENDPOINT)
    .collect();
    server.set(ENDPOINT, "v3", good);
    server.wait_for_ack(ENDPOINT, "v3", PUSH);
    mesh.dial_until("10.96.1.2:80", Duration::from_secs(5), |r| {
        r.backend("two") == 3
    });
}

#[test]
fn a_restarted_control_plane_with_a_new_snapshot_is_converged_to_and_stale_resources_removed() {
    if !require_root() {
        return;
    }
    let mut server = XdsServer::start();
    server.set_yaml("v1", &service("10.96.1.3", "old", "127.0.0.2"));
    let mesh = AdsMesh::start(
        "ads-restart",
        &server,
        &["127.0.0.2:8080=one", "127.0.0.3:8080=two"],
    );
    server.wait_for_ack(LISTENER, "v1", PUSH);
    assert_eq!(mesh.dial("10.96.1.3:80", 5).backend("one"), 5);

    // Control plane down: the kernel keeps routing by the last config.
    server.stop();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mesh.dial("10.96.1.3:80", 5).backend("one"),
        5,
        "routing must survive the control plane"
    );

    // Back with a different world: "old" is gone, "new" is there.
    let v2 = service("10.96.1.4", "new", "127.0.0.3");
    let mut by_type = std::collections::BTreeMap::<String, Vec<_>>::new();
    for a in resources_from_yaml(&v2) {
        by_type.entry(a.type_url.clone()).or_default().push(a);
    }
    for (t, resources) in by_type {
        server.set(&t, "v2", resources);
    }
    server.restart();
    server.wait_for_ack(LISTENER, "v2", Duration::from_secs(40));
    mesh.dial_until("10.96.1.4:80", Duration::from_secs(10), |r| {
        r.backend("two") == 3
    });
    let r = mesh.dial("10.96.1.3:80", 3);
    assert_eq!(
        r.error("ENETUNREACH"),
        3,
        "the vanished listener must be gone from the kernel: {r:?}"
    );

    let bpf: serde_json::Value =
        serde_json::from_str(&mesh.daemon.get("/debug/config_dump/bpf/kernel-native").1).unwrap();
    let clusters: Vec<String> = bpf["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        clusters,
        vec!["new".to_string()],
        "stale clusters removed from the maps: {bpf}"
    );
    let dump = mesh.daemon.config_dump();
    assert!(dump["xds"]["reconnects"].as_u64().unwrap() >= 1, "{dump}");
}

#[test]
fn duplicate_and_out_of_order_responses_are_acked_and_change_nothing() {
    if !require_root() {
        return;
    }
    let server = XdsServer::start();
    server.set_yaml("v1", &service("10.96.1.5", "svc", "127.0.0.2"));
    let mesh = AdsMesh::start("ads-dup", &server, &["127.0.0.2:8080=one"]);
    server.wait_for_ack(LISTENER, "v1", PUSH);

    // The same CDS snapshot again (a control plane re-push), then a raw
    // response carrying an older version with a nonce of its own.
    let clusters: Vec<_> = resources_from_yaml(&service("10.96.1.5", "svc", "127.0.0.2"))
        .into_iter()
        .filter(|a| a.type_url == CLUSTER)
        .collect();
    server.set(CLUSTER, "v1-again", clusters.clone());
    server.wait_for_ack(CLUSTER, "v1-again", PUSH);
    let raw = envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
        version_info: "v0".into(),
        resources: clusters,
        type_url: CLUSTER.into(),
        nonce: "out-of-order-1".into(),
        ..Default::default()
    };
    assert!(server.send_raw(CLUSTER, raw) > 0);
    let ack = server.wait_for(
        |r| r.type_url == CLUSTER && r.response_nonce == "out-of-order-1",
        PUSH,
    );
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert_eq!(ack.version_info, "v0");
    assert_eq!(mesh.dial("10.96.1.5:80", 5).backend("one"), 5);
    assert!(
        server.requests().iter().all(|r| r.error_detail.is_none()),
        "{}",
        server.history()
    );
}

#[test]
fn a_thousand_clusters_of_ten_endpoints_pushed_at_once_are_applied() {
    if !require_root() {
        return;
    }
    let server = XdsServer::start();
    let mut parts = Vec::new();
    for i in 0..1000u32 {
        let name = format!("svc{i}");
        let vip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
        let eps: Vec<String> = (0..10)
            .map(|j| format!("127.1.{}.{}", i % 250, j + 1))
            .collect();
        let eps: Vec<Ep> = eps.iter().map(|a| (a.as_str(), 8080, 0, 0)).collect();
        parts.push(listener(&name, &vip, 80, &name));
        parts.push(eds_cluster(&name, "ROUND_ROBIN", &eps));
    }
    // The last service gets a real backend so the push is checked with traffic.
    parts.push(listener("probe", "10.97.9.9", 80, "probe"));
    parts.push(eds_cluster(
        "probe",
        "ROUND_ROBIN",
        &[("127.0.0.2", 8080, 0, 0)],
    ));
    let yaml = config(&parts);

    let mesh = {
        let server_ref = &server;
        server_ref.set_yaml("tiny", &service("10.96.1.6", "boot", "127.0.0.2"));
        AdsMesh::start(
            "ads-1k",
            server_ref,
            &["127.0.0.2:8080=one", "127.0.0.3:8080=two"],
        )
    };
    server.wait_for_ack(LISTENER, "tiny", PUSH);
    let pushed = Instant::now();
    server.set_yaml("big", &yaml);
    server.wait_for_ack(LISTENER, "big", Duration::from_secs(60));
    mesh.dial_until("10.97.9.9:80", Duration::from_secs(30), |r| {
        r.backend("one") == 3
    });
    // Clusters wait for their endpoints (EDS) and the maps are written in
    // chunks: poll the maps until every cluster and listener is in.
    let counts = || {
        let bpf: serde_json::Value =
            serde_json::from_str(&mesh.daemon.get("/debug/config_dump/bpf/kernel-native").1)
                .unwrap();
        (
            bpf["clusters"].as_array().unwrap().len(),
            bpf["listeners"].as_array().unwrap().len(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts() != (1001, 1001) {
        assert!(Instant::now() < deadline, "not all applied: {:?}", counts());
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = pushed.elapsed();
    eprintln!(
        "1,001 clusters x 10 endpoints (+ listeners) pushed at once: in the maps after {took:?}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");

    // One endpoint changes; the EDS response re-sends all 1,001 assignments
    // (as SotW servers do). Only the changed one is compiled and written,
    // so new connections move at once, not after a recompile of everything.
    let moved = yaml.replace("127.0.0.2", "127.0.0.3");
    let eds_v2: Vec<_> = resources_from_yaml(&moved)
        .into_iter()
        .filter(|a| a.type_url == ENDPOINT)
        .collect();
    assert_eq!(eds_v2.len(), 1001);
    let pushed = Instant::now();
    server.set(ENDPOINT, "big2", eds_v2);
    let acked = server.wait_for_ack(ENDPOINT, "big2", PUSH).at - pushed;
    mesh.dial_until("10.97.9.9:80", Duration::from_secs(5), |r| {
        r.backend("two") == 3
    });
    let routed = pushed.elapsed();
    eprintln!(
        "one endpoint of 1,001 clusters changed: ACKed after {acked:?}, routed after {routed:?}"
    );
    assert!(
        acked < Duration::from_millis(500),
        "a one-endpoint change among 1,001 clusters took {acked:?} to apply"
    );
    let bpf: serde_json::Value =
        serde_json::from_str(&mesh.daemon.get("/debug/config_dump/kernel-native").1).unwrap();
    assert_eq!(
        bpf["last_update"]["write"]["clusters_written"], 1,
        "only the changed cluster is rewritten: {}",
        bpf["last_update"]
    );
}

/// The oracle: whatever the test control plane pushes to kmesh, a real Envoy
/// subscribed to the same server must accept too (else the test server, not
/// kmesh, is wrong).
#[test]
fn the_same_snapshot_is_accepted_by_a_real_envoy() {
    if !require_root() {
        return;
    }
    let Some(_) = require_envoy() else {
        return;
    };
    let server = XdsServer::start();
    let yaml = config(&[
        listener("svc", "10.96.1.7", 80, "svc"),
        eds_cluster(
            "svc",
            "ROUND_ROBIN",
            &[("127.0.0.2", 8080, 0, 0), ("127.0.0.3", 8080, 2, 1)],
        ),
        weighted_listener("split", "10.96.1.8", 80, &[("svc", 80), ("other", 20)]),
        static_cluster("other", &[("127.0.0.3", 8080, 0, 0)]),
    ])
    // Envoy cannot (and must not) bind the VIPs of this host.
    .replace(
        "  filter_chains:",
        "  bind_to_port: false\n  filter_chains:",
    );
    server.set_yaml("v1", &yaml);
    let mesh = AdsMesh::start(
        "ads-oracle",
        &server,
        &["127.0.0.2:8080=one", "127.0.0.3:8080=two"],
    );
    let envoy = Envoy::start_ads(server.addr(), "envoy-oracle");
    envoy.wait_ready(Duration::from_secs(60));
    let envoy_stream = server
        .wait_for(
            |r| r.node_id.as_deref() == Some("envoy-oracle"),
            Duration::from_secs(30),
        )
        .stream;
    for t in [CLUSTER, ENDPOINT, LISTENER] {
        server.wait_for(
            |r| {
                r.stream == envoy_stream
                    && r.type_url == t
                    && r.version_info == "v1"
                    && r.error_detail.is_none()
            },
            Duration::from_secs(30),
        );
        server.wait_for_ack(t, "v1", PUSH);
    }
    assert!(
        server.requests().iter().all(|r| r.error_detail.is_none()),
        "nobody NACKed: {}",
        server.history()
    );
    let dump = envoy.config_dump().to_string();
    assert!(
        dump.contains("10.96.1.7") && dump.contains("\"svc\""),
        "Envoy has the config"
    );
    let r = mesh.dial("10.96.1.8:80", 200);
    assert_eq!(r.connected, 200, "{r:?}");
    assert!(
        r.backend("one") > 100 && r.backend("two") > 10,
        "80/20 over svc/other: {r:?}"
    );
}

/// A daemon restarted on ADS takes over what the previous one left in the
/// kernel without a gap: nothing is written before it has both clusters and
/// listeners (a CDS-only world would delete the adopted listeners).
#[test]
fn a_daemon_restarted_on_ads_writes_only_a_complete_world() {
    if !require_root() {
        return;
    }
    let server = XdsServer::start();
    server.set_yaml("v1", &service("10.96.1.9", "svc", "127.0.0.2"));
    let mut mesh = AdsMesh::start("ads-resync", &server, &["127.0.0.2:8080=one"]);
    server.wait_for_ack(LISTENER, "v1", PUSH);

    let (netns, cgroup) = (
        mesh.netns.name().to_string(),
        mesh.cgroup.path().to_path_buf(),
    );
    let load = std::thread::spawn(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kmesh-traffic"))
            .args(["dial", "--netns", &netns, "--cgroup"])
            .arg(&cgroup)
            .args(["--count", "200", "--interval-ms", "10", "10.96.1.9:80"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    mesh.daemon.stop();
    let mut next = Daemon::start_ads(
        &server.url(),
        &mesh._bpffs,
        &mesh.cgroup,
        &["--pod-name", "kmesh-test"],
    );
    next.wait_ready(READY);
    let report = load.join().unwrap();
    assert_eq!(
        report["connected"], 200,
        "no connection lost across the restart: {report}"
    );
    let logs = next.logs();
    let first = logs
        .lines()
        .find(|l| l.contains("configuration applied"))
        .unwrap_or_else(|| panic!("no apply logged:\n{logs}"));
    assert!(
        first.contains("listeners=1") && first.contains("clusters=1"),
        "the first write must carry the whole world: {first}"
    );
    next.stop();
}

#[test]
fn tls_to_the_control_plane_with_a_bearer_token() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = tls_material(dir.path());
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "header.payload.signature\n").unwrap();

    let server = XdsServer::start_tls(cert, key);
    server.set_yaml("v1", &service("10.96.1.10", "svc", "127.0.0.2"));
    let netns = NetNs::new("ads-tls");
    let _backends = Backends::start(Some(&netns), &["127.0.0.2:8080=one"]);
    let cgroup = Cgroup::new("ads-tls");
    let bpffs = BpfFsDir::new("ads-tls");

    // A bare HOST:PORT means TLS; the name checked is istiod.test.
    let ca_arg = ca.display().to_string();
    let token_arg = token.display().to_string();
    let mut daemon = Daemon::start_ads(
        &server.addr().to_string(),
        &bpffs,
        &cgroup,
        &[
            "--xds-root-cert",
            &ca_arg,
            "--xds-token-file",
            &token_arg,
            "--xds-server-name",
            "istiod.test",
        ],
    );
    daemon.wait_ready(READY);
    server.wait_for_ack(LISTENER, "v1", PUSH);
    assert_eq!(
        dial(&netns, Some(&cgroup), "10.96.1.10:80", 5).backend("one"),
        5
    );
    assert!(
        server
            .authorizations()
            .iter()
            .any(|a| a.as_deref() == Some("Bearer header.payload.signature")),
        "the token is sent: {:?}",
        server.authorizations()
    );
    daemon.stop();
    let _ = daemon.uninstall();

    // A CA that did not sign the server's certificate: no connection, and the
    // reason is in the dump.
    let other = tempfile::tempdir().unwrap();
    let (_, _, wrong_ca) = tls_material(other.path());
    let wrong_arg = wrong_ca.display().to_string();
    let bpffs2 = BpfFsDir::new("ads-tls2");
    let daemon = Daemon::start_ads(
        &server.addr().to_string(),
        &bpffs2,
        &cgroup,
        &["--xds-root-cert", &wrong_arg],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = try_http_get(daemon.admin_addr(), "/debug/config_dump/kernel-native")
            .map(|(_, b)| b)
            .unwrap_or_default();
        if body.contains("certificate") || body.contains("UnknownIssuer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS error reported: {body}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!daemon.is_ready());
}
