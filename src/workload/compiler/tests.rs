use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::dns::{LookupFamily, NoDns, ResolvedHosts};
use crate::workload::proto::workload::{
    address, LoadBalancing, Locality, Port, PortList, Service, Workload,
};
use crate::workload::resource::tests::{any, service, workload};
use crate::workload::resource::{decode_address, LocalityFields};

const SVC: &str = "default/web.default.svc.cluster.local";

fn limits() -> Limits {
    Limits {
        max_frontends: 1000,
        max_services: 100,
        max_endpoints: 1000,
        max_backends: 1000,
    }
}

fn compiler() -> WorkloadCompiler {
    WorkloadCompiler::new(CompilerSettings {
        node_name: "node-a".into(),
        cluster_id: "c1".into(),
        locality: None,
        waypoint_port: 15019,
    })
}

fn w(uid: &str, ip: [u8; 4]) -> AddressResource {
    decode_address(&any(address::Type::Workload(workload(uid, ip, SVC))), None).unwrap()
}

fn s(key: &str, vip: [u8; 4]) -> AddressResource {
    decode_address(&any(address::Type::Service(service(key, vip))), None).unwrap()
}

fn resource(w: Workload) -> AddressResource {
    decode_address(&any(address::Type::Workload(w)), None).unwrap()
}

fn svc_resource(s: Service) -> AddressResource {
    decode_address(&any(address::Type::Service(s)), None).unwrap()
}

fn upsert(resources: Vec<AddressResource>) -> Update {
    Update {
        upserts: resources.into_iter().map(|r| (None, r)).collect(),
        removals: vec![],
    }
}

fn fa(ip: [u8; 4]) -> FrontendAddr {
    Ipv4Addr::from(ip).to_ipv6_mapped()
}

fn backends_of_service(c: &WorkloadCompiler, vip: [u8; 4], priority: usize) -> BTreeSet<Ipv4Addr> {
    let Some(FrontendTarget::Service(id)) = c.plan().frontends.get(&fa(vip)) else {
        panic!("no service frontend for {vip:?}");
    };
    c.plan().services[id]
        .level(0, priority)
        .iter()
        .map(|e| c.plan().backends[&e.backend].v4.unwrap())
        .collect()
}

fn ips(list: &[[u8; 4]]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|ip| Ipv4Addr::from(*ip)).collect()
}

#[test]
fn a_service_and_its_workloads_become_frontends_records_and_backends() {
    let mut c = compiler();
    let changes = c
        .apply(
            upsert(vec![
                s(SVC, [10, 96, 0, 1]),
                w("c1/pod/a", [10, 0, 0, 1]),
                w("c1/pod/b", [10, 0, 0, 2]),
            ]),
            &limits(),
            &NoDns,
        )
        .unwrap();
    assert_eq!(changes.frontends_upsert.len(), 3, "VIP + two workload IPs");
    assert_eq!(changes.services_upsert.len(), 1);
    assert_eq!(changes.backends_upsert.len(), 2);
    assert_eq!(
        backends_of_service(&c, [10, 96, 0, 1], 0),
        ips(&[[10, 0, 0, 1], [10, 0, 0, 2]])
    );
    let Some(FrontendTarget::Service(id)) = c.plan().frontends.get(&fa([10, 96, 0, 1])) else {
        panic!()
    };
    let record = &c.plan().services[id];
    assert_eq!(record.ports, vec![80]);
    assert_eq!(record.policy, LbPolicy::Random);
    assert!(record
        .level(0, 0)
        .iter()
        .all(|e| e.target_ports.as_slice() == [8080]));
    assert!(matches!(
        c.plan().frontends.get(&fa([10, 0, 0, 1])),
        Some(FrontendTarget::Workload(_))
    ));
}

#[test]
fn one_new_endpoint_touches_one_service_one_backend_one_frontend() {
    let mut c = compiler();
    let mut resources = vec![s(SVC, [10, 96, 0, 1])];
    for i in 0..50u8 {
        resources.push(s(&format!("default/other{i}"), [10, 96, 1, i]));
    }
    resources.push(w("c1/pod/a", [10, 0, 0, 1]));
    c.apply(upsert(resources), &limits(), &NoDns).unwrap();
    let changes = c
        .apply(
            upsert(vec![w("c1/pod/b", [10, 0, 0, 2])]),
            &limits(),
            &NoDns,
        )
        .unwrap();
    assert_eq!(changes.services_upsert.len(), 1);
    assert_eq!(changes.backends_upsert.len(), 1);
    assert_eq!(
        changes.frontends_upsert,
        BTreeSet::from([fa([10, 0, 0, 2])])
    );
    assert!(changes.services_delete.is_empty() && changes.backends_delete.is_empty());

    // The same resource again changes nothing.
    let again = c
        .apply(
            upsert(vec![w("c1/pod/b", [10, 0, 0, 2])]),
            &limits(),
            &NoDns,
        )
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn removing_a_workload_by_name_deletes_its_backend_and_frontend() {
    let mut c = compiler();
    c.apply(
        Update {
            upserts: vec![
                (Some(SVC.into()), s(SVC, [10, 96, 0, 1])),
                (Some("c1/pod/a".into()), w("c1/pod/a", [10, 0, 0, 1])),
                (Some("c1/pod/b".into()), w("c1/pod/b", [10, 0, 0, 2])),
            ],
            removals: vec![],
        },
        &limits(),
        &NoDns,
    )
    .unwrap();
    let changes = c
        .apply(
            Update {
                upserts: vec![],
                removals: vec!["c1/pod/a".into()],
            },
            &limits(),
            &NoDns,
        )
        .unwrap();
    assert_eq!(changes.backends_delete.len(), 1);
    assert_eq!(
        changes.frontends_delete,
        BTreeSet::from([fa([10, 0, 0, 1])])
    );
    assert_eq!(changes.services_upsert.len(), 1);
    assert_eq!(
        backends_of_service(&c, [10, 96, 0, 1], 0),
        ips(&[[10, 0, 0, 2]])
    );
    assert!(!c.holds("c1/pod/a"));

    // Removing the service drops its VIP; the workload stays a workload.
    let changes = c
        .apply(
            Update {
                upserts: vec![],
                removals: vec![SVC.into()],
            },
            &limits(),
            &NoDns,
        )
        .unwrap();
    assert_eq!(changes.services_delete.len(), 1);
    assert_eq!(
        changes.frontends_delete,
        BTreeSet::from([fa([10, 96, 0, 1])])
    );
    assert!(c.plan().services.is_empty());
}

#[test]
fn a_workload_port_mapping_overrides_the_service_target_port() {
    let mut c = compiler();
    let mut special = workload("c1/pod/b", [10, 0, 0, 2], SVC);
    special.services.insert(
        SVC.into(),
        PortList {
            ports: vec![Port {
                service_port: 80,
                target_port: 9090,
            }],
        },
    );
    let mut svc = service(SVC, [10, 96, 0, 1]);
    svc.ports.push(Port {
        service_port: 443,
        target_port: 0,
    });
    c.apply(
        upsert(vec![
            svc_resource(svc),
            w("c1/pod/a", [10, 0, 0, 1]),
            resource(special),
        ]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    let record = c.plan().services.values().next().unwrap();
    let mut ports: Vec<(Ipv4Addr, Vec<u16>)> = record
        .level(0, 0)
        .iter()
        .map(|e| {
            (
                c.plan().backends[&e.backend].v4.unwrap(),
                e.target_ports.to_vec(),
            )
        })
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![
            (Ipv4Addr::new(10, 0, 0, 1), vec![8080, 443]),
            (Ipv4Addr::new(10, 0, 0, 2), vec![9090, 443]),
        ],
        "target 0 means the service port"
    );
}

fn zoned(uid: &str, ip: [u8; 4], zone: &str, node: &str) -> Workload {
    let mut wl = workload(uid, ip, SVC);
    if node == "node-a" {
        wl.services.clear(); // the node's own workload does not back the service
    }
    wl.node = node.into();
    wl.cluster_id = "c1".into();
    wl.locality = Some(Locality {
        region: "r1".into(),
        zone: zone.into(),
        subzone: Default::default(),
    });
    wl
}

fn locality_service(mode: i32) -> Service {
    let mut svc = service(SVC, [10, 96, 0, 1]);
    svc.load_balancing = Some(LoadBalancing {
        routing_preference: vec![1, 2], // REGION, ZONE
        mode,
        health_policy: 0,
        dns_connect_strategy: 0,
    });
    svc
}

#[test]
fn failover_buckets_by_zone_seen_from_the_node_and_rebuckets_when_the_node_moves() {
    let mut c = compiler();
    c.apply(
        upsert(vec![
            svc_resource(locality_service(2)),
            // The kmesh node's own workload tells it is in zone A.
            resource(zoned("c1/pod/local", [10, 0, 9, 9], "zone-a", "node-a")),
            resource(zoned("c1/pod/a1", [10, 0, 1, 1], "zone-a", "node-x")),
            resource(zoned("c1/pod/b1", [10, 0, 2, 1], "zone-b", "node-y")),
        ]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(&*c.local_locality().zone, "zone-a");
    // a1 (zone A, like the node) is priority 0, b1 priority 1.
    let record = c.plan().services.values().next().unwrap();
    assert_eq!(record.policy, LbPolicy::Failover);
    assert_eq!(level(&c, 0), ips(&[[10, 0, 1, 1]]));
    assert_eq!(level(&c, 1), ips(&[[10, 0, 2, 1]]));

    // The node's workload moves to zone B: one update re-buckets.
    let changes = c
        .apply(
            upsert(vec![resource(zoned(
                "c1/pod/local",
                [10, 0, 9, 9],
                "zone-b",
                "node-a",
            ))]),
            &limits(),
            &NoDns,
        )
        .unwrap();
    assert_eq!(changes.services_upsert.len(), 1);
    assert_eq!(level(&c, 0), ips(&[[10, 0, 2, 1]]));
    assert_eq!(level(&c, 1), ips(&[[10, 0, 1, 1]]));
}

fn level(c: &WorkloadCompiler, priority: usize) -> BTreeSet<Ipv4Addr> {
    let record = c.plan().services.values().next().unwrap();
    record
        .level(0, priority)
        .iter()
        .map(|e| c.plan().backends[&e.backend].v4.unwrap())
        .collect()
}

fn backends_of_service_any(c: &WorkloadCompiler) -> Vec<Vec<Ipv4Addr>> {
    let record = c.plan().services.values().next().unwrap();
    record.endpoints[0]
        .iter()
        .map(|level| {
            level
                .iter()
                .map(|e| c.plan().backends[&e.backend].v4.unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn strict_keeps_only_the_local_zone_and_the_flag_overrides_workloads() {
    let mut c = WorkloadCompiler::new(CompilerSettings {
        node_name: "node-a".into(),
        cluster_id: "c1".into(),
        locality: Some(LocalityFields {
            region: "r1".into(),
            zone: "zone-a".into(),
            subzone: Default::default(),
        }),
        waypoint_port: 15019,
    });
    c.apply(
        upsert(vec![
            svc_resource(locality_service(1)),
            resource(zoned("c1/pod/b1", [10, 0, 2, 1], "zone-b", "node-y")),
        ]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    let record = c.plan().services.values().next().unwrap();
    assert_eq!(record.policy, LbPolicy::Strict);
    assert_eq!(
        record.endpoint_entries(),
        0,
        "zone B is not used under STRICT"
    );
    c.apply(
        upsert(vec![resource(zoned(
            "c1/pod/a1",
            [10, 0, 1, 1],
            "zone-a",
            "node-x",
        ))]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(
        backends_of_service_any(&c),
        vec![vec![Ipv4Addr::new(10, 0, 1, 1)]]
    );
}

#[test]
fn unhealthy_workloads_are_left_out_unless_the_service_allows_all() {
    let mut c = compiler();
    let mut sick = workload("c1/pod/sick", [10, 0, 0, 3], SVC);
    sick.status = 1;
    c.apply(
        upsert(vec![
            s(SVC, [10, 96, 0, 1]),
            w("c1/pod/a", [10, 0, 0, 1]),
            resource(sick),
        ]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(
        backends_of_service(&c, [10, 96, 0, 1], 0),
        ips(&[[10, 0, 0, 1]])
    );
    let mut allow = service(SVC, [10, 96, 0, 1]);
    allow.load_balancing = Some(LoadBalancing {
        health_policy: 1,
        ..Default::default()
    });
    c.apply(upsert(vec![svc_resource(allow)]), &limits(), &NoDns)
        .unwrap();
    assert_eq!(
        backends_of_service(&c, [10, 96, 0, 1], 0),
        ips(&[[10, 0, 0, 1], [10, 0, 0, 3]])
    );
}

#[test]
fn passthrough_services_keep_their_vip_but_no_endpoints() {
    let mut c = compiler();
    let mut none = service("egress/api.example.com", [240, 0, 0, 1]);
    none.load_balancing = Some(LoadBalancing {
        mode: 3,
        ..Default::default()
    });
    c.apply(upsert(vec![svc_resource(none)]), &limits(), &NoDns)
        .unwrap();
    let record = c.plan().services.values().next().unwrap();
    assert_eq!(record.policy, LbPolicy::Passthrough);
    assert_eq!(record.endpoint_entries(), 0);
}

struct Answers(HashMap<String, Vec<IpAddr>>);

impl ResolvedHosts for Answers {
    fn addresses(&self, host: &str, family: LookupFamily) -> Option<Vec<IpAddr>> {
        assert_eq!(family, LookupFamily::All);
        self.0.get(host).cloned()
    }
}

#[test]
fn dns_workloads_become_one_backend_per_resolved_address() {
    let mut c = compiler();
    let key = "egress/db.example.com";
    let mut se = service(key, [240, 0, 0, 2]);
    se.ports[0].target_port = 5432;
    let dns_wl = Workload {
        uid: "c1/networking.istio.io/ServiceEntry/egress/db/db.example.com".into(),
        hostname: "db.example.com".into(),
        services: [(key.to_string(), PortList::default())].into(),
        ..Default::default()
    };
    let mut answers = Answers(HashMap::new());
    c.apply(
        upsert(vec![svc_resource(se), resource(dns_wl)]),
        &limits(),
        &answers,
    )
    .unwrap();
    assert_eq!(c.hostnames(), vec!["db.example.com".to_string()]);
    assert_eq!(c.plan().backends.len(), 0, "unresolved: no backend yet");

    answers.0.insert(
        "db.example.com".into(),
        vec![
            "10.9.0.1".parse().unwrap(),
            "10.9.0.2".parse().unwrap(),
            "fd00::9".parse().unwrap(),
        ],
    );
    let changes = c
        .hosts_changed(&["db.example.com".into()], &limits(), &answers)
        .unwrap();
    assert_eq!(changes.backends_upsert.len(), 3);
    assert_eq!(
        backends_of_service(&c, [240, 0, 0, 2], 0),
        ips(&[[10, 9, 0, 1], [10, 9, 0, 2]])
    );
    let record = c.plan().services.values().next().unwrap();
    assert_eq!(
        record.level(1, 0).len(),
        1,
        "the AAAA answer serves IPv6 connects"
    );
    assert!(record
        .level(0, 0)
        .iter()
        .all(|e| e.target_ports.as_slice() == [5432]));

    answers
        .0
        .insert("db.example.com".into(), vec!["10.9.0.3".parse().unwrap()]);
    let changes = c
        .hosts_changed(&["db.example.com".into()], &limits(), &answers)
        .unwrap();
    assert_eq!(changes.backends_delete.len(), 3);
    assert_eq!(
        backends_of_service(&c, [240, 0, 0, 2], 0),
        ips(&[[10, 9, 0, 3]])
    );

    // The workload goes: its backends and hostname go with it.
    c.apply(
        Update {
            upserts: vec![],
            removals: vec!["c1/networking.istio.io/ServiceEntry/egress/db/db.example.com".into()],
        },
        &limits(),
        &answers,
    )
    .unwrap();
    assert!(c.plan().backends.is_empty());
    assert!(c.hostnames().is_empty());
}

#[test]
fn an_update_that_does_not_fit_changes_nothing() {
    let mut c = compiler();
    let small = Limits {
        max_backends: 2,
        ..limits()
    };
    c.apply(
        upsert(vec![s(SVC, [10, 96, 0, 1]), w("c1/pod/a", [10, 0, 0, 1])]),
        &small,
        &NoDns,
    )
    .unwrap();
    let before = c.plan().clone();
    let e = c
        .apply(
            upsert(vec![
                w("c1/pod/b", [10, 0, 0, 2]),
                w("c1/pod/c", [10, 0, 0, 3]),
            ]),
            &small,
            &NoDns,
        )
        .unwrap_err();
    assert_eq!((e.what, e.needed, e.limit), ("backends", 3, 2));
    assert_eq!(c.plan(), &before);
    assert!(!c.holds("c1/pod/b"), "the store is rolled back too");
    // And the next update that fits works from the old state.
    let changes = c
        .apply(upsert(vec![w("c1/pod/b", [10, 0, 0, 2])]), &small, &NoDns)
        .unwrap();
    assert_eq!(changes.backends_upsert.len(), 1);
    assert_eq!(
        backends_of_service(&c, [10, 96, 0, 1], 0),
        ips(&[[10, 0, 0, 1], [10, 0, 0, 2]])
    );
}

#[test]
fn capacity_copies_weight_an_endpoint() {
    let mut c = compiler();
    let mut heavy = workload("c1/pod/heavy", [10, 0, 0, 2], SVC);
    heavy.capacity = Some(3);
    c.apply(
        upsert(vec![
            s(SVC, [10, 96, 0, 1]),
            w("c1/pod/a", [10, 0, 0, 1]),
            resource(heavy),
        ]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(
        c.plan().services.values().next().unwrap().level(0, 0).len(),
        4
    );
}

#[test]
fn the_incremental_plan_equals_a_fresh_compile_of_the_same_store() {
    // Many small updates in a row end where one big update ends.
    let mut stepwise = compiler();
    let mut all = Vec::new();
    for i in 0..20u8 {
        let key = format!("default/s{i}");
        let svc = s(&key, [10, 96, 0, i]);
        let mut wl = workload(&format!("c1/pod/{i}"), [10, 0, 0, i], &key);
        wl.services.insert(SVC.into(), PortList::default());
        let wl = resource(wl);
        stepwise
            .apply(upsert(vec![svc.clone()]), &limits(), &NoDns)
            .unwrap();
        stepwise
            .apply(upsert(vec![wl.clone()]), &limits(), &NoDns)
            .unwrap();
        all.push(svc);
        all.push(wl);
    }
    all.push(s(SVC, [10, 96, 9, 9]));
    stepwise
        .apply(upsert(vec![s(SVC, [10, 96, 9, 9])]), &limits(), &NoDns)
        .unwrap();
    let mut fresh = compiler();
    fresh.apply(upsert(all), &limits(), &NoDns).unwrap();
    // Ids may differ; compare what the kernel would resolve.
    let resolve = |c: &WorkloadCompiler| -> BTreeSet<(FrontendAddr, Vec<BTreeSet<Ipv4Addr>>)> {
        c.plan()
            .frontends
            .iter()
            .map(|(addr, target)| {
                let levels = match target {
                    FrontendTarget::Service(id) => c.plan().services[id].endpoints[0]
                        .iter()
                        .map(|l| {
                            l.iter()
                                .map(|e| c.plan().backends[&e.backend].v4.unwrap())
                                .collect()
                        })
                        .collect(),
                    FrontendTarget::Workload(id) => {
                        vec![BTreeSet::from([c.plan().backends[id].v4.unwrap()])]
                    }
                };
                (*addr, levels)
            })
            .collect()
    };
    assert_eq!(resolve(&stepwise), resolve(&fresh));
    assert_eq!(
        stepwise.endpoint_entries,
        stepwise.plan().endpoint_entries()
    );
    assert_eq!(fresh.endpoint_entries, fresh.plan().endpoint_entries());
    assert_eq!(resolve(&fresh).len(), 41);
}

fn waypoint_by_hostname(
    namespace: &str,
    hostname: &str,
) -> Option<crate::workload::proto::workload::GatewayAddress> {
    use crate::workload::proto::workload::{gateway_address, GatewayAddress, NamespacedHostname};
    Some(GatewayAddress {
        destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: namespace.into(),
            hostname: hostname.into(),
        })),
        hbone_mtls_port: 15008,
    })
}

fn service_waypoint(c: &WorkloadCompiler, vip: [u8; 4]) -> Option<SocketAddr> {
    let Some(FrontendTarget::Service(id)) = c.plan().frontends.get(&fa(vip)) else {
        panic!("no service frontend for {vip:?}");
    };
    c.plan().services[id].waypoint
}

#[test]
fn a_waypoint_named_by_hostname_follows_that_service_vip() {
    const WP: &str = "default/waypoint.default.svc.cluster.local";
    let mut c = compiler();
    let mut web = service(SVC, [10, 96, 0, 1]);
    web.waypoint = waypoint_by_hostname("default", "waypoint.default.svc.cluster.local");
    let mut pod = workload("c1/pod/a", [10, 0, 0, 1], SVC);
    pod.waypoint = waypoint_by_hostname("default", "waypoint.default.svc.cluster.local");
    // The dependants come first: no waypoint service yet, so no waypoint.
    c.apply(
        upsert(vec![svc_resource(web), resource(pod)]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(service_waypoint(&c, [10, 96, 0, 1]), None);

    let backend_waypoint = |c: &WorkloadCompiler| {
        c.plan()
            .backends
            .values()
            .find(|b| &*b.name == "c1/pod/a")
            .unwrap()
            .waypoint
    };
    // The waypoint service arrives: both dependants now hold its VIP.
    let changes = c
        .apply(upsert(vec![s(WP, [10, 96, 9, 9])]), &limits(), &NoDns)
        .unwrap();
    let want: SocketAddr = "10.96.9.9:15019".parse().unwrap();
    assert_eq!(service_waypoint(&c, [10, 96, 0, 1]), Some(want));
    assert_eq!(backend_waypoint(&c), Some(want));
    assert_eq!(changes.services_upsert.len(), 2, "the waypoint and web");
    assert_eq!(changes.backends_upsert.len(), 1, "the pod");

    // Its VIP changes: followed.
    c.apply(upsert(vec![s(WP, [10, 96, 9, 10])]), &limits(), &NoDns)
        .unwrap();
    let want: SocketAddr = "10.96.9.10:15019".parse().unwrap();
    assert_eq!(service_waypoint(&c, [10, 96, 0, 1]), Some(want));
    assert_eq!(backend_waypoint(&c), Some(want));

    // It goes: so does the waypoint of its dependants.
    c.apply(
        Update {
            upserts: vec![],
            removals: vec![WP.into()],
        },
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(service_waypoint(&c, [10, 96, 0, 1]), None);
    assert_eq!(backend_waypoint(&c), None);
}

#[test]
fn a_restarted_compiler_gives_each_key_its_adopted_id_and_no_key_another_ones() {
    use crate::workload::records::owner_tag;
    const OTHER: &str = "default/other.default.svc.cluster.local";
    // What an earlier daemon left: web at service id 7, its workloads at
    // backends 3 and 4; a service gone from the new config at id 0; endpoint
    // entries without a record at id 2.
    let mut c = compiler();
    c.adopt_ids(
        &vec![
            (7, Some(owner_tag(SVC))),
            (0, Some(owner_tag("gone"))),
            (2, None),
        ],
        &vec![(3, Some(owner_tag("a"))), (4, Some(owner_tag("b")))],
    );
    c.apply(
        upsert(vec![
            // New keys first: they must not take the adopted ids.
            s(OTHER, [10, 96, 0, 2]),
            w("c", [10, 0, 0, 3]),
            s(SVC, [10, 96, 0, 1]),
            w("a", [10, 0, 0, 1]),
            w("b", [10, 0, 0, 2]),
        ]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    let plan = c.plan();
    assert_eq!(
        plan.frontends.get(&fa([10, 96, 0, 1])),
        Some(&FrontendTarget::Service(7))
    );
    let other = match plan.frontends.get(&fa([10, 96, 0, 2])) {
        Some(FrontendTarget::Service(id)) => *id,
        f => panic!("other: {f:?}"),
    };
    assert!(![0, 2, 7].contains(&other), "other got adopted id {other}");
    let backend_of = |name: &str| {
        plan.backends
            .iter()
            .find(|(_, b)| &*b.name == name)
            .map(|(id, _)| *id)
    };
    assert_eq!((backend_of("a"), backend_of("b")), (Some(3), Some(4)));
    assert!(![3, 4].contains(&backend_of("c").unwrap()));
    // Once the kernel caught up, the unclaimed ids are free again.
    c.kernel_caught_up();
    c.apply(
        upsert(vec![s(
            "default/third.default.svc.cluster.local",
            [10, 96, 0, 3],
        )]),
        &limits(),
        &NoDns,
    )
    .unwrap();
    assert_eq!(
        c.plan().frontends.get(&fa([10, 96, 0, 3])),
        Some(&FrontendTarget::Service(0))
    );
}
