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
    /// Circuit breaking: connections held per (client netns, cluster).
    pub netns_connections: Vec<NetnsConnections>,
    /// Connections held per endpoint (LEAST_REQUEST reads these).
    pub endpoint_connections: Vec<EndpointConnections>,
    /// Local rate limit token buckets per (client netns, listener, filter).
    pub rate_limit_buckets: Vec<RateLimitBucket>,
    /// Outlier detection per endpoint: failures and ejections.
    pub outliers: Vec<Outlier>,
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
    /// Connects refused by the cluster's max_connections (all client netns).
    pub cx_overflow: u64,
}

#[derive(Debug, Serialize)]
pub struct NetnsConnections {
    pub netns_cookie: u64,
    pub cluster: String,
    pub active: u64,
    pub overflow: u64,
}

#[derive(Debug, Serialize)]
pub struct EndpointConnections {
    pub cluster: String,
    pub address: String,
    pub active: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct Outlier {
    pub cluster: String,
    pub address: String,
    /// Consecutive failed connects.
    pub failures: u32,
    pub times_ejected: u32,
    pub ejections: u64,
    /// Milliseconds left of the current ejection; 0: not ejected.
    pub ejected_for_ms: u64,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

#[derive(Debug, Serialize)]
pub struct RateLimitBucket {
    pub netns_cookie: u64,
    pub listener: String,
    pub filter: u32,
    pub tokens: u64,
    pub limited: u64,
}

type Entry = (Vec<u8>, Vec<u8>);

/// Every (key, value) of a map (entries removed while listing are skipped).
fn entries(map: &MapHandle, what: &str) -> Result<Vec<Entry>, BpfError> {
    let mut out = Vec::new();
    for key in map.keys() {
        if let Some(v) = map
            .lookup(&key, MapFlags::ANY)
            .map_err(BpfError::libbpf(format!("reading {what}")))?
        {
            out.push((key, v));
        }
    }
    Ok(out)
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
            read_inner(&maps.clusters, &key, shown, records::decode_cluster_record)?.map(|mut d| {
                d.records = records::summarise_hash_tables(d.records);
                d
            })
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
        if let Some((active, total, cx_overflow)) =
            value.as_deref().and_then(records::decode_cluster_conns)
        {
            cluster_connections.push(ClusterConnections {
                cluster: records::name_from(&key),
                active,
                total,
                cx_overflow,
            });
        }
    }
    cluster_connections.sort_by(|a, b| a.cluster.cmp(&b.cluster));

    let mut netns_connections = Vec::new();
    for (k, v) in entries(&maps.netns_conns, "kn_netns_conns")? {
        if let (Some((netns_cookie, cluster)), Some((active, overflow))) = (
            records::decode_netns_cluster_key(&k),
            records::decode_netns_conns(&v),
        ) {
            netns_connections.push(NetnsConnections {
                netns_cookie,
                cluster,
                active,
                overflow,
            });
        }
    }
    netns_connections
        .sort_by(|a, b| (&a.cluster, a.netns_cookie).cmp(&(&b.cluster, b.netns_cookie)));

    let mut endpoint_connections = Vec::new();
    for (k, v) in entries(&maps.endpoint_conns, "kn_endpoint_conns")? {
        if let (Some((cluster, addr, port)), Some((active, total))) = (
            records::decode_endpoint_key(&k),
            records::decode_endpoint_conns(&v),
        ) {
            endpoint_connections.push(EndpointConnections {
                cluster,
                address: std::net::SocketAddr::new(addr, port).to_string(),
                active,
                total,
            });
        }
    }
    endpoint_connections.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));

    let mut rate_limit_buckets = Vec::new();
    for (k, v) in entries(&maps.rl_buckets, "kn_rl_buckets")? {
        if let (Some((netns_cookie, listener, filter)), Some((tokens, limited))) =
            (records::decode_rl_key(&k), records::decode_rl_bucket(&v))
        {
            rate_limit_buckets.push(RateLimitBucket {
                netns_cookie,
                listener: std::net::SocketAddr::new(listener.addr, listener.port).to_string(),
                filter,
                tokens,
                limited,
            });
        }
    }
    rate_limit_buckets.sort_by(|a, b| {
        (&a.listener, a.filter, a.netns_cookie).cmp(&(&b.listener, b.filter, b.netns_cookie))
    });

    let now = monotonic_ns();
    let mut outliers = Vec::new();
    for (k, v) in entries(&maps.outliers, "kn_outliers")? {
        if let (Some((cluster, addr, port)), Some((until, failures, times_ejected, ejections))) = (
            records::decode_endpoint_key(&k),
            records::decode_outlier(&v),
        ) {
            outliers.push(Outlier {
                cluster,
                address: std::net::SocketAddr::new(addr, port).to_string(),
                failures,
                times_ejected,
                ejections,
                ejected_for_ms: until.saturating_sub(now) / 1_000_000,
            });
        }
    }
    outliers.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));

    let mut stats = serde_json::Map::new();
    for (name, total) in pipeline_counters(&maps.stats)? {
        stats.insert(name.to_string(), total.into());
    }
    Ok(BpfDump {
        listeners,
        clusters,
        cluster_connections,
        netns_connections,
        endpoint_connections,
        rate_limit_buckets,
        outliers,
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

/// The pipeline counters of `kn_stats` (`enum kn_stat`), summed over CPUs.
pub fn pipeline_counters(stats: &MapHandle) -> Result<Vec<(&'static str, u64)>, BpfError> {
    let mut out = Vec::with_capacity(records::KN_STAT_NAMES.len());
    for (i, name) in records::KN_STAT_NAMES.iter().enumerate() {
        let per_cpu = stats
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(BpfError::libbpf("reading kn_stats"))?
            .unwrap_or_default();
        let total = per_cpu
            .iter()
            .filter_map(|v| {
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_ne_bytes)
            })
            .sum();
        out.push((*name, total));
    }
    Ok(out)
}
