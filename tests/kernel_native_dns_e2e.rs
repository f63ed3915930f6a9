//! STRICT_DNS and LOGICAL_DNS clusters end to end: the daemon resolves the
//! hostnames against a real dnsmasq on loopback (`--dns-server`), and real
//! connections follow its answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::dnsmasq::{dnsmasq_or_skip, Dnsmasq, REFUSING_DOMAIN};
use common::yaml::*;
use common::*;

const READY: Duration = Duration::from_secs(20);

fn dns_cluster(name: &str, kind: &str, host: &str, family: &str, refresh: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: "{name}"
  type: {kind}
  lb_policy: ROUND_ROBIN
  dns_lookup_family: {family}
  dns_refresh_rate: {refresh}
  respect_dns_ttl: true
  load_assignment:
    cluster_name: "{name}"
    endpoints:
    - lb_endpoints:
      - endpoint: {{ address: {{ socket_address: {{ address: "{host}", port_value: 8080 }} }} }}"#
    )
}

struct DnsMesh {
    daemon: Daemon,
    _backends: Backends,
    cgroup: Cgroup,
    netns: NetNs,
    _bpffs: BpfFsDir,
    _xds: tempfile::NamedTempFile,
}

impl DnsMesh {
    fn start(prefix: &str, dns: &Dnsmasq, v6: &[&str], backends: &[&str], yaml: &str) -> DnsMesh {
        let netns = NetNs::new(prefix);
        for a in v6 {
            netns.add_addr(a);
        }
        let backends = Backends::start(Some(&netns), backends);
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let xds = temp_file(".yaml", yaml);
        let mut daemon = Daemon::start_with_args(
            xds.path(),
            &bpffs,
            &cgroup,
            &["--dns-server", &dns.addr.to_string()],
        );
        daemon.wait_ready(READY);
        DnsMesh {
            daemon,
            _backends: backends,
            cgroup,
            netns,
            _bpffs: bpffs,
            _xds: xds,
        }
    }

    fn dial(&self, target: &str, count: u32) -> DialReport {
        dial(&self.netns, Some(&self.cgroup), target, count)
    }

    fn dial_until(
        &self,
        target: &str,
        within: Duration,
        pred: impl Fn(&DialReport) -> bool,
    ) -> Duration {
        dial_until(&self.netns, &self.cgroup, target, 4, within, pred, || {
            self.daemon.logs()
        })
    }
}

#[test]
fn strict_dns_spreads_over_every_address_and_logical_dns_uses_one() {
    if !require_root() {
        return;
    }
    let Some(bin) = dnsmasq_or_skip() else {
        return;
    };
    let dns = Dnsmasq::start(&bin, 30, "127.0.0.2 db.test\n127.0.0.3 db.test\n");
    let yaml = config(&[
        listener("strict", "10.96.2.1", 80, "strict"),
        dns_cluster("strict", "STRICT_DNS", "db.test", "V4_ONLY", "5s"),
        listener("logical", "10.96.2.2", 80, "logical"),
        dns_cluster("logical", "LOGICAL_DNS", "db.test", "V4_ONLY", "5s"),
    ]);
    let mesh = DnsMesh::start(
        "dns-spread",
        &dns,
        &[],
        &["127.0.0.2:8080=a", "127.0.0.3:8080=b"],
        &yaml,
    );

    // The first answers arrive just after the config: wait for them.
    mesh.dial_until("10.96.2.1:80", Duration::from_secs(10), |r| {
        r.connected == 4
    });
    let r = mesh.dial("10.96.2.1:80", 20);
    assert_eq!(
        (r.backend("a"), r.backend("b")),
        (10, 10),
        "round robin over both A records: {r:?}"
    );
    assert_eq!(r.peer_names.get("10.96.2.1:80"), Some(&20));

    mesh.dial_until("10.96.2.2:80", Duration::from_secs(10), |r| {
        r.connected == 4
    });
    let r = mesh.dial("10.96.2.2:80", 20);
    assert!(
        r.backend("a") == 20 || r.backend("b") == 20,
        "LOGICAL_DNS uses one address: {r:?}"
    );

    let dump = mesh.daemon.config_dump();
    let hosts = dump["dns"]
        .as_array()
        .unwrap_or_else(|| panic!("no dns section: {dump}"));
    let db = hosts.iter().find(|h| h["host"] == "db.test").unwrap();
    assert_eq!(db["addresses"].as_array().unwrap().len(), 2, "{dump}");
    assert!(db["lookups"].as_u64().unwrap() >= 1);
}

#[test]
fn a_changed_record_moves_connections_within_ttl_and_a_dead_server_keeps_the_last_answer() {
    if !require_root() {
        return;
    }
    let Some(bin) = dnsmasq_or_skip() else {
        return;
    };
    let ttl = 2;
    let mut dns = Dnsmasq::start(&bin, ttl, "127.0.0.2 api.test\n");
    let yaml = config(&[
        listener("api", "10.96.2.3", 80, "api"),
        // refresh 30 s, but respect_dns_ttl: the 2 s TTL sets the pace; after
        // a failure, retries back off from 1 s to 2 s.
        dns_cluster("api", "STRICT_DNS", "api.test", "V4_ONLY", "30s").replace(
            "  respect_dns_ttl: true",
            "  respect_dns_ttl: true\n  dns_failure_refresh_rate: { base_interval: 1s, max_interval: 2s }",
        ),
    ]);
    let mesh = DnsMesh::start(
        "dns-change",
        &dns,
        &[],
        &[
            "127.0.0.2:8080=old",
            "127.0.0.3:8080=new",
            "127.0.0.4:8080=newer",
        ],
        &yaml,
    );
    mesh.dial_until("10.96.2.3:80", Duration::from_secs(10), |r| {
        r.backend("old") == 4
    });

    let changed = Instant::now();
    dns.set_hosts("127.0.0.3 api.test\n");
    mesh.dial_until("10.96.2.3:80", Duration::from_secs(10), |r| {
        r.backend("new") == 4
    });
    let took = changed.elapsed();
    assert!(
        took <= Duration::from_secs(ttl as u64 + 1),
        "the new address must be used within TTL + 1 s, took {took:?}"
    );

    // Server down: lookups fail, the last good address keeps serving.
    dns.stop();
    std::thread::sleep(Duration::from_secs(ttl as u64 * 2 + 3));
    let r = mesh.dial("10.96.2.3:80", 10);
    assert_eq!(
        r.backend("new"),
        10,
        "last good answer kept while DNS is down: {r:?}"
    );
    let dump = mesh.daemon.config_dump();
    let api = dump["dns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "api.test")
        .unwrap()
        .clone();
    assert!(
        api["failures"].as_u64().unwrap() >= 1,
        "failures are counted: {dump}"
    );
    assert!(api["last_error"].is_string(), "{dump}");

    // Back, with another answer: applied.
    dns.set_hosts("127.0.0.4 api.test\n");
    dns.restart();
    mesh.dial_until("10.96.2.3:80", Duration::from_secs(15), |r| {
        r.backend("newer") == 4
    });
}

#[test]
fn an_aaaa_only_name_routes_ipv6() {
    if !require_root() {
        return;
    }
    let Some(bin) = dnsmasq_or_skip() else {
        return;
    };
    let dns = Dnsmasq::start(&bin, 30, "fd00::2 v6.test\n");
    let yaml = config(&[
        listener("v6", "fd00:96::2", 80, "v6"),
        dns_cluster("v6", "STRICT_DNS", "v6.test", "AUTO", "5s"),
    ]);
    let mesh = DnsMesh::start(
        "dns-v6",
        &dns,
        &["fd00::2/128"],
        &["[fd00::2]:8080=six"],
        &yaml,
    );
    mesh.dial_until("[fd00:96::2]:80", Duration::from_secs(10), |r| {
        r.backend("six") == 4
    });
    let r = mesh.dial("[fd00:96::2]:80", 10);
    assert_eq!(r.peer_names.get("[fd00:96::2]:80"), Some(&10), "{r:?}");
}

/// Issue 14: AUTO (Envoy's default, AAAA preferred) and ALL against a server
/// that refuses AAAA for a name it has only an A record for: the A answer is
/// used and the clusters route.
#[test]
fn auto_and_all_clusters_route_over_the_a_answer_when_aaaa_is_refused() {
    if !require_root() {
        return;
    }
    let Some(bin) = dnsmasq_or_skip() else {
        return;
    };
    let host = format!("db.{REFUSING_DOMAIN}");
    let dns = Dnsmasq::start(&bin, 30, &format!("127.0.0.2 {host}\n"));
    let yaml = config(&[
        listener("auto", "10.96.2.5", 80, "auto"),
        dns_cluster("auto", "STRICT_DNS", &host, "AUTO", "5s"),
        listener("all", "10.96.2.6", 80, "all"),
        dns_cluster("all", "LOGICAL_DNS", &host, "ALL", "5s"),
    ]);
    let mesh = DnsMesh::start("dns-refused", &dns, &[], &["127.0.0.2:8080=a"], &yaml);
    for vip in ["10.96.2.5:80", "10.96.2.6:80"] {
        mesh.dial_until(vip, Duration::from_secs(10), |r| r.backend("a") == 4);
    }
    let dump = mesh.daemon.config_dump();
    for family in ["Auto", "All"] {
        let state = dump["dns"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["family"] == family))
            .unwrap_or_else(|| panic!("no {family} entry: {dump}"));
        assert_eq!(state["failures"], 0, "{state}");
        assert!(
            state["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("AAAA")),
            "{state}"
        );
    }
}

/// A restarted daemon whose DNS server is down must not throw away the
/// answers the kernel already has.
#[test]
fn a_restart_while_dns_is_down_keeps_the_last_good_endpoints() {
    if !require_root() {
        return;
    }
    let Some(bin) = dnsmasq_or_skip() else {
        return;
    };
    let mut dns = Dnsmasq::start(&bin, 30, "127.0.0.2 keep.test\n");
    let yaml = config(&[
        listener("keep", "10.96.2.4", 80, "keep"),
        dns_cluster("keep", "STRICT_DNS", "keep.test", "V4_ONLY", "5s"),
    ]);
    let mut mesh = DnsMesh::start("dns-restart", &dns, &[], &["127.0.0.2:8080=a"], &yaml);
    mesh.dial_until("10.96.2.4:80", Duration::from_secs(10), |r| {
        r.backend("a") == 4
    });

    mesh.daemon.stop();
    dns.stop();
    let mut next = Daemon::start_with_args(
        mesh._xds.path(),
        &mesh._bpffs,
        &mesh.cgroup,
        &["--dns-server", &dns.addr.to_string()],
    );
    next.wait_ready(READY);
    assert!(next.logs().contains("Adopted"), "{}", next.logs());
    // Well past the first (failing) lookups: still steered to the last answer.
    std::thread::sleep(Duration::from_secs(3));
    let r = mesh.dial("10.96.2.4:80", 10);
    assert_eq!(
        r.backend("a"),
        10,
        "endpoints lost across a restart with DNS down: {r:?}\n{}",
        next.logs()
    );

    // A further update while DNS is still down keeps them too.
    let more = config(&[
        listener("keep", "10.96.2.4", 80, "keep"),
        dns_cluster("keep", "STRICT_DNS", "keep.test", "V4_ONLY", "5s"),
        listener("keep2", "10.96.2.5", 80, "keep"),
    ]);
    replace_file(mesh._xds.path(), &more);
    let deadline = Instant::now() + Duration::from_secs(10);
    while next.config_dump()["version"].as_u64().unwrap_or(0) < 2 {
        assert!(
            Instant::now() < deadline,
            "the update was not applied:\n{}",
            next.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = mesh.dial("10.96.2.5:80", 10);
    assert_eq!(
        r.backend("a"),
        10,
        "endpoints lost by an update while DNS is down: {r:?}\n{}",
        next.logs()
    );
    next.stop();
}
