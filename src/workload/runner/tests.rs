use crate::workload::key::Key;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prost::Message;

use super::*;
use crate::workload::compiler::CompilerSettings;
use crate::workload::proto::security::Authorization;
use crate::workload::proto::workload::address;
use crate::workload::resource::tests::{any, service, workload};

const SVC: &str = "default/web.default.svc.cluster.local";

#[derive(Default)]
struct Recorded {
    writes: Vec<PlanChanges>,
    fail_next: bool,
}

struct Recorder(Arc<Mutex<Recorded>>);

impl PlanSink for Recorder {
    fn write(&mut self, _plan: &Plan, changes: &PlanChanges) -> Result<(), String> {
        let mut r = self.0.lock().unwrap();
        if r.fail_next {
            r.fail_next = false;
            return Err("map update failed".into());
        }
        r.writes.push(changes.clone());
        Ok(())
    }
}

fn runner(limits: Limits) -> (DualEngineRunner, Arc<Mutex<Recorded>>) {
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let runner = DualEngineRunner::new(
        WorkloadCompiler::new(CompilerSettings::default()),
        Box::new(Recorder(recorded.clone())),
        limits,
        None,
        "test".into(),
    );
    (runner, recorded)
}

fn limits() -> Limits {
    Limits {
        max_frontends: 100,
        max_services: 10,
        max_endpoints: 100,
        max_backends: 100,
    }
}

fn wl(uid: &str, last: u8) -> (Key, Any) {
    (
        uid.into(),
        any(address::Type::Workload(workload(
            uid,
            [10, 0, 0, last],
            SVC,
        ))),
    )
}

fn svc() -> (Key, Any) {
    (
        SVC.into(),
        any(address::Type::Service(service(SVC, [10, 96, 0, 1]))),
    )
}

#[test]
fn a_bad_resource_is_nacked_by_name_and_the_good_ones_apply() {
    let (mut r, recorded) = runner(limits());
    let mut bad = workload("c1/pod/bad", [10, 0, 0, 9], SVC);
    bad.addresses = vec![vec![1, 2, 3]];
    let refusal = r
        .apply_delta(
            ADDRESS_TYPE_URL,
            vec![
                svc(),
                wl("c1/pod/a", 1),
                ("c1/pod/bad".into(), any(address::Type::Workload(bad))),
            ],
            vec![],
        )
        .unwrap_err();
    assert!(
        refusal
            .detail
            .contains("workload c1/pod/bad: addresses[0]: 3 bytes"),
        "{refusal:?}"
    );
    assert_eq!(
        refusal.refused_names,
        BTreeSet::from(["c1/pod/bad".to_string()])
    );
    assert!(r.holds("c1/pod/a") && !r.holds("c1/pod/bad"));
    assert_eq!(recorded.lock().unwrap().writes.len(), 1);
    assert_eq!(r.plan().services.len(), 1);
    assert!(r.dump_json()["rejected"]["workload c1/pod/bad"].is_string());

    // The fixed version clears the refusal.
    r.apply_delta(ADDRESS_TYPE_URL, vec![wl("c1/pod/bad", 9)], vec![])
        .unwrap();
    assert!(r.dump_json()["rejected"].as_object().unwrap().is_empty());
}

#[test]
fn the_first_write_activates_once_and_carries_everything() {
    let (mut r, recorded) = runner(limits());
    let activations = Arc::new(Mutex::new(0));
    let counter = activations.clone();
    r.on_first_write(Box::new(move || {
        *counter.lock().unwrap() += 1;
        Ok(())
    }));
    r.apply_delta(ADDRESS_TYPE_URL, vec![svc(), wl("c1/pod/a", 1)], vec![])
        .unwrap();
    r.apply_delta(ADDRESS_TYPE_URL, vec![wl("c1/pod/b", 2)], vec![])
        .unwrap();
    assert_eq!(*activations.lock().unwrap(), 1);
    let writes = &recorded.lock().unwrap().writes;
    assert_eq!(writes[0].services_upsert.len(), 1);
    assert_eq!(writes[1].backends_upsert.len(), 1, "then only the change");
    assert!(writes[1].frontends_upsert.len() == 1 && writes[1].services_upsert.len() == 1);
}

#[test]
fn after_a_failed_write_the_next_write_resends_the_whole_plan() {
    let (mut r, recorded) = runner(limits());
    r.apply_delta(ADDRESS_TYPE_URL, vec![svc(), wl("c1/pod/a", 1)], vec![])
        .unwrap();
    recorded.lock().unwrap().fail_next = true;
    let e = r
        .apply_delta(ADDRESS_TYPE_URL, vec![wl("c1/pod/b", 2)], vec![])
        .unwrap_err();
    assert!(e.detail.contains("map update failed"), "{e:?}");
    assert!(
        e.refused_names.is_empty(),
        "b is held; the next write resends it"
    );
    r.apply_delta(ADDRESS_TYPE_URL, vec![wl("c1/pod/c", 3)], vec![])
        .unwrap();
    let writes = &recorded.lock().unwrap().writes;
    let last = writes.last().unwrap();
    assert_eq!(last.backends_upsert.len(), 3, "a, b and c: everything");
}

#[test]
fn an_update_over_capacity_is_refused_whole() {
    let (mut r, recorded) = runner(Limits {
        max_backends: 1,
        ..limits()
    });
    let e = r
        .apply_delta(
            ADDRESS_TYPE_URL,
            vec![svc(), wl("c1/pod/a", 1), wl("c1/pod/b", 2)],
            vec![],
        )
        .unwrap_err();
    assert!(
        e.detail
            .contains("backends would need 2 entries, the limit is 1"),
        "{e:?}"
    );
    assert_eq!(e.refused_names.len(), 3, "none of the update is held");
    assert!(recorded.lock().unwrap().writes.is_empty());
    assert!(!r.holds("c1/pod/a"));
}

#[test]
fn the_file_is_the_whole_world_but_a_bad_item_keeps_its_old_version() {
    let (mut r, _) = runner(limits());
    let (_, s) = svc();
    let (_, a) = wl("c1/pod/a", 1);
    let (_, b) = wl("c1/pod/b", 2);
    r.apply_file(&[s.clone(), a.clone(), b]).unwrap();
    assert_eq!(r.plan().backends.len(), 2);

    let mut broken = workload("c1/pod/b", [10, 0, 0, 2], SVC);
    broken.addresses = vec![vec![0; 5]];
    let e = r
        .apply_file(&[s.clone(), any(address::Type::Workload(broken))])
        .unwrap_err();
    assert!(e.contains("workload c1/pod/b"), "{e}");
    assert!(!r.holds("c1/pod/a"), "a is no longer in the file");
    assert!(
        r.holds("c1/pod/b"),
        "b is broken in the file: its old version stays"
    );
    assert_eq!(r.plan().backends.len(), 1);
}

#[test]
fn authorizations_are_held_removed_and_validated() {
    let (mut r, _) = runner(limits());
    let policy = Authorization {
        name: "allow".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let good = Any {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        value: policy.encode_to_vec(),
    };
    r.apply_delta(
        AUTHORIZATION_TYPE_URL,
        vec![("default/allow".into(), good)],
        vec![],
    )
    .unwrap();
    assert!(r.dump_json()["authorizations"]["default/allow"].is_object());
    let bad = Any {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        value: Authorization {
            name: "x".into(),
            action: 9,
            ..Default::default()
        }
        .encode_to_vec(),
    };
    let e = r
        .apply_delta(
            AUTHORIZATION_TYPE_URL,
            vec![("default/x".into(), bad)],
            vec!["default/allow".into()],
        )
        .unwrap_err();
    assert!(e.detail.contains("action"), "{e:?}");
    assert!(!r.holds_authorization("default/x"));
    assert!(r.dump_json()["authorizations"]
        .as_object()
        .unwrap()
        .is_empty());
}

fn policy_any(name: &str) -> Any {
    Any {
        type_url: AUTHORIZATION_TYPE_URL.into(),
        value: Authorization {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    }
}

#[test]
fn a_file_that_does_not_fit_keeps_its_authorizations_too() {
    let (mut r, _) = runner(Limits {
        max_services: 1,
        ..limits()
    });
    let (_, s) = svc();
    r.apply_file(&[s.clone(), policy_any("old")]).unwrap();
    let other = any(address::Type::Service(service(
        "default/other",
        [10, 96, 0, 2],
    )));
    let e = r.apply_file(&[s, other, policy_any("new")]).unwrap_err();
    assert!(e.contains("services would need 2 entries"), "{e}");
    let dump = r.dump_json();
    assert!(dump["authorizations"]["default/old"].is_object(), "{dump}");
    assert!(dump["authorizations"]["default/new"].is_null(), "{dump}");
}

#[test]
fn an_unreadable_file_is_reported_in_the_dump() {
    let (mut r, _) = runner(limits());
    r.refuse("x.yaml: YAML/JSON syntax error".into());
    let dump = r.dump_json();
    assert_eq!(dump["last_update"]["source"], "test", "{dump}");
    assert!(
        dump["last_update"]["outcome"]
            .as_str()
            .unwrap()
            .contains("syntax error"),
        "{dump}"
    );
}
