//! Per-endpoint and per-(client netns, cluster) state the kernel keeps
//! (`kn_endpoint_conns`, `kn_outliers`, `kn_netns_conns`) is created by the
//! programs on a connection, and they cannot tell when its endpoint or
//! cluster leaves the configuration. The writer deletes it here once it is
//! stale: its endpoint is no longer in its cluster (or its cluster no longer
//! has a circuit breaker) and no connection holds a count in it. A counter
//! that connections still hold is kept, and deleted once they have closed
//! ([`StaleCounters::retry`], run periodically): the maps show only live state
//! and stale entries do not pile up until the LRU maps evict live ones.
//!
//! Outlier state holds no connection count: it goes with its endpoint.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::plan::{CompiledCluster, Plan};
use super::records;
use crate::bpf::kernel_native::KernelNativeMaps;

/// What this daemon wrote for one cluster: what its counters may refer to.
struct Written {
    endpoints: HashSet<(IpAddr, u16)>,
    breaker: bool,
}

impl Written {
    fn of(cluster: &CompiledCluster) -> Self {
        Written {
            endpoints: cluster
                .levels_v4
                .iter()
                .chain(&cluster.levels_v6)
                .flat_map(|l| l.endpoints.iter().map(|e| (e.addr, e.port)))
                .collect(),
            breaker: cluster.circuit_breakers.is_some(),
        }
    }
}

/// Which of the counter maps a held key is in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Held {
    Endpoint(Vec<u8>),
    Netns(Vec<u8>),
}

#[derive(Default)]
pub(crate) struct StaleCounters {
    written: HashMap<String, Written>,
    /// Clusters an earlier daemon wrote and this one kept as they were (DNS
    /// clusters awaiting answers): what their counters refer to is unknown
    /// until this daemon writes them.
    unknown: BTreeSet<String>,
    /// Stale counters that connections still held when last looked at.
    held: BTreeSet<Held>,
}

/// A stale counter: there and deletable, gone already, or still held.
enum Verdict {
    Unheld,
    Gone,
    Held,
}

impl StaleCounters {
    /// After the whole plan was written over maps of unknown content (start,
    /// adoption, a failed write): every counter is checked against the plan.
    /// `kept` are clusters left as an earlier daemon wrote them.
    pub(crate) fn after_write_all(
        &mut self,
        maps: &KernelNativeMaps,
        plan: &Plan,
        kept: &BTreeSet<String>,
    ) {
        self.written = plan
            .clusters
            .iter()
            .filter(|(name, _)| !kept.contains(*name))
            .map(|(name, c)| (name.clone(), Written::of(c)))
            .collect();
        self.unknown = kept.clone();
        self.held.clear();
        self.scan(maps, |_| true);
    }

    /// After the clusters `changed` were written or removed: the endpoints
    /// they lost, and the netns counters of those that lost their circuit
    /// breaker, are stale.
    pub(crate) fn after_write_changed(
        &mut self,
        maps: &KernelNativeMaps,
        plan: &Plan,
        changed: &[String],
    ) {
        // Clusters whose counters need a walk of the maps: those kept from
        // an earlier daemon, and those that lost their circuit breaker (the
        // netns cookies of their counters are not known).
        let mut rescan = BTreeSet::new();
        for name in changed {
            let now = plan.clusters.get(name).map(Written::of);
            let before = self.written.remove(name);
            if self.unknown.remove(name) {
                rescan.insert(name.as_str());
            }
            if let Some(before) = &before {
                for (addr, port) in &before.endpoints {
                    if now
                        .as_ref()
                        .is_some_and(|n| n.endpoints.contains(&(*addr, *port)))
                    {
                        continue;
                    }
                    let key = records::endpoint_key(name, addr, *port);
                    delete(&maps.outliers, "kn_outliers", &key);
                    self.settle(maps, Held::Endpoint(key));
                }
                if before.breaker && !now.as_ref().is_some_and(|n| n.breaker) {
                    rescan.insert(name.as_str());
                }
            }
            if let Some(now) = now {
                self.written.insert(name.clone(), now);
            }
        }
        if !rescan.is_empty() {
            self.scan(maps, |cluster| rescan.contains(cluster));
        }
    }

    /// Delete the held counters whose connections have closed since (those
    /// configured again meanwhile are no longer stale: they stay).
    pub(crate) fn retry(&mut self, maps: &KernelNativeMaps) {
        for held in std::mem::take(&mut self.held) {
            if self.is_stale(&held) {
                self.settle(maps, held);
            }
        }
    }

    /// Go through the counter maps, for the entries of the clusters `pick`
    /// selects: delete (or hold) every stale one.
    fn scan(&mut self, maps: &KernelNativeMaps, pick: impl Fn(&str) -> bool) {
        // Keys first: deleting the key a map walk stands on restarts the walk.
        let keys: Vec<Vec<u8>> = maps.endpoint_conns.keys().collect();
        for key in keys {
            if let Some((cluster, _, _)) = records::decode_endpoint_key(&key) {
                let held = Held::Endpoint(key);
                if pick(&cluster) && self.is_stale(&held) {
                    self.settle(maps, held);
                }
            }
        }
        let stale_outliers: Vec<Vec<u8>> = maps
            .outliers
            .keys()
            .filter(|key| {
                records::decode_endpoint_key(key).is_some_and(|(cluster, addr, port)| {
                    pick(&cluster) && !self.endpoint_known(&cluster, addr, port)
                })
            })
            .collect();
        for key in stale_outliers {
            delete(&maps.outliers, "kn_outliers", &key);
        }
        let keys: Vec<Vec<u8>> = maps.netns_conns.keys().collect();
        for key in keys {
            if let Some((_, cluster)) = records::decode_netns_cluster_key(&key) {
                let held = Held::Netns(key);
                if pick(&cluster) && self.is_stale(&held) {
                    self.settle(maps, held);
                }
            }
        }
    }

    /// The endpoint is one of the cluster's, or what the cluster holds is
    /// not known (kept from an earlier daemon).
    fn endpoint_known(&self, cluster: &str, addr: IpAddr, port: u16) -> bool {
        self.unknown.contains(cluster)
            || self
                .written
                .get(cluster)
                .is_some_and(|w| w.endpoints.contains(&(addr, port)))
    }

    fn is_stale(&self, held: &Held) -> bool {
        match held {
            Held::Endpoint(key) => records::decode_endpoint_key(key)
                .is_some_and(|(cluster, addr, port)| !self.endpoint_known(&cluster, addr, port)),
            Held::Netns(key) => {
                records::decode_netns_cluster_key(key).is_some_and(|(_, cluster)| {
                    !self.unknown.contains(&cluster)
                        && !self.written.get(&cluster).is_some_and(|w| w.breaker)
                })
            }
        }
    }

    /// Delete a stale counter if no connection holds a count in it, else
    /// remember it for [`Self::retry`].
    fn settle(&mut self, maps: &KernelNativeMaps, held: Held) {
        match verdict(maps, &held) {
            Verdict::Gone => {}
            Verdict::Held => {
                self.held.insert(held);
            }
            Verdict::Unheld => {
                let (map, what, key) = held.at(maps);
                delete(map, what, key);
            }
        }
    }
}

impl Held {
    /// Its map, the map's name and its key.
    fn at<'a>(&'a self, maps: &'a KernelNativeMaps) -> (&'a MapHandle, &'static str, &'a [u8]) {
        match self {
            Held::Endpoint(key) => (&maps.endpoint_conns, "kn_endpoint_conns", key),
            Held::Netns(key) => (&maps.netns_conns, "kn_netns_conns", key),
        }
    }

    /// The active count of a value of its map.
    fn active(&self, value: &[u8]) -> Option<u64> {
        match self {
            Held::Endpoint(_) => records::decode_endpoint_conns(value).map(|(active, _)| active),
            Held::Netns(_) => records::decode_netns_conns(value).map(|(active, _)| active),
        }
    }
}

/// Whether a counter is there, and whether connections hold counts in it.
fn verdict(maps: &KernelNativeMaps, held: &Held) -> Verdict {
    let (map, what, key) = held.at(maps);
    match map.lookup(key, MapFlags::ANY) {
        Ok(Some(value)) => match held.active(&value) {
            Some(0) => Verdict::Unheld,
            Some(_) => Verdict::Held,
            None => Verdict::Gone,
        },
        Ok(None) => Verdict::Gone,
        Err(e) => {
            tracing::warn!(map = what, error = %e, "reading a stale counter; left in place");
            Verdict::Gone
        }
    }
}

/// Housekeeping: a failure is logged, never fails an update.
fn delete(map: &MapHandle, what: &str, key: &[u8]) {
    match map.delete(key) {
        Ok(()) => {}
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(map = what, error = %e, "deleting a stale counter"),
    }
}
