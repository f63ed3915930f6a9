//! Locality-aware load balancing: which priority level an endpoint lands in,
//! seen from this node.
//!
//! With routing preferences `[s1, s2, ..., sn]` an endpoint that matches the
//! first `k` scopes (and not `s(k+1)`) gets priority `n - k`: priority 0 is
//! "matches every preference", priority `n` is "matches none". FAILOVER picks
//! from the lowest non-empty priority; STRICT keeps priority 0 only.

use serde::Serialize;

use super::key::Key;
use super::plan::MAX_PRIORITIES;
use super::resource::{LbMode, LoadBalancingSpec, Scope, WorkloadSpec};

/// Where this node is. Filled from `--locality` and `--cluster-id`, or from
/// the workload(s) running on `NODE_NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalLocality {
    pub region: Key,
    pub zone: Key,
    pub subzone: Key,
    pub node: Key,
    pub cluster: Key,
    pub network: Key,
}

impl LocalLocality {
    fn matches(&self, scope: Scope, endpoint: &WorkloadSpec) -> bool {
        match scope {
            Scope::Region => endpoint.locality.region == self.region,
            Scope::Zone => endpoint.locality.zone == self.zone,
            Scope::Subzone => endpoint.locality.subzone == self.subzone,
            Scope::Node => endpoint.node == self.node,
            // Unset on a workload means the default: this cluster, the
            // default network (single-cluster meshes leave them empty).
            Scope::Cluster => endpoint.cluster_id.is_empty() || endpoint.cluster_id == self.cluster,
            Scope::Network => endpoint.network == self.network,
        }
    }

    /// The endpoint's priority under `lb`, or `None` when it must not be used
    /// (STRICT and not matching every preference).
    pub fn priority(&self, lb: &LoadBalancingSpec, endpoint: &WorkloadSpec) -> Option<usize> {
        let preferences = &lb.routing_preference;
        let matched = preferences
            .iter()
            .take_while(|scope| self.matches(**scope, endpoint))
            .count();
        match lb.mode {
            LbMode::Standard | LbMode::Passthrough => Some(0),
            LbMode::Strict => (matched == preferences.len()).then_some(0),
            // Duplicate scopes could make the list longer than the levels;
            // everything past the last level shares it.
            LbMode::Failover => Some((preferences.len() - matched).min(MAX_PRIORITIES - 1)),
        }
    }
}

/// Whether a service's endpoint buckets depend on where this node is.
pub fn depends_on_locality(lb: &LoadBalancingSpec) -> bool {
    matches!(lb.mode, LbMode::Failover | LbMode::Strict) && !lb.routing_preference.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::resource::LocalityFields;

    fn here() -> LocalLocality {
        LocalLocality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: "s1".into(),
            node: "node-a".into(),
            cluster: "c1".into(),
            network: Default::default(),
        }
    }

    fn endpoint(region: &str, zone: &str, node: &str) -> WorkloadSpec {
        WorkloadSpec {
            uid: format!("{region}/{zone}/{node}").into(),
            name: Default::default(),
            namespace: Default::default(),
            addresses: Default::default(),
            hostname: None,
            network: Default::default(),
            node: node.into(),
            cluster_id: "c1".into(),
            locality: LocalityFields {
                region: region.into(),
                zone: zone.into(),
                subzone: Default::default(),
            },
            healthy: true,
            services: Default::default(),
            waypoint: None,
            weight: 1,
        }
    }

    fn lb(mode: LbMode, prefs: &[Scope]) -> LoadBalancingSpec {
        LoadBalancingSpec {
            mode,
            routing_preference: prefs.to_vec(),
            allow_unhealthy: false,
        }
    }

    #[test]
    fn failover_ranks_by_leading_matches() {
        let policy = lb(LbMode::Failover, &[Scope::Region, Scope::Zone, Scope::Node]);
        let p = |e: &WorkloadSpec| here().priority(&policy, e);
        assert_eq!(p(&endpoint("r1", "z1", "node-a")), Some(0));
        assert_eq!(p(&endpoint("r1", "z1", "node-b")), Some(1));
        assert_eq!(
            p(&endpoint("r1", "z2", "node-a")),
            Some(2),
            "stops at the first mismatch"
        );
        assert_eq!(p(&endpoint("r2", "z1", "node-a")), Some(3));
    }

    #[test]
    fn strict_keeps_only_full_matches() {
        let policy = lb(LbMode::Strict, &[Scope::Region, Scope::Zone]);
        assert_eq!(
            here().priority(&policy, &endpoint("r1", "z1", "x")),
            Some(0)
        );
        assert_eq!(here().priority(&policy, &endpoint("r1", "z2", "x")), None);
    }

    #[test]
    fn without_preferences_every_endpoint_is_priority_zero() {
        let policy = lb(LbMode::Standard, &[]);
        assert_eq!(
            here().priority(&policy, &endpoint("r9", "z9", "x")),
            Some(0)
        );
        assert!(!depends_on_locality(&policy));
        assert!(depends_on_locality(&lb(LbMode::Failover, &[Scope::Zone])));
    }

    #[test]
    fn cluster_and_node_scopes_compare_the_workload_fields() {
        let policy = lb(LbMode::Strict, &[Scope::Cluster, Scope::Node]);
        let mut e = endpoint("r1", "z1", "node-a");
        assert_eq!(here().priority(&policy, &e), Some(0));
        e.cluster_id = "c2".into();
        assert_eq!(here().priority(&policy, &e), None);
        e.cluster_id = Default::default();
        assert_eq!(
            here().priority(&policy, &e),
            Some(0),
            "unset = this cluster"
        );
    }
}
