//! Apply a compiled plan to the kernel-native maps, make-before-break.
//!
//! Every listener and cluster that changed gets a fresh inner map, filled
//! completely, then published with one update of the outer map; the kernel
//! frees the old inner map once the outer map lets go of it. A connect sees
//! either the old resource or the new one, never a mix. Resources that left
//! the plan are deleted from the outer maps after the new ones are in.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::plan::{Changed, CompiledCluster, CompiledListener, ListenerKey, Plan};
use super::records;
use super::sweep::StaleCounters;
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
/// every publish waits for an RCU grace period (milliseconds), so a whole
/// mesh goes in as few batches as the open-files limit allows — half of it,
/// so the daemon's other descriptors keep room (512 at the common 1024) —
/// within these bounds.
const PUBLISH_CHUNK_MIN: usize = 64;
const PUBLISH_CHUNK_MAX: usize = 4096;

fn publish_chunk() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        0
    };
    (soft / 2).clamp(PUBLISH_CHUNK_MIN, PUBLISH_CHUNK_MAX)
}

/// What one apply changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    pub listeners_written: usize,
    pub listeners_removed: usize,
    pub clusters_written: usize,
    pub clusters_removed: usize,
}

/// Owns the maps. The state tells it which plan entries changed; it writes
/// those (or deletes them when the plan no longer has them). When it cannot
/// know what the maps hold — at start over an earlier daemon's maps, or after
/// a failed write — it resyncs: writes the whole plan and deletes every key
/// the plan does not have.
pub struct MapWriter {
    maps: KernelNativeMaps,
    resync: bool,
    /// DNS clusters an earlier daemon wrote that still await their first
    /// answers: their last good endpoints keep serving until the answers come.
    kept_adopted: BTreeSet<String>,
    /// Keys of the clusters in the maps at start (read by the first resync).
    adopted_clusters: BTreeSet<Vec<u8>>,
    /// Inner maps per batch publish (see [`publish_chunk`]).
    chunk: usize,
    /// Counters of endpoints and clusters that left the plan.
    stale: StaleCounters,
}

impl MapWriter {
    pub fn new(maps: KernelNativeMaps) -> Self {
        let adopted_listeners = maps.listeners.keys().count();
        let adopted_clusters: BTreeSet<Vec<u8>> = maps.clusters.keys().collect();
        if adopted_listeners > 0 || !adopted_clusters.is_empty() {
            tracing::info!(
                listeners = adopted_listeners,
                clusters = adopted_clusters.len(),
                "maps hold an earlier configuration: reconciling it with the first update"
            );
        }
        Self {
            maps,
            resync: true,
            kept_adopted: BTreeSet::new(),
            adopted_clusters,
            chunk: publish_chunk(),
            stale: StaleCounters::default(),
        }
    }

    /// Bring the maps to `plan`, of which `changed` are the entries that
    /// changed since the last apply. Clusters go in before the listeners that
    /// may name them; removals come last. Each outer map is updated with
    /// batch calls: the kernel waits for an RCU grace period after every
    /// update of a map-in-map (milliseconds), so per-entry updates would make
    /// a large push take seconds.
    pub fn apply(&mut self, plan: &Plan, changed: &Changed) -> Result<WriteStats, WriteError> {
        let resync = self.resync;
        // Until this apply is through, what the maps hold is unknown.
        self.resync = true;
        let stats = if resync {
            self.write_all(plan)?
        } else {
            self.write_changed(plan, changed)?
        };
        self.resync = false;
        self.adopted_clusters.clear();
        Ok(stats)
    }

    /// Delete the stale counters whose last connections have closed since
    /// the last apply (see [`StaleCounters`]).
    pub fn sweep(&mut self) {
        self.stale.retry(&self.maps);
    }

    fn write_changed(&mut self, plan: &Plan, changed: &Changed) -> Result<WriteStats, WriteError> {
        let mut stats = WriteStats::default();
        let (mut clusters, mut gone_clusters) = (Vec::new(), Vec::new());
        for name in &changed.clusters {
            match plan.clusters.get(name) {
                Some(c) if !self.keep_adopted(plan, name) => clusters.push((name, c)),
                Some(_) => {}
                None => gone_clusters.push(name.clone()),
            }
        }
        let (mut listeners, mut gone_listeners) = (Vec::new(), Vec::new());
        for key in &changed.listeners {
            match plan.listeners.get(key) {
                Some(l) => listeners.push((key, l)),
                None => gone_listeners.push(*key),
            }
        }
        self.write_clusters(&clusters, &mut stats)?;
        self.write_listeners(&listeners, &mut stats)?;
        let keys: Vec<Vec<u8>> = gone_listeners.iter().map(records::listener_key).collect();
        remove_all(&self.maps.listeners, "kn_listeners", &keys)?;
        stats.listeners_removed = keys.len();
        let keys: Vec<Vec<u8>> = gone_clusters.iter().map(|n| records::name_key(n)).collect();
        for name in &gone_clusters {
            self.kept_adopted.remove(name);
        }
        self.remove_clusters(&keys, &mut stats)?;
        let touched: Vec<String> = clusters
            .iter()
            .map(|(name, _)| (*name).clone())
            .chain(gone_clusters)
            .collect();
        self.stale.after_write_changed(&self.maps, plan, &touched);
        Ok(stats)
    }

    /// Write the whole plan and delete whatever else the maps hold.
    fn write_all(&mut self, plan: &Plan) -> Result<WriteStats, WriteError> {
        let mut stats = WriteStats::default();
        let adopted = std::mem::take(&mut self.adopted_clusters);
        self.kept_adopted = plan
            .awaiting_dns
            .iter()
            .filter(|name| {
                adopted.contains(&records::name_key(name)) || self.kept_adopted.contains(*name)
            })
            .cloned()
            .collect();
        let clusters: Vec<(&String, &CompiledCluster)> = plan
            .clusters
            .iter()
            .filter(|(name, _)| !self.kept_adopted.contains(*name))
            .collect();
        let listeners: Vec<(&ListenerKey, &CompiledListener)> = plan.listeners.iter().collect();
        self.write_clusters(&clusters, &mut stats)?;
        self.write_listeners(&listeners, &mut stats)?;

        let wanted: BTreeSet<Vec<u8>> = plan.listeners.keys().map(records::listener_key).collect();
        let stale: Vec<Vec<u8>> = self
            .maps
            .listeners
            .keys()
            .filter(|k| !wanted.contains(k))
            .collect();
        remove_all(&self.maps.listeners, "kn_listeners", &stale)?;
        stats.listeners_removed = stale.len();
        let wanted: BTreeSet<Vec<u8>> =
            plan.clusters.keys().map(|n| records::name_key(n)).collect();
        let stale: Vec<Vec<u8>> = self
            .maps
            .clusters
            .keys()
            .filter(|k| !wanted.contains(k))
            .collect();
        self.remove_clusters(&stale, &mut stats)?;
        self.stale
            .after_write_all(&self.maps, plan, &self.kept_adopted);
        Ok(stats)
    }

    fn write_clusters(
        &mut self,
        clusters: &[(&String, &CompiledCluster)],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        for chunk in clusters.chunks(self.chunk) {
            let mut staged = Vec::with_capacity(chunk.len());
            for (name, cluster) in chunk {
                let what = format!("cluster {name:?}");
                let records = records::cluster_records(cluster);
                let inner = build_inner(&what, records::CLUSTER_RECORD_SIZE, &records)?;
                staged.push((records::name_key(name), inner));
            }
            publish_all(&self.maps.clusters, "kn_clusters", &staged)?;
            for (name, _) in chunk {
                self.kept_adopted.remove(*name);
            }
            stats.clusters_written += chunk.len();
        }
        Ok(())
    }

    fn write_listeners(
        &mut self,
        listeners: &[(&ListenerKey, &CompiledListener)],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        for chunk in listeners.chunks(self.chunk) {
            let mut staged = Vec::with_capacity(chunk.len());
            for (key, listener) in chunk {
                let what = format!("listener {:?} at {}", listener.name, display_key(key));
                let records = records::listener_records(listener);
                let inner = build_inner(&what, records::LISTENER_RECORD_SIZE, &records)?;
                staged.push((records::listener_key(key), inner));
            }
            publish_all(&self.maps.listeners, "kn_listeners", &staged)?;
            stats.listeners_written += chunk.len();
        }
        Ok(())
    }

    fn remove_clusters(&self, keys: &[Vec<u8>], stats: &mut WriteStats) -> Result<(), WriteError> {
        remove_all(&self.maps.clusters, "kn_clusters", keys)?;
        for key in keys {
            // Its connection counter goes with it; a missing one is fine.
            let _ = self.maps.cluster_conns.delete(key);
        }
        stats.clusters_removed += keys.len();
        Ok(())
    }

    /// A DNS cluster still waiting for its first answers, that an earlier
    /// daemon left in the maps: its last good endpoints keep serving.
    fn keep_adopted(&self, plan: &Plan, name: &str) -> bool {
        plan.awaiting_dns.contains(name) && self.kept_adopted.contains(name)
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
