//! What the dual-engine maps hold, as the writer knows it: which keys exist,
//! and for each service the live slot and endpoint counts its record points
//! at. Read back from the maps after a restart (adoption) or after a failed
//! write, so the next write can make them match the plan exactly.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState as Fast;

use super::super::ids::AdoptedIds;
use super::super::plan::{BackendId, FrontendAddr, ServiceId, FAMILIES, MAX_PRIORITIES};
use super::super::records::{self, Counts, EndpointKey, OwnerTag, ServiceValue};
use super::WriteError;
use crate::bpf::batch;
use crate::bpf::dual_engine::DualEngineMaps;

/// One service id's entries in de_services and de_endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveService {
    /// The slot and counts of its record; None: endpoint entries without a
    /// record (an interrupted write left them).
    pub record: Option<(u8, Counts)>,
    /// Endpoint entries inside the record's live ranges that are present.
    pub live_present: usize,
    /// Endpoint entries outside the live ranges (an interrupted update's
    /// spare slot, or entries beyond the counts): deleted by its next write.
    pub strays: Vec<EndpointKey>,
}

impl LiveService {
    /// The keys the record's counts cover (some may be missing after a failure).
    pub fn live_keys(&self, service: ServiceId) -> Vec<EndpointKey> {
        let Some((slot, counts)) = self.record else {
            return Vec::new();
        };
        range_keys(service, slot, &counts)
    }

    /// Endpoint entries this service occupies in the map.
    pub fn entries(&self) -> usize {
        self.live_present + self.strays.len()
    }
}

/// Every endpoint key of one slot with these counts.
pub fn range_keys(service: ServiceId, slot: u8, counts: &Counts) -> Vec<EndpointKey> {
    let mut keys = Vec::new();
    for (family, levels) in counts.iter().enumerate() {
        for (priority, count) in levels.iter().enumerate() {
            keys.extend((0..*count).map(|index| EndpointKey {
                service,
                slot,
                family: family as u8,
                priority: priority as u8,
                index,
            }));
        }
    }
    keys
}

/// Is `key` one of the entries a record with this slot and these counts uses?
pub fn in_range(key: &EndpointKey, slot: u8, counts: &Counts) -> bool {
    let (family, priority) = (usize::from(key.family), usize::from(key.priority));
    key.slot == slot
        && family < FAMILIES
        && priority < MAX_PRIORITIES
        && key.index < counts[family][priority]
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub frontends: HashSet<FrontendAddr, Fast>,
    pub services: HashMap<ServiceId, LiveService, Fast>,
    pub backends: HashSet<BackendId, Fast>,
    /// Entries in de_endpoints (live and stray, all services).
    pub endpoint_entries: usize,
}

impl KernelState {
    /// Sort what the maps hold into live entries and strays.
    pub fn from_entries(
        frontends: impl IntoIterator<Item = FrontendAddr>,
        services: impl IntoIterator<Item = (ServiceId, ServiceValue)>,
        endpoints: impl IntoIterator<Item = EndpointKey>,
        backends: impl IntoIterator<Item = BackendId>,
    ) -> Self {
        let mut state = KernelState {
            frontends: frontends.into_iter().collect(),
            backends: backends.into_iter().collect(),
            ..Self::default()
        };
        for (id, value) in services {
            state.services.insert(
                id,
                LiveService {
                    record: Some((value.slot, value.counts)),
                    ..LiveService::default()
                },
            );
        }
        for key in endpoints {
            state.endpoint_entries += 1;
            let service = state.services.entry(key.service).or_default();
            match service.record {
                Some((slot, counts)) if in_range(&key, slot, &counts) => service.live_present += 1,
                _ => service.strays.push(key),
            }
        }
        state
    }

    /// Read the maps (an earlier daemon's, or ours after a failed write).
    pub fn read(maps: &DualEngineMaps) -> Result<Self, WriteError> {
        Ok(Self::read_with_owners(maps)?.0)
    }

    /// [`Self::read`], and the ids the records use with the owner tag each
    /// record carries (service ids, backend ids): what a restarted daemon
    /// must allocate from.
    pub fn read_with_owners(
        maps: &DualEngineMaps,
    ) -> Result<(Self, AdoptedIds, AdoptedIds), WriteError> {
        let read = |map, name| batch::read_all(map).map_err(WriteError::read(name));
        let frontends = read(&maps.frontends, "de_frontends")?;
        let services = read(&maps.services, "de_services")?;
        let endpoints = read(&maps.endpoints, "de_endpoints")?;
        let backends = read(&maps.backends, "de_backends")?;
        // A record that does not decode is treated as absent: its endpoints
        // become strays and the service is rewritten or deleted.
        let services: Vec<(ServiceId, ServiceValue)> = services
            .iter()
            .filter_map(|(k, v)| Some((records::id_from(k)?, records::decode_service_value(v)?)))
            .collect();
        let service_owners: HashMap<ServiceId, OwnerTag, Fast> =
            services.iter().map(|(id, v)| (*id, v.owner)).collect();
        let mut backend_ids = AdoptedIds::new();
        for (k, v) in &backends {
            if let Some(id) = records::id_from(k) {
                let owner = records::decode_backend_value(v).map(|b| b.owner);
                backend_ids.push((id, owner));
            }
        }
        let state = Self::from_entries(
            frontends
                .iter()
                .filter_map(|(k, _)| records::frontend_from(k)),
            services,
            endpoints
                .iter()
                .filter_map(|(k, _)| records::decode_endpoint_key(k)),
            backend_ids.iter().map(|(id, _)| *id),
        );
        // Every id with entries: with its record's owner, or none known
        // (endpoint entries whose record is missing or unreadable).
        let service_ids = state
            .services
            .keys()
            .map(|id| (*id, service_owners.get(id).copied()))
            .collect();
        Ok((state, service_ids, backend_ids))
    }

    /// Service ids with a record in de_services.
    pub fn service_records(&self) -> usize {
        self.services
            .values()
            .filter(|s| s.record.is_some())
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(service: u32, slot: u8, priority: u8, index: u32) -> EndpointKey {
        EndpointKey {
            service,
            slot,
            family: 0,
            priority,
            index,
        }
    }

    fn value(slot: u8, counts: Counts) -> ServiceValue {
        ServiceValue {
            policy: 0,
            slot,
            ports: vec![80],
            counts,
            waypoint: None,
            owner: [0; records::OWNER_LEN],
        }
    }

    #[test]
    fn adopted_entries_outside_the_live_slot_are_strays() {
        let mut counts = Counts::default();
        counts[0][0] = 2;
        let state = KernelState::from_entries(
            [],
            [(1, value(1, counts))],
            [
                key(1, 1, 0, 0),
                key(1, 1, 0, 1),
                key(1, 1, 0, 2), // beyond the count
                key(1, 0, 0, 0), // the other slot: an interrupted update
                key(9, 0, 0, 0), // no record at all
            ],
            [],
        );
        assert_eq!(state.endpoint_entries, 5);
        let one = &state.services[&1];
        assert_eq!(one.live_present, 2);
        assert_eq!(one.strays, vec![key(1, 1, 0, 2), key(1, 0, 0, 0)]);
        assert_eq!(one.live_keys(1), vec![key(1, 1, 0, 0), key(1, 1, 0, 1)]);
        let orphan = &state.services[&9];
        assert_eq!(orphan.record, None);
        assert_eq!(orphan.strays, vec![key(9, 0, 0, 0)]);
        assert_eq!(state.service_records(), 1);
    }
}
