//! `/debug/config_dump/bpf/kernel-native`: what is really in the maps, read
//! back through the pins and decoded, so it can be compared with the plan.

use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde::Serialize;

use super::records::{self, DecodedRecord};
use crate::bpf::kernel_native::{open_pinned_maps, pin_dir};
use crate::bpf::BpfError;

#[derive(Debug, Serialize)]
pub struct BpfDump {
    pub listeners: Vec<InnerDump>,
    pub clusters: Vec<InnerDump>,
    pub cluster_connections: Vec<ClusterConnections>,
    /// Pipeline counters summed over CPUs (see `enum kn_stat`).
    pub stats: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct InnerDump {
    /// `address:port` for listeners, the name for clusters.
    pub key: String,
    pub inner_map_id: u32,
    pub records: Vec<(u32, DecodedRecord)>,
}

#[derive(Debug, Serialize)]
pub struct ClusterConnections {
    pub cluster: String,
    pub active: u64,
    pub total: u64,
}

pub fn read(bpf_fs_path: &Path) -> Result<BpfDump, BpfError> {
    let maps = open_pinned_maps(&pin_dir(bpf_fs_path))?;
    let mut listeners = Vec::new();
    for key in maps.listeners.keys() {
        let shown = records::listener_key_from(&key)
            .map(|k| std::net::SocketAddr::new(k.addr, k.port).to_string())
            .unwrap_or_else(|| "<bad key>".into());
        if let Some(inner) = read_inner(
            &maps.listeners,
            &key,
            shown,
            records::decode_listener_record,
        )? {
            listeners.push(inner);
        }
    }
    let mut clusters = Vec::new();
    for key in maps.clusters.keys() {
        let shown = records::name_from(&key);
        if let Some(inner) =
            read_inner(&maps.clusters, &key, shown, records::decode_cluster_record)?
        {
            clusters.push(inner);
        }
    }
    listeners.sort_by(|a, b| a.key.cmp(&b.key));
    clusters.sort_by(|a, b| a.key.cmp(&b.key));

    let mut cluster_connections = Vec::new();
    for key in maps.cluster_conns.keys() {
        let value = maps
            .cluster_conns
            .lookup(&key, MapFlags::ANY)
            .map_err(BpfError::libbpf("reading kn_cluster_conns"))?;
        if let Some((active, total)) = value.as_deref().and_then(records::decode_cluster_conns) {
            cluster_connections.push(ClusterConnections {
                cluster: records::name_from(&key),
                active,
                total,
            });
        }
    }
    cluster_connections.sort_by(|a, b| a.cluster.cmp(&b.cluster));

    let mut stats = serde_json::Map::new();
    for (i, name) in records::KN_STAT_NAMES.iter().enumerate() {
        let per_cpu = maps
            .stats
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(BpfError::libbpf("reading kn_stats"))?
            .unwrap_or_default();
        let sum: u64 = per_cpu
            .iter()
            .filter_map(|v| {
                v.get(..8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            })
            .sum();
        stats.insert((*name).to_string(), sum.into());
    }
    Ok(BpfDump {
        listeners,
        clusters,
        cluster_connections,
        stats,
    })
}

/// Follow an outer entry to its inner map and decode every record. An entry
/// removed between listing and reading is skipped.
fn read_inner(
    outer: &MapHandle,
    key: &[u8],
    shown: String,
    decode: fn(&[u8]) -> DecodedRecord,
) -> Result<Option<InnerDump>, BpfError> {
    let Some(id) = outer
        .lookup(key, MapFlags::ANY)
        .map_err(BpfError::libbpf(format!("reading outer entry {shown}")))?
    else {
        return Ok(None);
    };
    let Ok(id_bytes) = <[u8; 4]>::try_from(id.as_slice()) else {
        return Ok(None);
    };
    let inner_map_id = u32::from_ne_bytes(id_bytes);
    let inner = match MapHandle::from_map_id(inner_map_id) {
        Ok(m) => m,
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BpfError::libbpf(format!("opening inner map of {shown}"))(e)),
    };
    let mut recs = Vec::new();
    for k in inner.keys() {
        let Ok(index_bytes) = <[u8; 4]>::try_from(k.as_slice()) else {
            continue;
        };
        if let Some(v) = inner
            .lookup(&k, MapFlags::ANY)
            .map_err(BpfError::libbpf(format!("reading inner map of {shown}")))?
        {
            recs.push((u32::from_ne_bytes(index_bytes), decode(&v)));
        }
    }
    recs.sort_by_key(|(i, _)| *i);
    Ok(Some(InnerDump {
        key: shown,
        inner_map_id,
        records: recs,
    }))
}
