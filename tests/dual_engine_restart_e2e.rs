//! Dual-engine restarts under load, end to end: no connect may reach another
//! service's pods, or fail, while the daemon is stopped, killed mid-apply or
//! restarted with another configuration.
//!
//! The daemon binary follows the test delta control plane
//! (tests/common/delta_server.rs) on loopback; the real eBPF programs are
//! attached to a per-test cgroup. In the client netns (only `lo`), a `local`
//! route makes every address of 10.0.0.0/8 local and one wildcard listener
//! answers each connection with the address it reached, so a connect steered
//! to the wrong workload shows as that workload's address, not as a refusal.
//! A loader dials three VIPs all the time and sorts every answer into "its
//! own workloads", "another address" (misrouted) and failed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::delta_server::DeltaServer;
use common::workload_yaml::{service_any, workload_any, Svc, Wl};
use common::*;
use envoy_types::pb::google::protobuf::Any;
use kmesh::workload::proto::ADDRESS_TYPE_URL;
use serde_json::Value;

/// Generous: a 10k-service apply of a debug build on a loaded 2-core VM.
const APPLY: Duration = Duration::from_secs(180);
/// Workloads per bulk service.
const PER_SERVICE: usize = 10;
/// The VIPs the loader dials, each with two workloads.
const DIALLED: usize = 3;
/// What the loader must sustain across the restarts.
const MIN_RATE: f64 = 200.0;

/// `(name, version, Any)` for [`DeltaServer::push`] (envoy-types' `Any`).
type Resource = (String, String, Any);

fn resource((name, any): (String, prost_types::Any)) -> Resource {
    (
        name,
        "1".to_string(),
        Any {
            type_url: any.type_url,
            value: any.value,
        },
    )
}

fn svc_key(name: &str) -> String {
    format!("default/{name}.default.svc.cluster.local")
}

/// A configuration: service key -> (VIP, workload uid -> address).
#[derive(Clone, Default)]
struct Config {
    services: BTreeMap<String, (String, BTreeMap<String, String>)>,
}

impl Config {
    /// The dialled services: `z-dial-K` at 10.96.250.(K+1), workloads at
    /// 10.250.K.1 and .2. Named to sort after every bulk service.
    fn dialled() -> Config {
        let mut c = Config::default();
        for k in 0..DIALLED {
            let workloads = (1..=2)
                .map(|x| (format!("z-dial-{k}-w{x}"), format!("10.250.{k}.{x}")))
                .collect();
            c.services.insert(
                svc_key(&format!("z-dial-{k}")),
                (format!("10.96.250.{}", k + 1), workloads),
            );
        }
        c
    }

    /// `count` bulk services `PREFIX-I` from index `from`: VIP
    /// 10.97.(I/256).(I%256), workloads 10.(128+I/256).(I%256).1..10.
    fn bulk(prefix: &str, from: usize, count: usize) -> Config {
        let mut c = Config::default();
        for i in from..from + count {
            let workloads = (1..=PER_SERVICE)
                .map(|x| {
                    (
                        format!("{prefix}-{i}-w{x}"),
                        format!("10.{}.{}.{x}", 128 + i / 256, i % 256),
                    )
                })
                .collect();
            c.services.insert(
                svc_key(&format!("{prefix}-{i}")),
                (format!("10.97.{}.{}", i / 256, i % 256), workloads),
            );
        }
        c
    }

    fn with(mut self, other: &Config) -> Config {
        self.services.extend(other.services.clone());
        self
    }

    fn resources(&self) -> Vec<Resource> {
        let mut out = Vec::new();
        for (key, (vip, workloads)) in &self.services {
            out.push(resource(service_any(&Svc::new(key, &[vip], &[(80, 8080)]))));
            for (uid, ip) in workloads {
                out.push(resource(workload_any(&Wl::new(uid, &[ip], &[key]))));
            }
        }
        out
    }

    /// Every resource name (service keys and workload uids).
    fn names(&self) -> Vec<String> {
        self.services
            .iter()
            .flat_map(|(key, (_, workloads))| {
                std::iter::once(key.clone()).chain(workloads.keys().cloned())
            })
            .collect()
    }

    /// VIP -> the addresses its connects may reach (`ip:8080`).
    fn expected_answers(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.services
            .values()
            .map(|(vip, workloads)| {
                let answers = workloads.values().map(|ip| format!("{ip}:8080")).collect();
                (vip.clone(), answers)
            })
            .collect()
    }
}

/// Where the test runs: a netns where all of 10/8 is local and answered,
/// the cgroup and the pins. Outlives every daemon of the test.
struct Place {
    _answering: Backends,
    cgroup: Cgroup,
    netns: NetNs,
    bpffs: BpfFsDir,
}

impl Place {
    fn new(prefix: &str) -> Place {
        let netns = NetNs::new(prefix);
        netns.ip(&["route", "add", "local", "10.0.0.0/8", "dev", "lo"]);
        let answering = Backends::start_with(
            Some(&netns),
            &["0.0.0.0:8080=any"],
            &["--answer-local-address"],
        );
        Place {
            _answering: answering,
            cgroup: Cgroup::new(prefix),
            netns,
            bpffs: BpfFsDir::new(prefix),
        }
    }
}

/// The control plane and the daemon following it.
struct World {
    daemon: Daemon,
    server: DeltaServer,
    /// What the server holds now.
    config: Config,
}

impl World {
    fn start(place: &Place, config: Config) -> World {
        let server = DeltaServer::start();
        server.push(ADDRESS_TYPE_URL, config.resources(), Vec::new());
        let daemon = Daemon::start_dual_engine_ads(&server.url(), &place.bpffs, &place.cgroup, &[]);
        let mut world = World {
            daemon,
            server,
            config,
        };
        world.wait_started(1);
        world
    }

    /// The new daemon is ready and ACKed the first response of `stream`.
    fn wait_started(&mut self, stream: u64) {
        self.daemon.wait_ready(APPLY);
        let reply = self.server.wait_for(
            |r| r.stream == stream && r.type_url == ADDRESS_TYPE_URL && !r.is_initial(),
            APPLY,
        );
        assert!(
            reply.is_ack(),
            "stream {stream}: {:?}\nlog:\n{}",
            reply.error_detail,
            self.daemon.logs()
        );
    }

    /// Makes the server hold `config` (the daemon's stream, if open, gets
    /// the difference); the nonce of the push, if one was sent.
    fn serve(&mut self, config: Config) -> Option<String> {
        let keep: BTreeSet<String> = config.names().into_iter().collect();
        let removed: Vec<String> = self
            .config
            .names()
            .into_iter()
            .filter(|n| !keep.contains(n))
            .collect();
        let nonces = self
            .server
            .push(ADDRESS_TYPE_URL, config.resources(), removed);
        self.config = config;
        nonces.into_iter().next()
    }

    /// A new daemon on the same server, pins and cgroup (the old one gone).
    fn start_daemon(&mut self, place: &Place, extra: &[&str]) {
        let stream = self.server.connections() + 1;
        self.daemon =
            Daemon::start_dual_engine_ads(&self.server.url(), &place.bpffs, &place.cgroup, extra);
        self.wait_started(stream);
    }

    /// The maps route every VIP of the config to exactly its workloads and
    /// hold nothing else: no other frontend, service, backend or endpoint.
    fn assert_kernel_holds_the_config(&self) {
        let bpf = self.daemon.dual_engine_bpf_dump();
        let backends: BTreeMap<u64, String> = bpf["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["id"].as_u64().unwrap(),
                    b["v4"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let services: BTreeMap<u64, &Value> = bpf["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_u64().unwrap(), s))
            .collect();
        let mut routed = BTreeMap::new();
        let mut workload_frontends = BTreeSet::new();
        for f in bpf["frontends"].as_array().unwrap() {
            let address = f["address"].as_str().unwrap().to_string();
            let id = f["id"].as_u64().unwrap();
            match f["kind"].as_str().unwrap() {
                "service" => {
                    let svc = services
                        .get(&id)
                        .unwrap_or_else(|| panic!("frontend {address} -> missing service {id}"));
                    let mut answers = BTreeSet::new();
                    for level in svc["endpoints"]["v4"].as_array().unwrap() {
                        for e in level.as_array().unwrap() {
                            let backend = e["backend"]
                                .as_u64()
                                .unwrap_or_else(|| panic!("{address}: endpoint {e}"));
                            let ip = backends.get(&backend).unwrap_or_else(|| {
                                panic!("{address}: endpoint to missing backend {backend}")
                            });
                            answers.insert(format!("{ip}:8080"));
                        }
                    }
                    routed.insert(address, answers);
                }
                "workload" => {
                    workload_frontends.insert(address);
                }
                other => panic!("frontend {address} of kind {other}"),
            }
        }
        let expected = self.config.expected_answers();
        let workload_ips: BTreeSet<String> = self
            .config
            .services
            .values()
            .flat_map(|(_, w)| w.values().cloned())
            .collect();
        assert_eq!(routed.len(), expected.len(), "service frontends");
        for (vip, answers) in &expected {
            assert_eq!(routed.get(vip), Some(answers), "VIP {vip}");
        }
        assert_eq!(workload_frontends, workload_ips, "workload frontends");
        assert_eq!(services.len(), expected.len(), "service records");
        assert_eq!(
            backends.values().cloned().collect::<BTreeSet<_>>(),
            workload_ips,
            "backend records"
        );
        assert_eq!(backends.len(), workload_ips.len(), "backend records");
        assert!(
            bpf["other_endpoints"].as_array().unwrap().is_empty(),
            "endpoint entries outside live slots"
        );
    }
}

/// What the loader saw.
#[derive(Debug, Default)]
struct Tally {
    connects: u64,
    own: u64,
    /// Answered by an address that is not one of the VIP's workloads.
    misrouted: BTreeMap<String, u64>,
    failed: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl Tally {
    fn rate(&self) -> f64 {
        self.connects as f64 / self.elapsed.as_secs_f64()
    }

    fn assert_clean(&self, phase: &str, world: &World) {
        eprintln!(
            "RESTART {phase}: {} connects at {:.0}/s, {} to their own workloads, \
             misrouted {:?}, failed {:?}",
            self.connects,
            self.rate(),
            self.own,
            self.misrouted,
            self.failed
        );
        assert!(
            self.misrouted.is_empty() && self.failed.is_empty(),
            "{phase}: {self:?}\nlog:\n{}",
            world.daemon.logs()
        );
        assert_eq!(self.own, self.connects, "{phase}: {self:?}");
        assert!(
            self.rate() >= MIN_RATE,
            "{phase}: the loader managed only {:.0} connects/s",
            self.rate()
        );
    }
}

/// Runs `phase` while the dialled VIPs are dialled without pause (one loader
/// thread each), then returns what the loader saw.
fn under_load(place: &Place, world: &mut World, phase: impl FnOnce(&mut World)) -> Tally {
    let expected = Config::dialled().expected_answers();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (netns, cgroup) = (&place.netns, &place.cgroup);
    let mut tallies = Vec::new();
    thread::scope(|s| {
        let loaders: Vec<_> = expected
            .iter()
            .map(|(vip, own)| {
                let stop = &stop;
                s.spawn(move || {
                    let mut t = Tally::default();
                    let target = format!("{vip}:80");
                    while !stop.load(Ordering::Relaxed) {
                        let r = dial_with(
                            Some(netns),
                            Some(cgroup),
                            &target,
                            25,
                            &["--timeout-ms", "2000"],
                        );
                        t.connects += r.total_answered() + r.total_errors();
                        for (addr, n) in r.backends {
                            if own.contains(&addr) {
                                t.own += n;
                            } else {
                                *t.misrouted.entry(format!("{vip}->{addr}")).or_default() += n;
                            }
                        }
                        for (e, n) in r.errors {
                            *t.failed.entry(format!("{vip}:{e}")).or_default() += n;
                        }
                    }
                    t
                })
            })
            .collect();
        // Let the loaders get going, so the phase starts under load.
        thread::sleep(Duration::from_millis(300));
        phase(world);
        // And keep them going a little after it, through the settling.
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for l in loaders {
            tallies.push(l.join().expect("loader thread"));
        }
    });
    let mut total = Tally {
        elapsed: started.elapsed(),
        ..Tally::default()
    };
    for t in tallies {
        total.connects += t.connects;
        total.own += t.own;
        total.misrouted.extend(t.misrouted);
        total.failed.extend(t.failed);
    }
    total
}

#[test]
fn restarts_and_a_kill_mid_apply_send_no_connect_to_another_service_and_fail_none() {
    if !require_root() {
        return;
    }
    // The dialled services come first, alone, so their ids are the lowest;
    // a daemon that later sees the whole world at once (sorted by name, the
    // bulk first) would hand those ids to bulk services.
    let place = Place::new("de-restart");
    let mut world = World::start(&place, Config::dialled());
    let bulk_a = Config::bulk("a-bulk", 0, 10_000);
    let pushed = Instant::now();
    let nonce = world
        .serve(Config::dialled().with(&bulk_a))
        .expect("the daemon's stream is open");
    world.server.wait_for_ack(&nonce, APPLY);
    let apply_time = pushed.elapsed();
    eprintln!("RESTART: 10,000 services + 100,000 workloads applied in {apply_time:?}");
    world.assert_kernel_holds_the_config();

    // (a) SIGTERM and a restart with the same configuration.
    let tally = under_load(&place, &mut world, |w| {
        let status = w.daemon.stop().expect("the daemon was running");
        assert!(status.success(), "daemon exited with {status}");
        w.start_daemon(&place, &[]);
    });
    tally.assert_clean("SIGTERM + restart, same config", &world);
    world.assert_kernel_holds_the_config();

    // (b) SIGKILL in the middle of a 10k-service apply (another set of
    // services: new names, partly the same addresses), then a restart.
    let tally = under_load(&place, &mut world, |w| {
        let next = Config::dialled().with(&Config::bulk("b-bulk", 2_000, 10_000));
        let pushed = Instant::now();
        w.serve(next).expect("the daemon's stream is open");
        thread::sleep(apply_time / 2);
        w.daemon.kill();
        eprintln!("RESTART: killed {:?} into the apply", pushed.elapsed());
        w.start_daemon(&place, &[]);
    });
    tally.assert_clean("SIGKILL mid-apply + restart", &world);
    world.assert_kernel_holds_the_config();

    // (c) Three restarts in a row, each with a configuration changed while
    // the daemon was down; the last one also changes a map size, so the maps
    // are rebuilt rather than adopted.
    let changes = [
        (Config::bulk("c1-bulk", 0, 6_000), vec![]),
        (Config::bulk("b-bulk", 4_000, 6_000), vec![]),
        (
            Config::bulk("c3-bulk", 1_000, 6_000),
            vec!["--max-services", "32768"],
        ),
    ];
    let tally = under_load(&place, &mut world, |w| {
        for (bulk, extra) in &changes {
            let status = w.daemon.stop().expect("the daemon was running");
            assert!(status.success(), "daemon exited with {status}");
            assert!(w.serve(Config::dialled().with(bulk)).is_none());
            w.start_daemon(&place, extra);
            w.assert_kernel_holds_the_config();
        }
    });
    tally.assert_clean("three restarts with other configs", &world);
    assert!(
        world.daemon.logs().contains("start=Rebuilt"),
        "the last restart should rebuild the maps:\n{}",
        world.daemon.logs()
    );
}
