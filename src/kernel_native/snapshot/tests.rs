#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::kernel_native::compiler::NoDns;
use crate::xds::file::parse_resources;

fn snapshot(yaml: &str) -> Snapshot {
    Snapshot::from_anys(parse_resources(yaml).unwrap_or_else(|e| panic!("{e}")))
}

fn listener(name: &str, addr: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: {name}
  address: {{ socket_address: {{ address: {addr}, port_value: {port} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: {cluster} }}"#
    )
}

fn eds_cluster(name: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {name}
  type: EDS"#
    )
}

fn cla(name: &str, endpoints: &[&str]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|ip| {
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: 8080 }} }} }} }}"
            )
        })
        .collect();
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {name}
  endpoints: [{{ lb_endpoints: [{}] }}]"#,
        eps.join(", ")
    )
}

/// `n` services: a listener, an EDS cluster and its assignment each.
fn world(n: usize, extra: &str) -> String {
    let mut out = String::from("resources:");
    for i in 0..n {
        let name = format!("svc{i}");
        out += &listener(&name, &format!("10.96.0.{}", i + 1), 80, &name);
        out += &eds_cluster(&name);
        out += &cla(&name, &[&format!("10.0.{i}.1"), &format!("10.0.{i}.2")]);
    }
    out + extra
}

fn limits() -> Limits {
    Limits::default()
}

/// Stage and commit; the plan must equal a from-scratch compile of what is
/// in force, and that compile must reject nothing.
fn apply(state: &mut ConfigState, yaml: &str) -> (Vec<ResourceError>, Changed) {
    let staged = state.stage(&snapshot(yaml), &limits(), &NoDns).unwrap();
    let rejected = staged.rejected.clone();
    let changed = state.commit(staged);
    assert_from_scratch(state);
    (rejected, changed)
}

fn assert_from_scratch(state: &ConfigState) {
    let scratch = compiler::compile(&state.accepted_resources(), &NoDns);
    assert_eq!(scratch.rejected, [], "what is in force compiles cleanly");
    assert_eq!(state.plan(), &scratch.plan);
}

fn names(rejected: &[ResourceError]) -> Vec<(ResourceKind, &str)> {
    rejected.iter().map(|e| (e.kind, e.name.as_str())).collect()
}

#[test]
fn a_changed_assignment_recompiles_only_its_cluster() {
    let mut state = ConfigState::default();
    let (rejected, changed) = apply(&mut state, &world(3, ""));
    assert_eq!(rejected, []);
    assert_eq!(changed.clusters, ["svc0", "svc1", "svc2"]);
    assert_eq!(changed.listeners.len(), 3);

    let update = world(3, "").replace(
        "address: 10.0.1.2, port_value: 8080 } } } }",
        "address: 10.0.1.2, port_value: 8080 } } } }, { endpoint: { address: { socket_address: { address: 10.0.1.3, port_value: 8080 } } } }",
    );
    let staged = state.stage(&snapshot(&update), &limits(), &NoDns).unwrap();
    assert_eq!(staged.delta.clusters.keys().collect::<Vec<_>>(), ["svc1"]);
    assert!(staged.delta.listeners.is_empty());
    state.commit(staged);
    assert_eq!(
        state.plan().clusters["svc1"].levels_v4[0].endpoints.len(),
        3
    );
    assert_from_scratch(&state);

    // The same snapshot again changes nothing.
    let staged = state.stage(&snapshot(&update), &limits(), &NoDns).unwrap();
    assert_eq!(staged.delta, PlanDelta::default());
}

#[test]
fn a_rejected_resource_keeps_its_previous_version() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(2, ""));
    let before = state.plan().clone();

    // svc0's listener gets port 0, svc1's assignment a zero weight.
    let bad = world(2, "")
        .replace(
            "address: 10.96.0.1, port_value: 80",
            "address: 10.96.0.1, port_value: 0",
        )
        .replace(
            "address: 10.0.1.2, port_value: 8080 } } }",
            "address: 10.0.1.2, port_value: 8080 } } }, load_balancing_weight: 0",
        );
    let (rejected, _) = apply(&mut state, &bad);
    assert_eq!(
        names(&rejected),
        [
            (ResourceKind::ClusterLoadAssignment, "svc1"),
            (ResourceKind::Listener, "svc0")
        ]
    );
    assert_eq!(state.plan(), &before);

    // Sent again unchanged: still refused (and NACKed), still the old version.
    let staged = state.stage(&snapshot(&bad), &limits(), &NoDns).unwrap();
    assert_eq!(names(&staged.rejected).len(), 2);
    assert_eq!(staged.delta, PlanDelta::default());

    // Fixed: the refusals go, the plan is as before.
    let (rejected, _) = apply(&mut state, &world(2, ""));
    assert_eq!(rejected, []);
    assert_eq!(state.plan(), &before);
}

#[test]
fn a_new_resource_that_is_rejected_is_not_added() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(1, ""));
    let extra = listener("zz-bad", "10.96.0.9", 0, "svc0");
    let (rejected, changed) = apply(&mut state, &world(1, &extra));
    assert_eq!(names(&rejected), [(ResourceKind::Listener, "zz-bad")]);
    assert!(changed.listeners.is_empty());
}

#[test]
fn absent_resources_are_removed() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(3, ""));
    let (_, changed) = apply(&mut state, &world(2, ""));
    assert_eq!(changed.clusters, ["svc2"]);
    assert_eq!(changed.listeners.len(), 1);
    assert!(!state.plan().clusters.contains_key("svc2"));
    assert_eq!(state.plan().listeners.len(), 2);
    assert!(!state.readers.contains_key("svc2"));
}

#[test]
fn an_address_freed_by_one_listener_goes_to_the_one_refused_for_it() {
    let mut state = ConfigState::default();
    let clash = listener("z-second", "10.96.0.1", 80, "svc0");
    let (rejected, _) = apply(&mut state, &world(1, &clash));
    assert_eq!(names(&rejected), [(ResourceKind::Listener, "z-second")]);

    // svc0's listener leaves (its cluster stays): z-second takes the address.
    let only_b = format!(
        "resources:{}{}{}",
        clash,
        eds_cluster("svc0"),
        cla("svc0", &["10.0.0.1"])
    );
    let (rejected, _) = apply(&mut state, &only_b);
    assert_eq!(rejected, []);
    let l: Vec<&str> = state
        .plan()
        .listeners
        .values()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(l, ["z-second"]);
}

#[test]
fn a_snapshot_over_capacity_changes_nothing() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(2, ""));
    let before = state.plan().clone();
    let small = Limits {
        max_clusters: 2,
        ..Limits::default()
    };
    let err = state
        .stage(&snapshot(&world(3, "")), &small, &NoDns)
        .unwrap_err();
    assert!(err.to_string().contains("3 clusters > capacity 2"), "{err}");
    assert_eq!(state.plan(), &before);
    // The same snapshot is staged in full the next time (nothing was taken).
    let staged = state
        .stage(&snapshot(&world(3, "")), &limits(), &NoDns)
        .unwrap();
    assert_eq!(staged.delta.clusters.len(), 1);
}

#[test]
fn excluded_clusters_count_as_absent() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(2, ""));
    let mut s = snapshot(&world(2, ""));
    s.excluded_clusters.insert("svc1".into());
    let staged = state.stage(&s, &limits(), &NoDns).unwrap();
    assert_eq!(staged.delta.clusters, [("svc1".into(), None)].into());
    state.commit(staged);
    assert_from_scratch(&state);
}

#[test]
fn a_name_repeated_in_one_snapshot_keeps_the_version_in_force() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(1, ""));
    let before = state.plan().clone();
    let twice = world(1, &listener("svc0", "10.96.0.7", 80, "svc0")).replace(
        "address: 10.96.0.1, port_value: 80",
        "address: 10.96.0.2, port_value: 80",
    );
    let (rejected, _) = apply(&mut state, &twice);
    assert_eq!(names(&rejected), [(ResourceKind::Listener, "svc0")]);
    assert_eq!(state.plan(), &before);
}

#[test]
fn unchanged_kinds_are_not_walked() {
    let mut state = ConfigState::default();
    let s = snapshot(&world(2, ""));
    let staged = state.stage(&s, &limits(), &NoDns).unwrap();
    state.commit(staged);
    // Same maps (same generations): nothing to look at, nothing changes.
    let staged = state.stage(&s, &limits(), &NoDns).unwrap();
    assert_eq!(staged.delta, PlanDelta::default());
    assert!(staged.clusters.is_empty() && staged.listeners.is_empty());
}

#[test]
fn the_state_keeps_bytes_not_decoded_clusters_and_decodes_them_again_when_needed() {
    let mut state = ConfigState::default();
    apply(&mut state, &world(2, ""));
    let decoded = state
        .clusters
        .values()
        .filter(|s| s.accepted.as_ref().unwrap().value.decoded.is_some())
        .count()
        + state
            .load_assignments
            .values()
            .filter(|s| s.accepted.as_ref().unwrap().value.decoded.is_some())
            .count();
    assert_eq!(decoded, 0, "decoded forms are dropped at commit");

    // The cluster changes, its (unchanged) assignment is read from its bytes.
    let random = world(2, "").replacen(
        "name: svc1\n  type: EDS",
        "name: svc1\n  type: EDS\n  lb_policy: RANDOM",
        1,
    );
    assert_ne!(random, world(2, ""));
    let (_, changed) = apply(&mut state, &random);
    assert_eq!(changed.clusters, ["svc1"]);
    let svc1 = &state.plan().clusters["svc1"];
    assert_eq!(svc1.lb_policy, crate::kernel_native::plan::LbPolicy::Random);
    assert_eq!(svc1.levels_v4[0].endpoints.len(), 2);
}

#[test]
fn a_stage_reuses_what_an_earlier_stage_decoded() {
    let state = ConfigState::default();
    let s = snapshot(&world(3, ""));
    let first = state.stage(&s, &limits(), &NoDns).unwrap();
    let second = state
        .stage_after(&s, &limits(), &NoDns, Some(&first))
        .unwrap();
    assert_eq!(first.delta, second.delta);
    let outcome = |st: &Staged| match st.clusters["svc1"].as_ref().unwrap().outcome.as_ref() {
        Ok(v) => v.clone(),
        Err(e) => panic!("{e}"),
    };
    assert!(
        Arc::ptr_eq(&outcome(&first), &outcome(&second)),
        "decoded once"
    );
    // A fresh copy of the bytes (another Arc, e.g. a re-read file) is
    // decoded anew: reuse goes by pointer, which costs nothing to check.
    let fresh = state
        .stage_after(&snapshot(&world(3, "")), &limits(), &NoDns, Some(&first))
        .unwrap();
    assert!(!Arc::ptr_eq(&outcome(&first), &outcome(&fresh)));
}
