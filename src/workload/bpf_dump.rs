//! `/debug/config_dump/bpf/dual-engine`: what is really in the dual-engine
//! maps, read back and decoded (addresses as text, ports as numbers, policies
//! by name), so it can be compared with the plan.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::plan::{FrontendTarget, MAX_PORTS, MAX_PRIORITIES};
use super::records::{self as rec, EndpointKey};
use crate::bpf::batch;
use crate::bpf::dual_engine::{
    DualEngineMaps, MAP_BACKENDS, MAP_COUNTERS, MAP_ENDPOINTS, MAP_FRONTENDS, MAP_SERVICES,
};
use crate::bpf::BpfError;

const FAMILY_NAMES: [&str; 2] = ["v4", "v6"];

fn read(map: &libbpf_rs::MapHandle, name: &str) -> Result<Vec<batch::Entry>, BpfError> {
    batch::read_all(map).map_err(BpfError::libbpf(format!("reading {name}")))
}

/// Every entry of the four lookup maps, and the counters summed over CPUs.
///
/// Endpoint entries are shown under their service, by family and priority,
/// when the service record's live slot and counts cover them; any other
/// entry (the spare slot while an update is under way, leftovers) is listed
/// under `other_endpoints`, so a dump of a settled data plane shows none.
pub fn dump(maps: &DualEngineMaps) -> Result<Value, BpfError> {
    let mut frontends = Vec::new();
    for (k, v) in read(&maps.frontends, MAP_FRONTENDS)? {
        let address = rec::frontend_from(&k).map(rec::unmap);
        let (kind, id) = match rec::decode_frontend_value(&v) {
            Some(FrontendTarget::Service(id)) => ("service", Some(id)),
            Some(FrontendTarget::Workload(id)) => ("workload", Some(id)),
            None => ("unknown", None),
        };
        frontends.push((
            address,
            json!({
                "address": address.map(|a| a.to_string()),
                "kind": kind,
                "id": id,
            }),
        ));
    }
    frontends.sort_by_key(|(a, _)| *a);

    // Endpoint entries by key, to hang under their services.
    let mut endpoints: BTreeMap<EndpointKey, Vec<u8>> = BTreeMap::new();
    for (k, v) in read(&maps.endpoints, MAP_ENDPOINTS)? {
        if let Some(key) = rec::decode_endpoint_key(&k) {
            endpoints.insert(key, v);
        }
    }

    let mut services = BTreeMap::new();
    for (k, v) in read(&maps.services, MAP_SERVICES)? {
        let (Some(id), Some(svc)) = (rec::id_from(&k), rec::decode_service_value(&v)) else {
            continue;
        };
        let port_count = svc.ports.len();
        let mut by_family = serde_json::Map::new();
        for (family, name) in FAMILY_NAMES.iter().enumerate() {
            let mut levels = Vec::new();
            for priority in 0..MAX_PRIORITIES {
                let count = svc.counts[family][priority];
                let level: Vec<Value> = (0..count)
                    .map(|index| {
                        let key = EndpointKey {
                            service: id,
                            slot: svc.slot,
                            family: family as u8,
                            priority: priority as u8,
                            index,
                        };
                        match endpoints.remove(&key) {
                            Some(v) => endpoint_json(&v, port_count),
                            None => json!({ "missing": true }),
                        }
                    })
                    .collect();
                levels.push(Value::Array(level));
            }
            // Trailing empty priorities say nothing.
            while levels
                .last()
                .is_some_and(|l| l.as_array().is_some_and(Vec::is_empty))
            {
                levels.pop();
            }
            by_family.insert((*name).to_string(), Value::Array(levels));
        }
        services.insert(
            id,
            json!({
                "id": id,
                "policy": rec::policy_name(svc.policy),
                "slot": svc.slot,
                "ports": svc.ports,
                "waypoint": svc.waypoint.map(|w| w.to_string()),
                "endpoints": by_family,
            }),
        );
    }

    let other_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(key, v)| {
            let mut e = endpoint_json(v, MAX_PORTS);
            if let Some(obj) = e.as_object_mut() {
                obj.insert("service".into(), json!(key.service));
                obj.insert("slot".into(), json!(key.slot));
                obj.insert(
                    "family".into(),
                    json!(FAMILY_NAMES.get(usize::from(key.family)).unwrap_or(&"?")),
                );
                obj.insert("priority".into(), json!(key.priority));
                obj.insert("index".into(), json!(key.index));
            }
            e
        })
        .collect();

    let mut backends = BTreeMap::new();
    for (k, v) in read(&maps.backends, MAP_BACKENDS)? {
        let (Some(id), Some(b)) = (rec::id_from(&k), rec::decode_backend_value(&v)) else {
            continue;
        };
        backends.insert(
            id,
            json!({
                "id": id,
                "v4": b.v4.map(|a| a.to_string()),
                "v6": b.v6.map(|a| a.to_string()),
                "waypoint": b.waypoint.map(|w| w.to_string()),
            }),
        );
    }

    Ok(json!({
        "frontends": frontends.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "services": services.into_values().collect::<Vec<_>>(),
        "other_endpoints": other_endpoints,
        "backends": backends.into_values().collect::<Vec<_>>(),
        "counters": counters(maps)?,
    }))
}

/// `{backend, target_ports}` of an endpoint entry (target ports for the
/// service's `port_count` ports; 0 = the service port itself).
fn endpoint_json(value: &[u8], port_count: usize) -> Value {
    match rec::decode_endpoint_value(value) {
        Some((backend, ports)) => json!({
            "backend": backend,
            "target_ports": ports[..port_count.min(MAX_PORTS)].to_vec(),
        }),
        None => json!({ "undecodable": true }),
    }
}

/// `enum de_counter`, summed over CPUs, by name (dump and metrics).
pub fn counter_totals(maps: &DualEngineMaps) -> Result<Vec<(&'static str, u64)>, BpfError> {
    rec::COUNTER_NAMES
        .iter()
        .enumerate()
        .map(|(index, name)| {
            batch::percpu_sum(&maps.counters, index as u32)
                .map(|total| (*name, total))
                .map_err(BpfError::libbpf(format!("reading {MAP_COUNTERS}")))
        })
        .collect()
}

/// The counters as a JSON object.
pub fn counters(maps: &DualEngineMaps) -> Result<Value, BpfError> {
    let mut out = serde_json::Map::new();
    for (name, total) in counter_totals(maps)? {
        out.insert(name.to_string(), json!(total));
    }
    Ok(Value::Object(out))
}
