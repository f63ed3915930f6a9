//! The dual-engine example files (`examples/dual-engine/*.yaml`, used by
//! docs/dual-engine.md and the validation guides) parse, every resource in
//! them is accepted, and they compile to the plan the docs describe. No
//! root needed: this is the daemon's file path up to the map writer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kmesh::dns::NoDns;
use kmesh::workload::authorization::decode_authorization;
use kmesh::workload::compiler::{CompilerSettings, Limits, Update, WorkloadCompiler};
use kmesh::workload::plan::LbPolicy;
use kmesh::workload::proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use kmesh::workload::resource::decode_address;
use kmesh::xds::file::parse_resources;

const LIMITS: Limits = Limits {
    max_frontends: 1 << 20,
    max_services: 1 << 16,
    max_endpoints: 1 << 20,
    max_backends: 1 << 19,
};

/// Parses and compiles one example as the daemon would (node `node-a`, no
/// DNS answers); returns the compiler and how many authorizations it had.
fn compile(name: &str) -> (WorkloadCompiler, usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/dual-engine")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let resources = parse_resources(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut update = Update::default();
    let mut authorizations = 0;
    for any in &resources {
        match any.type_url.as_str() {
            ADDRESS_TYPE_URL => update.upserts.push((
                None,
                decode_address(any, None).unwrap_or_else(|e| panic!("{name}: {e}")),
            )),
            AUTHORIZATION_TYPE_URL => {
                decode_authorization(any, None).unwrap_or_else(|e| panic!("{name}: {e}"));
                authorizations += 1;
            }
            other => panic!("{name}: unexpected type {other}"),
        }
    }
    let mut compiler = WorkloadCompiler::new(CompilerSettings {
        node_name: "node-a".into(),
        ..CompilerSettings::default()
    });
    compiler
        .apply(update, &LIMITS, &NoDns)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (compiler, authorizations)
}

fn only_policy(compiler: &WorkloadCompiler) -> LbPolicy {
    let services: Vec<_> = compiler.plan().services.values().collect();
    assert_eq!(services.len(), 1, "{services:?}");
    services[0].policy
}

#[test]
fn web_has_one_service_two_backends_and_one_authorization() {
    let (compiler, authorizations) = compile("web.yaml");
    assert_eq!(authorizations, 1);
    let plan = compiler.plan();
    assert_eq!(plan.backends.len(), 2);
    let svc = plan.services.values().next().unwrap();
    assert_eq!(svc.ports, vec![80, 443]);
    // web-1 twice (capacity 2) + web-2 over IPv4; web-1 twice over IPv6.
    assert_eq!(svc.level(0, 0).len(), 3);
    assert_eq!(svc.level(1, 0).len(), 2);
}

#[test]
fn locality_buckets_the_four_workloads_by_zone_and_region_from_node_a() {
    let (compiler, _) = compile("locality.yaml");
    assert_eq!(only_policy(&compiler), LbPolicy::Failover);
    assert_eq!(&*compiler.local_locality().zone, "zone-a");
    let svc = compiler.plan().services.values().next().unwrap();
    let sizes: Vec<usize> = (0..3).map(|p| svc.level(0, p).len()).collect();
    assert_eq!(sizes, vec![2, 1, 1]);
}

#[test]
fn service_entry_examples_compile_to_static_passthrough_and_dns() {
    let (stat, _) = compile("service-entry-static.yaml");
    assert_eq!(only_policy(&stat), LbPolicy::Random);
    assert_eq!(stat.plan().endpoint_entries(), 2);

    let (none, _) = compile("service-entry-none.yaml");
    assert_eq!(only_policy(&none), LbPolicy::Passthrough);
    assert_eq!(none.plan().endpoint_entries(), 0);

    let (dns, _) = compile("service-entry-dns.yaml");
    assert_eq!(only_policy(&dns), LbPolicy::Random);
    assert_eq!(dns.hostnames(), vec!["db.external.test".to_string()]);
}
