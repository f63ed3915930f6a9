//! Apply a dual-engine plan to the kernel's maps, make-before-break.
//!
//! Order of one apply (each step batched, a few thousand entries a syscall):
//!
//! 1. check every map's capacity for the whole update (nothing is written
//!    if it would not fit);
//! 2. upsert backends (endpoints written next may name them);
//! 3. per group of upserted services: write the new endpoints into the slot
//!    the service does not use, flip the service records to that slot with
//!    the new counts (one element update each: a connect sees the old set or
//!    the new one), delete the old slot's entries;
//! 4. upsert frontends (their services now exist), delete frontends;
//! 5. delete services (record, then every endpoint entry), then backends.
//!
//! The writer remembers the slot and counts of every service, so it knows
//! which keys to delete without reading the maps. It reads them only when it
//! cannot know: on its first apply (maps adopted from an earlier daemon) and
//! after an apply that failed half-way. Such an apply is a full reconcile:
//! every record of the plan is written and every key not in it deleted.

mod budget;
mod state;

pub use budget::MapCounts;
use budget::{EndpointDelta, EndpointSchedule};
use state::{in_range, KernelState, LiveService};

use super::ids::AdoptedIds;
use super::plan::{
    BackendId, FrontendAddr, FrontendTarget, Plan, PlanChanges, PlanMap, ServiceId, ServiceRecord,
    FAMILIES, MAX_PORTS, MAX_PRIORITIES,
};
use super::records::{self as rec, Counts, EndpointKey};
use crate::bpf::batch;
use crate::bpf::dual_engine::{
    DualEngineCapacity, DualEngineMaps, MAP_BACKENDS, MAP_ENDPOINTS, MAP_FRONTENDS, MAP_SERVICES,
};

/// New endpoint entries written before the old ones of the same services are
/// deleted: bounds the transient spare copy of a large update.
const ENDPOINT_GROUP: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{map} would need {needed} entries, its capacity is {capacity}")]
    Capacity {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("invalid changes: {0}")]
    InvalidChanges(String),
    #[error("reading {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{op} {map}: {source}")]
    Write {
        op: &'static str,
        map: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
}

impl WriteError {
    fn read(map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> Self {
        move |source| WriteError::Read { map, source }
    }
    fn write(op: &'static str, map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> Self {
        move |source| WriteError::Write { op, map, source }
    }
}

/// What one apply did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// The maps were read back and brought to the plan as a whole.
    pub reconciled: bool,
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub services_written: usize,
    pub services_removed: usize,
    pub endpoints_written: usize,
    pub endpoints_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    /// Most entries de_endpoints held during the apply.
    pub peak_endpoints: usize,
}

/// The keys one apply writes and deletes.
#[derive(Debug, Default)]
struct Ops {
    frontends_upsert: Vec<FrontendAddr>,
    frontends_delete: Vec<FrontendAddr>,
    services_upsert: Vec<ServiceId>,
    services_delete: Vec<ServiceId>,
    backends_upsert: Vec<BackendId>,
    backends_delete: Vec<BackendId>,
}

impl Ops {
    /// Everything in the plan, and every key the maps hold that it lacks.
    fn reconcile(plan: &Plan, state: &KernelState) -> Self {
        let mut ops = Ops {
            frontends_upsert: plan.frontends.keys().copied().collect(),
            frontends_delete: state
                .frontends
                .iter()
                .filter(|a| !plan.frontends.contains_key(a))
                .copied()
                .collect(),
            services_upsert: plan.services.keys().copied().collect(),
            services_delete: state
                .services
                .keys()
                .filter(|id| !plan.services.contains_key(id))
                .copied()
                .collect(),
            backends_upsert: plan.backends.keys().copied().collect(),
            backends_delete: state
                .backends
                .iter()
                .filter(|id| !plan.backends.contains_key(id))
                .copied()
                .collect(),
        };
        ops.sort();
        ops
    }

    /// The keys `changes` names; deletes of keys the maps lack are dropped.
    fn from_changes(
        plan: &Plan,
        changes: &PlanChanges,
        state: &KernelState,
    ) -> Result<Self, WriteError> {
        fn upserts<K: Copy + std::fmt::Debug + std::hash::Hash + Eq, V>(
            what: &str,
            keys: &std::collections::BTreeSet<K>,
            plan: &PlanMap<K, V>,
        ) -> Result<Vec<K>, WriteError> {
            keys.iter()
                .map(|k| {
                    plan.contains_key(k).then_some(*k).ok_or_else(|| {
                        WriteError::InvalidChanges(format!(
                            "{what} {k:?} upserted but not in the plan"
                        ))
                    })
                })
                .collect()
        }
        fn deletes<K: Copy + std::fmt::Debug + std::hash::Hash + Eq, V>(
            what: &str,
            keys: &std::collections::BTreeSet<K>,
            plan: &PlanMap<K, V>,
            present: impl Fn(&K) -> bool,
        ) -> Result<Vec<K>, WriteError> {
            if let Some(k) = keys.iter().find(|k| plan.contains_key(k)) {
                return Err(WriteError::InvalidChanges(format!(
                    "{what} {k:?} deleted but still in the plan"
                )));
            }
            Ok(keys.iter().filter(|k| present(k)).copied().collect())
        }
        Ok(Ops {
            frontends_upsert: upserts("frontend", &changes.frontends_upsert, &plan.frontends)?,
            frontends_delete: deletes(
                "frontend",
                &changes.frontends_delete,
                &plan.frontends,
                |a| state.frontends.contains(a),
            )?,
            services_upsert: upserts("service", &changes.services_upsert, &plan.services)?,
            services_delete: deletes("service", &changes.services_delete, &plan.services, |id| {
                state.services.contains_key(id)
            })?,
            backends_upsert: upserts("backend", &changes.backends_upsert, &plan.backends)?,
            backends_delete: deletes("backend", &changes.backends_delete, &plan.backends, |id| {
                state.backends.contains(id)
            })?,
        })
    }

    /// A stable order: the same plan is written the same way every time.
    fn sort(&mut self) {
        self.frontends_upsert.sort_unstable();
        self.frontends_delete.sort_unstable();
        self.services_upsert.sort_unstable();
        self.services_delete.sort_unstable();
        self.backends_upsert.sort_unstable();
        self.backends_delete.sort_unstable();
    }
}

/// Refuse records the kernel layout cannot hold, or that would send a
/// connect nowhere (an endpoint without an address of its family).
fn validate(plan: &Plan, ops: &Ops) -> Result<(), WriteError> {
    let bad = |msg: String| Err(WriteError::InvalidPlan(msg));
    for addr in &ops.frontends_upsert {
        let target = plan.frontends.get(addr);
        let exists = match target {
            Some(FrontendTarget::Service(id)) => plan.services.contains_key(id),
            Some(FrontendTarget::Workload(id)) => plan.backends.contains_key(id),
            None => false,
        };
        if !exists {
            return bad(format!(
                "frontend {addr} points at {target:?}, not in the plan"
            ));
        }
    }
    for id in &ops.services_upsert {
        let Some(svc) = plan.services.get(id) else {
            return bad(format!("service {id} is not in the plan"));
        };
        if svc.ports.len() > MAX_PORTS {
            return bad(format!(
                "service {id} ({}) has {} ports, at most {MAX_PORTS} fit",
                svc.name,
                svc.ports.len()
            ));
        }
        for (family, levels) in svc.endpoints.iter().enumerate() {
            if levels.len() > MAX_PRIORITIES {
                return bad(format!(
                    "service {id} ({}) has {} priority levels, at most {MAX_PRIORITIES} fit",
                    svc.name,
                    levels.len()
                ));
            }
            for (priority, level) in levels.iter().enumerate() {
                if level.len() > rec::DE_MAX_ENDPOINTS_PER_PRIORITY {
                    return bad(format!(
                        "service {id} ({}) has {} endpoints at priority {priority}, at most {} fit",
                        svc.name,
                        level.len(),
                        rec::DE_MAX_ENDPOINTS_PER_PRIORITY
                    ));
                }
                for ep in level {
                    if ep.target_ports.len() != svc.ports.len() {
                        return bad(format!(
                            "service {id} ({}): endpoint {} has {} target ports for {} service ports",
                            svc.name,
                            ep.backend,
                            ep.target_ports.len(),
                            svc.ports.len()
                        ));
                    }
                    let backend = plan.backends.get(&ep.backend);
                    let has_family = backend.is_some_and(|b| {
                        if family == 0 {
                            b.v4.is_some()
                        } else {
                            b.v6.is_some()
                        }
                    });
                    if !has_family {
                        return bad(format!(
                            "service {id} ({}): endpoint backend {} has no IPv{} address",
                            svc.name,
                            ep.backend,
                            if family == 0 { 4 } else { 6 }
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// One service's update: where its new endpoints go and what goes after.
struct ServiceUpdate {
    id: ServiceId,
    slot: u8,
    counts: Counts,
    /// Entries deleted after the flip: the old slot's and leftover strays.
    stale: Vec<EndpointKey>,
    delta: EndpointDelta,
}

fn service_update(id: ServiceId, svc: &ServiceRecord, live: Option<&LiveService>) -> ServiceUpdate {
    // A new service starts in slot 0; an existing one moves to the other slot.
    let slot = match live.and_then(|l| l.record) {
        Some((old, _)) => 1 - (old & 1),
        None => 0,
    };
    let counts = rec::counts_of(svc);
    let new_entries = svc.endpoint_entries();
    let (mut stale, mut overlap) = (Vec::new(), 0usize);
    if let Some(live) = live {
        stale = live.live_keys(id);
        for key in &live.strays {
            if in_range(key, slot, &counts) {
                overlap += 1; // overwritten in place, not a new entry
            } else {
                stale.push(*key);
            }
        }
    }
    let freed = live.map_or(0, |l| l.entries() - overlap);
    ServiceUpdate {
        id,
        slot,
        counts,
        stale,
        delta: EndpointDelta {
            added: new_entries - overlap,
            freed,
        },
    }
}

/// What [`DualEngineWriter::adopt`] found in the maps.
#[derive(Debug, Default)]
pub struct Adopted {
    pub counts: MapCounts,
    pub service_ids: AdoptedIds,
    pub backend_ids: AdoptedIds,
}

/// Owns the maps and remembers what they hold.
pub struct DualEngineWriter {
    maps: DualEngineMaps,
    capacity: DualEngineCapacity,
    state: KernelState,
    /// `state` may not match the maps: read them before the next apply
    /// (at start, and after an apply that failed half-way).
    read_first: bool,
    /// The next apply writes the whole plan and deletes every key it lacks
    /// (after reading the maps: an earlier daemon's content, or a failure).
    reconcile_next: bool,
}

impl DualEngineWriter {
    /// A writer for these maps. Nothing is read yet: the first apply reads
    /// the maps (empty when fresh, an earlier daemon's when adopted).
    pub fn new(maps: DualEngineMaps, capacity: DualEngineCapacity) -> Self {
        Self {
            maps,
            capacity,
            state: KernelState::default(),
            read_first: true,
            reconcile_next: true,
        }
    }

    /// Read what the maps hold now (e.g. adopted pins); the next apply
    /// reconciles the maps with its plan. Returns the ids their records use,
    /// with owners, for the compiler to start from
    /// ([`super::compiler::WorkloadCompiler::adopt_ids`]).
    pub fn adopt(&mut self) -> Result<Adopted, WriteError> {
        let (state, service_ids, backend_ids) = KernelState::read_with_owners(&self.maps)?;
        self.state = state;
        self.read_first = false;
        self.reconcile_next = true;
        let counts = self.counts();
        if counts != MapCounts::default() {
            tracing::info!(
                ?counts,
                "dual-engine maps hold an earlier configuration: the next update reconciles it"
            );
        }
        Ok(Adopted {
            counts,
            service_ids,
            backend_ids,
        })
    }

    /// Entries of each map, as the writer knows them.
    pub fn counts(&self) -> MapCounts {
        MapCounts {
            frontends: self.state.frontends.len(),
            services: self.state.service_records(),
            endpoints: self.state.endpoint_entries,
            backends: self.state.backends.len(),
        }
    }

    /// The endpoint slot a service's record points at.
    pub fn live_slot(&self, service: ServiceId) -> Option<u8> {
        self.state
            .services
            .get(&service)
            .and_then(|s| s.record)
            .map(|(slot, _)| slot)
    }

    /// Bring the maps to `plan`, writing what `changes` names (everything,
    /// on a reconcile). On error the maps keep serving a consistent mix of
    /// old and new records and the next apply reconciles in full.
    pub fn apply(&mut self, plan: &Plan, changes: &PlanChanges) -> Result<WriteStats, WriteError> {
        if self.read_first {
            self.state = KernelState::read(&self.maps)?;
            self.read_first = false;
            self.reconcile_next = true;
        }
        let reconcile = self.reconcile_next;
        let ops = if reconcile {
            Ops::reconcile(plan, &self.state)
        } else {
            Ops::from_changes(plan, changes, &self.state)?
        };
        validate(plan, &ops)?;
        let updates: Vec<ServiceUpdate> = ops
            .services_upsert
            .iter()
            .filter_map(|id| {
                plan.services
                    .get(id)
                    .map(|svc| service_update(*id, svc, self.state.services.get(id)))
            })
            .collect();
        let schedule = self.check_capacity(&ops, &updates)?;

        // From here the writer's picture is only right if every step works.
        self.read_first = true;
        let mut stats = WriteStats {
            reconciled: reconcile,
            peak_endpoints: schedule.peak,
            ..WriteStats::default()
        };
        self.upsert_backends(plan, &ops.backends_upsert, &mut stats)?;
        for group in &schedule.groups {
            self.update_services(plan, &updates[group.clone()], &mut stats)?;
        }
        self.upsert_frontends(plan, &ops.frontends_upsert, &mut stats)?;
        self.delete_frontends(&ops.frontends_delete, &mut stats)?;
        self.delete_services(&ops.services_delete, &mut stats)?;
        self.delete_backends(&ops.backends_delete, &mut stats)?;
        self.read_first = false;
        self.reconcile_next = false;
        tracing::debug!(?stats, "dual-engine maps written");
        Ok(stats)
    }

    fn check_capacity(
        &self,
        ops: &Ops,
        updates: &[ServiceUpdate],
    ) -> Result<EndpointSchedule, WriteError> {
        let s = &self.state;
        let cap = &self.capacity;
        let new_frontends = ops
            .frontends_upsert
            .iter()
            .filter(|a| !s.frontends.contains(a))
            .count();
        budget::check_map(
            MAP_FRONTENDS,
            s.frontends.len(),
            new_frontends,
            cap.max_frontends,
        )?;
        let new_services = updates
            .iter()
            .filter(|u| s.services.get(&u.id).and_then(|l| l.record).is_none())
            .count();
        budget::check_map(
            MAP_SERVICES,
            s.service_records(),
            new_services,
            cap.max_services,
        )?;
        let new_backends = ops
            .backends_upsert
            .iter()
            .filter(|id| !s.backends.contains(id))
            .count();
        budget::check_map(
            MAP_BACKENDS,
            s.backends.len(),
            new_backends,
            cap.max_backends,
        )?;
        let deltas: Vec<EndpointDelta> = updates.iter().map(|u| u.delta).collect();
        budget::schedule_endpoints(
            s.endpoint_entries,
            &deltas,
            cap.max_endpoints,
            ENDPOINT_GROUP,
        )
    }

    fn upsert_backends(
        &mut self,
        plan: &Plan,
        ids: &[BackendId],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        let mut keys = Vec::with_capacity(ids.len() * rec::ID_KEY_SIZE);
        let mut values = Vec::with_capacity(ids.len() * rec::BACKEND_VALUE_SIZE);
        for id in ids {
            if let Some(backend) = plan.backends.get(id) {
                keys.extend_from_slice(&rec::id_key(*id));
                values.extend_from_slice(&rec::backend_value(backend));
            }
        }
        batch::update_all(
            &self.maps.backends,
            &keys,
            &values,
            rec::ID_KEY_SIZE,
            rec::BACKEND_VALUE_SIZE,
        )
        .map_err(WriteError::write("updating", MAP_BACKENDS))?;
        self.state.backends.extend(ids.iter().copied());
        stats.backends_written += ids.len();
        Ok(())
    }

    /// One group of service updates, make-before-break.
    fn update_services(
        &mut self,
        plan: &Plan,
        updates: &[ServiceUpdate],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        // 1. The new endpoint sets, into slots no record points at.
        let entries: usize = updates
            .iter()
            .map(|u| {
                u.counts
                    .iter()
                    .flatten()
                    .map(|c| *c as usize)
                    .sum::<usize>()
            })
            .sum();
        let mut keys = Vec::with_capacity(entries * rec::ENDPOINT_KEY_SIZE);
        let mut values = Vec::with_capacity(entries * rec::ENDPOINT_VALUE_SIZE);
        for update in updates {
            let Some(svc) = plan.services.get(&update.id) else {
                continue;
            };
            for family in 0..FAMILIES {
                for priority in 0..MAX_PRIORITIES {
                    for (index, endpoint) in svc.level(family, priority).iter().enumerate() {
                        keys.extend_from_slice(&rec::endpoint_key(&EndpointKey {
                            service: update.id,
                            slot: update.slot,
                            family: family as u8,
                            priority: priority as u8,
                            index: index as u32,
                        }));
                        values.extend_from_slice(&rec::endpoint_value(endpoint));
                    }
                }
            }
        }
        batch::update_all(
            &self.maps.endpoints,
            &keys,
            &values,
            rec::ENDPOINT_KEY_SIZE,
            rec::ENDPOINT_VALUE_SIZE,
        )
        .map_err(WriteError::write("writing endpoints to", MAP_ENDPOINTS))?;
        stats.endpoints_written += entries;

        // 2. Flip each record to its new slot: one element update each.
        let mut keys = Vec::with_capacity(updates.len() * rec::ID_KEY_SIZE);
        let mut values = Vec::with_capacity(updates.len() * rec::SERVICE_VALUE_SIZE);
        for update in updates {
            if let Some(svc) = plan.services.get(&update.id) {
                keys.extend_from_slice(&rec::id_key(update.id));
                values.extend_from_slice(&rec::service_value(svc, update.slot));
            }
        }
        batch::update_all(
            &self.maps.services,
            &keys,
            &values,
            rec::ID_KEY_SIZE,
            rec::SERVICE_VALUE_SIZE,
        )
        .map_err(WriteError::write("updating", MAP_SERVICES))?;
        stats.services_written += updates.len();

        // 3. The old slots: nothing points at them any more.
        let stale: Vec<u8> = updates
            .iter()
            .flat_map(|u| u.stale.iter())
            .flat_map(rec::endpoint_key)
            .collect();
        batch::delete_all(&self.maps.endpoints, &stale, rec::ENDPOINT_KEY_SIZE).map_err(
            WriteError::write("deleting old endpoints from", MAP_ENDPOINTS),
        )?;

        for update in updates {
            let freed = update.delta.freed;
            let live = self.state.services.entry(update.id).or_default();
            let total = update.counts.iter().flatten().map(|c| *c as usize).sum();
            *live = LiveService {
                record: Some((update.slot, update.counts)),
                live_present: total,
                strays: Vec::new(),
            };
            self.state.endpoint_entries = self.state.endpoint_entries + update.delta.added - freed;
            stats.endpoints_removed += freed;
        }
        Ok(())
    }

    fn upsert_frontends(
        &mut self,
        plan: &Plan,
        addrs: &[FrontendAddr],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        let mut keys = Vec::with_capacity(addrs.len() * rec::FRONTEND_KEY_SIZE);
        let mut values = Vec::with_capacity(addrs.len() * rec::FRONTEND_VALUE_SIZE);
        for addr in addrs {
            if let Some(target) = plan.frontends.get(addr) {
                keys.extend_from_slice(&rec::frontend_key(addr));
                values.extend_from_slice(&rec::frontend_value(*target));
            }
        }
        batch::update_all(
            &self.maps.frontends,
            &keys,
            &values,
            rec::FRONTEND_KEY_SIZE,
            rec::FRONTEND_VALUE_SIZE,
        )
        .map_err(WriteError::write("updating", MAP_FRONTENDS))?;
        self.state.frontends.extend(addrs.iter().copied());
        stats.frontends_written += addrs.len();
        Ok(())
    }

    fn delete_frontends(
        &mut self,
        addrs: &[FrontendAddr],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        let keys: Vec<u8> = addrs.iter().flat_map(rec::frontend_key).collect();
        batch::delete_all(&self.maps.frontends, &keys, rec::FRONTEND_KEY_SIZE)
            .map_err(WriteError::write("deleting from", MAP_FRONTENDS))?;
        for addr in addrs {
            self.state.frontends.remove(addr);
        }
        stats.frontends_removed += addrs.len();
        Ok(())
    }

    /// Records first (no connect reaches a record whose endpoints are going),
    /// then every endpoint entry of the services.
    fn delete_services(
        &mut self,
        ids: &[ServiceId],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        let with_record: Vec<u8> = ids
            .iter()
            .filter(|id| {
                self.state
                    .services
                    .get(id)
                    .is_some_and(|s| s.record.is_some())
            })
            .flat_map(|id| rec::id_key(*id))
            .collect();
        batch::delete_all(&self.maps.services, &with_record, rec::ID_KEY_SIZE)
            .map_err(WriteError::write("deleting from", MAP_SERVICES))?;
        stats.services_removed += with_record.len() / rec::ID_KEY_SIZE;
        let mut endpoint_keys = Vec::new();
        let mut freed = 0;
        for id in ids {
            if let Some(live) = self.state.services.get(id) {
                freed += live.entries();
                endpoint_keys.extend(live.live_keys(*id).iter().flat_map(rec::endpoint_key));
                endpoint_keys.extend(live.strays.iter().flat_map(rec::endpoint_key));
            }
        }
        batch::delete_all(&self.maps.endpoints, &endpoint_keys, rec::ENDPOINT_KEY_SIZE)
            .map_err(WriteError::write("deleting endpoints from", MAP_ENDPOINTS))?;
        for id in ids {
            self.state.services.remove(id);
        }
        self.state.endpoint_entries -= freed;
        stats.endpoints_removed += freed;
        Ok(())
    }

    fn delete_backends(
        &mut self,
        ids: &[BackendId],
        stats: &mut WriteStats,
    ) -> Result<(), WriteError> {
        let keys: Vec<u8> = ids.iter().flat_map(|id| rec::id_key(*id)).collect();
        batch::delete_all(&self.maps.backends, &keys, rec::ID_KEY_SIZE)
            .map_err(WriteError::write("deleting from", MAP_BACKENDS))?;
        // One removal per id: a retain over the set would cost every
        // backend of the mesh for each update that drops one.
        for id in ids {
            self.state.backends.remove(id);
        }
        stats.backends_removed += ids.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::Ipv4Addr;

    use super::*;
    use crate::workload::plan::{BackendRecord, EndpointRecord, LbPolicy};

    fn backend(last: u8) -> BackendRecord {
        BackendRecord {
            name: format!("w{last}").into(),
            v4: Some(Ipv4Addr::new(10, 0, 0, last)),
            v6: None,
            waypoint: None,
        }
    }

    fn service(backends: &[u32]) -> ServiceRecord {
        ServiceRecord {
            name: "ns/svc".into(),
            policy: LbPolicy::Random,
            ports: vec![80],
            waypoint: None,
            endpoints: [
                vec![backends
                    .iter()
                    .map(|b| EndpointRecord {
                        backend: *b,
                        target_ports: [8080].into_iter().collect(),
                    })
                    .collect()],
                vec![],
            ],
        }
    }

    fn plan() -> Plan {
        let mut plan = Plan::default();
        plan.backends.insert(1, backend(1));
        plan.backends.insert(2, backend(2));
        plan.services.insert(7, service(&[1, 2]));
        plan.frontends.insert(
            "::ffff:10.96.0.1".parse().unwrap(),
            FrontendTarget::Service(7),
        );
        plan
    }

    fn key(slot: u8, index: u32) -> EndpointKey {
        EndpointKey {
            service: 7,
            slot,
            family: 0,
            priority: 0,
            index,
        }
    }

    #[test]
    fn a_new_service_uses_slot_0_and_adds_its_entries() {
        let u = service_update(7, &service(&[1, 2]), None);
        assert_eq!(u.slot, 0);
        assert!(u.stale.is_empty());
        assert_eq!(u.delta, EndpointDelta { added: 2, freed: 0 });
    }

    #[test]
    fn an_update_flips_the_slot_and_frees_the_old_one() {
        let mut counts = Counts::default();
        counts[0][0] = 3;
        let live = LiveService {
            record: Some((0, counts)),
            live_present: 3,
            strays: vec![],
        };
        let u = service_update(7, &service(&[1, 2]), Some(&live));
        assert_eq!(u.slot, 1);
        assert_eq!(u.stale, vec![key(0, 0), key(0, 1), key(0, 2)]);
        assert_eq!(u.delta, EndpointDelta { added: 2, freed: 3 });
    }

    #[test]
    fn strays_in_the_new_slot_are_overwritten_or_deleted() {
        // Adopted after an interrupted update: slot 1 live, slot 0 holds
        // three leftovers; the new set (two entries) goes to slot 0.
        let mut counts = Counts::default();
        counts[0][0] = 1;
        let live = LiveService {
            record: Some((1, counts)),
            live_present: 1,
            strays: vec![key(0, 0), key(0, 1), key(0, 2)],
        };
        let u = service_update(7, &service(&[1, 2]), Some(&live));
        assert_eq!(u.slot, 0);
        assert_eq!(u.stale, vec![key(1, 0), key(0, 2)]);
        // Two overwritten in place: nothing added, slot 1's one and the
        // third leftover freed.
        assert_eq!(u.delta, EndpointDelta { added: 0, freed: 2 });
    }

    #[test]
    fn a_reconcile_deletes_every_key_the_plan_lacks() {
        let state = KernelState::from_entries(
            ["::ffff:10.96.0.9".parse().unwrap()],
            [],
            [EndpointKey {
                service: 8,
                ..key(0, 0)
            }],
            [1, 3],
        );
        let ops = Ops::reconcile(&plan(), &state);
        assert_eq!(ops.frontends_upsert.len(), 1);
        assert_eq!(
            ops.frontends_delete,
            vec!["::ffff:10.96.0.9".parse::<FrontendAddr>().unwrap()]
        );
        assert_eq!(ops.services_upsert, vec![7]);
        assert_eq!(ops.services_delete, vec![8]);
        assert_eq!(ops.backends_upsert, vec![1, 2]);
        assert_eq!(ops.backends_delete, vec![3]);
    }

    #[test]
    fn changes_must_agree_with_the_plan() {
        let plan = plan();
        let state = KernelState::default();
        let mut changes = PlanChanges::everything(&plan);
        changes.services_upsert.insert(99);
        assert!(matches!(
            Ops::from_changes(&plan, &changes, &state),
            Err(WriteError::InvalidChanges(_))
        ));
        let mut changes = PlanChanges::default();
        changes.backends_delete.insert(1);
        assert!(matches!(
            Ops::from_changes(&plan, &changes, &state),
            Err(WriteError::InvalidChanges(_))
        ));
        // Deleting what the maps do not hold is nothing to do.
        let mut changes = PlanChanges::default();
        changes.backends_delete.insert(42);
        let ops = Ops::from_changes(&plan, &changes, &state).unwrap();
        assert!(ops.backends_delete.is_empty());
    }

    #[test]
    fn records_the_kernel_cannot_route_are_refused() {
        let mut plan = plan();
        let ops = Ops::reconcile(&plan, &KernelState::default());
        assert!(validate(&plan, &ops).is_ok());

        plan.backends.get_mut(&2).unwrap().v4 = None;
        let err = validate(&plan, &ops).unwrap_err().to_string();
        assert!(err.contains("no IPv4 address"), "{err}");

        let mut plan = self::plan();
        plan.services.get_mut(&7).unwrap().ports = (1..=11).collect();
        let err = validate(&plan, &ops).unwrap_err().to_string();
        assert!(err.contains("11 ports"), "{err}");

        let mut plan = self::plan();
        plan.services.get_mut(&7).unwrap().endpoints[0][0][0].target_ports = Default::default();
        let err = validate(&plan, &ops).unwrap_err().to_string();
        assert!(err.contains("0 target ports for 1"), "{err}");

        let mut plan = self::plan();
        plan.services.remove(&7);
        let ops = Ops {
            frontends_upsert: plan.frontends.keys().copied().collect(),
            ..Ops::default()
        };
        let err = validate(&plan, &ops).unwrap_err().to_string();
        assert!(err.contains("not in the plan"), "{err}");
    }
}
