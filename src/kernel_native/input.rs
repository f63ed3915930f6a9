//! A State-of-the-World snapshot as the sources hand it over: the raw
//! resources by kind and name, not yet decoded.
//!
//! Keeping the bytes (shared, `Arc`) and the name is what makes an update
//! cheap: the state compares each resource with the version it already
//! compiled and decodes only those that differ. A map's `generation`
//! changes whenever the map does, so a kind that did not change is not
//! even walked.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prost::Message;
use prost_types::Any;

use super::resources::{ResourceError, ResourceKind};

/// The resources of one kind, by name.
#[derive(Debug, Clone)]
pub struct KindMap {
    generation: u64,
    items: BTreeMap<String, Arc<Any>>,
}

impl Default for KindMap {
    fn default() -> Self {
        Self {
            generation: next_generation(),
            items: BTreeMap::new(),
        }
    }
}

/// Generations are unique process-wide, so a state never mistakes a fresh
/// map (e.g. from a re-read file) for the one it walked last time.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl KindMap {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn items(&self) -> &BTreeMap<String, Arc<Any>> {
        &self.items
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Any>> {
        self.items.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.items.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds or replaces a resource. The same bytes under the same name are
    /// no change (the stored `Arc` is kept, which later compares by pointer).
    pub fn insert(&mut self, name: String, any: Arc<Any>) {
        if self.items.get(&name).is_some_and(|old| same(old, &any)) {
            return;
        }
        self.items.insert(name, any);
        self.touch();
    }

    pub fn remove(&mut self, name: &str) -> bool {
        let removed = self.items.remove(name).is_some();
        if removed {
            self.touch();
        }
        removed
    }

    /// Keeps only the names `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let before = self.items.len();
        self.items.retain(|name, _| keep(name));
        if self.items.len() != before {
            self.touch();
        }
    }

    /// Marks the map changed (e.g. when what is excluded from it changes).
    pub fn touch(&mut self) {
        self.generation = next_generation();
    }
}

/// Two versions of a resource are the same when their bytes are.
pub fn same(a: &Arc<Any>, b: &Arc<Any>) -> bool {
    Arc::ptr_eq(a, b) || (a.value == b.value && a.type_url == b.type_url)
}

/// A complete snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub listeners: KindMap,
    pub clusters: KindMap,
    pub load_assignments: KindMap,
    pub route_configs: KindMap,
    /// Clusters to leave out as if absent (EDS clusters still warming).
    /// Whoever changes this set touches `clusters`.
    pub excluded_clusters: std::collections::BTreeSet<String>,
    /// Items refused before they could be named or placed (undecodable,
    /// a name repeated): reported with every apply of this snapshot.
    pub rejected: Vec<ResourceError>,
    /// Items of types this mode does not use.
    pub unsupported: Vec<String>,
}

impl Snapshot {
    pub fn kind(&self, kind: ResourceKind) -> &KindMap {
        match kind {
            ResourceKind::Listener => &self.listeners,
            ResourceKind::Cluster => &self.clusters,
            ResourceKind::ClusterLoadAssignment => &self.load_assignments,
            ResourceKind::RouteConfiguration => &self.route_configs,
        }
    }

    pub fn kind_mut(&mut self, kind: ResourceKind) -> &mut KindMap {
        match kind {
            ResourceKind::Listener => &mut self.listeners,
            ResourceKind::Cluster => &mut self.clusters,
            ResourceKind::ClusterLoadAssignment => &mut self.load_assignments,
            ResourceKind::RouteConfiguration => &mut self.route_configs,
        }
    }

    /// A snapshot from a flat list (the xDS file). Repeated names are
    /// rejected (the first of a name wins, as the order is the sender's).
    pub fn from_anys(anys: Vec<Any>) -> Snapshot {
        let mut out = Snapshot::default();
        for (i, any) in anys.into_iter().enumerate() {
            let Some(kind) = ResourceKind::from_type_url(&any.type_url) else {
                out.unsupported.push(format!(
                    "resources[{i}]: {} is not used by kernel-native mode",
                    any.type_url
                ));
                continue;
            };
            let name = match resource_name(kind, &any) {
                Ok(name) => name,
                Err(e) => {
                    out.rejected.push(e);
                    continue;
                }
            };
            let map = out.kind_mut(kind);
            if map.contains(&name) {
                out.rejected.push(ResourceError {
                    kind,
                    name,
                    field: format!("resources[{i}]"),
                    message: "the name appears more than once in one snapshot; the previous \
                              version stays in force"
                        .into(),
                });
                continue;
            }
            map.insert(name, Arc::new(any));
        }
        out
    }
}

/// Field 1 of every kernel-native resource is its xDS name (`name`, or
/// `cluster_name` for a ClusterLoadAssignment). Decoding only that field
/// skips the rest of the message without parsing it.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

/// The name of a resource, read without decoding the whole resource.
pub fn resource_name(kind: ResourceKind, any: &Any) -> Result<String, ResourceError> {
    NameOnly::decode(any.value.as_slice())
        .map(|n| n.name)
        .map_err(|e| ResourceError {
            kind,
            name: String::new(),
            field: String::new(),
            message: format!("malformed protobuf: {e}"),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    fn any<T: Message>(kind: ResourceKind, m: &T) -> Any {
        Any {
            type_url: kind.type_url(),
            value: m.encode_to_vec(),
        }
    }

    #[test]
    fn names_are_read_without_a_full_decode() {
        let cla = ClusterLoadAssignment {
            cluster_name: "svc".into(),
            ..Default::default()
        };
        let a = any(ResourceKind::ClusterLoadAssignment, &cla);
        assert_eq!(
            resource_name(ResourceKind::ClusterLoadAssignment, &a).unwrap(),
            "svc"
        );
        let truncated = Any {
            type_url: ResourceKind::Cluster.type_url(),
            value: vec![0x0a, 0x05, b'a'],
        };
        assert!(resource_name(ResourceKind::Cluster, &truncated).is_err());
    }

    #[test]
    fn same_bytes_keep_the_generation_and_new_bytes_change_it() {
        let mut map = KindMap::default();
        let l = Listener {
            name: "l".into(),
            ..Default::default()
        };
        map.insert("l".into(), Arc::new(any(ResourceKind::Listener, &l)));
        let g = map.generation();
        map.insert("l".into(), Arc::new(any(ResourceKind::Listener, &l)));
        assert_eq!(map.generation(), g);
        let l2 = Listener {
            name: "l".into(),
            stat_prefix: "x".into(),
            ..Default::default()
        };
        map.insert("l".into(), Arc::new(any(ResourceKind::Listener, &l2)));
        assert_ne!(map.generation(), g);
    }

    #[test]
    fn a_flat_list_keeps_the_first_of_a_name() {
        let l = Listener {
            name: "l".into(),
            ..Default::default()
        };
        let other = Any {
            type_url: "type.googleapis.com/envoy.config.core.v3.Address".into(),
            value: vec![],
        };
        let s = Snapshot::from_anys(vec![
            any(ResourceKind::Listener, &l),
            any(ResourceKind::Listener, &l),
            other,
        ]);
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.rejected[0].field, "resources[1]");
        assert_eq!(s.unsupported.len(), 1);
    }
}
