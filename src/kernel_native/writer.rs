//! Apply a compiled plan to the kernel-native maps, make-before-break.
//!
//! Every listener and cluster that changed gets a fresh inner map, filled
//! completely, then published with one update of the outer map; the kernel
//! frees the old inner map once the outer map lets go of it. A connect sees
//! either the old resource or the new one, never a mix. Resources that left
//! the plan are deleted from the outer maps after the new ones are in.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::plan::{CompiledCluster, CompiledListener, ListenerKey, Plan};
use super::records;
use crate::bpf::kernel_native::KernelNativeMaps;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("creating the inner map of {what}: {source}")]
    CreateInner {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("writing record {index} of {what}: {source}")]
    Record {
        what: String,
        index: u32,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("publishing {what} in {map}: {source}")]
    Publish {
        what: String,
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("removing {what} from {map}: {source}")]
    Remove {
        what: String,
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
}

/// What one apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    pub listeners_written: usize,
    pub listeners_removed: usize,
    pub clusters_written: usize,
    pub clusters_removed: usize,
}

/// Owns the maps and remembers what it last wrote, so an apply writes only the difference.
pub struct MapWriter {
    maps: KernelNativeMaps,
    listeners: BTreeMap<ListenerKey, CompiledListener>,
    clusters: BTreeMap<String, CompiledCluster>,
}

impl MapWriter {
    pub fn new(maps: KernelNativeMaps) -> Self {
        Self {
            maps,
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
        }
    }

    /// Bring the maps to `plan`. Clusters go in before the listeners that may
    /// name them; removals come last. On error, what was written stays
    /// consistent per resource and the next apply retries the rest.
    pub fn apply(&mut self, plan: &Plan) -> Result<WriteStats, WriteError> {
        let mut stats = WriteStats::default();
        for (name, cluster) in &plan.clusters {
            if self.clusters.get(name) == Some(cluster) {
                continue;
            }
            let what = format!("cluster {name:?}");
            publish(
                &self.maps.clusters,
                "kn_clusters",
                &records::name_key(name),
                &what,
                records::CLUSTER_RECORD_SIZE,
                &records::cluster_records(cluster),
            )?;
            // A cluster whose contents changed keeps its connection counter.
            self.clusters.insert(name.clone(), cluster.clone());
            stats.clusters_written += 1;
        }
        for (key, listener) in &plan.listeners {
            if self.listeners.get(key) == Some(listener) {
                continue;
            }
            let what = format!("listener {:?} at {}", listener.name, display_key(key));
            publish(
                &self.maps.listeners,
                "kn_listeners",
                &records::listener_key(key),
                &what,
                records::LISTENER_RECORD_SIZE,
                &records::listener_records(listener),
            )?;
            self.listeners.insert(*key, listener.clone());
            stats.listeners_written += 1;
        }
        let gone: Vec<ListenerKey> = self
            .listeners
            .keys()
            .filter(|k| !plan.listeners.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            remove(
                &self.maps.listeners,
                "kn_listeners",
                &records::listener_key(&key),
                &display_key(&key),
            )?;
            self.listeners.remove(&key);
            stats.listeners_removed += 1;
        }
        let gone: Vec<String> = self
            .clusters
            .keys()
            .filter(|k| !plan.clusters.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            let key = records::name_key(&name);
            remove(&self.maps.clusters, "kn_clusters", &key, &name)?;
            // Its connection counter goes with it; a missing one is fine.
            let _ = self.maps.cluster_conns.delete(&key);
            self.clusters.remove(&name);
            stats.clusters_removed += 1;
        }
        Ok(stats)
    }
}

fn display_key(key: &ListenerKey) -> String {
    std::net::SocketAddr::new(key.addr, key.port).to_string()
}

/// Fill a fresh inner map with `recs` and swap it into `outer` under `key`.
fn publish(
    outer: &MapHandle,
    map: &'static str,
    key: &[u8],
    what: &str,
    record_size: usize,
    recs: &[(u32, Vec<u8>)],
) -> Result<(), WriteError> {
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let inner = MapHandle::create(
        MapType::Hash,
        Some("kn_inner"),
        4,
        record_size as u32,
        recs.len().max(1) as u32,
        &opts,
    )
    .map_err(|source| WriteError::CreateInner {
        what: what.to_string(),
        source,
    })?;
    for (index, value) in recs {
        inner
            .update(&index.to_ne_bytes(), value, MapFlags::ANY)
            .map_err(|source| WriteError::Record {
                what: what.to_string(),
                index: *index,
                source,
            })?;
    }
    let fd = inner.as_fd().as_raw_fd() as u32;
    outer
        .update(key, &fd.to_ne_bytes(), MapFlags::ANY)
        .map_err(|source| WriteError::Publish {
            what: what.to_string(),
            map,
            source,
        })
    // `inner` is closed here; the outer map holds the only reference now.
}

fn remove(outer: &MapHandle, map: &'static str, key: &[u8], what: &str) -> Result<(), WriteError> {
    match outer.delete(key) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(WriteError::Remove {
            what: what.to_string(),
            map,
            source,
        }),
    }
}
