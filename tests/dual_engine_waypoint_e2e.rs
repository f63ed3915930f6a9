//! Dual-engine waypoints end to end: the real daemon (`--xds-file`), the
//! real eBPF programs (connect, sockops, sk_msg) on a per-test cgroup, and
//! everything else inside a per-test netns with only `lo` up.
//!
//! * a stand-in waypoint (`kmesh-traffic serve --proxy-protocol --echo`)
//!   checks the wire: every connection to a service or workload with a
//!   waypoint reaches it with one PROXY v2 header carrying the dialled
//!   address, and the client's bytes after it unchanged;
//! * a real Envoy running `examples/waypoint-envoy.yaml`, inside the managed
//!   cgroup, routes HTTP by header and TCP to the dialled address, and its
//!   own upstream connects are not sent back to it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::envoy::{require_envoy, Envoy};
use common::workload_yaml::{file, Svc, Wl};
use common::*;

const READY: Duration = Duration::from_secs(20);
const WAYPOINT_SVC: &str = "default/waypoint.default.svc.cluster.local";

/// One test's world. Field order = drop order: Envoy and the daemon first,
/// then the backends, then cgroup, netns and pins.
struct World {
    envoy: Option<Envoy>,
    daemon: Daemon,
    _backends: Vec<Backends>,
    cgroup: Cgroup,
    netns: NetNs,
    _bpffs: BpfFsDir,
    _xds: tempfile::NamedTempFile,
}

impl World {
    /// `backends`: (listeners, extra `serve` flags) per backend process.
    fn start(prefix: &str, addrs: &[&str], backends: &[(&[&str], &[&str])], yaml: &str) -> World {
        let netns = NetNs::new(prefix);
        for a in addrs {
            netns.add_addr(a);
        }
        let backends = backends
            .iter()
            .map(|(listeners, extra)| Backends::start_with(Some(&netns), listeners, extra))
            .collect();
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let xds = temp_file(".yaml", yaml);
        let mut daemon = Daemon::start_dual_engine(xds.path(), &bpffs, &cgroup, &[]);
        daemon.wait_ready(READY);
        World {
            envoy: None,
            daemon,
            _backends: backends,
            cgroup,
            netns,
            _bpffs: bpffs,
            _xds: xds,
        }
    }

    fn dial(&self, target: &str, count: u32, extra: &[&str]) -> DialReport {
        dial_with(Some(&self.netns), Some(&self.cgroup), target, count, extra)
    }

    fn counter(&self, name: &str) -> u64 {
        let counters = self.daemon.dual_engine_bpf_dump()["counters"].clone();
        counters[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {counters}"))
    }

    /// The waypoint Envoy's access log lines (`WAYPOINT ...`).
    fn waypoint_log(&self) -> Vec<String> {
        let envoy = self.envoy.as_ref().expect("an Envoy waypoint");
        envoy
            .logs()
            .lines()
            .filter(|l| l.starts_with("WAYPOINT "))
            .map(str::to_string)
            .collect()
    }

    /// Waits (Envoy flushes its access log about once a second) until the
    /// waypoint log has `want` lines; returns them.
    fn waypoint_log_settled(&self, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.waypoint_log();
            if lines.len() >= want || Instant::now() > deadline {
                // A little longer: a loop would keep adding lines.
                std::thread::sleep(Duration::from_millis(1500));
                return self.waypoint_log();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn assert_only(report: &DialReport, name: &str, count: u64) {
    assert_eq!(report.total_errors(), 0, "{report:?}");
    assert_eq!(report.backend(name), count, "{report:?}");
    assert_eq!(
        report.total_answered(),
        count,
        "someone else answered: {report:?}"
    );
}

fn count_matching(lines: &[String], needles: &[&str]) -> usize {
    lines
        .iter()
        .filter(|l| {
            needles
                .iter()
                .all(|n| l.split_whitespace().any(|w| w == *n))
        })
        .count()
}

// ---------------------------------------------------------------------------
// The wire, with a stand-in waypoint
// ---------------------------------------------------------------------------

#[test]
fn a_waypoint_gets_each_connection_with_one_proxy_v2_header_naming_the_dialled_address() {
    if !require_root() {
        return;
    }
    // The waypoint is a service (VIPs) with one pod: it is load-balanced.
    let waypoint = Svc::new(
        WAYPOINT_SVC,
        &["10.96.0.100", "fd00:96::100"],
        &[(15021, 15021)],
    );
    let waypoint_pod = Wl::new(
        "c1/pod/waypoint",
        &["10.0.2.1", "fd00::2:1"],
        &[WAYPOINT_SVC],
    );
    let web = Svc::new("default/web", &["10.96.0.20"], &[(80, 8080)]).waypoint("10.96.0.100");
    let web6 = Svc::new("default/web6", &["fd00:96::20"], &[(80, 8080)]).waypoint("fd00:96::100");
    let plain = Svc::new("default/plain", &["10.96.0.40"], &[(80, 8080)]);
    let yaml = file(&[
        waypoint.yaml(),
        waypoint_pod.yaml(),
        web.yaml(),
        web6.yaml(),
        plain.yaml(),
        Wl::new(
            "c1/pod/web-1",
            &["10.0.1.1", "fd00::1:1"],
            &["default/web", "default/web6"],
        )
        .yaml(),
        Wl::new("c1/pod/plain-1", &["10.0.1.4"], &["default/plain"]).yaml(),
        // A pod with its own waypoint, dialled by its address: the waypoint
        // pod's address itself (not a service).
        Wl::new("c1/pod/db", &["10.0.1.5"], &[])
            .waypoint("10.0.2.1")
            .yaml(),
    ]);
    let world = World::start(
        "wp-wire",
        &[
            "10.0.1.1/32",
            "10.0.1.4/32",
            "10.0.1.5/32",
            "10.0.2.1/32",
            "fd00::1:1/128",
            "fd00::2:1/128",
        ],
        &[
            (
                &["10.0.2.1:15019=waypoint", "[fd00::2:1]:15019=waypoint6"],
                &["--proxy-protocol", "--echo"],
            ),
            (
                &[
                    "10.0.1.1:8080=web1",
                    "[fd00::1:1]:8080=web1v6",
                    "10.0.1.4:8080=plain",
                    "10.0.1.5:5432=db",
                ],
                &[],
            ),
        ],
        &yaml,
    );
    // The echo has only the client's bytes: the header came once, in front.
    let echo = ["--send-bytes", "3000", "--expect-echo"];

    let v4 = world.dial("10.96.0.20:80", 50, &echo);
    assert_only(&v4, "waypoint", 50);
    assert_eq!(v4.echoed, 50, "{v4:?}");
    assert_eq!(v4.proxy_dsts.get("10.96.0.20:80"), Some(&50), "{v4:?}");
    assert_eq!(
        v4.peer_names.get("10.96.0.20:80"),
        Some(&50),
        "getpeername shows the VIP: {v4:?}"
    );

    let v6 = world.dial("[fd00:96::20]:80", 30, &echo);
    assert_only(&v6, "waypoint6", 30);
    assert_eq!(v6.echoed, 30, "{v6:?}");
    assert_eq!(v6.proxy_dsts.get("[fd00:96::20]:80"), Some(&30), "{v6:?}");

    // An AF_INET6 socket dialling the v4-mapped VIP: an IPv4 header.
    let mapped = world.dial("[::ffff:10.96.0.20]:80", 10, &echo);
    assert_only(&mapped, "waypoint", 10);
    assert_eq!(
        mapped.proxy_dsts.get("10.96.0.20:80"),
        Some(&10),
        "{mapped:?}"
    );

    // A workload's waypoint takes every port of the workload.
    let db = world.dial("10.0.1.5:5432", 10, &echo);
    assert_only(&db, "waypoint", 10);
    assert_eq!(db.proxy_dsts.get("10.0.1.5:5432"), Some(&10), "{db:?}");

    // No waypoint: straight to the endpoint, no header.
    let direct = world.dial("10.96.0.40:80", 20, &["--send-bytes", "10"]);
    assert_only(&direct, "plain", 20);
    assert!(direct.proxy_dsts.is_empty(), "{direct:?}");

    // A socket with the waypoint mark (a waypoint's own connect) is
    // load-balanced to the service's endpoint, not sent to the waypoint.
    let own = world.dial("10.96.0.20:80", 20, &["--mark", "1337"]);
    assert_only(&own, "web1", 20);
    let own6 = world.dial("[fd00:96::20]:80", 10, &["--mark", "0x539"]);
    assert_only(&own6, "web1v6", 10);

    assert_eq!(world.counter("waypoint"), 100);
    assert_eq!(world.counter("proxy_sent"), 100);
    assert_eq!(world.counter("proxy_failed"), 0);
    assert_eq!(world.counter("waypoint_skipped"), 30);
}

// ---------------------------------------------------------------------------
// A real Envoy as the waypoint, inside the managed cgroup
// ---------------------------------------------------------------------------

/// The world of `examples/waypoint-envoy.yaml` and docs/waypoint-l7.md:
///
/// | service | VIPs | port | waypoint | endpoints |
/// |---|---|---|---|---|
/// | waypoint | 10.96.0.100, fd00:96::100 | (15019 on its pod) | - | Envoy at 10.0.2.1 / fd00::2:1 |
/// | reviews | 10.96.0.20 | 9080 | 10.96.0.100 | v1 (HTTP) |
/// | reviews6 | fd00:96::20 | 9080 | fd00:96::100 | v1 (HTTP) |
/// | reviews-v2 | 10.96.0.21 | 9080 | - | v2 (HTTP) |
/// | tcp-echo | 10.96.0.30, tcp-echo6 fd00:96::30 | 9000 | the waypoint | echo |
/// | plain | 10.96.0.40 | 80 | - | plain |
fn envoy_world(prefix: &str) -> Option<World> {
    if !require_root() {
        return None;
    }
    require_envoy()?;
    let services = [
        Svc::new(
            WAYPOINT_SVC,
            &["10.96.0.100", "fd00:96::100"],
            &[(15021, 15021)],
        ),
        Svc::new("default/reviews", &["10.96.0.20"], &[(9080, 9080)]).waypoint("10.96.0.100"),
        Svc::new("default/reviews6", &["fd00:96::20"], &[(9080, 9080)]).waypoint("fd00:96::100"),
        Svc::new("default/reviews-v2", &["10.96.0.21"], &[(9080, 9080)]),
        Svc::new("default/tcp-echo", &["10.96.0.30"], &[(9000, 9000)]).waypoint("10.96.0.100"),
        Svc::new("default/tcp-echo6", &["fd00:96::30"], &[(9000, 9000)]).waypoint("fd00:96::100"),
        Svc::new("default/plain", &["10.96.0.40"], &[(80, 8080)]),
    ];
    let workloads = [
        Wl::new(
            "c1/pod/waypoint",
            &["10.0.2.1", "fd00::2:1"],
            &[WAYPOINT_SVC],
        ),
        Wl::new(
            "c1/pod/reviews-v1",
            &["10.0.1.1", "fd00::1:1"],
            &["default/reviews", "default/reviews6"],
        ),
        Wl::new("c1/pod/reviews-v2", &["10.0.1.2"], &["default/reviews-v2"]),
        Wl::new(
            "c1/pod/echo",
            &["10.0.1.3", "fd00::1:3"],
            &["default/tcp-echo", "default/tcp-echo6"],
        ),
        Wl::new("c1/pod/plain", &["10.0.1.4"], &["default/plain"]),
    ];
    let items: Vec<String> = services
        .iter()
        .map(Svc::yaml)
        .chain(workloads.iter().map(Wl::yaml))
        .collect();
    let mut world = World::start(
        prefix,
        &[
            "10.0.1.1/32",
            "10.0.1.2/32",
            "10.0.1.3/32",
            "10.0.1.4/32",
            "10.0.2.1/32",
            "fd00::1:1/128",
            "fd00::1:3/128",
            "fd00::2:1/128",
        ],
        &[
            (
                &[
                    "10.0.1.1:9080=v1",
                    "[fd00::1:1]:9080=v1",
                    "10.0.1.2:9080=v2",
                ],
                &["--http"],
            ),
            (
                &["10.0.1.3:9000=echo", "[fd00::1:3]:9000=echo"],
                &["--echo"],
            ),
            (&["10.0.1.4:8080=plain"], &[]),
        ],
        &file(&items),
    );
    let bootstrap = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/waypoint-envoy.yaml"),
    )
    .unwrap();
    // Inside the managed cgroup: its upstream connects go through kmesh.
    world.envoy = Some(Envoy::start_static_in(
        &bootstrap,
        &world.netns,
        Some(&world.cgroup),
    ));
    Some(world)
}

/// HTTP by header, TCP to the dialled address, the plain service untouched,
/// no loop: the same checks for `reviews` (`reviews_vip`) and `tcp-echo`.
fn envoy_waypoint_checks(world: &World, reviews_vip: &str, echo_vip: &str) {
    let reviews = format!("{reviews_vip}:9080");
    let echo = format!("{echo_vip}:9000");

    let everyone = world.dial(&reviews, 20, &["--http"]);
    assert_only(&everyone, "v1", 20);
    let testers = world.dial(&reviews, 20, &["--http", "--header", "user: tester"]);
    assert_only(&testers, "v2", 20);

    let tcp = world.dial(&echo, 10, &["--send-bytes", "65536", "--expect-echo"]);
    assert_only(&tcp, "echo", 10);
    assert_eq!(tcp.echoed, 10, "bytes arrive and return unchanged: {tcp:?}");

    let plain = world.dial("10.96.0.40:80", 10, &[]);
    assert_only(&plain, "plain", 10);

    // Every connection to reviews and tcp-echo passed the waypoint, which
    // saw the dialled address; nothing else did (a loop would add lines).
    let log = world.waypoint_log_settled(50);
    let dst = |d: &str| format!("dst={d}");
    assert_eq!(
        count_matching(&log, &["http", &dst(&reviews), "status=200"]),
        40,
        "{log:#?}"
    );
    assert_eq!(
        count_matching(&log, &["http", &dst(&reviews), "user=tester"]),
        20,
        "{log:#?}"
    );
    assert_eq!(
        count_matching(&log, &["tcp", &dst(&echo), "bytes=65536"]),
        10,
        "{log:#?}"
    );
    assert_eq!(log.len(), 50, "only these, once each: {log:#?}");

    // Envoy's own connects (to reviews and tcp-echo, which have this very
    // waypoint) were load-balanced, not sent back: 20 + 10 at least (the
    // HTTP pool may reuse upstream connections, the TCP proxy does not).
    let skipped = world.counter("waypoint_skipped");
    assert!(skipped >= 10, "waypoint_skipped {skipped}");
    assert_eq!(world.counter("waypoint"), 50);
    assert_eq!(world.counter("proxy_sent"), 50);
    assert_eq!(world.counter("proxy_failed"), 0);
}

#[test]
fn an_envoy_waypoint_routes_http_by_header_and_tcp_to_the_dialled_address_over_ipv4() {
    let Some(world) = envoy_world("wp-envoy4") else {
        return;
    };
    envoy_waypoint_checks(&world, "10.96.0.20", "10.96.0.30");
}

#[test]
fn an_envoy_waypoint_routes_http_by_header_and_tcp_to_the_dialled_address_over_ipv6() {
    let Some(world) = envoy_world("wp-envoy6") else {
        return;
    };
    envoy_waypoint_checks(&world, "[fd00:96::20]", "[fd00:96::30]");
}

// ---------------------------------------------------------------------------
// Blocking clients: a read waits for data, never fails with EAGAIN
// ---------------------------------------------------------------------------

/// A socket in a BPF socket map reads through the kernel's sockmap receive
/// path (`tcp_bpf_recvmsg`), whose blocking wait returns EAGAIN when the
/// socket is woken without data (docs/waypoint-l7.md, "Blocking reads").
/// kmesh takes a waypoint-bound socket out of `de_proxy_socks` while its
/// first send is being transmitted, so a client that sends and then reads
/// (blocking), or that is already blocked in a read when it sends, never
/// gets one. `dial` reports such a read as the error `spurious-eagain`.
#[test]
fn blocking_reads_through_a_waypoint_never_fail_with_a_spurious_eagain() {
    if !require_root() {
        return;
    }
    let waypoint = Svc::new(WAYPOINT_SVC, &["10.96.0.100"], &[(15021, 15021)]);
    let waypoint_pod = Wl::new("c1/pod/waypoint", &["10.0.2.1"], &[WAYPOINT_SVC]);
    let web = Svc::new("default/web", &["10.96.0.20"], &[(80, 8080)]).waypoint("10.96.0.100");
    let yaml = file(&[
        waypoint.yaml(),
        waypoint_pod.yaml(),
        web.yaml(),
        Wl::new("c1/pod/web-1", &["10.0.1.1"], &["default/web"]).yaml(),
    ]);
    let world = World::start(
        "wp-eagain",
        &["10.0.1.1/32", "10.0.2.1/32"],
        &[
            (
                &["10.0.2.1:15019=waypoint"],
                &["--proxy-protocol", "--echo"],
            ),
            (&["10.0.1.1:8080=web1"], &[]),
        ],
        &yaml,
    );
    let mut total = 0;
    for (what, args) in [
        // Request/response: send, then a blocking read.
        (
            "send then read, small",
            &["--send-bytes", "100", "--expect-echo"][..],
        ),
        // Larger than the socket buffers: the send waits for room (which
        // makes every later ACK wake the socket's waiters).
        (
            "send then read, 1 MiB",
            &["--send-bytes", "1048576", "--expect-echo"][..],
        ),
        // Already blocked in read() when another thread sends.
        (
            "read while sending, small",
            &["--send-bytes", "100", "--expect-echo", "--read-while-send"][..],
        ),
        (
            "read while sending, 256 KiB",
            &[
                "--send-bytes",
                "262144",
                "--expect-echo",
                "--read-while-send",
            ][..],
        ),
    ] {
        let report = world.dial("10.96.0.20:80", 200, args);
        eprintln!("{what}: {report:?}");
        assert_eq!(report.spurious_eagain, 0, "{what}: {report:?}");
        assert_only(&report, "waypoint", 200);
        assert_eq!(report.echoed, 200, "{what}: {report:?}");
        assert_eq!(
            report.proxy_dsts.get("10.96.0.20:80"),
            Some(&200),
            "{what}: {report:?}"
        );
        total += 200;
    }
    assert_eq!(world.counter("proxy_sent"), total);
    assert_eq!(world.counter("proxy_failed"), 0);
}

// ---------------------------------------------------------------------------
// Gateways: an ingress Envoy in the mesh, an egress Envoy as a waypoint
// ---------------------------------------------------------------------------

/// An Envoy bootstrap from `examples/`.
fn example(name: &str) -> String {
    fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("examples/{name}: {e}"))
}

impl World {
    /// Starts Envoy with `bootstrap` in the netns and the managed cgroup,
    /// and waits until it is initialised (its listeners bound).
    fn start_envoy(&mut self, bootstrap: &str) {
        let envoy = Envoy::start_static_in(bootstrap, &self.netns, Some(&self.cgroup));
        let deadline = Instant::now() + READY;
        while envoy.get("/ready").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "Envoy not ready: {}",
                envoy.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.envoy = Some(envoy);
    }

    /// Envoy's access-log lines that start with `prefix`.
    fn envoy_log(&self, prefix: &str, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let envoy = self.envoy.as_ref().expect("an Envoy");
            let lines: Vec<String> = envoy
                .logs()
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_string)
                .collect();
            if lines.len() >= want || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `examples/ingress-envoy.yaml`: a client outside the mesh (in the netns,
/// not in the managed cgroup) talks to the gateway; the gateway, inside the
/// managed cgroup, sends each request to a service VIP and the kernel picks
/// the workload. A service with a waypoint is reached through the waypoint.
#[test]
fn an_ingress_gateway_in_the_mesh_balances_over_workloads_and_uses_waypoints() {
    if !require_root() {
        return;
    }
    if require_envoy().is_none() {
        return;
    }
    let yaml = file(&[
        Svc::new(WAYPOINT_SVC, &["10.96.0.100"], &[(15021, 15021)]).yaml(),
        Wl::new("c1/pod/waypoint", &["10.0.2.1"], &[WAYPOINT_SVC]).yaml(),
        Svc::new("default/productpage", &["10.96.0.50"], &[(9080, 9080)]).yaml(),
        Wl::new(
            "c1/pod/productpage-1",
            &["10.0.1.11"],
            &["default/productpage"],
        )
        .yaml(),
        Wl::new(
            "c1/pod/productpage-2",
            &["10.0.1.12"],
            &["default/productpage"],
        )
        .yaml(),
        Wl::new(
            "c1/pod/productpage-3",
            &["10.0.1.13"],
            &["default/productpage"],
        )
        .yaml(),
        Svc::new("default/reviews", &["10.96.0.20"], &[(9080, 9080)])
            .waypoint("10.96.0.100")
            .yaml(),
        Wl::new("c1/pod/reviews-v1", &["10.0.1.1"], &["default/reviews"]).yaml(),
    ]);
    let mut world = World::start(
        "wp-ingress",
        &[
            "10.0.1.1/32",
            "10.0.1.11/32",
            "10.0.1.12/32",
            "10.0.1.13/32",
            "10.0.2.1/32",
            "10.0.3.1/32",
        ],
        &[
            (
                &[
                    "10.0.1.11:9080=productpage-1",
                    "10.0.1.12:9080=productpage-2",
                    "10.0.1.13:9080=productpage-3",
                    "10.0.1.1:9080=reviews-v1",
                ],
                &["--http"],
            ),
            // A stand-in waypoint: answers the HTTP request itself, with
            // the destination its PROXY header named.
            (
                &["10.0.2.1:15019=waypoint"],
                &["--proxy-protocol", "--http"],
            ),
        ],
        &yaml,
    );
    world.start_envoy(&example("ingress-envoy.yaml"));
    let outside = |count: u32, extra: &[&str]| {
        dial_with(Some(&world.netns), None, "10.0.3.1:18080", count, extra)
    };

    // Every request answered by a productpage workload, spread over them.
    let pages = outside(60, &["--http"]);
    eprintln!("ingress /: {pages:?}");
    assert_eq!(pages.total_errors(), 0, "{pages:?}");
    let names = ["productpage-1", "productpage-2", "productpage-3"];
    let answered: u64 = names.iter().map(|n| pages.backend(n)).sum();
    assert_eq!(answered, 60, "someone else answered: {pages:?}");
    assert_eq!(pages.total_answered(), 60, "{pages:?}");
    let used = names.iter().filter(|n| pages.backend(n) > 0).count();
    assert!(used >= 2, "not balanced: {pages:?}");

    // reviews has a waypoint: the gateway's connects go there, with the VIP.
    let reviews = outside(20, &["--http", "--path", "/reviews"]);
    eprintln!("ingress /reviews: {reviews:?}");
    assert_only(&reviews, "waypoint", 20);
    assert_eq!(
        reviews.proxy_dsts.get("10.96.0.20:9080"),
        Some(&20),
        "{reviews:?}"
    );

    // Envoy only ever saw the VIPs; the kernel did the rest.
    let log = world.envoy_log("INGRESS ", 80);
    eprintln!(
        "gateway log (first and last): {:?} {:?}",
        log.first(),
        log.last()
    );
    assert_eq!(
        count_matching(
            &log,
            &[
                "cluster=productpage",
                "upstream=10.96.0.50:9080",
                "status=200"
            ]
        ),
        60,
        "{log:#?}"
    );
    assert_eq!(
        count_matching(
            &log,
            &["cluster=reviews", "upstream=10.96.0.20:9080", "status=200"]
        ),
        20,
        "{log:#?}"
    );
    assert_eq!(world.counter("waypoint"), 20);
    assert_eq!(world.counter("proxy_sent"), 20);
    assert_eq!(world.counter("waypoint_skipped"), 0);
}

/// `examples/egress-envoy.yaml`: a ServiceEntry (VIP 240.240.0.9:443, no
/// endpoints, its waypoint the egress gateway's address) takes mesh clients
/// to the gateway with a PROXY v2 header naming the VIP; the gateway sends
/// them on to the external address (10.0.9.9:443 in the test's netns).
#[test]
fn an_egress_gateway_takes_service_entry_traffic_to_the_external_address() {
    if !require_root() {
        return;
    }
    if require_envoy().is_none() {
        return;
    }
    let yaml = file(&[
        Svc::new(
            "default/api.external.example",
            &["240.240.0.9"],
            &[(443, 443)],
        )
        .waypoint("10.0.4.1")
        .yaml(),
        // A mesh service without waypoint, for contrast.
        Svc::new("default/plain", &["10.96.0.40"], &[(80, 8080)]).yaml(),
        Wl::new("c1/pod/plain", &["10.0.1.4"], &["default/plain"]).yaml(),
    ]);
    let mut world = World::start(
        "wp-egress",
        &["10.0.1.4/32", "10.0.4.1/32", "10.0.9.9/32"],
        &[
            (&["10.0.9.9:443=external"], &["--echo"]),
            (&["10.0.1.4:8080=plain"], &[]),
        ],
        &yaml,
    );
    world.start_envoy(&example("egress-envoy.yaml"));

    // Through the gateway to the external address, bytes unchanged (the
    // PROXY header ended at the gateway).
    let out = world.dial(
        "240.240.0.9:443",
        20,
        &["--send-bytes", "4096", "--expect-echo"],
    );
    eprintln!("egress: {out:?}");
    assert_only(&out, "external", 20);
    assert_eq!(out.echoed, 20, "{out:?}");
    assert_eq!(out.peer_names.get("240.240.0.9:443"), Some(&20), "{out:?}");

    // The gateway saw the ServiceEntry VIP as the destination (from the
    // PROXY v2 header) and connected to the external address.
    let log = world.envoy_log("EGRESS ", 20);
    eprintln!("egress log (first): {:?}", log.first());
    assert_eq!(
        count_matching(
            &log,
            &["dst=240.240.0.9:443", "upstream=10.0.9.9:443", "bytes=4096"]
        ),
        20,
        "{log:#?}"
    );
    assert_eq!(log.len(), 20, "{log:#?}");

    // Other mesh traffic does not pass the gateway.
    let plain = world.dial("10.96.0.40:80", 10, &[]);
    assert_only(&plain, "plain", 10);
    assert_eq!(world.counter("waypoint"), 20);
    assert_eq!(world.counter("proxy_sent"), 20);
    assert_eq!(world.counter("proxy_failed"), 0);
}
