//! Kernel-native mode over ADS: what to subscribe to (CDS → EDS → LDS → RDS,
//! as Envoy does), which responses to ACK, and the complete snapshot handed
//! to the runner after every response.
//!
//! SotW rules kept here: a CDS or LDS response replaces every resource of its
//! type (what it omits is removed); an EDS or RDS response carries the
//! requested names it has, and names we no longer subscribe to are dropped.
//! An EDS cluster is "warming" until its ClusterLoadAssignment arrives and is
//! left out of the kernel until then (a listener naming it stays untouched,
//! rather than refusing connections for lack of endpoints).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use prost_types::Any;

use super::compiler::eds_service_name;
use super::input::{resource_name, same, KindMap, Snapshot};
use super::plan::{FilterAction, Plan};
use super::resources::{self, DecodeError, Resource, ResourceKind};
use super::runner::{ApplyOutcome, KernelNativeRunner};
use crate::admin::AdminState;
use crate::memory::release_freed_memory;
use crate::metrics::Metrics;
use crate::xds::ads::{AdsStatus, SotwHandler, Subscription};

/// Responses with at least this many resources are followed by a heap trim.
const LARGE_RESPONSE: usize = 1000;

pub struct KernelNativeXds {
    runner: Arc<Mutex<KernelNativeRunner>>,
    admin: Arc<AdminState>,
    /// Everything known, by kind and name; warming EDS clusters are listed
    /// in `excluded_clusters`. Handed to the runner by reference after every
    /// response: the runner compares it with what it compiled last.
    snapshot: Snapshot,
    /// ClusterLoadAssignment names the current clusters need.
    eds_names: Arc<BTreeSet<String>>,
    /// EDS service name of each EDS cluster (for warming).
    eds_cluster_service: BTreeMap<String, String>,
    /// Route configuration names the current listeners need over RDS.
    rds_names: Arc<BTreeSet<String>>,
    /// LDS is requested once the first CDS response has been handled.
    cds_received: bool,
    /// Nothing is written before the first LDS response (initial sync).
    lds_received: bool,
    metrics: Option<Arc<Metrics>>,
}

impl KernelNativeXds {
    pub fn new(runner: Arc<Mutex<KernelNativeRunner>>, admin: Arc<AdminState>) -> Self {
        Self {
            runner,
            admin,
            snapshot: Snapshot::default(),
            eds_names: Arc::default(),
            eds_cluster_service: BTreeMap::new(),
            rds_names: Arc::default(),
            cds_received: false,
            lds_received: false,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The runner is shared with the DNS follower.
    fn runner(&self) -> std::sync::MutexGuard<'_, KernelNativeRunner> {
        crate::sync::lock(&self.runner)
    }

    /// Store the resources of one response by name. Returns the names it
    /// carried and the NACK text for items that could not even be named.
    /// Only the name of each item is read here: whether its bytes changed
    /// (and so need decoding) is for the runner to find out.
    fn store(&mut self, kind: ResourceKind, anys: Vec<Any>) -> (BTreeSet<String>, Vec<String>) {
        let mut errors = Vec::new();
        let mut received = BTreeMap::new();
        for (i, any) in anys.into_iter().enumerate() {
            if ResourceKind::from_type_url(&any.type_url) != Some(kind) {
                let e = DecodeError::UnknownType(any.type_url);
                errors.push(format!("resources[{i}]: {e}"));
                continue;
            }
            match resource_name(kind, &any) {
                Ok(name) => {
                    received.insert(name, Arc::new(any));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let names: BTreeSet<String> = received.keys().cloned().collect();
        match kind {
            ResourceKind::Cluster => {
                for (name, any) in &received {
                    let known = self.snapshot.clusters.get(name);
                    if known.is_none_or(|old| !same(old, any)) {
                        self.note_cluster(name, any);
                    }
                }
                self.eds_cluster_service
                    .retain(|name, _| received.contains_key(name));
                let eds_names: BTreeSet<String> =
                    self.eds_cluster_service.values().cloned().collect();
                if *self.eds_names != eds_names {
                    self.eds_names = Arc::new(eds_names);
                }
                let eds_names = &self.eds_names;
                self.snapshot
                    .load_assignments
                    .retain(|name| eds_names.contains(name));
                replace_all(&mut self.snapshot.clusters, received);
                self.update_warming(true);
            }
            ResourceKind::Listener => replace_all(&mut self.snapshot.listeners, received),
            ResourceKind::ClusterLoadAssignment => {
                // Names no longer subscribed to are not kept.
                for (name, any) in received {
                    if self.eds_names.contains(&name) {
                        self.snapshot.load_assignments.insert(name, any);
                    }
                }
                self.update_warming(false);
            }
            ResourceKind::RouteConfiguration => {
                for (name, any) in received {
                    if self.rds_names.contains(&name) {
                        self.snapshot.route_configs.insert(name, any);
                    }
                }
            }
        }
        (names, errors)
    }

    /// Track EDS clusters and their service names. A cluster that does not
    /// decode is the runner's to reject; its previous version stays in
    /// force, and so does the assignment it reads.
    fn note_cluster(&mut self, name: &str, any: &Any) {
        let Ok(Resource::Cluster(c)) = resources::decode(any) else {
            return;
        };
        let is_eds = matches!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
        );
        if is_eds {
            self.eds_cluster_service
                .insert(c.name.clone(), eds_service_name(&c).to_string());
        } else {
            self.eds_cluster_service.remove(name);
        }
    }

    /// EDS clusters still waiting for their ClusterLoadAssignment are left
    /// out of the snapshot. `all` after a CDS response (walks the EDS
    /// clusters); after an EDS response only those still warming are looked at.
    fn update_warming(&mut self, all: bool) {
        let assignments = &self.snapshot.load_assignments;
        let warming: BTreeSet<String> = if all {
            self.eds_cluster_service
                .iter()
                .filter(|(_, service)| !assignments.contains(service))
                .map(|(name, _)| name.clone())
                .collect()
        } else {
            self.snapshot
                .excluded_clusters
                .iter()
                .filter(|name| {
                    self.eds_cluster_service
                        .get(*name)
                        .is_some_and(|service| !assignments.contains(service))
                })
                .cloned()
                .collect()
        };
        if warming != self.snapshot.excluded_clusters {
            self.snapshot.excluded_clusters = warming;
            self.snapshot.clusters.touch();
        }
    }

    /// RDS names: HTTP filters whose route configuration is not inline.
    fn update_rds_names(&mut self) {
        let names = rds_names(self.runner().plan());
        if *self.rds_names != names {
            self.rds_names = Arc::new(names);
        }
        let rds_names = &self.rds_names;
        self.snapshot
            .route_configs
            .retain(|name| rds_names.contains(name));
    }
}

/// A CDS or LDS response replaces every resource of its type.
fn replace_all(map: &mut KindMap, received: BTreeMap<String, Arc<Any>>) {
    map.retain(|name| received.contains_key(name));
    for (name, any) in received {
        map.insert(name, any);
    }
}

fn rds_names(plan: &Plan) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for listener in plan.listeners.values() {
        let actions = listener
            .matches
            .iter()
            .filter_map(|m| m.action.as_ref())
            .chain(listener.default_action.as_ref());
        for action in actions {
            if let FilterAction::Http { route_config } = action.terminal() {
                if !listener.inline_route_configs.contains_key(route_config) {
                    names.insert(route_config.clone());
                }
            }
        }
    }
    names
}

impl SotwHandler for KernelNativeXds {
    fn on_response(&mut self, type_url: &str, anys: Vec<Any>) -> Result<(), String> {
        let Some(kind) = ResourceKind::from_type_url(type_url) else {
            return Err(format!(
                "kernel-native mode does not use resources of type {type_url:?}"
            ));
        };
        let large = anys.len() >= LARGE_RESPONSE;
        let (names, mut errors) = self.store(kind, anys);
        match kind {
            ResourceKind::Cluster => self.cds_received = true,
            ResourceKind::Listener => self.lds_received = true,
            _ => {}
        }
        // Until both clusters and listeners have arrived, a partial world
        // would delete what the kernel serves (e.g. listeners adopted from an
        // earlier daemon): check the resources, write nothing yet.
        let synced = self.cds_received && self.lds_received;
        let outcome = if synced {
            self.runner().apply(&self.snapshot)
        } else {
            self.runner().check(&self.snapshot)
        };
        match outcome {
            ApplyOutcome::Applied { rejected } => {
                errors.extend(
                    rejected
                        .iter()
                        .filter(|e| e.kind == kind && names.contains(&e.name))
                        .map(ToString::to_string),
                );
            }
            ApplyOutcome::Refused(message) => errors.push(message),
        }
        if kind == ResourceKind::Listener {
            self.update_rds_names();
        }
        if large {
            // The response and what staging it allocated are freed now; give
            // the pages back rather than keep them as RSS for good.
            release_freed_memory();
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn subscriptions(&self) -> Vec<(String, Subscription)> {
        let mut subs = vec![(ResourceKind::Cluster.type_url(), Subscription::Wildcard)];
        if !self.eds_names.is_empty() {
            subs.push((
                ResourceKind::ClusterLoadAssignment.type_url(),
                Subscription::Names(self.eds_names.clone()),
            ));
        }
        if self.cds_received {
            subs.push((ResourceKind::Listener.type_url(), Subscription::Wildcard));
        }
        if !self.rds_names.is_empty() {
            subs.push((
                ResourceKind::RouteConfiguration.type_url(),
                Subscription::Names(self.rds_names.clone()),
            ));
        }
        subs
    }

    fn on_status(&mut self, status: &AdsStatus) {
        if let Some(m) = &self.metrics {
            m.xds_status(status);
        }
        match serde_json::to_value(status) {
            Ok(v) => self.admin.set_xds_status(v),
            Err(e) => tracing::error!(error = %e, "serializing the ADS status"),
        }
    }
}
