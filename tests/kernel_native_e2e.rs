//! Kernel-native mode end to end: the real daemon binary, real eBPF programs
//! in a per-test cgroup, backends and the client inside a per-test netns
//! (only `lo` up, so a connect that is not steered fails with ENETUNREACH and
//! nothing leaves the machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::yaml::*;
use common::*;

const READY: Duration = Duration::from_secs(20);

/// Everything one test needs: netns with backends, cgroup, bpffs dir, daemon.
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
    fn start(
        prefix: &str,
        v6_addrs: &[&str],
        backends: &[&str],
        yaml: &str,
        extra: &[&str],
    ) -> Mesh {
        let netns = NetNs::new(prefix);
        for a in v6_addrs {
            netns.add_addr(a);
        }
        let backends = Backends::start(Some(&netns), backends);
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let xds = temp_file(".yaml", yaml);
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

    /// The config dump once it reports at least `version` applied configurations.
    fn wait_dump_version(&self, version: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let dump = self.daemon.config_dump();
            if dump["version"].as_u64().unwrap_or(0) >= version {
                return dump;
            }
            assert!(
                Instant::now() < deadline,
                "dump never reached version {version}: {dump}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dial(&self, target: &str, count: u32) -> DialReport {
        dial(&self.netns, Some(&self.cgroup), target, count)
    }

    /// Replace the xDS file atomically (write + rename, as editors do).
    fn rewrite(&self, yaml: &str) {
        replace_file(self.xds.path(), yaml);
    }

    /// Dial until `pred` holds for a report of `count` connections, or time out.
    fn dial_until(
        &self,
        target: &str,
        count: u32,
        within: Duration,
        pred: impl Fn(&DialReport) -> bool,
    ) -> Duration {
        dial_until(
            &self.netns,
            &self.cgroup,
            target,
            count,
            within,
            pred,
            || self.daemon.logs(),
        )
    }
}

fn share(report: &DialReport, backend: &str) -> f64 {
    report.backend(backend) as f64 / report.connected.max(1) as f64
}

#[test]
fn vip_v4_and_v6_reach_only_the_cluster_endpoints_and_getpeername_shows_the_vip() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("vip4", "10.96.0.1", 80, "svc4"),
        eds_cluster(
            "svc4",
            "ROUND_ROBIN",
            &[("127.0.0.2", 8080, 0, 0), ("127.0.0.3", 8080, 0, 0)],
        ),
        listener("vip6", "fd00:96::1", 80, "svc6"),
        eds_cluster(
            "svc6",
            "RANDOM",
            &[("fd00::2", 8080, 0, 0), ("fd00::3", 8080, 0, 0)],
        ),
    ]);
    let mesh = Mesh::start(
        "kn-vip",
        &["fd00::2/128", "fd00::3/128", "fd00::9/128"],
        &[
            "127.0.0.2:8080=a",
            "127.0.0.3:8080=b",
            "127.0.0.9:8080=decoy",
            "[fd00::2]:8080=a6",
            "[fd00::3]:8080=b6",
            "[fd00::9]:8080=decoy6",
        ],
        &yaml,
        &[],
    );

    let r4 = mesh.dial("10.96.0.1:80", 100);
    assert_eq!(r4.connected, 100, "{r4:?}\n{}", mesh.daemon.logs());
    assert_eq!(r4.backend("a") + r4.backend("b"), 100, "{r4:?}");
    assert_eq!(r4.backend("a"), 50, "round robin alternates: {r4:?}");
    assert_eq!(r4.backend("decoy"), 0);
    assert_eq!(
        r4.peer_names.get("10.96.0.1:80"),
        Some(&100),
        "getpeername must show the VIP: {r4:?}"
    );

    let r6 = mesh.dial("[fd00:96::1]:80", 100);
    assert_eq!(r6.connected, 100, "{r6:?}\n{}", mesh.daemon.logs());
    assert_eq!(r6.backend("a6") + r6.backend("b6"), 100, "{r6:?}");
    assert!(
        r6.backend("a6") > 0 && r6.backend("b6") > 0,
        "random uses both: {r6:?}"
    );
    assert_eq!(r6.peer_names.get("[fd00:96::1]:80"), Some(&100), "{r6:?}");

    // The kernel's own counters agree.
    let (status, body) = mesh.daemon.get("/debug/config_dump/bpf/kernel-native");
    assert_eq!(status, 200, "{body}");
    let bpf: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(bpf["stats"]["redirected"].as_u64().unwrap() >= 200, "{bpf}");
    let conns = bpf["cluster_connections"].as_array().unwrap();
    let total_of = |name: &str| {
        conns
            .iter()
            .find(|c| c["cluster"] == name)
            .map(|c| c["total"].as_u64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(
        total_of("svc4"),
        100,
        "sockops counted established connections: {bpf}"
    );
    assert_eq!(total_of("svc6"), 100, "{bpf}");
}

#[test]
fn weighted_clusters_split_80_20() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        weighted_listener("split", "10.96.0.2", 80, &[("heavy", 80), ("light", 20)]),
        static_cluster("heavy", &[("127.0.0.2", 8080, 0, 0)]),
        static_cluster("light", &[("127.0.0.3", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start(
        "kn-weighted",
        &[],
        &["127.0.0.2:8080=heavy", "127.0.0.3:8080=light"],
        &yaml,
        &[],
    );
    let r = mesh.dial("10.96.0.2:80", 1000);
    assert_eq!(r.connected, 1000, "{r:?}");
    let heavy = share(&r, "heavy");
    assert!(
        (heavy - 0.80).abs() <= 0.05,
        "80/20 split off by more than 5 points: {r:?}"
    );
    assert_eq!(r.backend("heavy") + r.backend("light"), 1000);
}

#[test]
fn round_robin_is_even_and_honours_endpoint_weights_and_priorities() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("even", "10.96.0.3", 80, "even"),
        eds_cluster(
            "even",
            "ROUND_ROBIN",
            &[
                ("127.0.0.2", 8080, 0, 0),
                ("127.0.0.3", 8080, 0, 0),
                ("127.0.0.4", 8080, 0, 0),
            ],
        ),
        listener("weighted", "10.96.0.4", 80, "weighted"),
        eds_cluster(
            "weighted",
            "ROUND_ROBIN",
            &[
                ("127.0.0.2", 8080, 1, 0),
                ("127.0.0.3", 8080, 2, 0),
                ("127.0.0.4", 8080, 3, 0),
            ],
        ),
        // Priority 0 has no endpoint of this family: priority 1 serves.
        listener("failover", "10.96.0.5", 80, "failover"),
        eds_cluster(
            "failover",
            "ROUND_ROBIN",
            &[("fd00::2", 8080, 0, 0), ("127.0.0.4", 8080, 0, 1)],
        ),
    ]);
    let mesh = Mesh::start(
        "kn-rr",
        &["fd00::2/128"],
        &[
            "127.0.0.2:8080=e1",
            "127.0.0.3:8080=e2",
            "127.0.0.4:8080=e3",
            "[fd00::2]:8080=e6",
        ],
        &yaml,
        &[],
    );

    let r = mesh.dial("10.96.0.3:80", 300);
    assert_eq!(r.connected, 300, "{r:?}");
    for b in ["e1", "e2", "e3"] {
        assert!(
            r.backend(b).abs_diff(100) <= 2,
            "each endpoint gets 1/3 ±2: {r:?}"
        );
    }

    let r = mesh.dial("10.96.0.4:80", 600);
    assert_eq!(r.connected, 600, "{r:?}");
    for (b, want) in [("e1", 100), ("e2", 200), ("e3", 300)] {
        assert!(
            r.backend(b).abs_diff(want) <= 2,
            "weights 1:2:3 over 600: {r:?}"
        );
    }

    let r = mesh.dial("10.96.0.5:80", 20);
    assert_eq!(
        r.backend("e3"),
        20,
        "the lowest priority with IPv4 endpoints serves: {r:?}"
    );
}

#[test]
fn destinations_without_a_listener_and_processes_outside_the_cgroup_are_untouched() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("vip", "10.96.0.6", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start("kn-untouched", &[], &["127.0.0.2:8080=svc"], &yaml, &[]);

    // No listener for that address, nor for that port of the VIP.
    for target in ["10.96.0.99:80", "10.96.0.6:81"] {
        let r = mesh.dial(target, 5);
        assert_eq!(r.connected, 0, "{target}: {r:?}");
        assert_eq!(
            r.error("ENETUNREACH"),
            5,
            "{target} must stay untouched: {r:?}"
        );
    }
    // A direct connection to a backend is not rewritten either.
    let r = mesh.dial("127.0.0.2:8080", 3);
    assert_eq!(r.backend("svc"), 3, "{r:?}");
    assert_eq!(r.peer_names.get("127.0.0.2:8080"), Some(&3), "{r:?}");

    // The same VIP from a process outside the managed cgroup.
    let outside = dial(&mesh.netns, None, "10.96.0.6:80", 5);
    assert_eq!(outside.error("ENETUNREACH"), 5, "{outside:?}");
    // ... while inside it works.
    assert_eq!(mesh.dial("10.96.0.6:80", 5).backend("svc"), 5);
}

#[test]
fn file_edits_apply_within_a_second_and_invalid_edits_keep_the_old_routing() {
    if !require_root() {
        return;
    }
    let v1 = config(&[
        listener("vip", "10.96.0.7", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start(
        "kn-edit",
        &[],
        &["127.0.0.2:8080=old", "127.0.0.3:8080=new"],
        &v1,
        &[],
    );
    assert_eq!(mesh.dial("10.96.0.7:80", 10).backend("old"), 10);

    // Move the endpoint.
    let v2 = config(&[
        listener("vip", "10.96.0.7", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.3", 8080, 0, 0)]),
    ]);
    mesh.rewrite(&v2);
    let took = mesh.dial_until("10.96.0.7:80", 5, Duration::from_secs(5), |r| {
        r.backend("new") == 5
    });
    assert!(
        took < Duration::from_secs(1),
        "new endpoints must take over within 1 s, took {took:?}"
    );

    // Not YAML at all: reported, old routing stays.
    mesh.rewrite("resources: [ this is : not valid");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(mesh.dial("10.96.0.7:80", 10).backend("new"), 10);
    let dump = mesh.daemon.config_dump();
    assert_eq!(dump["last_update"]["status"], "REFUSED", "{dump}");

    // A malformed resource (endpoint weight 0 is invalid in Envoy): that
    // cluster keeps its previous version, the good listener edit applies.
    let v3 = config(&[
        listener("vip", "10.96.0.7", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]).replace(
            "port_value: 8080 } } }",
            "port_value: 8080 } } }\n      load_balancing_weight: 0",
        ),
        listener("vip2", "10.96.0.8", 80, "svc"),
    ]);
    mesh.rewrite(&v3);
    mesh.dial_until("10.96.0.8:80", 3, Duration::from_secs(5), |r| {
        r.backend("new") == 3
    });
    assert_eq!(
        mesh.dial("10.96.0.7:80", 10).backend("new"),
        10,
        "the bad cluster must not apply"
    );
    // The maps are written before the dump is refreshed: wait for the dump.
    let dump = mesh.wait_dump_version(3);
    assert_eq!(dump["last_update"]["status"], "APPLIED", "{dump}");
    let rejected = dump["last_update"]["rejected"].to_string();
    assert!(
        rejected.contains("svc") && rejected.contains("weight"),
        "{dump}"
    );
    let logs = mesh.daemon.logs();
    assert!(
        logs.contains("invalid xDS file"),
        "the parse error is logged:\n{logs}"
    );
    assert!(
        logs.contains("resource rejected"),
        "the rejection is logged:\n{logs}"
    );
}

#[test]
fn a_config_over_capacity_is_rejected_whole() {
    if !require_root() {
        return;
    }
    let two = config(&[
        listener("vip", "10.96.0.9", 80, "a"),
        eds_cluster("a", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
        eds_cluster("b", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start(
        "kn-capacity",
        &[],
        &["127.0.0.2:8080=first", "127.0.0.3:8080=second"],
        &two,
        &["--max-clusters", "2"],
    );
    assert_eq!(mesh.dial("10.96.0.9:80", 5).backend("first"), 5);

    // Three clusters (and a moved endpoint): nothing of it may apply.
    let three = config(&[
        listener("vip", "10.96.0.9", 80, "a"),
        eds_cluster("a", "ROUND_ROBIN", &[("127.0.0.3", 8080, 0, 0)]),
        eds_cluster("b", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
        eds_cluster("c", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    mesh.rewrite(&three);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dump = mesh.daemon.config_dump();
        if dump["last_update"]["status"] == "REFUSED" {
            let error = dump["last_update"]["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("max-clusters"),
                "the error names the capacity: {dump}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "over-capacity config not refused: {dump}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        mesh.dial("10.96.0.9:80", 5).backend("first"),
        5,
        "the previous config still routes"
    );
}

#[test]
fn sigterm_keeps_steering_a_restarted_daemon_takes_over_and_uninstall_removes_everything() {
    if !require_root() {
        return;
    }
    let v1 = config(&[
        listener("vip", "10.96.0.10", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
        listener("doomed", "10.96.0.13", 80, "doomed"),
        eds_cluster("doomed", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mut mesh = Mesh::start(
        "kn-restart",
        &[],
        &["127.0.0.2:8080=old", "127.0.0.3:8080=new"],
        &v1,
        &[],
    );
    let first_ids = attached_prog_ids(mesh.cgroup.path());
    assert_eq!(
        first_ids.len(),
        5,
        "connect4/6, getpeername4/6, sockops: {first_ids:?}"
    );
    let pins = mesh.bpffs.path().join("kmesh");

    // SIGTERM: a clean exit that leaves the data plane in place.
    let status = mesh.daemon.stop().unwrap();
    assert!(
        status.success(),
        "exit status {status}\n{}",
        mesh.daemon.logs()
    );
    assert_eq!(attached_prog_ids(mesh.cgroup.path()), first_ids);
    assert_eq!(
        mesh.dial("10.96.0.10:80", 5).backend("old"),
        5,
        "steered with no daemon running"
    );

    // Changed while no daemon ran: an endpoint moved, a listener deleted.
    let v2 = config(&[
        listener("vip", "10.96.0.10", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.3", 8080, 0, 0)]),
    ]);
    mesh.rewrite(&v2);
    let mut second = Daemon::start(mesh.xds.path(), &mesh.bpffs, &mesh.cgroup);
    second.wait_ready(READY);
    assert!(
        second.logs().contains("Adopted"),
        "the pinned maps are adopted:\n{}",
        second.logs()
    );
    assert_eq!(mesh.dial("10.96.0.10:80", 5).backend("new"), 5);
    assert_eq!(
        mesh.dial("10.96.0.13:80", 3).error("ENETUNREACH"),
        3,
        "a listener deleted while the daemon was down is gone from the maps"
    );
    let second_ids = attached_prog_ids(mesh.cgroup.path());
    assert_eq!(
        second_ids.len(),
        5,
        "links switched, not added: {second_ids:?}"
    );
    assert!(
        second_ids.iter().all(|id| !first_ids.contains(id)),
        "the new programs run"
    );
    assert!(
        first_ids.iter().all(|id| !prog_exists(*id)),
        "the old programs are released"
    );

    // Even a daemon killed outright leaves steering in place...
    let pid = second.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    second.stop();
    assert_eq!(mesh.dial("10.96.0.10:80", 3).backend("new"), 3);

    // ... until `uninstall` removes it all.
    let out = second.uninstall();
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        attached_prog_ids(mesh.cgroup.path()).is_empty(),
        "links left after uninstall"
    );
    assert!(!pins.exists(), "pins left after uninstall");
    assert!(
        second_ids.iter().all(|id| !prog_exists(*id)),
        "programs left loaded after uninstall"
    );
    assert_eq!(
        mesh.dial("10.96.0.10:80", 3).error("ENETUNREACH"),
        3,
        "nothing steers any more"
    );
}

#[test]
fn a_restart_under_load_fails_no_connection() {
    if !require_root() {
        return;
    }
    let v1 = config(&[
        listener("vip", "10.96.0.14", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mut mesh = Mesh::start(
        "kn-load",
        &[],
        &["127.0.0.2:8080=a", "127.0.0.3:8080=b"],
        &v1,
        &[],
    );
    // A new connection every 10 ms for 5 s through the VIP...
    let (netns, cgroup) = (
        mesh.netns.name().to_string(),
        mesh.cgroup.path().to_path_buf(),
    );
    let load = std::thread::spawn(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_kmesh-traffic"))
            .args(["dial", "--netns", &netns, "--cgroup"])
            .arg(&cgroup)
            .args(["--count", "500", "--interval-ms", "10", "10.96.0.14:80"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    });
    // ... while the daemon is stopped, the config changed, and a new one started.
    std::thread::sleep(Duration::from_millis(500));
    mesh.daemon.stop();
    mesh.rewrite(&config(&[
        listener("vip", "10.96.0.14", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.3", 8080, 0, 0)]),
    ]));
    std::thread::sleep(Duration::from_millis(500));
    let mut next = Daemon::start(mesh.xds.path(), &mesh.bpffs, &mesh.cgroup);
    next.wait_ready(READY);
    let report = load.join().unwrap();
    assert_eq!(
        report["connected"], 500,
        "zero failed connections across the restart: {report}"
    );
    assert!(report["backends"]["a"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["backends"]["b"].as_u64().unwrap() > 0,
        "the change applied after the restart: {report}"
    );
    next.stop();
    let _ = next.uninstall();
}

/// The shape Istiod sends for a TCP service: listener filters, an mTLS
/// transport socket, stats filters wrapped in TypedStruct, LEAST_REQUEST,
/// circuit breakers. It must be accepted and routed; what does not change
/// the connect-time decision is listed as ignored by the resource it is in,
/// and what does (LEAST_REQUEST, the connection limit) is enforced.
#[test]
fn an_istio_shaped_config_is_accepted_routed_and_its_extras_listed_as_ignored() {
    if !require_root() {
        return;
    }
    let cluster = "outbound|3306||mysql.default.svc.cluster.local";
    let yaml = format!(
        r#"version_info: "2026-11-22T00:00:00Z/42"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: 10.96.0.11_3306
  address: {{ socket_address: {{ address: 10.96.0.11, port_value: 3306 }} }}
  bind_to_port: false
  traffic_direction: OUTBOUND
  listener_filters:
  - name: envoy.filters.listener.tls_inspector
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
  filter_chains:
  - filters:
    - name: istio.stats
      typed_config:
        "@type": type.googleapis.com/udpa.type.v1.TypedStruct
        type_url: type.googleapis.com/stats.PluginConfig
        value: {{ disable_host_header_fallback: true }}
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: "{cluster}"
        cluster: "{cluster}"
        idle_timeout: 3600s
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: "{cluster}"
  type: EDS
  eds_cluster_config:
    service_name: "{cluster}"
    eds_config: {{ ads: {{}}, resource_api_version: V3 }}
  connect_timeout: 10s
  lb_policy: LEAST_REQUEST
  circuit_breakers:
    thresholds:
    - {{ max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295 }}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      common_tls_context:
        alpn_protocols: [istio-peer-exchange, istio]
      sni: "{cluster}"
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: "{cluster}"
  endpoints:
  - locality: {{ region: r1, zone: z1 }}
    lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.2, port_value: 3306 }} }} }}
      health_status: HEALTHY
      load_balancing_weight: 1
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.3, port_value: 3306 }} }} }}
      health_status: UNHEALTHY
      load_balancing_weight: 1
    load_balancing_weight: 2
"#
    );
    let mesh = Mesh::start(
        "kn-istio",
        &[],
        &["127.0.0.2:3306=healthy", "127.0.0.3:3306=unhealthy"],
        &yaml,
        &[],
    );
    let r = mesh.dial("10.96.0.11:3306", 20);
    assert_eq!(
        r.backend("healthy"),
        20,
        "unhealthy endpoints are not used: {r:?}"
    );

    let dump = mesh.daemon.config_dump();
    assert_eq!(dump["last_update"]["status"], "APPLIED", "{dump}");
    assert_eq!(
        dump["last_update"]["rejected"],
        serde_json::json!([]),
        "nothing rejected: {dump}"
    );
    // Each resource lists what it does not act on in its own `ignored`;
    // what the kernel does honour is compiled, and not in that list.
    let ignored = |resource: &serde_json::Value| -> Vec<(String, String)> {
        resource["ignored"]
            .as_array()
            .unwrap_or_else(|| panic!("no ignored list: {resource}"))
            .iter()
            .map(|i| {
                (
                    i["field"].as_str().unwrap().to_string(),
                    i["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let listeners = dump["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{dump}");
    let listener = &listeners[0];
    assert_eq!(listener["address"], "10.96.0.11:3306", "{dump}");
    let listener_ignored = ignored(listener);
    for (field, filter) in [
        (
            "listener_filters[0]",
            "envoy.filters.listener.tls_inspector",
        ),
        ("filters[0]", "istio.stats"),
    ] {
        assert!(
            listener_ignored
                .iter()
                .any(|(f, reason)| f.ends_with(field) && reason.starts_with(filter)),
            "the listener should list {field} ({filter}) as ignored: {listener_ignored:?}"
        );
    }
    let compiled = &dump["clusters"][cluster];
    let cluster_ignored: Vec<String> = ignored(compiled).into_iter().map(|(f, _)| f).collect();
    for field in [
        "transport_socket",
        "circuit_breakers.thresholds[0].max_pending_requests",
        "circuit_breakers.thresholds[0].max_requests",
        "circuit_breakers.thresholds[0].max_retries",
    ] {
        assert!(
            cluster_ignored.iter().any(|f| f == field),
            "the cluster should list {field} as ignored: {cluster_ignored:?}"
        );
    }
    // LEAST_REQUEST (Envoy's default choice count) is enforced by the
    // kernel; Istio's max_connections of 4294967295 is no limit, so no
    // breaker is compiled and it is listed as ignored with that reason.
    assert_eq!(
        compiled["lb_policy"],
        serde_json::json!({ "LEAST_REQUEST": { "choice_count": 2 } }),
        "{compiled}"
    );
    assert!(compiled["circuit_breakers"].is_null(), "{compiled}");
    assert!(
        ignored(compiled).iter().any(|(f, reason)| f
            == "circuit_breakers.thresholds[0].max_connections"
            && reason.contains("no limit")),
        "max_connections 2^32-1 should be listed as no limit: {compiled}"
    );
    assert!(
        !cluster_ignored.iter().any(|f| f.starts_with("lb_policy")),
        "lb_policy is enforced, not ignored: {cluster_ignored:?}"
    );
}

#[test]
fn kmeshctl_shows_version_and_both_dumps() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("vip", "10.96.0.12", 80, "svc"),
        eds_cluster("svc", "RANDOM", &[("127.0.0.2", 8080, 7, 0)]),
    ]);
    let mesh = Mesh::start("kn-ctl", &[], &["127.0.0.2:8080=svc"], &yaml, &[]);
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kmeshctl"))
            .args(["--admin-address", &mesh.daemon.admin_addr().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kmeshctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let version = ctl(&["version"]);
    assert!(
        version.contains("kmeshctl 0.") && version.contains("\"version\""),
        "{version}"
    );

    let compiled: serde_json::Value =
        serde_json::from_str(&ctl(&["dump", "kernel-native"])).unwrap();
    assert_eq!(
        compiled["listeners"][0]["address"], "10.96.0.12:80",
        "{compiled}"
    );
    assert_eq!(
        compiled["clusters"]["svc"]["lb_policy"], "RANDOM",
        "{compiled}"
    );

    let bpf: serde_json::Value =
        serde_json::from_str(&ctl(&["dump", "kernel-native", "--bpf"])).unwrap();
    let records = bpf["clusters"][0]["records"].to_string();
    assert!(
        records.contains("127.0.0.2") && records.contains("\"cumulative_weight\":7"),
        "{bpf}"
    );

    // A daemon that is not there: a clear error, non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_kmeshctl"))
        .args([
            "--admin-address",
            &format!("127.0.0.1:{}", free_port()),
            "dump",
            "kernel-native",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is kmesh-daemon running"));
}

#[test]
fn metrics_count_what_happened_and_pass_promtool() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("vip", "10.96.0.15", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
        listener("vip2", "10.96.0.16", 80, "svc"),
    ]);
    let mesh = Mesh::start("kn-metrics", &[], &["127.0.0.2:8080=svc"], &yaml, &[]);
    assert_eq!(mesh.dial("10.96.0.15:80", 7).backend("svc"), 7);
    assert_eq!(mesh.dial("10.96.0.99:80", 2).error("ENETUNREACH"), 2);

    let (status, text) = http_get(mesh.daemon.metrics_addr(), "/status/metric");
    assert_eq!(status, 200, "{text}");
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
    };
    assert_eq!(value("kmesh_config_applied_total"), 1.0);
    assert_eq!(value("kmesh_map_entries{map=\"kn_listeners\"}"), 2.0);
    assert_eq!(value("kmesh_map_entries{map=\"kn_clusters\"}"), 1.0);
    assert_eq!(value("kmesh_map_capacity{map=\"kn_clusters\"}"), 65536.0);
    assert_eq!(
        value("kmesh_bpf_connect_events_total{event=\"redirected\"}"),
        7.0
    );
    assert_eq!(
        value("kmesh_bpf_connect_events_total{event=\"no_listener\"}"),
        2.0
    );

    // The exposition format is valid for Prometheus itself.
    promtool_check(&text);
}

#[test]
fn kmeshctl_changes_the_log_level_at_run_time() {
    if !require_root() {
        return;
    }
    let yaml = config(&[
        listener("vip", "10.96.0.17", 80, "svc"),
        eds_cluster("svc", "ROUND_ROBIN", &[("127.0.0.2", 8080, 0, 0)]),
    ]);
    let mesh = Mesh::start("kn-log", &[], &["127.0.0.2:8080=svc"], &yaml, &[]);
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kmeshctl"))
            .args(["--admin-address", &mesh.daemon.admin_addr().to_string()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctl(&["log"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "default: debug"
    );

    let out = ctl(&["log", "--set", "default:warn"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ctl(&["log"]).stdout).trim(),
        "default: warn"
    );
    // At warn, an applied configuration (INFO) is no longer logged.
    let before = mesh.daemon.logs().matches("configuration applied").count();
    mesh.rewrite(&yaml.replace("10.96.0.17", "10.96.0.18"));
    mesh.wait_dump_version(2);
    assert_eq!(
        mesh.daemon.logs().matches("configuration applied").count(),
        before
    );

    let out = ctl(&["log", "--set", "default:loud"]);
    assert!(!out.status.success(), "a bad level is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid log level"));
}
