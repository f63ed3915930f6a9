//! The dual-engine eBPF programs, loader and map writer on the real kernel:
//! hand-built plans written through `DualEngineWriter`, connects from a
//! client netns that has only `lo` (a connect the programs miss fails with
//! ENETUNREACH), backends listening inside that netns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use common::*;
use kmesh::bpf::dual_engine::{self, DualEngineBpf, DualEngineCapacity};
use kmesh::bpf::StartKind;
use kmesh::workload::bpf_dump;
use kmesh::workload::plan::{
    frontend_addr, BackendRecord, EndpointRecord, FrontendTarget, LbPolicy, Plan, PlanChanges,
    ServiceRecord,
};
use kmesh::workload::writer::{DualEngineWriter, WriteStats};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Plans
// ---------------------------------------------------------------------------

fn backend(v4: Option<&str>, v6: Option<&str>) -> BackendRecord {
    BackendRecord {
        name: format!("{v4:?}/{v6:?}").into(),
        v4: v4.map(|a| a.parse().unwrap()),
        v6: v6.map(|a| a.parse().unwrap()),
        waypoint: None,
    }
}

/// `levels[priority]` = (backend id, target port per service port).
type Levels<'a> = &'a [&'a [(u32, &'a [u16])]];

fn levels(levels: Levels) -> Vec<Vec<EndpointRecord>> {
    levels
        .iter()
        .map(|level| {
            level
                .iter()
                .map(|(backend, ports)| EndpointRecord {
                    backend: *backend,
                    target_ports: ports.iter().copied().collect(),
                })
                .collect()
        })
        .collect()
}

fn service(policy: LbPolicy, ports: &[u16], v4: Levels, v6: Levels) -> ServiceRecord {
    ServiceRecord {
        name: "test/svc".into(),
        policy,
        ports: ports.to_vec(),
        waypoint: None,
        endpoints: [levels(v4), levels(v6)],
    }
}

fn vip(plan: &mut Plan, addr: &str, target: FrontendTarget) {
    plan.frontends
        .insert(frontend_addr(addr.parse::<IpAddr>().unwrap()), target);
}

// ---------------------------------------------------------------------------
// The rig: programs on a per-test cgroup, a client netns, backends in it
// ---------------------------------------------------------------------------

/// Fields drop in order: backends stop, the skeleton closes, the pins go
/// (detaching the links), then the cgroup and the netns.
struct Rig {
    _backends: Option<Backends>,
    writer: DualEngineWriter,
    bpf: DualEngineBpf,
    plan: Plan,
    bpffs: BpfFsDir,
    cgroup: Cgroup,
    netns: NetNs,
}

impl Rig {
    /// `lo_addrs` are added to the netns's lo (e.g. `fd00::2/128`) before
    /// the backends (`addr:port=name`) start listening.
    fn new(prefix: &str, lo_addrs: &[&str], backends: &[&str]) -> Rig {
        let netns = NetNs::new(prefix);
        for a in lo_addrs {
            netns.add_addr(a);
        }
        let cgroup = Cgroup::new(prefix);
        let bpffs = BpfFsDir::new(prefix);
        let backends = (!backends.is_empty()).then(|| Backends::start(Some(&netns), backends));
        let bpf = DualEngineBpf::load(bpffs.path(), cgroup.path(), small_capacity())
            .unwrap_or_else(|e| panic!("loading the dual-engine programs: {e}"));
        let writer = DualEngineWriter::new(bpf.maps().unwrap(), small_capacity());
        Rig {
            _backends: backends,
            writer,
            bpf,
            plan: Plan::default(),
            bpffs,
            cgroup,
            netns,
        }
    }

    /// Write `plan` (the difference from the last one) and attach the programs.
    fn apply(&mut self, plan: Plan) -> WriteStats {
        let changes = PlanChanges::between(&self.plan, &plan);
        let stats = self
            .writer
            .apply(&plan, &changes)
            .unwrap_or_else(|e| panic!("applying the plan: {e}"));
        self.bpf.activate().unwrap();
        self.plan = plan;
        stats
    }

    fn dial(&self, target: &str, count: u32) -> DialReport {
        dial(&self.netns, Some(&self.cgroup), target, count)
    }

    fn dump(&self) -> Value {
        bpf_dump::dump(&self.bpf.maps().unwrap()).unwrap()
    }

    fn counter(&self, name: &str) -> u64 {
        self.dump()["counters"][name].as_u64().unwrap()
    }
}

fn small_capacity() -> DualEngineCapacity {
    DualEngineCapacity {
        max_frontends: 1024,
        max_services: 256,
        max_endpoints: 4096,
        max_backends: 1024,
    }
}

fn only_errors(report: &DialReport, errno: &str, count: u64) {
    assert_eq!(report.error(errno), count, "{report:?}");
    assert_eq!(report.total_answered(), 0, "{report:?}");
}

/// Poll `cond` for up to 5 s (the kernel frees links and programs from a
/// work queue, a moment after the last reference goes).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Keys of a map, straight from the kernel (not through the writer).
fn map_len(map: &libbpf_rs::MapHandle) -> usize {
    kmesh::bpf::batch::read_all(map).unwrap().len()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn ipv4_vip_goes_to_both_backends_on_their_target_ports_and_getpeername_shows_the_vip() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(
        "de-v4",
        &[],
        &[
            "127.0.0.2:8080=b1",
            "127.0.0.3:9090=b2",
            "127.0.0.2:81=b1-81",
            "127.0.0.3:81=b2-81",
        ],
    );
    // Before the first write nothing is attached: the VIP is unreachable.
    assert!(
        attached_prog_ids(rig.cgroup.path()).is_empty(),
        "attached before activate"
    );
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(Some("127.0.0.2"), None));
    plan.backends.insert(2, backend(Some("127.0.0.3"), None));
    // Port 80 -> 8080 (b2 overrides it with 9090); port 81 -> 0 = keep 81.
    plan.services.insert(
        10,
        service(
            LbPolicy::Random,
            &[80, 81],
            &[&[(1, &[8080, 0]), (2, &[9090, 0])]],
            &[],
        ),
    );
    vip(&mut plan, "10.96.0.1", FrontendTarget::Service(10));
    let stats = rig.apply(plan);
    assert_eq!(stats.endpoints_written, 2);
    assert_eq!(attached_prog_ids(rig.cgroup.path()).len(), 5);

    let report = rig.dial("10.96.0.1:80", 40);
    assert_eq!(report.total_errors(), 0, "{report:?}");
    assert!(
        report.backend("b1") > 0 && report.backend("b2") > 0,
        "spread over both backends: {report:?}"
    );
    assert_eq!(
        report.peer_names.keys().collect::<Vec<_>>(),
        ["10.96.0.1:80"],
        "getpeername shows the dialled VIP"
    );
    let report = rig.dial("10.96.0.1:81", 20);
    assert_eq!(report.total_errors(), 0, "{report:?}");
    assert_eq!(report.backend("b1-81") + report.backend("b2-81"), 20);

    // An AF_INET6 socket dialling the VIP v4-mapped is routed like IPv4.
    let report = rig.dial("[::ffff:10.96.0.1]:80", 20);
    assert_eq!(report.total_errors(), 0, "{report:?}");
    assert_eq!(report.backend("b1") + report.backend("b2"), 20);
    assert_eq!(
        report.peer_names.keys().collect::<Vec<_>>(),
        ["[::ffff:10.96.0.1]:80"]
    );

    // A port the service does not expose is left alone.
    only_errors(&rig.dial("10.96.0.1:82", 3), "ENETUNREACH", 3);
    assert!(rig.counter("passthrough") >= 3);
    assert!(rig.counter("redirected") >= 80);
    assert_eq!(rig.counter("no_endpoint"), 0);
    assert_eq!(rig.counter("map_miss"), 0);

    let dump = rig.dump();
    assert_eq!(dump["frontends"][0]["address"], "10.96.0.1");
    assert_eq!(dump["services"][0]["policy"], "RANDOM");
    assert_eq!(dump["services"][0]["ports"], serde_json::json!([80, 81]));
    assert_eq!(
        dump["services"][0]["endpoints"]["v4"][0][1]["target_ports"],
        serde_json::json!([9090, 0])
    );
    assert_eq!(dump["backends"][1]["v4"], "127.0.0.3");
}

#[test]
fn ipv6_vip_goes_to_ipv6_backends() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(
        "de-v6",
        &["fd00::2/128"],
        &["[fd00::2]:8080=b1", "[::1]:8080=b2"],
    );
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(None, Some("fd00::2")));
    plan.backends
        .insert(2, backend(Some("127.0.0.9"), Some("::1")));
    plan.services.insert(
        20,
        service(
            LbPolicy::Random,
            &[80],
            &[&[(2, &[8080])]],
            &[&[(1, &[8080]), (2, &[8080])]],
        ),
    );
    vip(&mut plan, "fd00:96::1", FrontendTarget::Service(20));
    rig.apply(plan);
    let report = rig.dial("[fd00:96::1]:80", 40);
    assert_eq!(report.total_errors(), 0, "{report:?}");
    assert!(
        report.backend("b1") > 0 && report.backend("b2") > 0,
        "{report:?}"
    );
    assert_eq!(
        report.peer_names.keys().collect::<Vec<_>>(),
        ["[fd00:96::1]:80"]
    );
}

#[test]
fn passthrough_services_and_workload_addresses_are_left_alone() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new("de-pass", &[], &["127.0.0.2:8080=b1"]);
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(Some("127.0.0.2"), None));
    plan.services.insert(
        30,
        service(LbPolicy::Passthrough, &[80], &[&[(1, &[8080])]], &[]),
    );
    plan.backends.insert(2, backend(Some("10.244.0.7"), None));
    vip(&mut plan, "10.96.0.30", FrontendTarget::Service(30));
    vip(&mut plan, "10.244.0.7", FrontendTarget::Workload(2));
    rig.apply(plan);
    only_errors(&rig.dial("10.96.0.30:80", 3), "ENETUNREACH", 3);
    only_errors(&rig.dial("10.244.0.7:8080", 2), "ENETUNREACH", 2);
    assert_eq!(rig.counter("passthrough"), 3);
    assert_eq!(rig.counter("workload_hits"), 2);
    assert_eq!(rig.counter("redirected"), 0);
}

#[test]
fn strict_refuses_without_priority_0_and_failover_moves_down_the_priorities() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new("de-prio", &[], &["127.0.0.2:8080=p0", "127.0.0.3:8080=p1"]);
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(Some("127.0.0.2"), None));
    plan.backends.insert(2, backend(Some("127.0.0.3"), None));
    plan.services.insert(
        40,
        service(LbPolicy::Strict, &[80], &[&[], &[(2, &[8080])]], &[]),
    );
    plan.services.insert(
        41,
        service(
            LbPolicy::Failover,
            &[80],
            &[&[(1, &[8080])], &[(2, &[8080])]],
            &[],
        ),
    );
    vip(&mut plan, "10.96.0.40", FrontendTarget::Service(40));
    vip(&mut plan, "10.96.0.41", FrontendTarget::Service(41));
    rig.apply(plan.clone());

    // STRICT: priority 0 is empty, so the connect is refused, not sent on.
    only_errors(&rig.dial("10.96.0.40:80", 3), "EPERM", 3);
    assert_eq!(rig.counter("no_endpoint"), 3);

    // FAILOVER: priority 0 while it has endpoints ...
    assert_eq!(rig.dial("10.96.0.41:80", 10).backend("p0"), 10);
    // ... priority 1 once it is empty ...
    plan.services.insert(
        41,
        service(LbPolicy::Failover, &[80], &[&[], &[(2, &[8080])]], &[]),
    );
    rig.apply(plan.clone());
    assert_eq!(rig.dial("10.96.0.41:80", 10).backend("p1"), 10);
    // ... and refused when no priority has any.
    plan.services
        .insert(41, service(LbPolicy::Failover, &[80], &[&[], &[]], &[]));
    rig.apply(plan);
    only_errors(&rig.dial("10.96.0.41:80", 2), "EPERM", 2);
}

#[test]
fn a_new_endpoint_set_flips_the_slot_and_deleting_the_service_removes_everything() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new(
        "de-flip",
        &[],
        &[
            "127.0.0.2:8080=old1",
            "127.0.0.3:8080=old2",
            "127.0.0.4:8080=new",
        ],
    );
    let mut plan = Plan::default();
    for (id, last) in [(1, 2), (2, 3), (3, 4)] {
        plan.backends
            .insert(id, backend(Some(&format!("127.0.0.{last}")), None));
    }
    plan.services.insert(
        50,
        service(
            LbPolicy::Random,
            &[80],
            &[&[(1, &[8080]), (2, &[8080])]],
            &[],
        ),
    );
    vip(&mut plan, "10.96.0.50", FrontendTarget::Service(50));
    rig.apply(plan.clone());
    assert_eq!(rig.writer.live_slot(50), Some(0));
    let report = rig.dial("10.96.0.50:80", 20);
    assert_eq!(report.backend("old1") + report.backend("old2"), 20);

    plan.services.insert(
        50,
        service(LbPolicy::Random, &[80], &[&[(3, &[8080])]], &[]),
    );
    let stats = rig.apply(plan.clone());
    assert_eq!(stats.endpoints_removed, 2);
    assert_eq!(rig.writer.live_slot(50), Some(1));
    assert_eq!(rig.dial("10.96.0.50:80", 20).backend("new"), 20);
    let maps = rig.bpf.maps().unwrap();
    assert_eq!(map_len(&maps.endpoints), 1, "old slot's entries are gone");
    let dump = rig.dump();
    assert_eq!(dump["services"][0]["slot"], 1);
    assert_eq!(dump["other_endpoints"], serde_json::json!([]));

    // Deleting the service takes its frontend, record and endpoints.
    plan.services.remove(&50);
    plan.frontends.clear();
    let stats = rig.apply(plan);
    assert_eq!((stats.services_removed, stats.frontends_removed), (1, 1));
    assert_eq!(map_len(&maps.frontends), 0);
    assert_eq!(map_len(&maps.services), 0);
    assert_eq!(map_len(&maps.endpoints), 0);
    assert_eq!(map_len(&maps.backends), 3);
    only_errors(&rig.dial("10.96.0.50:80", 2), "ENETUNREACH", 2);
}

#[test]
fn a_restarted_loader_adopts_the_maps_and_a_full_reconcile_drops_stale_keys() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new("de-adopt", &[], &["127.0.0.2:8080=a", "127.0.0.3:8080=b"]);
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(Some("127.0.0.2"), None));
    plan.backends.insert(2, backend(Some("127.0.0.3"), None));
    plan.services.insert(
        60,
        service(LbPolicy::Random, &[80], &[&[(1, &[8080])]], &[]),
    );
    plan.services.insert(
        61,
        service(LbPolicy::Random, &[80], &[&[(2, &[8080])]], &[]),
    );
    vip(&mut plan, "10.96.0.60", FrontendTarget::Service(60));
    vip(&mut plan, "10.96.0.61", FrontendTarget::Service(61));
    rig.apply(plan.clone());
    let first_ids = attached_prog_ids(rig.cgroup.path());

    // A leftover of an interrupted update: an entry in service 60's spare slot.
    let maps = rig.bpf.maps().unwrap();
    let stray = kmesh::workload::records::endpoint_key(&kmesh::workload::records::EndpointKey {
        service: 60,
        slot: 1,
        family: 0,
        priority: 0,
        index: 3,
    });
    let value = kmesh::workload::records::endpoint_value(&EndpointRecord {
        backend: 2,
        target_ports: [8080].into_iter().collect(),
    });
    libbpf_rs::MapCore::update(&maps.endpoints, &stray, &value, libbpf_rs::MapFlags::ANY).unwrap();

    // "Restart": a second loader on the same pins while the first is gone.
    let Rig {
        _backends,
        writer,
        bpf,
        bpffs,
        cgroup,
        netns,
        ..
    } = rig;
    drop(writer);
    drop(bpf);
    drop(maps);
    // The pinned links keep steering while no loader runs.
    assert_eq!(
        dial(&netns, Some(&cgroup), "10.96.0.61:80", 3).backend("b"),
        3
    );

    let mut bpf = DualEngineBpf::load(bpffs.path(), cgroup.path(), small_capacity()).unwrap();
    assert_eq!(bpf.start_kind(), StartKind::Adopted);
    let mut writer = DualEngineWriter::new(bpf.maps().unwrap(), small_capacity());
    let adopted = writer.adopt().unwrap();
    assert_eq!(
        (
            adopted.counts.frontends,
            adopted.counts.services,
            adopted.counts.endpoints
        ),
        (2, 2, 3)
    );

    // The fresh snapshot lacks service 61 (and its frontend and backend).
    let mut next = plan.clone();
    next.services.remove(&61);
    next.frontends
        .remove(&frontend_addr("10.96.0.61".parse().unwrap()));
    next.backends.remove(&2);
    let stats = writer
        .apply(&next, &PlanChanges::everything(&next))
        .unwrap();
    assert!(stats.reconciled);
    assert_eq!(
        (
            stats.frontends_removed,
            stats.services_removed,
            stats.backends_removed
        ),
        (1, 1, 1)
    );
    // Service 60 was live in slot 0, so its rewrite went to slot 1 (where
    // the leftover was, overwritten) and slot 0 was emptied.
    assert_eq!(writer.live_slot(60), Some(1));
    bpf.activate().unwrap();
    assert_eq!(
        attached_prog_ids(cgroup.path()).len(),
        first_ids.len(),
        "links switched, not added"
    );
    eventually("old programs released", || {
        first_ids.iter().all(|id| !prog_exists(*id))
    });

    let maps = bpf.maps().unwrap();
    let keys: BTreeSet<_> = kmesh::bpf::batch::read_all(&maps.endpoints)
        .unwrap()
        .into_iter()
        .map(|(k, _)| kmesh::workload::records::decode_endpoint_key(&k).unwrap())
        .collect();
    assert_eq!(keys.len(), 1, "only service 60's live entry: {keys:?}");
    assert!(keys
        .iter()
        .all(|k| k.service == 60 && k.slot == 1 && k.index == 0));
    assert_eq!(map_len(&maps.frontends), 1);
    assert_eq!(map_len(&maps.services), 1);
    assert_eq!(map_len(&maps.backends), 1);

    assert_eq!(
        dial(&netns, Some(&cgroup), "10.96.0.60:80", 5).backend("a"),
        5
    );
    only_errors(
        &dial(&netns, Some(&cgroup), "10.96.0.61:80", 2),
        "ENETUNREACH",
        2,
    );
    drop(writer);
    drop(maps);
    drop(bpf);
    drop(_backends);
}

#[test]
fn a_plan_over_capacity_writes_nothing_and_the_last_one_keeps_serving() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new("de-capacity", &[], &["127.0.0.2:8080=a"]);
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(Some("127.0.0.2"), None));
    plan.services.insert(
        80,
        service(LbPolicy::Random, &[80], &[&[(1, &[8080])]], &[]),
    );
    vip(&mut plan, "10.96.0.80", FrontendTarget::Service(80));
    rig.apply(plan.clone());

    // A second service whose endpoints alone exceed de_endpoints (4096).
    let mut big = plan.clone();
    let many: Vec<(u32, &[u16])> = (0..5000).map(|_| (1, &[8080u16][..])).collect();
    big.services.insert(
        81,
        service(LbPolicy::Random, &[80], &[many.as_slice()], &[]),
    );
    vip(&mut big, "10.96.0.81", FrontendTarget::Service(81));
    let err = rig
        .writer
        .apply(&big, &PlanChanges::between(&plan, &big))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("de_endpoints would need 5001 entries, its capacity is 4096"),
        "{err}"
    );
    let maps = rig.bpf.maps().unwrap();
    assert_eq!(
        map_len(&maps.frontends),
        1,
        "nothing of the refused plan written"
    );
    assert_eq!(map_len(&maps.services), 1);
    assert_eq!(map_len(&maps.endpoints), 1);
    assert_eq!(rig.dial("10.96.0.80:80", 3).backend("a"), 3);
    // The writer's picture is intact: the next good update applies as usual.
    let mut next = plan.clone();
    next.services.insert(
        80,
        service(
            LbPolicy::Random,
            &[80],
            &[&[(1, &[8080]), (1, &[8080])]],
            &[],
        ),
    );
    let stats = rig.apply(next);
    assert!(!stats.reconciled);
    assert_eq!(map_len(&maps.endpoints), 2);
}

#[test]
fn uninstall_leaves_no_pins_links_or_programs() {
    if !require_root() {
        return;
    }
    let mut rig = Rig::new("de-uninstall", &[], &["127.0.0.2:8080=a"]);
    let mut plan = Plan::default();
    plan.backends.insert(1, backend(Some("127.0.0.2"), None));
    plan.services.insert(
        70,
        service(LbPolicy::Random, &[80], &[&[(1, &[8080])]], &[]),
    );
    vip(&mut plan, "10.96.0.70", FrontendTarget::Service(70));
    rig.apply(plan);
    assert_eq!(rig.dial("10.96.0.70:80", 2).backend("a"), 2);
    let ids = attached_prog_ids(rig.cgroup.path());
    assert_eq!(ids.len(), 5, "connect4/6, getpeername4/6, sockops: {ids:?}");

    let Rig {
        _backends,
        writer,
        bpf,
        bpffs,
        cgroup,
        netns,
        ..
    } = rig;
    drop(writer);
    drop(bpf);
    let pins = dual_engine::pin_dir(bpffs.path());
    assert!(pins.join("maps/de_endpoints").exists());
    assert!(dual_engine::uninstall(bpffs.path()).unwrap());
    assert!(!pins.exists(), "pins left after uninstall");
    assert!(
        !bpffs.path().join("kmesh").exists(),
        "empty kmesh pin root left"
    );
    // The kernel releases an unpinned link from a work queue: wait for it.
    eventually("links detached after uninstall", || {
        attached_prog_ids(cgroup.path()).is_empty()
    });
    eventually("de_* programs unloaded after uninstall", || {
        ids.iter().all(|id| !prog_exists(*id))
    });
    only_errors(
        &dial(&netns, Some(&cgroup), "10.96.0.70:80", 2),
        "ENETUNREACH",
        2,
    );
    assert!(
        !dual_engine::uninstall(bpffs.path()).unwrap(),
        "nothing left to remove"
    );
    drop(_backends);
}

#[test]
fn ten_thousand_services_of_ten_endpoints_are_written_in_one_apply() {
    if !require_root() {
        return;
    }
    const SERVICES: u32 = 10_000;
    const PER_SERVICE: u32 = 10;
    let bpffs = BpfFsDir::new("de-scale");
    let cgroup = Cgroup::new("de-scale");
    let capacity = DualEngineCapacity::default();
    let bpf = DualEngineBpf::load(bpffs.path(), cgroup.path(), capacity).unwrap();
    let mut writer = DualEngineWriter::new(bpf.maps().unwrap(), capacity);

    // 100k workloads (each with a frontend), 10k services of 10 of them.
    let mut plan = Plan::default();
    let backends = SERVICES * PER_SERVICE;
    for id in 0..backends {
        let addr = Ipv4Addr::from(0x0a00_0000 + id);
        plan.backends.insert(
            id,
            BackendRecord {
                name: format!("w{id}").into(),
                v4: Some(addr),
                v6: None,
                waypoint: None,
            },
        );
        plan.frontends
            .insert(addr.to_ipv6_mapped(), FrontendTarget::Workload(id));
    }
    let service_of = |s: u32, shift: u32| ServiceRecord {
        name: format!("ns/svc{s}").into(),
        policy: LbPolicy::Random,
        ports: vec![80, 443],
        waypoint: None,
        endpoints: [
            vec![(0..PER_SERVICE)
                .map(|i| EndpointRecord {
                    backend: (s * PER_SERVICE + i + shift) % backends,
                    target_ports: [8080, 8443].into_iter().collect(),
                })
                .collect()],
            vec![],
        ],
    };
    for s in 0..SERVICES {
        plan.services.insert(s, service_of(s, 0));
        let vip = Ipv4Addr::from(0x0b00_0000 + s);
        plan.frontends
            .insert(vip.to_ipv6_mapped(), FrontendTarget::Service(s));
    }

    let start = Instant::now();
    let stats = writer
        .apply(&plan, &PlanChanges::everything(&plan))
        .unwrap();
    let first = start.elapsed();
    let entries =
        plan.frontends.len() + plan.services.len() + plan.endpoint_entries() + plan.backends.len();
    eprintln!(
        "dual-engine scale: first write of {entries} entries ({SERVICES} services x {PER_SERVICE} endpoints, \
         {} backends, {} frontends) took {first:?} ({} build)",
        plan.backends.len(),
        plan.frontends.len(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    assert_eq!(stats.endpoints_written, (SERVICES * PER_SERVICE) as usize);

    let maps = bpf.maps().unwrap();
    assert_eq!(map_len(&maps.frontends), 110_000);
    assert_eq!(map_len(&maps.services), 10_000);
    assert_eq!(map_len(&maps.endpoints), 100_000);
    assert_eq!(map_len(&maps.backends), 100_000);

    // Every service gets a new endpoint set: 10k slot flips.
    let mut next = plan.clone();
    for s in 0..SERVICES {
        next.services.insert(s, service_of(s, 1));
    }
    let start = Instant::now();
    let stats = writer
        .apply(&next, &PlanChanges::between(&plan, &next))
        .unwrap();
    let update = start.elapsed();
    eprintln!(
        "dual-engine scale: replacing every service's endpoints ({} written, {} removed, \
         peak {} entries) took {update:?}",
        stats.endpoints_written, stats.endpoints_removed, stats.peak_endpoints
    );
    assert_eq!(map_len(&maps.endpoints), 100_000);
    assert!(stats.peak_endpoints <= 100_000 + 65_536, "{stats:?}");
    if !cfg!(debug_assertions) {
        assert!(first.as_secs_f64() < 1.0, "first write took {first:?}");
        assert!(update.as_secs_f64() < 1.0, "update took {update:?}");
    }
}
