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
use super::plan::{FilterAction, Plan};
use super::resources::{self, DecodeError, Resource, ResourceKind};
use super::runner::{ApplyOutcome, KernelNativeRunner};
use crate::admin::AdminState;
use crate::metrics::Metrics;
use crate::xds::ads::{AdsStatus, SotwHandler, Subscription};

pub struct KernelNativeXds {
    runner: Arc<Mutex<KernelNativeRunner>>,
    admin: Arc<AdminState>,
    clusters: BTreeMap<String, Any>,
    listeners: BTreeMap<String, Any>,
    load_assignments: BTreeMap<String, Any>,
    route_configs: BTreeMap<String, Any>,
    /// ClusterLoadAssignment names the current clusters need.
    eds_names: BTreeSet<String>,
    /// EDS service name of each EDS cluster (for warming).
    eds_cluster_service: BTreeMap<String, String>,
    /// Route configuration names the current listeners need over RDS.
    rds_names: BTreeSet<String>,
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
            clusters: BTreeMap::new(),
            listeners: BTreeMap::new(),
            load_assignments: BTreeMap::new(),
            route_configs: BTreeMap::new(),
            eds_names: BTreeSet::new(),
            eds_cluster_service: BTreeMap::new(),
            rds_names: BTreeSet::new(),
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

    /// Store the resources of one response by name. Returns the NACK text for
    /// resources that could not even be decoded.
    fn store(&mut self, kind: ResourceKind, anys: Vec<Any>) -> (BTreeSet<String>, Vec<String>) {
        let mut names = BTreeSet::new();
        let mut errors = Vec::new();
        let mut decoded = BTreeMap::new();
        for (i, any) in anys.into_iter().enumerate() {
            match resources::decode(&any) {
                Ok(r) => {
                    if kind == ResourceKind::Cluster {
                        self.note_cluster(&r);
                    }
                    names.insert(r.name().to_string());
                    decoded.insert(r.name().to_string(), any);
                }
                Err(DecodeError::Malformed(e)) => errors.push(e.to_string()),
                Err(e @ DecodeError::UnknownType(_)) => errors.push(format!("resources[{i}]: {e}")),
            }
        }
        match kind {
            ResourceKind::Cluster => {
                self.eds_cluster_service
                    .retain(|name, _| decoded.contains_key(name));
                self.eds_names = self.eds_cluster_service.values().cloned().collect();
                self.load_assignments
                    .retain(|name, _| self.eds_names.contains(name));
                self.clusters = decoded;
            }
            ResourceKind::Listener => self.listeners = decoded,
            ResourceKind::ClusterLoadAssignment => {
                self.load_assignments.extend(decoded);
                self.load_assignments
                    .retain(|name, _| self.eds_names.contains(name));
            }
            ResourceKind::RouteConfiguration => {
                self.route_configs.extend(decoded);
                self.route_configs
                    .retain(|name, _| self.rds_names.contains(name));
            }
        }
        (names, errors)
    }

    fn note_cluster(&mut self, r: &Resource) {
        if let Resource::Cluster(c) = r {
            let is_eds = matches!(
                c.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
            );
            if is_eds {
                self.eds_cluster_service
                    .insert(c.name.clone(), eds_service_name(c).to_string());
            } else {
                self.eds_cluster_service.remove(&c.name);
            }
        }
    }

    /// Everything known, minus EDS clusters still waiting for endpoints.
    fn snapshot(&self) -> Vec<Any> {
        let warm = |name: &String| match self.eds_cluster_service.get(name) {
            Some(service) => self.load_assignments.contains_key(service),
            None => true,
        };
        self.clusters
            .iter()
            .filter(|(name, _)| warm(name))
            .map(|(_, a)| a)
            .chain(self.load_assignments.values())
            .chain(self.listeners.values())
            .chain(self.route_configs.values())
            .cloned()
            .collect()
    }

    /// RDS names: HTTP filters whose route configuration is not inline.
    fn update_rds_names(&mut self) {
        let names = rds_names(self.runner().plan());
        self.rds_names = names;
        self.route_configs
            .retain(|name, _| self.rds_names.contains(name));
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
        let (names, mut errors) = self.store(kind, anys);
        match kind {
            ResourceKind::Cluster => self.cds_received = true,
            ResourceKind::Listener => self.lds_received = true,
            _ => {}
        }
        let snapshot = self.snapshot();
        // Until both clusters and listeners have arrived, a partial world
        // would delete what the kernel serves (e.g. listeners adopted from an
        // earlier daemon): check the resources, write nothing yet.
        let synced = self.cds_received && self.lds_received;
        let outcome = if synced {
            self.runner().apply(&snapshot)
        } else {
            self.runner().check(&snapshot)
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
