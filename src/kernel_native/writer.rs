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
    #[error("writing the records of {what}: {source}")]
    Records {
        what: String,
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

/// Inner maps built (each an open file descriptor) before one batch publish:
/// large enough that the per-batch RCU wait is rare, small enough to stay
/// well under the open-files limit.
const PUBLISH_CHUNK: usize = 512;

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
    /// Keys found in the maps at start (an earlier daemon's configuration):
    /// the first apply rewrites what the plan has and deletes the rest.
    adopted_listeners: Vec<Vec<u8>>,
    adopted_clusters: Vec<Vec<u8>>,
}

impl MapWriter {
    pub fn new(maps: KernelNativeMaps) -> Self {
        let adopted_listeners: Vec<Vec<u8>> = maps.listeners.keys().collect();
        let adopted_clusters: Vec<Vec<u8>> = maps.clusters.keys().collect();
        if !adopted_listeners.is_empty() || !adopted_clusters.is_empty() {
            tracing::info!(
                listeners = adopted_listeners.len(),
                clusters = adopted_clusters.len(),
                "maps hold an earlier configuration: reconciling it with the first update"
            );
        }
        Self {
            maps,
            listeners: BTreeMap::new(),
            clusters: BTreeMap::new(),
            adopted_listeners,
            adopted_clusters,
        }
    }

    /// Bring the maps to `plan`. Clusters go in before the listeners that may
    /// name them; removals come last. Each outer map is updated with one batch
    /// call: the kernel waits for an RCU grace period after every update of a
    /// map-in-map (milliseconds), so per-entry updates would make a large push
    /// take seconds. On error the next apply rewrites what is not known to be in.
    pub fn apply(&mut self, plan: &Plan) -> Result<WriteStats, WriteError> {
        let mut stats = WriteStats::default();

        let clusters: Vec<(&String, &CompiledCluster)> = plan
            .clusters
            .iter()
            .filter(|(name, c)| self.clusters.get(*name) != Some(*c))
            .filter(|(name, _)| !self.keep_adopted(plan, name))
            .collect();
        for chunk in clusters.chunks(PUBLISH_CHUNK) {
            let mut staged = Vec::with_capacity(chunk.len());
            for (name, cluster) in chunk {
                let what = format!("cluster {name:?}");
                let records = records::cluster_records(cluster);
                let inner = build_inner(&what, records::CLUSTER_RECORD_SIZE, &records)?;
                staged.push((records::name_key(name), inner));
            }
            publish_all(&self.maps.clusters, "kn_clusters", &staged)?;
            for (name, cluster) in chunk {
                self.clusters.insert((*name).clone(), (*cluster).clone());
            }
            stats.clusters_written += chunk.len();
        }

        let listeners: Vec<(&ListenerKey, &CompiledListener)> = plan
            .listeners
            .iter()
            .filter(|(key, l)| self.listeners.get(*key) != Some(*l))
            .collect();
        for chunk in listeners.chunks(PUBLISH_CHUNK) {
            let mut staged = Vec::with_capacity(chunk.len());
            for (key, listener) in chunk {
                let what = format!("listener {:?} at {}", listener.name, display_key(key));
                let records = records::listener_records(listener);
                let inner = build_inner(&what, records::LISTENER_RECORD_SIZE, &records)?;
                staged.push((records::listener_key(key), inner));
            }
            publish_all(&self.maps.listeners, "kn_listeners", &staged)?;
            for (key, listener) in chunk {
                self.listeners.insert(**key, (*listener).clone());
            }
            stats.listeners_written += chunk.len();
        }

        let gone: Vec<ListenerKey> = self
            .listeners
            .keys()
            .filter(|k| !plan.listeners.contains_key(k))
            .copied()
            .collect();
        let keys: Vec<Vec<u8>> = gone.iter().map(records::listener_key).collect();
        remove_all(&self.maps.listeners, "kn_listeners", &keys)?;
        for key in &gone {
            self.listeners.remove(key);
        }
        stats.listeners_removed = gone.len();

        let gone: Vec<String> = self
            .clusters
            .keys()
            .filter(|k| !plan.clusters.contains_key(*k))
            .cloned()
            .collect();
        let keys: Vec<Vec<u8>> = gone.iter().map(|n| records::name_key(n)).collect();
        remove_all(&self.maps.clusters, "kn_clusters", &keys)?;
        for (name, key) in gone.iter().zip(&keys) {
            // Its connection counter goes with it; a missing one is fine.
            let _ = self.maps.cluster_conns.delete(key);
            self.clusters.remove(name);
        }
        stats.clusters_removed = gone.len();
        self.remove_adopted_leftovers(plan, &mut stats)?;
        Ok(stats)
    }

    /// A DNS cluster still waiting for its first answers, that an earlier
    /// daemon left in the maps: its last good endpoints keep serving.
    fn keep_adopted(&self, plan: &Plan, name: &str) -> bool {
        plan.awaiting_dns.contains(name)
            && !self.clusters.contains_key(name)
            && self.adopted_clusters.contains(&records::name_key(name))
    }

    /// After the first apply over adopted maps: delete what the earlier
    /// daemon wrote and the current plan no longer has.
    fn remove_adopted_leftovers(
        &mut self,
        plan: &Plan,
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        let wanted: std::collections::BTreeSet<Vec<u8>> =
            plan.listeners.keys().map(records::listener_key).collect();
        let stale: Vec<Vec<u8>> = std::mem::take(&mut self.adopted_listeners)
            .into_iter()
            .filter(|k| !wanted.contains(k))
            .collect();
        remove_all(&self.maps.listeners, "kn_listeners", &stale)?;
        stats.listeners_removed += stale.len();

        let wanted: std::collections::BTreeSet<Vec<u8>> =
            plan.clusters.keys().map(|n| records::name_key(n)).collect();
        let (stale, adopted): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            std::mem::take(&mut self.adopted_clusters)
                .into_iter()
                .partition(|k| !wanted.contains(k));
        // Clusters kept for want of DNS answers stay adopted: a later update
        // that still has no answers must not empty them either.
        self.adopted_clusters = adopted
            .into_iter()
            .filter(|k| !self.clusters.contains_key(&records::name_from(k)))
            .collect();
        remove_all(&self.maps.clusters, "kn_clusters", &stale)?;
        for key in &stale {
            let _ = self.maps.cluster_conns.delete(key);
        }
        stats.clusters_removed += stale.len();
        Ok(())
    }
}

fn display_key(key: &ListenerKey) -> String {
    std::net::SocketAddr::new(key.addr, key.port).to_string()
}

/// A fresh inner map holding `recs` (not yet visible to the kernel programs).
fn build_inner(
    what: &str,
    record_size: usize,
    recs: &[(u32, Vec<u8>)],
) -> Result<MapHandle, WriteError> {
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
    if recs.is_empty() {
        return Ok(inner);
    }
    let keys: Vec<u8> = recs.iter().flat_map(|(i, _)| i.to_ne_bytes()).collect();
    let values: Vec<u8> = recs.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    inner
        .update_batch(
            &keys,
            &values,
            recs.len() as u32,
            MapFlags::ANY,
            MapFlags::ANY,
        )
        .map_err(|source| WriteError::Records {
            what: what.to_string(),
            source,
        })?;
    Ok(inner)
}

/// Swap every staged inner map into `outer` with one batch update. Each entry
/// changes atomically for a connect; the kernel frees replaced inner maps.
fn publish_all(
    outer: &MapHandle,
    map: &'static str,
    staged: &[(Vec<u8>, MapHandle)],
) -> Result<(), WriteError> {
    if staged.is_empty() {
        return Ok(());
    }
    let keys: Vec<u8> = staged.iter().flat_map(|(k, _)| k.iter().copied()).collect();
    let values: Vec<u8> = staged
        .iter()
        .flat_map(|(_, inner)| (inner.as_fd().as_raw_fd() as u32).to_ne_bytes())
        .collect();
    outer
        .update_batch(
            &keys,
            &values,
            staged.len() as u32,
            MapFlags::ANY,
            MapFlags::ANY,
        )
        .map_err(|source| WriteError::Publish {
            what: format!("{} entries", staged.len()),
            map,
            source,
        })
    // The staged handles close when the caller drops them; the outer map holds the maps now.
}

/// Delete keys from an outer map in one batch; falls back to one by one when
/// the batch stops (a key already gone stops a batch delete).
fn remove_all(outer: &MapHandle, map: &'static str, keys: &[Vec<u8>]) -> Result<(), WriteError> {
    if keys.is_empty() {
        return Ok(());
    }
    let flat: Vec<u8> = keys.iter().flat_map(|k| k.iter().copied()).collect();
    if outer
        .delete_batch(&flat, keys.len() as u32, MapFlags::ANY, MapFlags::ANY)
        .is_ok()
    {
        return Ok(());
    }
    for key in keys {
        match outer.delete(key) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(WriteError::Remove {
                    what: format!("{} entries", keys.len()),
                    map,
                    source,
                })
            }
        }
    }
    Ok(())
}
