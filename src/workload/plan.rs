//! What the dual-engine compiler hands the writer: the records the kernel
//! should hold (a [`Plan`]) and which keys an update touched ([`PlanChanges`]).
//!
//! The shapes mirror `include/dual_engine.h` but stay plain Rust: the writer
//! encodes them into the skeleton's structs. Ids are small integers the
//! compiler allocates and keeps stable while a service/workload exists.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use super::key::Key;

/// Ports one service exposes (`DE_MAX_PORTS`).
pub const MAX_PORTS: usize = 10;
/// Locality priority levels (`DE_MAX_PRIORITIES`).
pub const MAX_PRIORITIES: usize = 7;
/// Address families: index 0 = IPv4, 1 = IPv6 (`enum de_family`).
pub const FAMILIES: usize = 2;

pub type ServiceId = u32;
pub type BackendId = u32;

/// A frontend address, always as IPv6 (IPv4 mapped), the kernel's key form.
pub type FrontendAddr = Ipv6Addr;

/// The key form of any address: IPv4 becomes `::ffff:a.b.c.d`.
pub fn frontend_addr(ip: IpAddr) -> FrontendAddr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum FrontendTarget {
    Service(ServiceId),
    Workload(BackendId),
}

/// How a service picks an endpoint (`enum de_lb_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    /// Every endpoint in priority 0, picked uniformly at random.
    #[default]
    Random,
    /// Lowest non-empty priority (locality FAILOVER).
    Failover,
    /// Priority 0 only; empty = refused (locality STRICT).
    Strict,
    /// The dialled address is kept (ServiceEntry resolution NONE).
    Passthrough,
}

impl LbPolicy {
    /// The value of `enum de_lb_policy`.
    pub fn kernel_value(self) -> u32 {
        match self {
            LbPolicy::Random => 0,
            LbPolicy::Failover => 1,
            LbPolicy::Strict => 2,
            LbPolicy::Passthrough => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointRecord {
    pub backend: BackendId,
    /// Target port for each of the service's ports, same order as
    /// [`ServiceRecord::ports`] (the workload's own mapping applied).
    pub target_ports: TargetPorts,
}

/// Target ports of one endpoint: services rarely have more than a few ports,
/// and an endpoint list is the plan's largest part, so they are kept inline.
pub type TargetPorts = smallvec::SmallVec<[u16; 4]>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRecord {
    /// `namespace/hostname`, for dumps and errors (not written to the kernel).
    pub name: Key,
    pub policy: LbPolicy,
    /// Service ports (frontend side), at most [`MAX_PORTS`].
    pub ports: Vec<u16>,
    pub waypoint: Option<SocketAddr>,
    /// `endpoints[family][priority]`: the endpoints a connect of that family
    /// picks from, at most [`MAX_PRIORITIES`] levels. An endpoint appears once
    /// per unit of weight (workload `capacity`), so a uniform pick is weighted.
    pub endpoints: [Vec<Vec<EndpointRecord>>; FAMILIES],
}

impl ServiceRecord {
    /// Endpoints of one family at one priority (empty when absent).
    pub fn level(&self, family: usize, priority: usize) -> &[EndpointRecord] {
        self.endpoints
            .get(family)
            .and_then(|levels| levels.get(priority))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Number of endpoint entries the record occupies in the kernel.
    pub fn endpoint_entries(&self) -> usize {
        self.endpoints.iter().flatten().map(Vec::len).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRecord {
    /// Workload uid (plus `#address` for a DNS-resolved address), for dumps.
    pub name: Key,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub waypoint: Option<SocketAddr>,
}

/// The plan's maps: keyed by small ids and addresses, hashed on every
/// lookup of a large push; foldhash rather than SipHash (nothing here is a
/// hash-flooding target that bulk data could not hit anyway).
pub type PlanMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Everything the kernel should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub frontends: PlanMap<FrontendAddr, FrontendTarget>,
    pub services: PlanMap<ServiceId, ServiceRecord>,
    pub backends: PlanMap<BackendId, BackendRecord>,
}

impl Plan {
    /// Endpoint entries of every service (one slot's worth).
    pub fn endpoint_entries(&self) -> usize {
        self.services
            .values()
            .map(ServiceRecord::endpoint_entries)
            .sum()
    }
}

/// The keys one update touched. `upsert` keys exist in the new plan (write
/// them); `delete` keys do not (remove them). A key is in at most one set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanChanges {
    pub frontends_upsert: BTreeSet<FrontendAddr>,
    pub frontends_delete: BTreeSet<FrontendAddr>,
    pub services_upsert: BTreeSet<ServiceId>,
    pub services_delete: BTreeSet<ServiceId>,
    pub backends_upsert: BTreeSet<BackendId>,
    pub backends_delete: BTreeSet<BackendId>,
}

impl PlanChanges {
    pub fn is_empty(&self) -> bool {
        self.frontends_upsert.is_empty()
            && self.frontends_delete.is_empty()
            && self.services_upsert.is_empty()
            && self.services_delete.is_empty()
            && self.backends_upsert.is_empty()
            && self.backends_delete.is_empty()
    }

    /// Every key of `plan` as an upsert (the first write, or a full
    /// reconcile after adopting pinned maps).
    pub fn everything(plan: &Plan) -> Self {
        Self {
            frontends_upsert: plan.frontends.keys().copied().collect(),
            services_upsert: plan.services.keys().copied().collect(),
            backends_upsert: plan.backends.keys().copied().collect(),
            ..Self::default()
        }
    }

    /// The changes between two plans, by comparing records key by key.
    pub fn between(old: &Plan, new: &Plan) -> Self {
        let mut changes = Self::default();
        diff_into(
            &old.frontends,
            &new.frontends,
            &mut changes.frontends_upsert,
            &mut changes.frontends_delete,
        );
        diff_into(
            &old.services,
            &new.services,
            &mut changes.services_upsert,
            &mut changes.services_delete,
        );
        diff_into(
            &old.backends,
            &new.backends,
            &mut changes.backends_upsert,
            &mut changes.backends_delete,
        );
        changes
    }
}

fn diff_into<K, V>(
    old: &PlanMap<K, V>,
    new: &PlanMap<K, V>,
    upsert: &mut BTreeSet<K>,
    delete: &mut BTreeSet<K>,
) where
    K: Copy + Ord + std::hash::Hash,
    V: PartialEq,
{
    for (key, record) in new {
        if old.get(key) != Some(record) {
            upsert.insert(*key);
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            delete.insert(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, last: u8) -> BackendRecord {
        BackendRecord {
            name: name.into(),
            v4: Some(Ipv4Addr::new(10, 0, 0, last)),
            v6: None,
            waypoint: None,
        }
    }

    #[test]
    fn between_lists_new_changed_and_removed_keys_only() {
        let mut old = Plan::default();
        old.backends.insert(1, backend("a", 1));
        old.backends.insert(2, backend("b", 2));
        old.backends.insert(3, backend("c", 3));
        let mut new = old.clone();
        new.backends.insert(2, backend("b", 22));
        new.backends.remove(&3);
        new.backends.insert(4, backend("d", 4));
        let changes = PlanChanges::between(&old, &new);
        assert_eq!(changes.backends_upsert, BTreeSet::from([2, 4]));
        assert_eq!(changes.backends_delete, BTreeSet::from([3]));
        assert!(changes.services_upsert.is_empty() && changes.frontends_delete.is_empty());
    }

    #[test]
    fn ipv4_frontends_are_keyed_as_mapped_ipv6() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            frontend_addr(v4),
            "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap()
        );
    }
}
