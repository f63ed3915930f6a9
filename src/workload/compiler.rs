//! The dual-engine compiler: holds the workload API resources and the plan
//! compiled from them, and recompiles only what an update touched.
//!
//! An update (a delta push, a file reload, a DNS answer) marks *dirty* keys:
//! the services a changed workload belongs to (before and after), the
//! workload's backends, the addresses whose owner may have changed. Only
//! those records are recompiled and compared with the plan, so a one-endpoint
//! change at 50,000 services costs one service record, not the mesh.
//!
//! Pure: no syscalls. DNS answers come in through [`ResolvedHosts`].
//! Capacity is checked before the plan changes; an update that does not fit
//! is undone whole (store, ids and plan as before).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use smallvec::SmallVec;

use super::ids::{AdoptedIds, IdTable};
use super::key::{Interner, Key};
use super::locality::{depends_on_locality, LocalLocality};
use super::plan::{
    frontend_addr, BackendId, BackendRecord, EndpointRecord, FrontendAddr, FrontendTarget,
    LbPolicy, Plan, PlanChanges, PlanMap, ServiceId, ServiceRecord, TargetPorts, FAMILIES,
    MAX_PRIORITIES,
};
use super::resource::{
    AddressResource, LbMode, LocalityFields, ServiceSpec, WaypointRef, WorkloadSpec,
};
use crate::dns::{LookupFamily, ResolvedHosts};

/// The compiler's own maps: keyed by strings and addresses we hash a lot
/// (every workload several times per update); foldhash is several times
/// faster than SipHash, and nothing here is keyed by attacker-chosen data
/// that could not also just be sent in bulk.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Kernel map capacities the plan must fit (entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_frontends: usize,
    pub max_services: usize,
    /// Endpoint entries of all services (one slot's worth).
    pub max_endpoints: usize,
    pub max_backends: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the update does not fit: {what} would need {needed} entries, the limit is {limit} (raise --max-{what}); nothing was applied")]
pub struct CapacityError {
    pub what: &'static str,
    pub needed: usize,
    pub limit: usize,
}

/// Settings that do not come from xDS.
#[derive(Debug, Clone, Default)]
pub struct CompilerSettings {
    /// `NODE_NAME`: the workloads on it tell this node's locality.
    pub node_name: String,
    /// `CLUSTER_ID`, for the CLUSTER scope.
    pub cluster_id: String,
    /// `--locality region/zone/subzone`: overrides what workloads say.
    pub locality: Option<LocalityFields>,
    /// Port of the waypoint listener a waypoint address is reached at.
    pub waypoint_port: u16,
}

/// One push: resources added or changed, and xDS names removed.
#[derive(Debug, Clone, Default)]
pub struct Update {
    /// `(xDS name if any, resource)`.
    pub upserts: Vec<(Option<Key>, AddressResource)>,
    pub removals: Vec<String>,
}

/// What is dirty in one recompile.
#[derive(Debug, Default)]
struct Dirty {
    services: Marks<Key>,
    workloads: Marks<Key>,
    addrs: Marks<FrontendAddr>,
    relocalize: bool,
}

/// Keys marked dirty during an update, in any order and possibly repeated:
/// a whole-mesh push marks 100k+ keys, and a B-tree insert per mark cost
/// more than compiling them. [`Marks::settle`] sorts and deduplicates once
/// before staging, so ids are still handed out in key order.
#[derive(Debug)]
struct Marks<K>(Vec<K>);

impl<K> Default for Marks<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord> Marks<K> {
    fn insert(&mut self, key: K) {
        self.0.push(key);
    }

    fn settle(&mut self) {
        self.0.sort_unstable();
        self.0.dedup();
    }

    fn iter(&self) -> std::slice::Iter<'_, K> {
        self.0.iter()
    }
}

impl<K> Extend<K> for Marks<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, keys: I) {
        self.0.extend(keys);
    }
}

impl<'a, K> IntoIterator for &'a Marks<K> {
    type Item = &'a K;
    type IntoIter = std::slice::Iter<'a, K>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Who names one waypoint service.
#[derive(Debug, Default)]
struct WaypointUsers {
    services: BTreeSet<Key>,
    workloads: BTreeSet<Key>,
}

impl WaypointUsers {
    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.workloads.is_empty()
    }
}

/// The waypoint service a resource names by hostname, if it does.
fn waypoint_service(waypoint: Option<&WaypointRef>) -> Option<&Key> {
    match waypoint? {
        WaypointRef::Service(key) => Some(key),
        WaypointRef::Address(_) => None,
    }
}

/// A change to the store, kept to undo an update that does not fit.
enum Undo {
    Workload(Key, Option<Box<WorkloadSpec>>),
    Service(Key, Option<ServiceSpec>),
}

/// Keys a workload stands for in the backend map (its uid, or `uid#ip` per
/// DNS answer) with their ids, so compiling an endpoint list looks each
/// member up once. Almost always one, kept inline.
type BackendKeys = SmallVec<[(Key, BackendId); 1]>;

/// Keys claiming one address, sorted: almost always one, kept inline.
type Claimants = SmallVec<[Key; 1]>;

#[derive(Default)]
pub struct WorkloadCompiler {
    settings: CompilerSettings,
    local: LocalLocality,
    services: Map<Key, ServiceSpec>,
    /// Boxed: the table is sized for growth, and a spec is a few hundred
    /// bytes; empty slots then cost a pointer, not a spec.
    workloads: Map<Key, Box<WorkloadSpec>>,
    /// xDS resource name -> store key, only where they differ (Istiod uses
    /// the key as the name, so this is normally empty).
    names: Map<Key, Key>,
    /// One shared copy of the strings workloads repeat.
    strings: Interner,
    /// Service key -> uids of workloads that list it.
    members: Map<Key, BTreeSet<Key>>,
    /// Address -> keys claiming it, sorted.
    addr_services: Map<FrontendAddr, Claimants>,
    addr_workloads: Map<FrontendAddr, Claimants>,
    /// Hostname -> uids of DNS workloads resolving it.
    hosts: Map<Key, BTreeSet<Key>>,
    /// Uids of the workloads on this node (they tell its locality).
    on_node: BTreeSet<Key>,
    /// Endpoint entries of the plan (kept, not recounted per update).
    endpoint_entries: usize,
    /// Waypoint service key -> services and workloads that name it as their
    /// waypoint by hostname: their records hold its VIP, so they are
    /// recompiled when it changes (or comes, or goes).
    waypoint_users: Map<Key, WaypointUsers>,
    /// Uid -> backend keys it produced (uid, or `uid#ip` for DNS answers).
    backend_keys: Map<Key, BackendKeys>,
    service_ids: IdTable,
    backend_ids: IdTable,
    plan: Plan,
}

/// New records for the dirty keys (`None` = delete), not yet in the plan.
#[derive(Default)]
struct Staged {
    frontends: Map<FrontendAddr, Option<FrontendTarget>>,
    services: Map<ServiceId, Option<ServiceRecord>>,
    backends: Map<BackendId, Option<BackendRecord>>,
    /// Workload uid -> its backend keys as staged. Looked up once per
    /// endpoint of every service staged, so a map, not a list: a list made
    /// a 100k-workload push quadratic (minutes instead of seconds).
    backend_keys: Map<Key, BackendKeys>,
    /// Ids allocated while staging (released if the update is undone).
    new_service_keys: Vec<Key>,
    new_backend_keys: Vec<Key>,
    /// Keys whose ids go once the update is committed.
    dead_service_keys: Vec<Key>,
    dead_backend_keys: Vec<Key>,
}

impl WorkloadCompiler {
    pub fn new(settings: CompilerSettings) -> Self {
        let mut compiler = Self {
            settings,
            ..Self::default()
        };
        compiler.local = compiler.effective_locality();
        compiler
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Start from the ids an earlier daemon's records use in the pinned
    /// maps, before the first update (see [`super::ids`]).
    pub fn adopt_ids(&mut self, services: &AdoptedIds, backends: &AdoptedIds) {
        self.service_ids.adopt(services);
        self.backend_ids.adopt(backends);
    }

    /// The kernel holds exactly the plan now: ids whose records were
    /// deleted may go to other keys.
    pub fn kernel_caught_up(&mut self) {
        self.service_ids.kernel_caught_up();
        self.backend_ids.kernel_caught_up();
    }

    pub fn local_locality(&self) -> &LocalLocality {
        &self.local
    }

    /// Hostnames of DNS workloads (ServiceEntry `resolution: DNS`): what the
    /// resolver must keep answered.
    pub fn hostnames(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.hosts.keys().map(|h| h.to_string()).collect();
        hosts.sort();
        hosts
    }

    /// Whether a resource with this xDS name (or key) is held.
    pub fn holds(&self, name: &str) -> bool {
        let key = self.names.get(name).map_or(name, |k| &**k);
        self.workloads.contains_key(key) || self.services.contains_key(key)
    }

    /// Keys of every service and workload held.
    pub fn keys(&self) -> Vec<String> {
        self.services
            .keys()
            .chain(self.workloads.keys())
            .map(|k| k.to_string())
            .collect()
    }

    /// Applies a push. On success the plan holds the result and the returned
    /// changes say which kernel keys to write; on a capacity error nothing
    /// changed.
    pub fn apply(
        &mut self,
        update: Update,
        limits: &Limits,
        dns: &dyn ResolvedHosts,
    ) -> Result<PlanChanges, CapacityError> {
        let mut dirty = Dirty::default();
        let mut undo = Vec::new();
        for name in &update.removals {
            let key = self
                .names
                .remove(name.as_str())
                .unwrap_or_else(|| Key::from(name.as_str()));
            if let Some(old) = self.remove_workload(&key, &mut dirty) {
                undo.push(Undo::Workload(key.clone(), Some(old)));
            }
            if let Some(old) = self.remove_service(&key, &mut dirty) {
                undo.push(Undo::Service(key, Some(old)));
            }
        }
        self.reserve_for(&update);
        for (name, mut resource) in update.upserts {
            let key = match &name {
                // The usual case: one string for the xDS name and the key.
                Some(name) if name == resource.key() => {
                    resource.share_key(name);
                    name.clone()
                }
                _ => resource.key().clone(),
            };
            if let Some(name) = name {
                // Renamed in place (same xDS name, other key): the old key goes.
                let previous = self.names.get(&name).unwrap_or(&name).clone();
                if previous != key {
                    if let Some(old) = self.remove_workload(&previous, &mut dirty) {
                        undo.push(Undo::Workload(previous.clone(), Some(old)));
                    }
                    if let Some(old) = self.remove_service(&previous, &mut dirty) {
                        undo.push(Undo::Service(previous, Some(old)));
                    }
                }
                if name == key {
                    self.names.remove(&name);
                } else {
                    self.names.insert(name, key.clone());
                }
            }
            match resource {
                AddressResource::Workload(w) => {
                    if self.workloads.get(&key).is_some_and(|held| **held == w) {
                        continue; // resent unchanged
                    }
                    let old = self.remove_workload(&key, &mut dirty);
                    undo.push(Undo::Workload(key, old));
                    self.insert_workload(Box::new(w), &mut dirty);
                }
                AddressResource::Service(s) => {
                    if self.services.get(&key) == Some(&s) {
                        continue;
                    }
                    let old = self.remove_service(&key, &mut dirty);
                    undo.push(Undo::Service(key, old));
                    self.insert_service(s, &mut dirty);
                }
            }
        }
        let previous_local = self.local.clone();
        match self.recompile(dirty, limits, dns) {
            Ok(changes) => Ok(changes),
            Err(e) => {
                self.undo(undo);
                self.local = previous_local;
                Err(e)
            }
        }
    }

    /// Grows the big tables once for a large update (a whole-mesh push)
    /// instead of rehashing them several times while it is inserted.
    fn reserve_for(&mut self, update: &Update) {
        let workloads = update
            .upserts
            .iter()
            .filter(|(_, r)| matches!(r, AddressResource::Workload(_)))
            .count();
        let services = update.upserts.len() - workloads;
        self.workloads.reserve(workloads);
        self.addr_workloads.reserve(workloads);
        self.backend_keys.reserve(workloads);
        self.backend_ids.reserve(workloads);
        self.plan.backends.reserve(workloads);
        self.plan.frontends.reserve(workloads + services);
        self.services.reserve(services);
        self.members.reserve(services);
        self.service_ids.reserve(services);
        self.plan.services.reserve(services);
    }

    /// New DNS answers for `hosts`: recompiles the workloads resolving them.
    pub fn hosts_changed(
        &mut self,
        hosts: &[String],
        limits: &Limits,
        dns: &dyn ResolvedHosts,
    ) -> Result<PlanChanges, CapacityError> {
        let mut dirty = Dirty::default();
        for host in hosts {
            for uid in self.hosts.get(host.as_str()).into_iter().flatten() {
                dirty.workloads.insert(uid.clone());
                if let Some(w) = self.workloads.get(uid) {
                    dirty.services.extend(w.services.keys().cloned());
                }
            }
        }
        self.recompile(dirty, limits, dns)
    }

    fn undo(&mut self, undo: Vec<Undo>) {
        let mut ignored = Dirty::default();
        for step in undo.into_iter().rev() {
            match step {
                Undo::Workload(key, old) => {
                    self.remove_workload(&key, &mut ignored);
                    if let Some(old) = old {
                        self.insert_workload(old, &mut ignored);
                    }
                }
                Undo::Service(key, old) => {
                    self.remove_service(&key, &mut ignored);
                    if let Some(old) = old {
                        self.insert_service(old, &mut ignored);
                    }
                }
            }
        }
    }

    fn insert_workload(&mut self, mut w: Box<WorkloadSpec>, dirty: &mut Dirty) {
        self.share_strings(&mut w);
        dirty.workloads.insert(w.uid.clone());
        dirty.services.extend(w.services.keys().cloned());
        for service in w.services.keys() {
            self.members
                .entry(service.clone())
                .or_default()
                .insert(w.uid.clone());
        }
        for ip in &w.addresses {
            let addr = frontend_addr(*ip);
            dirty.addrs.insert(addr);
            add_sorted(self.addr_workloads.entry(addr).or_default(), &w.uid);
        }
        if w.addresses.is_empty() {
            if let Some(host) = &w.hostname {
                self.hosts
                    .entry(host.clone())
                    .or_default()
                    .insert(w.uid.clone());
            }
        }
        if let Some(waypoint) = waypoint_service(w.waypoint.as_ref()) {
            self.waypoint_users
                .entry(waypoint.clone())
                .or_default()
                .workloads
                .insert(w.uid.clone());
        }
        if self.is_on_node(&w) {
            dirty.relocalize = true;
            self.on_node.insert(w.uid.clone());
        }
        self.workloads.insert(w.uid.clone(), w);
    }

    /// Points the strings workloads repeat at one shared copy each.
    fn share_strings(&mut self, w: &mut WorkloadSpec) {
        let strings = &mut self.strings;
        for s in [
            &mut w.namespace,
            &mut w.network,
            &mut w.node,
            &mut w.cluster_id,
            &mut w.locality.region,
            &mut w.locality.zone,
            &mut w.locality.subzone,
        ] {
            strings.share(s);
        }
        for key in w.services.keys_mut() {
            strings.share(key);
        }
        if let Some(WaypointRef::Service(key)) = &mut w.waypoint {
            strings.share(key);
        }
    }

    fn remove_workload(&mut self, uid: &str, dirty: &mut Dirty) -> Option<Box<WorkloadSpec>> {
        let w = self.workloads.remove(uid)?;
        dirty.workloads.insert(w.uid.clone());
        dirty.services.extend(w.services.keys().cloned());
        for service in w.services.keys() {
            remove_from_index(&mut self.members, service, uid);
        }
        for ip in &w.addresses {
            let addr = frontend_addr(*ip);
            dirty.addrs.insert(addr);
            remove_sorted(&mut self.addr_workloads, &addr, uid);
        }
        if let Some(host) = &w.hostname {
            remove_from_index(&mut self.hosts, host, uid);
        }
        if let Some(waypoint) = waypoint_service(w.waypoint.as_ref()) {
            self.forget_waypoint_user(waypoint, |u| u.workloads.remove(uid));
        }
        if self.on_node.remove(uid) {
            dirty.relocalize = true;
        }
        Some(w)
    }

    fn insert_service(&mut self, mut s: ServiceSpec, dirty: &mut Dirty) {
        // Shared with the workloads that name this service.
        self.strings.share(&mut s.key);
        dirty.services.insert(s.key.clone());
        for ip in &s.addresses {
            let addr = frontend_addr(*ip);
            dirty.addrs.insert(addr);
            add_sorted(self.addr_services.entry(addr).or_default(), &s.key);
        }
        if let Some(waypoint) = waypoint_service(s.waypoint.as_ref()) {
            self.waypoint_users
                .entry(waypoint.clone())
                .or_default()
                .services
                .insert(s.key.clone());
        }
        self.services.insert(s.key.clone(), s);
    }

    fn forget_waypoint_user(
        &mut self,
        waypoint: &str,
        remove: impl FnOnce(&mut WaypointUsers) -> bool,
    ) {
        if let Some(users) = self.waypoint_users.get_mut(waypoint) {
            remove(users);
            if users.is_empty() {
                self.waypoint_users.remove(waypoint);
            }
        }
    }

    fn remove_service(&mut self, key: &str, dirty: &mut Dirty) -> Option<ServiceSpec> {
        let s = self.services.remove(key)?;
        dirty.services.insert(s.key.clone());
        for ip in &s.addresses {
            let addr = frontend_addr(*ip);
            dirty.addrs.insert(addr);
            remove_sorted(&mut self.addr_services, &addr, key);
        }
        if let Some(waypoint) = waypoint_service(s.waypoint.as_ref()) {
            self.forget_waypoint_user(waypoint, |u| u.services.remove(key));
        }
        Some(s)
    }

    fn is_on_node(&self, w: &WorkloadSpec) -> bool {
        !self.settings.node_name.is_empty() && *w.node == *self.settings.node_name
    }

    /// This node's locality: the flag, else the first workload (by uid) on
    /// this node that has one.
    fn effective_locality(&self) -> LocalLocality {
        let mut local = LocalLocality {
            node: self.settings.node_name.as_str().into(),
            cluster: self.settings.cluster_id.as_str().into(),
            ..LocalLocality::default()
        };
        let on_node = self
            .on_node
            .iter()
            .filter_map(|uid| self.workloads.get(uid))
            .min_by(|a, b| {
                let has = |w: &WorkloadSpec| w.locality == LocalityFields::default();
                (has(a), &a.uid).cmp(&(has(b), &b.uid))
            });
        if let Some(w) = on_node {
            local.network = w.network.clone();
            local.region = w.locality.region.clone();
            local.zone = w.locality.zone.clone();
            local.subzone = w.locality.subzone.clone();
        }
        if let Some(flag) = &self.settings.locality {
            local.region = flag.region.clone();
            local.zone = flag.zone.clone();
            local.subzone = flag.subzone.clone();
        }
        local
    }

    fn recompile(
        &mut self,
        mut dirty: Dirty,
        limits: &Limits,
        dns: &dyn ResolvedHosts,
    ) -> Result<PlanChanges, CapacityError> {
        if dirty.relocalize {
            let local = self.effective_locality();
            if local != self.local {
                self.local = local;
                dirty.services.extend(
                    self.services
                        .values()
                        .filter(|s| depends_on_locality(&s.load_balancing))
                        .map(|s| s.key.clone()),
                );
            }
        }
        dirty.services.settle();
        // Whoever names a changed service as waypoint holds its VIP.
        let waypoints: Vec<Key> = dirty
            .services
            .iter()
            .filter(|key| self.waypoint_users.contains_key(*key))
            .cloned()
            .collect();
        for key in waypoints {
            if let Some(users) = self.waypoint_users.get(&key) {
                dirty.services.extend(users.services.iter().cloned());
                dirty.workloads.extend(users.workloads.iter().cloned());
            }
        }
        dirty.services.settle();
        dirty.workloads.settle();
        dirty.addrs.settle();
        let mut staged = Staged::default();
        staged.backends.reserve(dirty.workloads.iter().len());
        staged.backend_keys.reserve(dirty.workloads.iter().len());
        staged.services.reserve(dirty.services.iter().len());
        staged.frontends.reserve(dirty.addrs.iter().len());
        self.stage_backends(&dirty, dns, &mut staged);
        self.stage_services(&dirty, &mut staged);
        self.stage_frontends(&dirty, &mut staged);
        if let Err(e) = self.check_capacity(&staged, limits) {
            for key in &staged.new_service_keys {
                self.service_ids.release(key);
            }
            for key in &staged.new_backend_keys {
                self.backend_ids.release(key);
            }
            return Err(e);
        }
        Ok(self.commit(staged))
    }

    /// The backends a workload stands for: itself (by uid) when it has
    /// addresses, else one per address its hostname resolved to.
    fn backends_of(&self, w: &WorkloadSpec, dns: &dyn ResolvedHosts) -> Vec<(Key, BackendRecord)> {
        let waypoint = self.waypoint_addr(w.waypoint.as_ref());
        if !w.addresses.is_empty() {
            let v4 = w.addresses.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            });
            let v6 = w.addresses.iter().find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            });
            return vec![(
                w.uid.clone(),
                BackendRecord {
                    name: w.uid.clone(),
                    v4,
                    v6,
                    waypoint,
                },
            )];
        }
        let Some(host) = &w.hostname else {
            return Vec::new();
        };
        dns.addresses(host, LookupFamily::All)
            .unwrap_or_default()
            .into_iter()
            .map(|ip| {
                let key = Key::from(format!("{}#{ip}", w.uid));
                let (v4, v6) = match ip {
                    IpAddr::V4(v4) => (Some(v4), None),
                    IpAddr::V6(v6) => (None, Some(v6)),
                };
                (
                    key.clone(),
                    BackendRecord {
                        name: key,
                        v4,
                        v6,
                        waypoint,
                    },
                )
            })
            .collect()
    }

    fn waypoint_addr(&self, waypoint: Option<&WaypointRef>) -> Option<SocketAddr> {
        match waypoint? {
            WaypointRef::Address(ip) => Some(SocketAddr::new(*ip, self.settings.waypoint_port)),
            // A waypoint named by service: its first VIP.
            WaypointRef::Service(key) => self
                .services
                .get(key)
                .and_then(|s| s.addresses.first())
                .map(|ip| SocketAddr::new(*ip, self.settings.waypoint_port)),
        }
    }

    fn stage_backends(&mut self, dirty: &Dirty, dns: &dyn ResolvedHosts, staged: &mut Staged) {
        for uid in &dirty.workloads {
            let old_keys = self.backend_keys.get(uid).cloned().unwrap_or_default();
            let new = self
                .workloads
                .get(uid)
                .map(|w| self.backends_of(w, dns))
                .unwrap_or_default();
            let mut new_keys = BackendKeys::new();
            for (key, record) in new {
                let (id, fresh) = self.backend_ids.allocate(&key);
                if fresh {
                    staged.new_backend_keys.push(key.clone());
                }
                staged.backends.insert(id, Some(record));
                new_keys.push((key, id));
            }
            for (key, id) in &old_keys {
                if !new_keys.iter().any(|(new, _)| new == key) {
                    staged.backends.insert(*id, None);
                    staged.dead_backend_keys.push(key.clone());
                }
            }
            staged.backend_keys.insert(uid.clone(), new_keys);
        }
    }

    /// Backend ids of a workload as staged (the dirty ones) or as committed.
    fn staged_backend_ids<'a>(
        &'a self,
        uid: &str,
        staged: &'a Staged,
    ) -> impl Iterator<Item = BackendId> + 'a {
        let keys = staged
            .backend_keys
            .get(uid)
            .or_else(|| self.backend_keys.get(uid));
        keys.into_iter().flatten().map(|(_, id)| *id)
    }

    fn backend_record<'a>(
        &'a self,
        id: BackendId,
        staged: &'a Staged,
    ) -> Option<&'a BackendRecord> {
        match staged.backends.get(&id) {
            Some(record) => record.as_ref(),
            None => self.plan.backends.get(&id),
        }
    }

    fn stage_services(&mut self, dirty: &Dirty, staged: &mut Staged) {
        for key in &dirty.services {
            // A headless service (no VIP) cannot be dialled by address.
            let record = self
                .services
                .get(key)
                .filter(|s| !s.addresses.is_empty())
                .map(|s| self.service_record(s, staged));
            match record {
                Some(record) => {
                    let (id, fresh) = self.service_ids.allocate(key);
                    if fresh {
                        staged.new_service_keys.push(key.clone());
                    }
                    staged.services.insert(id, Some(record));
                }
                None => {
                    if let Some(id) = self.service_ids.get(key) {
                        staged.services.insert(id, None);
                        staged.dead_service_keys.push(key.clone());
                    }
                }
            }
        }
    }

    fn service_record(&self, s: &ServiceSpec, staged: &Staged) -> ServiceRecord {
        let lb = &s.load_balancing;
        let mut endpoints: [Vec<Vec<EndpointRecord>>; FAMILIES] = Default::default();
        if lb.mode != LbMode::Passthrough {
            for uid in self.members.get(&s.key).into_iter().flatten() {
                let Some(w) = self.workloads.get(uid) else {
                    continue;
                };
                if !w.healthy && !lb.allow_unhealthy {
                    continue;
                }
                let Some(priority) = self.local.priority(lb, w) else {
                    continue;
                };
                let own_ports = w.services.get(&s.key).unwrap_or(&[]);
                let target_ports: TargetPorts = s
                    .ports
                    .iter()
                    .map(|p| {
                        let own = own_ports
                            .iter()
                            .find(|o| o.service_port == p.service_port && o.target_port != 0);
                        match (own, p.target_port) {
                            (Some(o), _) => o.target_port,
                            (None, 0) => p.service_port,
                            (None, target) => target,
                        }
                    })
                    .collect();
                for backend in self.staged_backend_ids(uid, staged) {
                    let Some(record) = self.backend_record(backend, staged) else {
                        continue;
                    };
                    let families = [record.v4.is_some(), record.v6.is_some()];
                    for (family, present) in families.into_iter().enumerate() {
                        if !present {
                            continue;
                        }
                        let levels = &mut endpoints[family];
                        if levels.len() <= priority {
                            levels.resize(priority + 1, Vec::new());
                        }
                        for _ in 0..w.weight {
                            levels[priority].push(EndpointRecord {
                                backend,
                                target_ports: target_ports.clone(),
                            });
                        }
                    }
                }
            }
        }
        debug_assert!(endpoints.iter().all(|l| l.len() <= MAX_PRIORITIES));
        ServiceRecord {
            name: s.key.clone(),
            policy: match lb.mode {
                LbMode::Standard => LbPolicy::Random,
                LbMode::Failover => LbPolicy::Failover,
                LbMode::Strict => LbPolicy::Strict,
                LbMode::Passthrough => LbPolicy::Passthrough,
            },
            ports: s.ports.iter().map(|p| p.service_port).collect(),
            waypoint: self.waypoint_addr(s.waypoint.as_ref()),
            endpoints,
        }
    }

    fn stage_frontends(&self, dirty: &Dirty, staged: &mut Staged) {
        for addr in &dirty.addrs {
            // A VIP beats a workload address; among several owners the
            // smallest key wins, so the choice does not depend on order.
            let service = self
                .addr_services
                .get(addr)
                .and_then(|keys| keys.iter().find_map(|k| self.staged_service_id(k, staged)))
                .map(FrontendTarget::Service);
            let target = service.or_else(|| {
                self.addr_workloads
                    .get(addr)
                    .and_then(|uids| uids.iter().find_map(|u| self.backend_ids.get(u)))
                    .map(FrontendTarget::Workload)
            });
            staged.frontends.insert(*addr, target);
        }
    }

    /// The id of a service that has (or will have) a kernel record.
    fn staged_service_id(&self, key: &str, staged: &Staged) -> Option<ServiceId> {
        let id = self.service_ids.get(key)?;
        let live = match staged.services.get(&id) {
            Some(record) => record.is_some(),
            None => self.plan.services.contains_key(&id),
        };
        live.then_some(id)
    }

    fn check_capacity(&self, staged: &Staged, limits: &Limits) -> Result<(), CapacityError> {
        fn after<K: Eq + std::hash::Hash, V>(
            current: &PlanMap<K, V>,
            staged: &Map<K, Option<impl Sized>>,
        ) -> usize {
            let mut count = current.len();
            for (key, record) in staged {
                match (current.contains_key(key), record.is_some()) {
                    (false, true) => count += 1,
                    (true, false) => count -= 1,
                    _ => {}
                }
            }
            count
        }
        let check = |what, needed, limit| {
            if needed > limit {
                Err(CapacityError {
                    what,
                    needed,
                    limit,
                })
            } else {
                Ok(())
            }
        };
        check(
            "frontends",
            after(&self.plan.frontends, &staged.frontends),
            limits.max_frontends,
        )?;
        check(
            "services",
            after(&self.plan.services, &staged.services),
            limits.max_services,
        )?;
        check(
            "backends",
            after(&self.plan.backends, &staged.backends),
            limits.max_backends,
        )?;
        debug_assert_eq!(self.endpoint_entries, self.plan.endpoint_entries());
        let mut endpoints = self.endpoint_entries;
        for (id, record) in &staged.services {
            endpoints -= self
                .plan
                .services
                .get(id)
                .map_or(0, ServiceRecord::endpoint_entries);
            endpoints += record.as_ref().map_or(0, ServiceRecord::endpoint_entries);
        }
        check("endpoints", endpoints, limits.max_endpoints)
    }

    fn commit(&mut self, staged: Staged) -> PlanChanges {
        let mut changes = PlanChanges::default();
        for (id, record) in &staged.services {
            self.endpoint_entries -= self
                .plan
                .services
                .get(id)
                .map_or(0, ServiceRecord::endpoint_entries);
            self.endpoint_entries += record.as_ref().map_or(0, ServiceRecord::endpoint_entries);
        }
        put(
            &mut self.plan.backends,
            staged.backends,
            &mut changes.backends_upsert,
            &mut changes.backends_delete,
        );
        put(
            &mut self.plan.services,
            staged.services,
            &mut changes.services_upsert,
            &mut changes.services_delete,
        );
        put(
            &mut self.plan.frontends,
            staged.frontends,
            &mut changes.frontends_upsert,
            &mut changes.frontends_delete,
        );
        for (uid, keys) in staged.backend_keys {
            if keys.is_empty() {
                self.backend_keys.remove(&uid);
            } else {
                self.backend_keys.insert(uid, keys);
            }
        }
        for key in staged.dead_backend_keys {
            self.backend_ids.release(&key);
        }
        for key in staged.dead_service_keys {
            self.service_ids.release(&key);
        }
        changes
    }

    /// The store for `/debug/config_dump/dual-engine`; `summary` leaves out
    /// the per-service and per-workload lists.
    pub fn dump_json(&self, summary: bool) -> serde_json::Value {
        let mut dump = serde_json::json!({
            "local_locality": self.local,
            "counts": { "services": self.services.len(), "workloads": self.workloads.len() },
            "dns_hostnames": self.hostnames(),
            "plan": {
                "frontends": self.plan.frontends.len(),
                "services": self.plan.services.len(),
                "endpoints": self.endpoint_entries,
                "backends": self.plan.backends.len(),
            },
        });
        if summary {
            return dump;
        }
        let mut services: Vec<_> = self.services.values().collect();
        services.sort_by(|a, b| a.key.cmp(&b.key));
        let mut workloads: Vec<_> = self.workloads.values().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let service_ids: BTreeMap<_, _> = self
            .services
            .keys()
            .filter_map(|k| self.service_ids.get(k).map(|id| (k.clone(), id)))
            .collect();
        if let Some(map) = dump.as_object_mut() {
            map.insert("services".into(), serde_json::json!(services));
            map.insert("workloads".into(), serde_json::json!(workloads));
            map.insert("service_ids".into(), serde_json::json!(service_ids));
        }
        dump
    }
}

/// Writes staged records into the plan, noting only real changes.
fn put<K: Copy + Ord + std::hash::Hash, V: PartialEq>(
    plan: &mut PlanMap<K, V>,
    staged: Map<K, Option<V>>,
    upsert: &mut BTreeSet<K>,
    delete: &mut BTreeSet<K>,
) {
    for (key, record) in staged {
        match record {
            Some(record) => {
                if plan.get(&key) != Some(&record) {
                    plan.insert(key, record);
                    upsert.insert(key);
                }
            }
            None => {
                if plan.remove(&key).is_some() {
                    delete.insert(key);
                }
            }
        }
    }
}

fn add_sorted(keys: &mut Claimants, key: &Key) {
    if let Err(at) = keys.binary_search(key) {
        keys.insert(at, key.clone());
    }
}

fn remove_sorted(index: &mut Map<FrontendAddr, Claimants>, addr: &FrontendAddr, key: &str) {
    if let Some(keys) = index.get_mut(addr) {
        keys.retain(|k| **k != *key);
        if keys.is_empty() {
            index.remove(addr);
        }
    }
}

fn remove_from_index(index: &mut Map<Key, BTreeSet<Key>>, key: &str, value: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
