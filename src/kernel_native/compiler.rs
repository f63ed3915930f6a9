//! The kernel-native compiler: Envoy resources in, a [`Plan`] out. Pure — no
//! syscalls, no globals — so it is tested without root and its output can be
//! dumped and diffed.
//!
//! Each resource compiles on its own; a bad one is rejected with a
//! [`ResourceError`] (the NACK text) and the good ones still compile, as
//! Envoy applies the valid part of a response.

mod cluster;
mod dns_cluster;
mod field;
mod filter;
// MAGLEV / RING_HASH tables: built and unit-tested, not yet laid out for the kernel.
#[allow(dead_code)]
mod hash_lb;
mod listener;
mod route;
#[cfg(test)]
mod testutil;

use std::collections::BTreeMap;

use serde::Serialize;

pub use cluster::{compile_cluster, eds_service_name};
pub use dns_cluster::{dns_subscriptions, NoDns, ResolvedHosts};
pub use listener::compile_listener;
pub use route::compile_route_config;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use crate::kernel_native::plan::{CompiledCluster, CompiledListener, ListenerKey, Plan};
use crate::kernel_native::resources::{ResourceError, ResourceKind, Resources};

/// Sizes of the kernel maps (configurable; the flags are named in the errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_listeners: usize,
    pub max_clusters: usize,
    pub max_endpoints_per_cluster: usize,
    pub max_route_configs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_listeners: 16384,
            max_clusters: 65536,
            max_endpoints_per_cluster: 65536,
            max_route_configs: 16384,
        }
    }
}

/// A plan that does not fit the maps: nothing of it may be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error("{count} listener addresses > capacity {capacity} (--max-listeners)")]
    Listeners { count: usize, capacity: usize },
    #[error("{count} clusters > capacity {capacity} (--max-clusters)")]
    Clusters { count: usize, capacity: usize },
    #[error(
        "cluster {cluster:?}: {count} endpoints > capacity {capacity} (--max-endpoints-per-cluster)"
    )]
    Endpoints {
        cluster: String,
        count: usize,
        capacity: usize,
    },
    #[error(
        "cluster {cluster:?}: {endpoints} endpoints + {table_records} lookup-table records \
         (MAGLEV/RING_HASH, {per_record} slots each) > capacity {capacity} \
         (--max-endpoints-per-cluster)"
    )]
    HashTables {
        cluster: String,
        endpoints: usize,
        table_records: usize,
        per_record: u32,
        capacity: usize,
    },
    #[error("{count} route configurations > capacity {capacity} (--max-route-configs)")]
    RouteConfigs { count: usize, capacity: usize },
}

/// Checks a whole plan against the map sizes before anything is written.
pub fn check_capacity(plan: &Plan, limits: &Limits) -> Result<(), CapacityError> {
    check_counts(
        plan.listeners.len(),
        plan.clusters.len(),
        plan.route_configs.len(),
        limits,
    )?;
    plan.clusters
        .iter()
        .try_for_each(|(name, c)| check_cluster_capacity(name, c, limits))
}

/// The entry counts of a plan against the outer maps' sizes.
pub fn check_counts(
    listeners: usize,
    clusters: usize,
    route_configs: usize,
    limits: &Limits,
) -> Result<(), CapacityError> {
    if listeners > limits.max_listeners {
        return Err(CapacityError::Listeners {
            count: listeners,
            capacity: limits.max_listeners,
        });
    }
    if clusters > limits.max_clusters {
        return Err(CapacityError::Clusters {
            count: clusters,
            capacity: limits.max_clusters,
        });
    }
    if route_configs > limits.max_route_configs {
        return Err(CapacityError::RouteConfigs {
            count: route_configs,
            capacity: limits.max_route_configs,
        });
    }
    Ok(())
}

/// One cluster's records against the size of its inner map. Checked for the
/// clusters an update writes: the others were checked when they were written.
pub fn check_cluster_capacity(
    name: &str,
    c: &CompiledCluster,
    limits: &Limits,
) -> Result<(), CapacityError> {
    let count: usize = c
        .levels_v4
        .iter()
        .chain(&c.levels_v6)
        .map(|l| l.endpoints.len())
        .sum();
    if count > limits.max_endpoints_per_cluster {
        return Err(CapacityError::Endpoints {
            cluster: name.to_string(),
            count,
            capacity: limits.max_endpoints_per_cluster,
        });
    }
    let table_records = super::records::hash_table_records(c);
    if count + table_records > limits.max_endpoints_per_cluster {
        return Err(CapacityError::HashTables {
            cluster: name.to_string(),
            endpoints: count,
            table_records,
            per_record: super::limits::KN_HASH_SLOTS_PER_RECORD,
            capacity: limits.max_endpoints_per_cluster,
        });
    }
    Ok(())
}

/// A ClusterLoadAssignment checked on its own, so that a bad one is
/// rejected even when no cluster reads it.
pub fn check_load_assignment(cla: &ClusterLoadAssignment) -> Result<(), ResourceError> {
    cluster::compile_load_assignment(cla).map(|_| ())
}

/// The plan of everything that compiled, and what was rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Compiled {
    pub plan: Plan,
    pub rejected: Vec<ResourceError>,
}

/// Compiles a whole set of resources at once. Resources are taken in name
/// order, so conflicts (two listeners on one address) are settled the same
/// way every time: the later name loses. The daemon compiles incrementally
/// (`snapshot::ConfigState`); this from-scratch compile is the reference its
/// tests compare with.
pub fn compile(resources: &Resources, dns: &dyn ResolvedHosts) -> Compiled {
    let mut out = Compiled::default();

    for (name, rc) in &resources.route_configs {
        match compile_route_config(rc) {
            Ok(c) => {
                out.plan.route_configs.insert(name.clone(), c);
            }
            Err(e) => out.rejected.push(e),
        }
    }

    // Checked on their own so that a bad assignment is reported even when no
    // cluster uses it; a cluster whose assignment is bad has no endpoints
    // (the caller keeps serving the last good snapshot).
    let mut load_assignments = BTreeMap::new();
    for (name, cla) in &resources.load_assignments {
        match cluster::compile_load_assignment(cla) {
            Ok(_) => {
                load_assignments.insert(name.as_str(), cla);
            }
            Err(e) => out.rejected.push(e),
        }
    }
    for (name, c) in &resources.clusters {
        let cla = load_assignments.get(eds_service_name(c)).copied();
        match compile_cluster(c, cla, dns) {
            Ok(compiled) => {
                let unresolved = dns_subscriptions(c).iter().any(|s| {
                    dns.addresses(&s.host, s.family)
                        .is_none_or(|a| a.is_empty())
                });
                if unresolved {
                    out.plan.awaiting_dns.insert(name.clone());
                }
                out.plan.clusters.insert(name.clone(), compiled);
            }
            Err(e) => out.rejected.push(e),
        }
    }

    for l in resources.listeners.values() {
        let entries = match compile_listener(l) {
            Ok(entries) => entries,
            Err(e) => {
                out.rejected.push(e);
                continue;
            }
        };
        if let Err(e) = check_conflicts(&out.plan, &l.name, &entries) {
            out.rejected.push(e);
            continue;
        }
        for (key, compiled) in entries {
            for (name, rc) in &compiled.inline_route_configs {
                out.plan.route_configs.insert(name.clone(), rc.clone());
            }
            out.plan.listeners.insert(key, compiled);
        }
    }
    out
}

/// A listener must not take an address, or an inline route configuration
/// name, that an earlier resource holds: either would change what the
/// earlier one routes.
pub(crate) fn check_conflicts(
    plan: &Plan,
    name: &str,
    entries: &[(ListenerKey, CompiledListener)],
) -> Result<(), ResourceError> {
    let reject = |field: &str, message: String| ResourceError {
        kind: ResourceKind::Listener,
        name: name.to_string(),
        field: field.to_string(),
        message,
    };
    for (key, compiled) in entries {
        if let Some(other) = plan.listeners.get(key) {
            return Err(reject(
                "address",
                format!(
                    "{} is already taken by listener {:?}",
                    listener::show_key(key),
                    other.name
                ),
            ));
        }
        for (rc_name, rc) in &compiled.inline_route_configs {
            if plan
                .route_configs
                .get(rc_name)
                .is_some_and(|existing| existing != rc)
            {
                return Err(reject(
                    "filter_chains",
                    format!(
                        "inline route configuration {rc_name:?} clashes with another \
                         route configuration of that name"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::kernel_native::plan::{
        CompiledCluster, Endpoint, FilterAction, LbPolicy, PriorityLevel,
    };
    use crate::kernel_native::resources::decode;
    use crate::xds::file::parse_resources;

    fn resources(file: &str) -> Resources {
        let mut r = Resources::default();
        for any in parse_resources(file).unwrap_or_else(|e| panic!("{e}")) {
            r.insert(decode(&any).unwrap());
        }
        r
    }

    const SNAPSHOT: &str = r#"
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: a-tcp
  address: { socket_address: { address: 10.96.0.1, port_value: 80 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: web }
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: b-same-address
  address: { socket_address: { address: 10.96.0.1, port_value: 80 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: other }
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: c-bad-port
  address: { socket_address: { address: 10.96.0.2, port_value: 0 } }
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: d-http
  address: { socket_address: { address: 10.96.0.3, port_value: 8080 } }
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: s
        route_config:
          name: inline
          virtual_hosts: [{ name: vh, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: web } }] }]
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: web
  type: EDS
  eds_cluster_config: { service_name: web-eds }
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: broken
  type: EDS
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: web-eds
  endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.7, port_value: 8080 } } } }] }]
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: broken
  endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.8, port_value: 8080 } } }, load_balancing_weight: 0 }] }]
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: "8080"
  virtual_hosts: [{ name: vh, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: web } }] }]
"#;

    #[test]
    fn good_resources_compile_and_bad_ones_are_rejected_one_by_one() {
        let Compiled { plan, rejected } = compile(&resources(SNAPSHOT), &NoDns);

        let rejected: Vec<(ResourceKind, &str, &str)> = rejected
            .iter()
            .map(|e| (e.kind, e.name.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (
                    ResourceKind::ClusterLoadAssignment,
                    "broken",
                    "endpoints[0].lb_endpoints[0].load_balancing_weight"
                ),
                (ResourceKind::Listener, "b-same-address", "address"),
                (
                    ResourceKind::Listener,
                    "c-bad-port",
                    "address.socket_address.port_value"
                ),
            ]
        );

        let names: Vec<&str> = plan.listeners.values().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a-tcp", "d-http"]);
        let a = plan.listeners.values().next().unwrap();
        assert_eq!(
            a.matches[0].action,
            Some(FilterAction::TcpProxy {
                cluster: "web".into()
            })
        );
        assert_eq!(
            plan.clusters["web"],
            CompiledCluster {
                lb_policy: LbPolicy::RoundRobin,
                levels_v4: vec![PriorityLevel {
                    priority: 0,
                    endpoints: vec![Endpoint {
                        addr: "10.0.0.7".parse().unwrap(),
                        port: 8080,
                        weight: 1
                    }],
                    hash_table: None,
                }],
                levels_v6: vec![],
                passthrough: false,
                circuit_breakers: None,
                outlier_detection: None,
                ignored: vec![],
            }
        );
        // Its assignment was rejected: the cluster stays, without endpoints.
        assert!(plan.clusters["broken"].levels_v4.is_empty());
        let route_configs: Vec<&str> = plan.route_configs.keys().map(String::as_str).collect();
        assert_eq!(route_configs, ["8080", "inline"]);
    }

    #[test]
    fn the_address_conflict_message_names_the_holder() {
        let Compiled { rejected, .. } = compile(&resources(SNAPSHOT), &NoDns);
        let e = rejected
            .iter()
            .find(|e| e.name == "b-same-address")
            .unwrap();
        assert_eq!(
            e.to_string(),
            "Listener \"b-same-address\": address: 10.96.0.1:80 is already taken by listener \"a-tcp\""
        );
    }

    #[test]
    fn an_inline_route_config_may_not_replace_another() {
        // Same name as the RDS configuration, different content.
        let file = SNAPSHOT.replace(
            "name: inline\n          virtual_hosts: [{ name: vh,",
            "name: \"8080\"\n          virtual_hosts: [{ name: other,",
        );
        assert_ne!(file, SNAPSHOT);
        let Compiled { plan, rejected } = compile(&resources(&file), &NoDns);
        assert!(rejected
            .iter()
            .any(|e| e.name == "d-http" && e.field == "filter_chains"));
        assert_eq!(plan.listeners.len(), 1);
        assert_eq!(plan.route_configs.len(), 1);
    }

    fn plan_with(listeners: usize, clusters: usize, endpoints: usize, routes: usize) -> Plan {
        use crate::kernel_native::plan::{CompiledListener, CompiledRouteConfig};
        let mut plan = Plan::default();
        for i in 0..listeners {
            plan.listeners.insert(
                ListenerKey {
                    addr: "10.0.0.1".parse().unwrap(),
                    port: u16::try_from(i + 1).unwrap(),
                },
                CompiledListener {
                    name: format!("l{i}"),
                    matches: vec![],
                    default_action: None,
                    ignored: vec![],
                    inline_route_configs: BTreeMap::new(),
                },
            );
        }
        for i in 0..clusters {
            let endpoints = (0..endpoints)
                .map(|_| Endpoint {
                    addr: "10.0.0.1".parse().unwrap(),
                    port: 80,
                    weight: 1,
                })
                .collect();
            plan.clusters.insert(
                format!("c{i}"),
                CompiledCluster {
                    lb_policy: LbPolicy::RoundRobin,
                    levels_v4: vec![PriorityLevel {
                        priority: 0,
                        endpoints,
                        hash_table: None,
                    }],
                    levels_v6: vec![],
                    passthrough: false,
                    circuit_breakers: None,
                    outlier_detection: None,
                    ignored: vec![],
                },
            );
        }
        for i in 0..routes {
            plan.route_configs.insert(
                format!("r{i}"),
                CompiledRouteConfig {
                    virtual_hosts: vec![],
                    ignored: vec![],
                },
            );
        }
        plan
    }

    #[test]
    fn capacity_errors_say_what_overflowed() {
        let limits = Limits {
            max_listeners: 2,
            max_clusters: 2,
            max_endpoints_per_cluster: 3,
            max_route_configs: 2,
        };
        assert_eq!(check_capacity(&plan_with(2, 2, 3, 2), &limits), Ok(()));
        let cases = [
            (
                plan_with(3, 0, 0, 0),
                "3 listener addresses > capacity 2 (--max-listeners)",
            ),
            (
                plan_with(0, 3, 0, 0),
                "3 clusters > capacity 2 (--max-clusters)",
            ),
            (
                plan_with(0, 1, 4, 0),
                "cluster \"c0\": 4 endpoints > capacity 3 (--max-endpoints-per-cluster)",
            ),
            (
                plan_with(0, 0, 0, 3),
                "3 route configurations > capacity 2 (--max-route-configs)",
            ),
        ];
        for (plan, message) in cases {
            assert_eq!(
                check_capacity(&plan, &limits).unwrap_err().to_string(),
                message
            );
        }
        assert_eq!(
            check_capacity(&plan_with(3, 3, 3, 3), &Limits::default()),
            Ok(())
        );
    }
}
