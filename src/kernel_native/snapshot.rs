//! Turning a complete set of resources (a State-of-the-World snapshot) into
//! the next plan, with Envoy's rules for bad input:
//!
//! - a bad resource is rejected by itself: its previous accepted version (if
//!   any) stays in force, the good resources of the same snapshot apply;
//! - a snapshot whose plan would not fit the maps is rejected whole;
//! - resources absent from the snapshot are removed.

use prost_types::Any;
use serde::Serialize;

use super::compiler::{self, CapacityError, Limits, ResolvedHosts};
use super::plan::Plan;
use super::resources::{self, DecodeError, Resource, ResourceError, ResourceKind, Resources};

/// The accepted resources and the plan compiled from them.
#[derive(Debug, Default)]
pub struct ConfigState {
    accepted: Resources,
    plan: Plan,
}

/// A snapshot that passed validation, not yet written to the kernel.
#[derive(Debug)]
pub struct Staged {
    resources: Resources,
    pub plan: Plan,
    /// Resources rejected individually (the NACK text).
    pub rejected: Vec<ResourceError>,
    /// Resources of types this mode does not use (skipped, not an error).
    pub unsupported: Vec<String>,
}

/// Why a whole snapshot was refused. The previous config stays in force.
#[derive(Debug, thiserror::Error, Serialize)]
pub enum SnapshotError {
    #[error("config rejected whole: {capacity}{}", rejected_suffix(.rejected))]
    OverCapacity {
        #[serde(serialize_with = "display")]
        capacity: CapacityError,
        rejected: Vec<ResourceError>,
    },
}

fn rejected_suffix(rejected: &[ResourceError]) -> String {
    if rejected.is_empty() {
        String::new()
    } else {
        format!(
            " (and {} resource(s) rejected individually)",
            rejected.len()
        )
    }
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl ConfigState {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn accepted(&self) -> &Resources {
        &self.accepted
    }

    /// Validate and compile a snapshot against the accepted state.
    pub fn stage(
        &self,
        snapshot: &[Any],
        limits: &Limits,
        dns: &dyn ResolvedHosts,
    ) -> Result<Staged, SnapshotError> {
        let (mut candidate, mut rejected, unsupported) = collect(snapshot);
        for err in rejected.iter().filter(|e| !e.name.is_empty()) {
            replace_with_accepted(&mut candidate, &self.accepted, err.kind, &err.name);
        }

        // First pass: which resources are bad on their own (or clash)? When
        // none is (the usual case), this is already the plan in force.
        let first = compiler::compile(&candidate, dns);
        let second = if first.rejected.is_empty() {
            first
        } else {
            for err in &first.rejected {
                replace_with_accepted(&mut candidate, &self.accepted, err.kind, &err.name);
            }
            rejected.extend(first.rejected);

            // Second pass over what will be in force. An old version that no
            // longer fits (e.g. clashes with a new listener) is dropped.
            let mut second = compiler::compile(&candidate, dns);
            for err in &second.rejected {
                remove(&mut candidate, err.kind, &err.name);
            }
            if !second.rejected.is_empty() {
                second = compiler::compile(&candidate, dns);
            }
            second
        };

        if let Err(capacity) = compiler::check_capacity(&second.plan, limits) {
            return Err(SnapshotError::OverCapacity { capacity, rejected });
        }
        Ok(Staged {
            resources: candidate,
            plan: second.plan,
            rejected,
            unsupported,
        })
    }

    /// The staged snapshot is in the kernel: make it the accepted state.
    pub fn commit(&mut self, staged: Staged) {
        self.accepted = staged.resources;
        self.plan = staged.plan;
    }
}

/// Decode a snapshot into resources by name. Undecodable items and repeated
/// names are rejected (the first of a name wins, as the order is the sender's).
fn collect(snapshot: &[Any]) -> (Resources, Vec<ResourceError>, Vec<String>) {
    let mut out = Resources::default();
    let mut rejected = Vec::new();
    let mut unsupported = Vec::new();
    for (i, any) in snapshot.iter().enumerate() {
        let resource = match resources::decode(any) {
            Ok(r) => r,
            Err(DecodeError::Malformed(e)) => {
                rejected.push(e);
                continue;
            }
            Err(DecodeError::UnknownType(type_url)) => {
                unsupported.push(format!(
                    "resources[{i}]: {type_url} is not used by kernel-native mode"
                ));
                continue;
            }
        };
        let (kind, name) = (resource.kind(), resource.name().to_string());
        let duplicate = match resource {
            Resource::Listener(l) => out.listeners.insert(name.clone(), *l).is_some(),
            Resource::Cluster(c) => out.clusters.insert(name.clone(), *c).is_some(),
            Resource::ClusterLoadAssignment(c) => {
                out.load_assignments.insert(name.clone(), *c).is_some()
            }
            Resource::RouteConfiguration(r) => out.route_configs.insert(name.clone(), *r).is_some(),
        };
        if duplicate {
            rejected.push(ResourceError {
                kind,
                name,
                field: format!("resources[{i}]"),
                message: "the name appears more than once in one snapshot; the previous version stays in force".into(),
            });
        }
    }
    (out, rejected, unsupported)
}

fn replace_with_accepted(
    candidate: &mut Resources,
    accepted: &Resources,
    kind: ResourceKind,
    name: &str,
) {
    fn swap<T: Clone>(
        to: &mut std::collections::BTreeMap<String, T>,
        from: &std::collections::BTreeMap<String, T>,
        name: &str,
    ) {
        match from.get(name) {
            Some(old) => {
                to.insert(name.to_string(), old.clone());
            }
            None => {
                to.remove(name);
            }
        }
    }
    match kind {
        ResourceKind::Listener => swap(&mut candidate.listeners, &accepted.listeners, name),
        ResourceKind::Cluster => swap(&mut candidate.clusters, &accepted.clusters, name),
        ResourceKind::ClusterLoadAssignment => swap(
            &mut candidate.load_assignments,
            &accepted.load_assignments,
            name,
        ),
        ResourceKind::RouteConfiguration => {
            swap(&mut candidate.route_configs, &accepted.route_configs, name)
        }
    }
}

fn remove(candidate: &mut Resources, kind: ResourceKind, name: &str) {
    match kind {
        ResourceKind::Listener => candidate.listeners.remove(name).map(|_| ()),
        ResourceKind::Cluster => candidate.clusters.remove(name).map(|_| ()),
        ResourceKind::ClusterLoadAssignment => candidate.load_assignments.remove(name).map(|_| ()),
        ResourceKind::RouteConfiguration => candidate.route_configs.remove(name).map(|_| ()),
    };
}
