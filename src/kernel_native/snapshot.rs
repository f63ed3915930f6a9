//! Turning State-of-the-World snapshots into the next plan, at a cost that
//! follows what changed rather than the size of the mesh, with Envoy's
//! rules for bad input:
//!
//! - a bad resource is rejected by itself: its previous accepted version (if
//!   any) stays in force, the good resources of the same snapshot apply;
//! - a snapshot whose plan would not fit the maps is rejected whole;
//! - resources absent from the snapshot are removed.
//!
//! Every resource name has a slot holding the version last offered (its
//! bytes and what decoding/compiling them gave) and the version in force. A
//! new snapshot is compared with the slots by bytes: only resources whose
//! bytes differ are decoded and compiled again, and only the clusters that
//! read them are recompiled (a cluster depends on itself, its
//! ClusterLoadAssignment and its DNS answers). Listeners compile on their own,
//! but which of them may hold an address is settled over all of them in name
//! order, so a listener or route configuration change re-runs that (cheap)
//! pass over the cached compiled listeners. The result is a [`PlanDelta`]
//! against the plan in force: the writer touches only those entries.

mod merge;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost_types::Any;
use serde::Serialize;

use super::compiler::{
    self, check_cluster_capacity, check_counts, compile_cluster, compile_listener,
    compile_route_config, CapacityError, Limits, ResolvedHosts,
};
use super::input::{KindMap, Snapshot};
use super::plan::{Changed, CompiledListener, CompiledRouteConfig, ListenerKey, Plan, PlanDelta};
use super::resources::{self, Resource, ResourceError, ResourceKind};
use crate::dns::Subscription;
use merge::{diff_names, overlay, overlay_get};
use slot::{AssignmentSpec, ClusterSpec, Slot, Version};

type Slots<T> = BTreeMap<String, Slot<T>>;
/// Staged slot changes: `None` removes the name.
type SlotUpdates<T> = BTreeMap<String, Option<Slot<T>>>;
type ListenerEntries = Vec<(ListenerKey, CompiledListener)>;

/// The accepted resources, the plan compiled from them and the indexes that
/// tell which compiled entries a change reaches.
#[derive(Debug, Default)]
pub struct ConfigState {
    /// Generation of each kind's map walked last (see [`KindMap`]).
    generations: [u64; 4],
    listeners: Slots<ListenerEntries>,
    clusters: Slots<ClusterSpec>,
    load_assignments: Slots<AssignmentSpec>,
    route_configs: Slots<CompiledRouteConfig>,
    /// ClusterLoadAssignment name → the clusters (in force) that read it.
    readers: BTreeMap<String, BTreeSet<String>>,
    /// Clusters in force with hostnames to resolve (recompiled on every
    /// update: their answers may have changed since).
    dns_clusters: BTreeSet<String>,
    /// Offered versions refused, by kind and name.
    rejected: BTreeMap<(ResourceKind, String), ResourceError>,
    plan: Plan,
}

/// A snapshot that passed validation, not yet in force.
#[derive(Debug, Default)]
pub struct Staged {
    generations: [u64; 4],
    listeners: SlotUpdates<ListenerEntries>,
    clusters: SlotUpdates<ClusterSpec>,
    load_assignments: SlotUpdates<AssignmentSpec>,
    route_configs: SlotUpdates<CompiledRouteConfig>,
    rejected_updates: BTreeMap<(ResourceKind, String), Option<ResourceError>>,
    /// What changes in the plan.
    pub delta: PlanDelta,
    /// Resources refused individually (the NACK text).
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

fn kind_index(kind: ResourceKind) -> usize {
    match kind {
        ResourceKind::Listener => 0,
        ResourceKind::Cluster => 1,
        ResourceKind::ClusterLoadAssignment => 2,
        ResourceKind::RouteConfiguration => 3,
    }
}

/// NACK order: the order resources compile in.
fn report_rank(kind: ResourceKind) -> u8 {
    match kind {
        ResourceKind::RouteConfiguration => 0,
        ResourceKind::ClusterLoadAssignment => 1,
        ResourceKind::Cluster => 2,
        ResourceKind::Listener => 3,
    }
}

impl ConfigState {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Clusters in force that have hostnames to resolve, with their hostnames.
    pub fn dns_clusters(&self) -> impl Iterator<Item = (&str, &[Subscription])> + '_ {
        self.dns_clusters.iter().filter_map(|name| {
            let accepted = self.clusters.get(name)?.accepted.as_ref()?;
            Some((name.as_str(), accepted.value.subscriptions.as_slice()))
        })
    }

    /// Validate and compile a snapshot against the state in force.
    pub fn stage(
        &self,
        snapshot: &Snapshot,
        limits: &Limits,
        dns: &dyn ResolvedHosts,
    ) -> Result<Staged, SnapshotError> {
        self.stage_after(snapshot, limits, dns, None)
    }

    /// [`Self::stage`], reusing what an earlier stage against the same
    /// state decoded (e.g. a check before the initial sync): the same bytes
    /// decode to the same thing.
    pub fn stage_after(
        &self,
        snapshot: &Snapshot,
        limits: &Limits,
        dns: &dyn ResolvedHosts,
        earlier: Option<&Staged>,
    ) -> Result<Staged, SnapshotError> {
        let mut staging = Staging::new(self, dns);
        staging.take_snapshot(snapshot, earlier);
        staging.finish(limits, &snapshot.rejected, &snapshot.unsupported)
    }

    /// The same resources again (a DNS answer changed): only the clusters
    /// that resolve hostnames are compiled again.
    pub fn restage(
        &self,
        limits: &Limits,
        dns: &dyn ResolvedHosts,
    ) -> Result<Staged, SnapshotError> {
        let mut staging = Staging::new(self, dns);
        staging.out.generations = self.generations;
        staging.finish(limits, &[], &[])
    }

    /// The staged snapshot is accepted: make it the state in force. Returns
    /// the plan entries that changed, for the writer.
    pub fn commit(&mut self, staged: Staged) -> Changed {
        self.generations = staged.generations;
        for (name, update) in staged.clusters {
            let old = self.clusters.get(&name).and_then(|s| s.accepted.clone());
            let new = update.as_ref().and_then(|s| s.accepted.clone());
            self.index_cluster(&name, old.as_ref(), new.as_ref());
            put(&mut self.clusters, name, update.map(Slot::thin));
        }
        for (name, update) in staged.listeners {
            put(&mut self.listeners, name, update);
        }
        for (name, update) in staged.load_assignments {
            put(&mut self.load_assignments, name, update.map(Slot::thin));
        }
        for (name, update) in staged.route_configs {
            put(&mut self.route_configs, name, update);
        }
        for (key, update) in staged.rejected_updates {
            match update {
                Some(e) => self.rejected.insert(key, e),
                None => self.rejected.remove(&key),
            };
        }
        self.plan.apply(staged.delta)
    }

    fn index_cluster(
        &mut self,
        name: &str,
        old: Option<&Version<ClusterSpec>>,
        new: Option<&Version<ClusterSpec>>,
    ) {
        if let Some(old) = old {
            let service = old.value.service.as_str();
            if let Some(readers) = self.readers.get_mut(service) {
                readers.remove(name);
                if readers.is_empty() {
                    self.readers.remove(service);
                }
            }
        }
        self.dns_clusters.remove(name);
        if let Some(new) = new {
            self.readers
                .entry(new.value.service.clone())
                .or_default()
                .insert(name.to_string());
            if !new.value.subscriptions.is_empty() {
                self.dns_clusters.insert(name.to_string());
            }
        }
    }

    /// The resources in force, decoded again: what a from-scratch compile
    /// would be given (tests compare the two).
    #[cfg(test)]
    fn accepted_resources(&self) -> resources::Resources {
        let mut out = resources::Resources::default();
        let all = self
            .listeners
            .values()
            .filter_map(|s| s.accepted.as_ref().map(|a| a.any.clone()))
            .chain(
                self.clusters
                    .values()
                    .filter_map(|s| s.accepted.as_ref().map(|a| a.any.clone())),
            )
            .chain(
                self.load_assignments
                    .values()
                    .filter_map(|s| s.accepted.as_ref().map(|a| a.any.clone())),
            )
            .chain(
                self.route_configs
                    .values()
                    .filter_map(|s| s.accepted.as_ref().map(|a| a.any.clone())),
            );
        for any in all {
            if let Ok(r) = resources::decode(&any) {
                out.insert(r);
            }
        }
        out
    }
}

fn put<T>(slots: &mut Slots<T>, name: String, update: Option<Slot<T>>) {
    match update {
        Some(slot) => {
            slots.insert(name, slot);
        }
        None => {
            slots.remove(&name);
        }
    }
}

/// One stage in progress: the state in force, and the changes so far.
struct Staging<'a> {
    state: &'a ConfigState,
    dns: &'a dyn ResolvedHosts,
    out: Staged,
    /// Clusters to compile again (changed, or an input of theirs did).
    recompile: BTreeSet<String>,
    /// Listeners or route configurations changed: settle the listeners again.
    relisten: bool,
}

impl<'a> Staging<'a> {
    fn new(state: &'a ConfigState, dns: &'a dyn ResolvedHosts) -> Self {
        Self {
            state,
            dns,
            out: Staged::default(),
            recompile: state.dns_clusters.clone(),
            relisten: false,
        }
    }

    /// Compare each kind that changed since the last walk with the slots,
    /// and decode (and compile what compiles alone) the versions that differ.
    fn take_snapshot(&mut self, snapshot: &Snapshot, earlier: Option<&Staged>) {
        let state = self.state;
        // Names refused before placing (repeated in one snapshot) keep the
        // version in force: they are neither changed nor removed.
        let held: BTreeSet<(ResourceKind, &str)> = snapshot
            .rejected
            .iter()
            .filter(|e| !e.name.is_empty())
            .map(|e| (e.kind, e.name.as_str()))
            .collect();
        for kind in ResourceKind::ALL {
            let map = snapshot.kind(kind);
            self.out.generations[kind_index(kind)] = map.generation();
            if map.generation() == state.generations[kind_index(kind)] {
                continue;
            }
            let skip = |name: &str| held.contains(&(kind, name));
            let absent = |name: &str| {
                kind == ResourceKind::Cluster && snapshot.excluded_clusters.contains(name)
            };
            match kind {
                ResourceKind::Listener => {
                    let changes = diff_names(&state.listeners, map, &skip, &absent);
                    self.relisten |= !changes.is_empty();
                    stage_kind(
                        &mut self.out.listeners,
                        &state.listeners,
                        earlier.map(|e| &e.listeners),
                        map,
                        changes,
                        |any| match resources::decode(any) {
                            Ok(Resource::Listener(l)) => compile_listener(&l),
                            Ok(_) => unreachable_kind(kind),
                            Err(e) => Err(decode_error(kind, e)),
                        },
                    );
                }
                ResourceKind::Cluster => {
                    let changes = diff_names(&state.clusters, map, &skip, &absent);
                    self.recompile
                        .extend(changes.iter().map(|(n, _)| n.clone()));
                    stage_kind(
                        &mut self.out.clusters,
                        &state.clusters,
                        earlier.map(|e| &e.clusters),
                        map,
                        changes,
                        |any| match resources::decode(any) {
                            Ok(Resource::Cluster(c)) => Ok(ClusterSpec::new(*c)),
                            Ok(_) => unreachable_kind(kind),
                            Err(e) => Err(decode_error(kind, e)),
                        },
                    );
                }
                ResourceKind::ClusterLoadAssignment => {
                    let changes = diff_names(&state.load_assignments, map, &skip, &absent);
                    for (name, _) in &changes {
                        if let Some(readers) = state.readers.get(name) {
                            self.recompile.extend(readers.iter().cloned());
                        }
                    }
                    stage_kind(
                        &mut self.out.load_assignments,
                        &state.load_assignments,
                        earlier.map(|e| &e.load_assignments),
                        map,
                        changes,
                        |any| match resources::decode(any) {
                            Ok(Resource::ClusterLoadAssignment(cla)) => {
                                compiler::check_load_assignment(&cla).map(|()| AssignmentSpec {
                                    decoded: Some(Arc::new(*cla)),
                                })
                            }
                            Ok(_) => unreachable_kind(kind),
                            Err(e) => Err(decode_error(kind, e)),
                        },
                    );
                }
                ResourceKind::RouteConfiguration => {
                    let changes = diff_names(&state.route_configs, map, &skip, &absent);
                    self.relisten |= !changes.is_empty();
                    stage_kind(
                        &mut self.out.route_configs,
                        &state.route_configs,
                        earlier.map(|e| &e.route_configs),
                        map,
                        changes,
                        |any| match resources::decode(any) {
                            Ok(Resource::RouteConfiguration(rc)) => compile_route_config(&rc),
                            Ok(_) => unreachable_kind(kind),
                            Err(e) => Err(decode_error(kind, e)),
                        },
                    );
                }
            }
        }
    }

    fn finish(
        mut self,
        limits: &Limits,
        pre_rejected: &[ResourceError],
        unsupported: &[String],
    ) -> Result<Staged, SnapshotError> {
        self.note_decode_outcomes();
        self.compile_clusters();
        if self.relisten {
            self.settle_listeners();
        }
        let rejected = self.report(pre_rejected);
        let plan = &self.state.plan;
        let delta = &self.out.delta;
        let count = |now: usize, added: usize, removed: usize| now + added - removed;
        let (la, lr) = delta.listener_counts(plan);
        let (ca, cr) = delta.cluster_counts(plan);
        let (ra, rr) = delta.route_config_counts(plan);
        let checked = check_counts(
            count(plan.listeners.len(), la, lr),
            count(plan.clusters.len(), ca, cr),
            count(plan.route_configs.len(), ra, rr),
            limits,
        )
        .and_then(|()| {
            delta
                .clusters
                .iter()
                .filter_map(|(name, c)| Some((name, c.as_ref()?)))
                .try_for_each(|(name, c)| check_cluster_capacity(name, c, limits))
        });
        if let Err(capacity) = checked {
            return Err(SnapshotError::OverCapacity { capacity, rejected });
        }
        self.out.rejected = rejected;
        self.out.unsupported = unsupported.to_vec();
        Ok(self.out)
    }

    /// Route configurations and assignments are in force as soon as they
    /// decode and check; otherwise the previous version stays.
    fn note_decode_outcomes(&mut self) {
        fn settle<T>(
            kind: ResourceKind,
            updates: &mut SlotUpdates<T>,
            rejected: &mut BTreeMap<(ResourceKind, String), Option<ResourceError>>,
            decides: bool,
        ) {
            for (name, update) in updates.iter_mut() {
                let error = update.as_ref().and_then(|s| s.outcome.clone().err());
                rejected.insert((kind, name.clone()), error);
                if let (true, Some(slot)) = (decides, update.as_mut()) {
                    if let Some(v) = slot.offered_version() {
                        slot.accepted = Some(v);
                    }
                }
            }
        }
        let rejected = &mut self.out.rejected_updates;
        settle(
            ResourceKind::RouteConfiguration,
            &mut self.out.route_configs,
            rejected,
            true,
        );
        settle(
            ResourceKind::ClusterLoadAssignment,
            &mut self.out.load_assignments,
            rejected,
            true,
        );
        // Clusters and listeners are decided when they compile (below).
        settle(
            ResourceKind::Cluster,
            &mut self.out.clusters,
            rejected,
            false,
        );
        settle(
            ResourceKind::Listener,
            &mut self.out.listeners,
            rejected,
            false,
        );
    }

    /// Compile each cluster whose inputs changed: the offered version first,
    /// the version in force when that fails, nothing when both fail.
    fn compile_clusters(&mut self) {
        let recompile = std::mem::take(&mut self.recompile);
        for name in recompile {
            let Some(slot) = overlay_get(&self.state.clusters, &self.out.clusters, &name) else {
                self.remove_cluster(&name);
                continue;
            };
            let mut slot = slot.clone();
            let mut error = slot.outcome.clone().err();
            let mut placed = None;
            for version in slot.candidates() {
                let cla = overlay_get(
                    &self.state.load_assignments,
                    &self.out.load_assignments,
                    &version.value.service,
                )
                .and_then(|s| s.accepted.as_ref())
                .and_then(|a| a.value.assignment(&a.any));
                let Some(cluster) = version.value.cluster(&version.any) else {
                    continue;
                };
                match compile_cluster(&cluster, cla.as_deref(), self.dns) {
                    Ok(compiled) => {
                        placed = Some((version, compiled));
                        break;
                    }
                    Err(e) if Arc::ptr_eq(&version.any, &slot.offered) => error = Some(e),
                    // The version in force no longer compiles: it goes.
                    Err(_) => {}
                }
            }
            let key = (ResourceKind::Cluster, name.clone());
            self.out.rejected_updates.insert(key, error);
            match placed {
                Some((version, compiled)) => {
                    let unresolved = version.value.subscriptions.iter().any(|s| {
                        self.dns
                            .addresses(&s.host, s.family)
                            .is_none_or(|a| a.is_empty())
                    });
                    if unresolved != self.state.plan.awaiting_dns.contains(&name) {
                        self.out.delta.awaiting_dns.insert(name.clone(), unresolved);
                    }
                    if self.state.plan.clusters.get(&name) != Some(&compiled) {
                        self.out.delta.clusters.insert(name.clone(), Some(compiled));
                    }
                    slot.accepted = Some(version);
                }
                None => {
                    self.remove_from_plan(&name);
                    slot.accepted = None;
                }
            }
            self.out.clusters.insert(name, Some(slot));
        }
    }

    fn remove_cluster(&mut self, name: &str) {
        self.remove_from_plan(name);
        self.out
            .rejected_updates
            .insert((ResourceKind::Cluster, name.to_string()), None);
    }

    fn remove_from_plan(&mut self, name: &str) {
        if self.state.plan.clusters.contains_key(name) {
            self.out.delta.clusters.insert(name.to_string(), None);
        }
        if self.state.plan.awaiting_dns.contains(name) {
            self.out.delta.awaiting_dns.insert(name.to_string(), false);
        }
    }

    /// Settle which listener holds which address, over all listeners in name
    /// order (the later name loses a clash), from their cached compiled
    /// forms: the offered version first, the version in force when the
    /// offered one is refused, nothing when neither fits.
    fn settle_listeners(&mut self) {
        let mut building = Plan::default();
        for (name, slot) in overlay(&self.state.route_configs, &self.out.route_configs) {
            if let Some(a) = &slot.accepted {
                building
                    .route_configs
                    .insert(name.clone(), (*a.value).clone());
            }
        }
        let mut updates = Vec::new();
        for (name, slot) in overlay(&self.state.listeners, &self.out.listeners) {
            let mut error = slot.outcome.clone().err();
            let mut placed = None;
            for version in slot.candidates() {
                match compiler::check_conflicts(&building, name, version.value.as_slice()) {
                    Ok(()) => {
                        placed = Some(version);
                        break;
                    }
                    Err(e) if Arc::ptr_eq(&version.any, &slot.offered) => error = Some(e),
                    Err(_) => {}
                }
            }
            if let Some(version) = &placed {
                for (key, compiled) in version.value.iter() {
                    for (rc_name, rc) in &compiled.inline_route_configs {
                        building.route_configs.insert(rc_name.clone(), rc.clone());
                    }
                    building.listeners.insert(*key, compiled.clone());
                }
            }
            let key = (ResourceKind::Listener, name.clone());
            if self.state.rejected.get(&key) != error.as_ref() {
                self.out.rejected_updates.insert(key, error);
            } else {
                self.out.rejected_updates.remove(&key);
            }
            let same_accepted = match (&slot.accepted, &placed) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.any, &b.any),
                (None, None) => true,
                _ => false,
            };
            if !same_accepted {
                let mut slot = slot.clone();
                slot.accepted = placed;
                updates.push((name.clone(), slot));
            }
        }
        for (name, slot) in updates {
            self.out.listeners.insert(name, Some(slot));
        }
        let plan = &self.state.plan;
        self.out.delta.listeners = merge::delta(&plan.listeners, building.listeners);
        self.out.delta.route_configs = merge::delta(&plan.route_configs, building.route_configs);
    }

    /// Every refusal in force after this snapshot, in compile order.
    fn report(&self, pre_rejected: &[ResourceError]) -> Vec<ResourceError> {
        let mut current: BTreeMap<(u8, ResourceKind, &str), &ResourceError> = BTreeMap::new();
        for ((kind, name), e) in &self.state.rejected {
            if !self
                .out
                .rejected_updates
                .contains_key(&(*kind, name.clone()))
            {
                current.insert((report_rank(*kind), *kind, name), e);
            }
        }
        for ((kind, name), e) in &self.out.rejected_updates {
            if let Some(e) = e {
                current.insert((report_rank(*kind), *kind, name), e);
            }
        }
        pre_rejected
            .iter()
            .cloned()
            .chain(current.into_values().cloned())
            .collect()
    }
}

/// Slot updates for the names that changed: the new bytes decoded with
/// `decode` (or as an `earlier` stage decoded the same bytes), the version
/// in force kept for now (decided later).
fn stage_kind<T>(
    out: &mut SlotUpdates<T>,
    slots: &Slots<T>,
    earlier: Option<&SlotUpdates<T>>,
    map: &KindMap,
    changes: Vec<(String, bool)>,
    decode: impl Fn(&Any) -> Result<T, ResourceError>,
) {
    for (name, present) in changes {
        let Some(any) = map.get(&name).filter(|_| present) else {
            out.insert(name, None);
            continue;
        };
        let accepted = slots.get(&name).and_then(|s| s.accepted.clone());
        let reused = earlier
            .and_then(|e| e.get(&name))
            .and_then(Option::as_ref)
            .filter(|slot| Arc::ptr_eq(&slot.offered, any))
            .map(|slot| slot.outcome.clone());
        let outcome = reused.unwrap_or_else(|| {
            decode(any).map(Arc::new).map_err(|mut e| {
                if e.name.is_empty() {
                    e.name = name.clone();
                }
                e
            })
        });
        out.insert(
            name,
            Some(Slot {
                offered: any.clone(),
                outcome,
                accepted,
            }),
        );
    }
}

fn decode_error(kind: ResourceKind, e: resources::DecodeError) -> ResourceError {
    match e {
        resources::DecodeError::Malformed(e) => e,
        resources::DecodeError::UnknownType(t) => ResourceError {
            kind,
            name: String::new(),
            field: String::new(),
            message: format!("unsupported resource type {t:?}"),
        },
    }
}

/// `resources::decode` picks the type from the type URL the map was keyed by.
fn unreachable_kind<T>(kind: ResourceKind) -> Result<T, ResourceError> {
    Err(ResourceError {
        kind,
        name: String::new(),
        field: String::new(),
        message: "the resource's type URL does not match its kind".into(),
    })
}

impl PlanDelta {
    fn listener_counts(&self, plan: &Plan) -> (usize, usize) {
        counts(&self.listeners, |k| plan.listeners.contains_key(k))
    }
    fn cluster_counts(&self, plan: &Plan) -> (usize, usize) {
        counts(&self.clusters, |k| plan.clusters.contains_key(k))
    }
    fn route_config_counts(&self, plan: &Plan) -> (usize, usize) {
        counts(&self.route_configs, |k| plan.route_configs.contains_key(k))
    }
}

/// (entries added, entries removed) by a delta.
fn counts<K, V>(delta: &BTreeMap<K, Option<V>>, exists: impl Fn(&K) -> bool) -> (usize, usize) {
    let mut added = 0;
    let mut removed = 0;
    for (k, v) in delta {
        match (v.is_some(), exists(k)) {
            (true, false) => added += 1,
            (false, true) => removed += 1,
            _ => {}
        }
    }
    (added, removed)
}
