//! Cluster (+ its ClusterLoadAssignment) → [`CompiledCluster`]: the load
//! balancing policy and the endpoints, grouped per address family into
//! priority levels, as the kernel's cluster stage picks them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{
        ClusterDiscoveryType, DiscoveryType, LbConfig as EnvoyLbConfig, LbPolicy as EnvoyLbPolicy,
    },
    Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, RoutingPriority};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, locality_lb_endpoints::LbConfig, ClusterLoadAssignment, LbEndpoint,
};

use super::dns_cluster::{self, ResolvedHosts};
use super::field::{
    ignored, ignored_within, ip_and_port, join, socket_address, FieldError, FieldResult,
};
use super::hash_lb;
use crate::kernel_native::limits::{
    KN_MAX_CONNECTIONS_LIMIT, KN_MAX_EJECTED, KN_MAX_ENDPOINTS_PER_LEVEL, KN_MAX_HASH_TABLE_SIZE,
    KN_MAX_PRIORITIES, KN_MAX_RING_SIZE,
};
use crate::kernel_native::plan::{
    CircuitBreakers, CompiledCluster, Endpoint, Family, HashTable, Ignored, LbPolicy,
    OutlierDetection, PriorityLevel,
};
use crate::kernel_native::resources::{ResourceError, ResourceKind};

/// The ClusterLoadAssignment an EDS cluster reads: named by
/// `eds_cluster_config.service_name`, or by the cluster's own name.
pub fn eds_service_name(c: &Cluster) -> &str {
    match &c.eds_cluster_config {
        Some(eds) if !eds.service_name.is_empty() => &eds.service_name,
        _ => &c.name,
    }
}

/// Compiles a cluster. `cla` is the ClusterLoadAssignment of an EDS cluster
/// (see [`eds_service_name`]); without one yet the cluster has no endpoints.
/// Errors in `cla` are reported against the ClusterLoadAssignment.
pub fn compile_cluster(
    c: &Cluster,
    cla: Option<&ClusterLoadAssignment>,
    dns: &dyn ResolvedHosts,
) -> Result<CompiledCluster, ResourceError> {
    let reject = |e: FieldError| e.into_resource_error(ResourceKind::Cluster, &c.name);
    super::field::check_name("name", &c.name).map_err(reject)?;
    let mut out = CompiledCluster {
        lb_policy: lb_policy(c).map_err(reject)?,
        levels_v4: Vec::new(),
        levels_v6: Vec::new(),
        passthrough: false,
        circuit_breakers: None,
        outlier_detection: None,
        ignored: Vec::new(),
    };
    out.circuit_breakers = circuit_breakers(c, &mut out.ignored).map_err(reject)?;
    out.ignored.extend(lb_notes(c));
    out.ignored.extend(unused_settings(c));

    let discovery = match &c.cluster_discovery_type {
        // proto3 default: `type` unset is STATIC.
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).map_err(|_| {
            reject(FieldError::new(
                "type",
                format!("unknown discovery type {t}"),
            ))
        })?,
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            out.ignored.push(ignored(
                "cluster_type",
                format!(
                    "custom cluster type {:?} is not supported: the cluster has no endpoints",
                    custom.name
                ),
            ));
            return Ok(out);
        }
    };
    let endpoints = match discovery {
        DiscoveryType::Static => match &c.load_assignment {
            Some(la) => Some(
                levels(la)
                    .map_err(|e| reject(e.within("load_assignment")))?
                    .within("load_assignment"),
            ),
            None => None,
        },
        DiscoveryType::Eds => {
            if c.load_assignment.is_some() {
                out.ignored.push(ignored(
                    "load_assignment",
                    "an EDS cluster takes its endpoints from its ClusterLoadAssignment",
                ));
            }
            match cla {
                Some(cla) => Some(compile_load_assignment(cla)?.within("eds")),
                None => None,
            }
        }
        DiscoveryType::OriginalDst => {
            out.passthrough = true;
            if c.load_assignment.is_some() {
                out.ignored.push(ignored(
                    "load_assignment",
                    "an ORIGINAL_DST cluster keeps the original destination",
                ));
            }
            None
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => match &c.load_assignment {
            Some(la) => {
                let (resolved, pending) = dns_cluster::resolve(c, la, dns);
                if !pending.is_empty() {
                    out.ignored.push(ignored(
                        "load_assignment",
                        format!("not resolved yet (no endpoint until DNS answers): {pending:?}"),
                    ));
                }
                Some(
                    levels(&resolved)
                        .map_err(|e| reject(e.within("load_assignment")))?
                        .within("load_assignment"),
                )
            }
            None => None,
        },
    };
    if let Some(levels) = endpoints {
        out.levels_v4 = levels.v4;
        out.levels_v6 = levels.v6;
        out.ignored.extend(levels.ignored);
    }
    for level in out.levels_v4.iter_mut().chain(out.levels_v6.iter_mut()) {
        level.hash_table = hash_table(out.lb_policy, &level.endpoints);
    }
    if let Some(od) = &c.outlier_detection {
        let hosts = out
            .levels_v4
            .iter()
            .chain(&out.levels_v6)
            .map(|l| l.endpoints.len())
            .sum();
        out.outlier_detection =
            Some(outlier_detection(od, hosts, &mut out.ignored).map_err(reject)?);
    }
    Ok(out)
}

const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// `outlier_detection` at L4: a failed connect is the only failure the kernel
/// sees. It counts as a local-origin failure
/// (`consecutive_local_origin_failure` when
/// `split_external_local_origin_errors` is set, else `consecutive_5xx`, to
/// which Envoy maps local-origin errors).
fn outlier_detection(
    od: &envoy_types::pb::envoy::config::cluster::v3::OutlierDetection,
    hosts: usize,
    notes: &mut Vec<Ignored>,
) -> FieldResult<OutlierDetection> {
    let (field, threshold) = if od.split_external_local_origin_errors {
        (
            "outlier_detection.consecutive_local_origin_failure",
            od.consecutive_local_origin_failure.map(|v| v.value),
        )
    } else {
        (
            "outlier_detection.consecutive_5xx",
            od.consecutive_5xx.map(|v| v.value),
        )
    };
    let threshold = threshold.unwrap_or(DEFAULT_CONSECUTIVE_FAILURES);
    let consecutive_failures = u16::try_from(threshold)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| FieldError::new(field, format!("{threshold}: must be 1 to 65535")))?;
    let base_ejection_ms = match &od.base_ejection_time {
        None => DEFAULT_BASE_EJECTION_MS,
        Some(d) => u64::try_from(d.seconds)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .and_then(|ms| ms.checked_add(u64::try_from(d.nanos).ok()? / 1_000_000))
            .ok_or_else(|| {
                FieldError::new("outlier_detection.base_ejection_time", "out of range")
            })?,
    };
    let base_ejection_ms = u32::try_from(base_ejection_ms).map_err(|_| {
        FieldError::new(
            "outlier_detection.base_ejection_time",
            "longer than the kernel's 49 days",
        )
    })?;
    let max_ejection_percent = od
        .max_ejection_percent
        .map_or(DEFAULT_MAX_EJECTION_PERCENT, |v| v.value)
        .min(100);
    let max_ejected =
        (hosts * max_ejection_percent as usize / 100).clamp(1, KN_MAX_EJECTED as usize) as u8;
    let unused = [
        ("interval", od.interval.is_some()),
        ("max_ejection_time", od.max_ejection_time.is_some()),
        (
            "consecutive_gateway_failure",
            od.consecutive_gateway_failure.is_some(),
        ),
        (
            "success_rate_stdev_factor",
            od.success_rate_stdev_factor.is_some(),
        ),
        (
            "failure_percentage_threshold",
            od.failure_percentage_threshold.is_some(),
        ),
    ];
    for (name, set) in unused {
        if set {
            notes.push(ignored(
                format!("outlier_detection.{name}"),
                "only consecutive connect failures eject at L4 (no interval sweeps, \
                 success-rate or gateway-failure detection)",
            ));
        }
    }
    Ok(OutlierDetection {
        consecutive_failures,
        base_ejection_ms,
        max_ejection_percent,
        max_ejected,
    })
}

/// MAGLEV / RING_HASH: one lookup table per priority level (the kernel uses
/// the lowest level that has endpoints of the dialled family, as for every
/// policy). Endpoints are identified by `address:port`, so a rebuilt table
/// keeps the keys a change does not have to move.
fn hash_table(policy: LbPolicy, endpoints: &[Endpoint]) -> Option<HashTable> {
    let ids: Vec<(String, u32)> = endpoints
        .iter()
        .map(|e| {
            (
                std::net::SocketAddr::new(e.addr, e.port).to_string(),
                e.weight,
            )
        })
        .collect();
    match policy {
        LbPolicy::Maglev { table_size } => Some(HashTable {
            slots: hash_lb::maglev_table(&ids, table_size),
            ring_points: None,
        }),
        LbPolicy::RingHash {
            minimum_ring_size,
            maximum_ring_size,
        } => {
            // The table keeps minimum_ring_size slots whatever the endpoints:
            // a key's slot must not move when an endpoint comes or goes.
            let (slots, points) = hash_lb::ring_table(
                &ids,
                u64::from(minimum_ring_size),
                u64::from(maximum_ring_size),
                minimum_ring_size,
            );
            Some(HashTable {
                slots,
                ring_points: Some(points),
            })
        }
        _ => None,
    }
}

/// Envoy's defaults: Maglev `table_size` 65537, ring `minimum_ring_size` 1024
/// (Envoy's default `maximum_ring_size`, 8M, is over [`KN_MAX_RING_SIZE`]:
/// that is used instead).
const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;

fn hash_table_size(field: &str, size: u64, must_be_prime: bool) -> FieldResult<u32> {
    if size == 0 || size > u64::from(KN_MAX_HASH_TABLE_SIZE) {
        return Err(FieldError::new(
            field,
            format!("{size}: the kernel's lookup table holds 1 to {KN_MAX_HASH_TABLE_SIZE} slots (KN_MAX_HASH_TABLE_SIZE)"),
        ));
    }
    if must_be_prime && !hash_lb::is_prime(size) {
        return Err(FieldError::new(
            field,
            format!("{size} is not a prime number"),
        ));
    }
    Ok(size as u32)
}

/// A ClusterLoadAssignment's endpoints, checked on their own (so that a bad
/// one is rejected even before a cluster refers to it).
pub(crate) fn compile_load_assignment(
    cla: &ClusterLoadAssignment,
) -> Result<Levels, ResourceError> {
    levels(cla)
        .map_err(|e| e.into_resource_error(ResourceKind::ClusterLoadAssignment, &cla.cluster_name))
}

/// Envoy's default `max_connections` when a DEFAULT threshold leaves it unset.
const ENVOY_DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Envoy's default LEAST_REQUEST `choice_count`.
const DEFAULT_CHOICE_COUNT: u32 = 2;

/// `circuit_breakers.thresholds` of the DEFAULT priority. At connect() only
/// the connection limit has a meaning; the request-level limits are listed
/// as ignored. Without a DEFAULT threshold there is no limit (Envoy would
/// apply its defaults; the kernel enforces only what is configured).
fn circuit_breakers(c: &Cluster, notes: &mut Vec<Ignored>) -> FieldResult<Option<CircuitBreakers>> {
    let Some(cb) = &c.circuit_breakers else {
        return Ok(None);
    };
    let mut out = None;
    for (i, t) in cb.thresholds.iter().enumerate() {
        let field = format!("circuit_breakers.thresholds[{i}]");
        match RoutingPriority::try_from(t.priority) {
            Ok(RoutingPriority::Default) => {}
            Ok(RoutingPriority::High) => {
                notes.push(ignored(
                    &field,
                    "HIGH priority thresholds: connections are not prioritised at connect();                      only the DEFAULT threshold is enforced",
                ));
                continue;
            }
            Err(_) => {
                return Err(FieldError::new(
                    join(&field, "priority"),
                    format!("unknown routing priority {}", t.priority),
                ))
            }
        }
        if out.is_some() {
            return Err(FieldError::new(
                join(&field, "priority"),
                "more than one threshold for the DEFAULT priority",
            ));
        }
        let max_connections = t
            .max_connections
            .map_or(ENVOY_DEFAULT_MAX_CONNECTIONS, |v| v.value);
        if max_connections == 0 {
            notes.push(ignored(
                join(&field, "max_connections"),
                "0 would refuse every connection; treated as no limit",
            ));
        } else if u64::from(max_connections) >= KN_MAX_CONNECTIONS_LIMIT {
            // Istio's 4294967295 on every cluster: counting it would keep a
            // counter per client netns and cluster for nothing.
            notes.push(ignored(
                join(&field, "max_connections"),
                format!(
                    "{max_connections} (2^31 or more) is no limit: no connection counter is kept"
                ),
            ));
        } else {
            out = Some(CircuitBreakers { max_connections });
        }
        for (name, set) in [
            ("max_pending_requests", t.max_pending_requests.is_some()),
            ("max_requests", t.max_requests.is_some()),
            ("max_retries", t.max_retries.is_some()),
            ("retry_budget", t.retry_budget.is_some()),
        ] {
            if set {
                notes.push(ignored(
                    join(&field, name),
                    "a request-level limit: no meaning for L4 connections at connect()",
                ));
            }
        }
        if t.track_remaining {
            notes.push(ignored(
                join(&field, "track_remaining"),
                "remaining-capacity gauges are not published",
            ));
        }
    }
    if !cb.per_host_thresholds.is_empty() {
        notes.push(ignored(
            "circuit_breakers.per_host_thresholds",
            "per-host connection limits are not enforced",
        ));
    }
    Ok(out)
}

fn lb_policy(c: &Cluster) -> FieldResult<LbPolicy> {
    match EnvoyLbPolicy::try_from(c.lb_policy) {
        Ok(EnvoyLbPolicy::Random) => Ok(LbPolicy::Random),
        Ok(EnvoyLbPolicy::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(EnvoyLbConfig::LeastRequestLbConfig(lr)) => {
                    lr.choice_count.map_or(DEFAULT_CHOICE_COUNT, |v| v.value)
                }
                _ => DEFAULT_CHOICE_COUNT,
            };
            if !(2..=crate::kernel_native::limits::KN_MAX_CHOICES).contains(&choice_count) {
                return Err(FieldError::new(
                    "least_request_lb_config.choice_count",
                    format!(
                        "choice_count {choice_count}: the kernel compares 2 to {} picks \
                         (KN_MAX_CHOICES)",
                        crate::kernel_native::limits::KN_MAX_CHOICES
                    ),
                ));
            }
            Ok(LbPolicy::LeastRequest { choice_count })
        }
        Ok(EnvoyLbPolicy::Maglev) => {
            let size = match &c.lb_config {
                Some(EnvoyLbConfig::MaglevLbConfig(m)) => m.table_size.map(|v| v.value),
                _ => None,
            };
            let table_size = hash_table_size(
                "maglev_lb_config.table_size",
                size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
                true,
            )?;
            Ok(LbPolicy::Maglev { table_size })
        }
        Ok(EnvoyLbPolicy::RingHash) => {
            let (min, max) = match &c.lb_config {
                Some(EnvoyLbConfig::RingHashLbConfig(r)) => (
                    r.minimum_ring_size.map(|v| v.value),
                    r.maximum_ring_size.map(|v| v.value),
                ),
                _ => (None, None),
            };
            let min = min.unwrap_or(DEFAULT_MINIMUM_RING_SIZE);
            if let Some(max) = max {
                if min > max {
                    // As Envoy: the minimum ring may not exceed the maximum.
                    return Err(FieldError::new(
                        "ring_hash_lb_config.minimum_ring_size",
                        format!("{min} > maximum_ring_size {max}"),
                    ));
                }
            }
            // The minimum is also the kernel table's size.
            let minimum_ring_size =
                hash_table_size("ring_hash_lb_config.minimum_ring_size", min, false)?;
            let maximum_ring_size = match max {
                None => KN_MAX_RING_SIZE,
                Some(max) => u32::try_from(max)
                    .ok()
                    .filter(|&m| m <= KN_MAX_RING_SIZE)
                    .ok_or_else(|| {
                        FieldError::new(
                            "ring_hash_lb_config.maximum_ring_size",
                            format!(
                                "{max}: the ring is built by the daemon with at most \
                                 {KN_MAX_RING_SIZE} points (KN_MAX_RING_SIZE)"
                            ),
                        )
                    })?,
            };
            Ok(LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            })
        }
        Ok(_) => Ok(LbPolicy::RoundRobin),
        Err(_) => Err(FieldError::new(
            "lb_policy",
            format!("unknown load balancing policy {}", c.lb_policy),
        )),
    }
}

/// Policies the kernel does not do yet fall back to round robin; say so.
fn lb_notes(c: &Cluster) -> Vec<Ignored> {
    let mut notes = Vec::new();
    if let Ok(p) = EnvoyLbPolicy::try_from(c.lb_policy) {
        if !matches!(
            p,
            EnvoyLbPolicy::RoundRobin
                | EnvoyLbPolicy::Random
                | EnvoyLbPolicy::LeastRequest
                | EnvoyLbPolicy::Maglev
                | EnvoyLbPolicy::RingHash
        ) {
            notes.push(ignored(
                "lb_policy",
                format!(
                    "{} is not done by the kernel yet: round robin is used",
                    p.as_str_name()
                ),
            ));
        }
    }
    if c.load_balancing_policy.is_some() {
        notes.push(ignored(
            "load_balancing_policy",
            "extension load balancing policies are not done by the kernel: lb_policy is used",
        ));
    }
    match &c.lb_config {
        Some(EnvoyLbConfig::LeastRequestLbConfig(lr))
            if c.lb_policy == EnvoyLbPolicy::LeastRequest as i32 =>
        {
            let tuned = lr.active_request_bias.is_some() || lr.slow_start_config.is_some();
            notes.extend(tuned.then(|| {
                ignored(
                    "least_request_lb_config",
                    "active_request_bias and slow start are not applied: the pick with the \
                     fewest active connections wins",
                )
            }));
        }
        Some(EnvoyLbConfig::MaglevLbConfig(_)) if c.lb_policy == EnvoyLbPolicy::Maglev as i32 => {}
        Some(EnvoyLbConfig::RingHashLbConfig(r))
            if c.lb_policy == EnvoyLbPolicy::RingHash as i32 =>
        {
            notes.extend((r.hash_function != 0).then(|| {
                ignored(
                    "ring_hash_lb_config.hash_function",
                    "not applied: the ring is built with its own hash (xxHash is not used \
                     in the kernel)",
                )
            }));
        }
        Some(_) => notes.push(ignored(
            "lb_config",
            "policy-specific tuning is not applied",
        )),
        None => {}
    }
    if let Some(common) = &c.common_lb_config {
        if common.locality_config_specifier.is_some() {
            notes.push(ignored(
                "common_lb_config.locality_config_specifier",
                "locality-weighted and zone-aware balancing are not done: \
                 endpoints are weighted individually",
            ));
        } else {
            notes.push(ignored(
                "common_lb_config",
                "panic thresholds and update windows do not apply in the kernel",
            ));
        }
    }
    notes
}

/// Settings that act after the connection is established (or on Envoy's
/// own connections), so they do not change which endpoint is chosen.
fn unused_settings(c: &Cluster) -> Vec<Ignored> {
    let set = [
        (
            "transport_socket",
            c.transport_socket.is_some(),
            "TLS to the upstream is not originated by the kernel",
        ),
        (
            "transport_socket_matches",
            !c.transport_socket_matches.is_empty(),
            "TLS to the upstream is not originated by the kernel",
        ),
        (
            "connect_timeout",
            c.connect_timeout.is_some(),
            "the application's own connect timeout applies",
        ),
        (
            "health_checks",
            !c.health_checks.is_empty(),
            "active health checking is not done; EDS health status is used",
        ),
        (
            "lb_subset_config",
            c.lb_subset_config.is_some(),
            "endpoint subsets are not selected by the kernel",
        ),
        (
            "typed_extension_protocol_options",
            !c.typed_extension_protocol_options.is_empty(),
            "upstream protocol options apply to Envoy's own connections",
        ),
    ];
    set.into_iter()
        .filter(|(_, is_set, _)| *is_set)
        .map(|(field, _, reason)| ignored(field, reason))
        .collect()
}

/// Endpoints per family, priority levels lowest first, plus notes.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Levels {
    pub v4: Vec<PriorityLevel>,
    pub v6: Vec<PriorityLevel>,
    pub ignored: Vec<Ignored>,
}

impl Levels {
    fn within(mut self, prefix: &str) -> Self {
        self.ignored = ignored_within(prefix, self.ignored).collect();
        self
    }
}

/// Paths relative to the ClusterLoadAssignment.
fn levels(cla: &ClusterLoadAssignment) -> FieldResult<Levels> {
    let mut notes = Vec::new();
    let mut grouped: BTreeMap<(Family, u32), Vec<Endpoint>> = BTreeMap::new();
    let mut not_serving = 0usize;
    let mut degraded = 0usize;
    for (i, locality) in cla.endpoints.iter().enumerate() {
        let lf = format!("endpoints[{i}]");
        if locality.load_balancing_weight.is_some() {
            notes.push(ignored(
                join(&lf, "load_balancing_weight"),
                "locality weights are not applied: endpoints are weighted individually",
            ));
        }
        // Deprecated in Envoy but still valid: endpoints may be listed here
        // instead of in `lb_endpoints`.
        #[allow(deprecated)]
        let listed = match &locality.lb_config {
            Some(LbConfig::LoadBalancerEndpoints(list)) => list.lb_endpoints.as_slice(),
            Some(LbConfig::LedsClusterLocalityConfig(_)) => {
                notes.push(ignored(
                    join(&lf, "leds_cluster_locality_config"),
                    "LEDS is not fetched: this locality contributes no endpoints",
                ));
                &[]
            }
            None => &[],
        };
        let all = locality
            .lb_endpoints
            .iter()
            .enumerate()
            .map(|(j, e)| (format!("{lf}.lb_endpoints[{j}]"), e))
            .chain(
                listed
                    .iter()
                    .enumerate()
                    .map(|(j, e)| (format!("{lf}.load_balancer_endpoints.lb_endpoints[{j}]"), e)),
            );
        for (field, lbe) in all {
            match HealthStatus::try_from(lbe.health_status) {
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout) => {
                    not_serving += 1;
                    continue;
                }
                Ok(HealthStatus::Degraded) => degraded += 1,
                _ => {}
            }
            let (endpoint, extra) = endpoint(cla, lbe).map_err(|e| e.within(&field))?;
            notes.extend(ignored_within(&field, extra));
            let family = if endpoint.addr.is_ipv4() {
                Family::V4
            } else {
                Family::V6
            };
            grouped
                .entry((family, locality.priority))
                .or_default()
                .push(endpoint);
        }
    }
    if not_serving > 0 {
        notes.push(ignored(
            "endpoints",
            format!("{not_serving} endpoint(s) UNHEALTHY, DRAINING or TIMEOUT: not used"),
        ));
    }
    if degraded > 0 {
        notes.push(ignored(
            "endpoints",
            format!("{degraded} DEGRADED endpoint(s) are used like healthy ones"),
        ));
    }
    if cla.policy.is_some() {
        notes.push(ignored(
            "policy",
            "drop_overloads and the overprovisioning factor are not applied",
        ));
    }
    let mut out = Levels {
        ignored: notes,
        ..Levels::default()
    };
    // BTreeMap order: per family, priorities ascending — the order the
    // kernel tries levels in.
    for ((family, priority), endpoints) in grouped {
        check_level(family, priority, &endpoints)?;
        let levels = match family {
            Family::V4 => &mut out.v4,
            Family::V6 => &mut out.v6,
        };
        levels.push(PriorityLevel {
            priority,
            endpoints,
            hash_table: None,
        });
        if levels.len() > KN_MAX_PRIORITIES {
            return Err(FieldError::new(
                "endpoints",
                format!(
                    "more than {KN_MAX_PRIORITIES} {} priority levels have endpoints \
                     (KN_MAX_PRIORITIES)",
                    family_name(family)
                ),
            ));
        }
    }
    Ok(out)
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn check_level(family: Family, priority: u32, endpoints: &[Endpoint]) -> FieldResult<()> {
    if endpoints.len() > KN_MAX_ENDPOINTS_PER_LEVEL {
        return Err(FieldError::new(
            "endpoints",
            format!(
                "priority {priority} has {} {} endpoints, more than the kernel's \
                 {KN_MAX_ENDPOINTS_PER_LEVEL} per level (KN_MAX_ENDPOINTS_PER_LEVEL)",
                endpoints.len(),
                family_name(family)
            ),
        ));
    }
    // The kernel stores cumulative weights in a u32.
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if total > u64::from(u32::MAX) {
        return Err(FieldError::new(
            "endpoints",
            format!(
                "priority {priority}: the {} endpoint weights add up to {total}, more than {}",
                family_name(family),
                u32::MAX
            ),
        ));
    }
    Ok(())
}

/// One endpoint, paths relative to the LbEndpoint.
fn endpoint(
    cla: &ClusterLoadAssignment,
    lbe: &LbEndpoint,
) -> FieldResult<(Endpoint, Vec<Ignored>)> {
    let (e, field) = match &lbe.host_identifier {
        Some(HostIdentifier::Endpoint(e)) => (e, "endpoint".to_string()),
        Some(HostIdentifier::EndpointName(name)) => {
            let e = cla.named_endpoints.get(name).ok_or_else(|| {
                FieldError::new(
                    "endpoint_name",
                    format!("no named endpoint {name:?} in this ClusterLoadAssignment"),
                )
            })?;
            (e, format!("endpoint_name({name})"))
        }
        None => return Err(FieldError::new("endpoint", "required")),
    };
    let addr_field = join(&field, "address");
    let addr = e
        .address
        .as_ref()
        .ok_or_else(|| FieldError::new(&addr_field, "required"))?;
    let sa = socket_address(addr).map_err(|err| err.within(&addr_field))?;
    let sa_field = join(&addr_field, "socket_address");
    let (ip, port) = ip_and_port(sa).map_err(|mut err| {
        if err.field == "address" {
            err.message
                .push_str(": a hostname needs a STRICT_DNS or LOGICAL_DNS cluster");
        }
        err.within(&sa_field)
    })?;
    let weight = match &lbe.load_balancing_weight {
        None => 1,
        Some(w) if w.value == 0 => {
            return Err(FieldError::new(
                "load_balancing_weight",
                "must be at least 1",
            ))
        }
        Some(w) => w.value,
    };
    let mut notes = Vec::new();
    if !e.additional_addresses.is_empty() {
        notes.push(ignored(
            join(&field, "additional_addresses"),
            "only the endpoint's primary address is used",
        ));
    }
    Ok((
        Endpoint {
            addr: ip,
            port,
            weight,
        },
        notes,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address::PortSpecifier, Address, SocketAddress,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        Endpoint as EnvoyEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;
    use crate::kernel_native::compiler::testutil::{fields, from_yaml};

    fn ep(addr: &str, port: u16, weight: u32) -> Endpoint {
        Endpoint {
            addr: addr.parse().unwrap(),
            port,
            weight,
        }
    }

    fn compile(cluster: &str, cla: Option<&str>) -> CompiledCluster {
        let cla: Option<ClusterLoadAssignment> = cla.map(from_yaml);
        compile_cluster(
            &from_yaml(cluster),
            cla.as_ref(),
            &super::super::dns_cluster::NoDns,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn rejected(cluster: &str) -> ResourceError {
        compile_cluster(&from_yaml(cluster), None, &super::super::dns_cluster::NoDns)
            .expect_err("cluster must be rejected")
    }

    fn static_cluster(endpoints: &str) -> String {
        format!("name: s\ntype: STATIC\nload_assignment: {{ cluster_name: s, endpoints: [{endpoints}] }}")
    }

    #[test]
    fn a_static_cluster_has_its_endpoints_per_family() {
        let c = compile(
            r#"
name: static_backend
type: STATIC
lb_policy: RANDOM
load_assignment:
  cluster_name: static_backend
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 8080 } } }
      load_balancing_weight: 3
    - endpoint: { address: { socket_address: { address: "fd00::1", port_value: 8080 } } }
    - endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 8081 } } }
"#,
            None,
        );
        assert_eq!(c.lb_policy, LbPolicy::Random);
        assert!(!c.passthrough);
        assert_eq!(
            c.levels_v4,
            [PriorityLevel {
                priority: 0,
                endpoints: vec![ep("10.0.0.1", 8080, 3), ep("10.0.0.2", 8081, 1)],
                hash_table: None,
            }]
        );
        assert_eq!(c.levels_v6[0].endpoints, [ep("fd00::1", 8080, 1)]);
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
    }

    const EDS: &str = r#"
name: "outbound|80||reviews"
type: EDS
eds_cluster_config: { service_name: reviews, eds_config: { ads: {} } }
connect_timeout: 10s
circuit_breakers: { thresholds: [{ max_connections: 100 }] }
outlier_detection: { consecutive_5xx: 5 }
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config: { "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: reviews }
"#;

    const REVIEWS_CLA: &str = r#"
cluster_name: reviews
endpoints:
- priority: 2
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 10.2.0.1, port_value: 9080 } } }
- locality: { zone: a }
  load_balancing_weight: 5
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 9080 } } }
    health_status: HEALTHY
  - endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 9080 } } }
    health_status: UNHEALTHY
  - endpoint: { address: { socket_address: { address: 10.0.0.3, port_value: 9080 } } }
    health_status: DRAINING
  - endpoint: { address: { socket_address: { address: 10.0.0.4, port_value: 9080 } } }
    health_status: TIMEOUT
  - endpoint: { address: { socket_address: { address: 10.0.0.5, port_value: 9080 } } }
    health_status: DEGRADED
    load_balancing_weight: 2
- priority: 5
  lb_endpoints:
  - endpoint: { address: { socket_address: { address: 10.5.0.1, port_value: 9080 } } }
    health_status: UNHEALTHY
"#;

    #[test]
    fn an_eds_cluster_takes_priorities_and_health_from_its_assignment() {
        let c = compile(EDS, Some(REVIEWS_CLA));
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
        let levels: Vec<(u32, Vec<Endpoint>)> = c
            .levels_v4
            .iter()
            .map(|l| (l.priority, l.endpoints.clone()))
            .collect();
        // Priority 5 had only an unhealthy endpoint: no level.
        assert_eq!(
            levels,
            [
                (0, vec![ep("10.0.0.1", 9080, 1), ep("10.0.0.5", 9080, 2)]),
                (2, vec![ep("10.2.0.1", 9080, 1)]),
            ]
        );
        assert!(c.levels_v6.is_empty());
        assert_eq!(
            c.circuit_breakers,
            Some(CircuitBreakers {
                max_connections: 100
            })
        );
        assert_eq!(
            fields(&c.ignored),
            [
                "transport_socket",
                "connect_timeout",
                "eds.endpoints[1].load_balancing_weight",
                "eds.endpoints",
                "eds.endpoints",
            ]
        );
        assert!(
            c.ignored[3].reason.starts_with("4 endpoint(s)"),
            "{:?}",
            c.ignored[3]
        );
    }

    #[test]
    fn an_eds_cluster_without_its_assignment_yet_has_no_endpoints() {
        let c = compile(EDS, None);
        assert!(c.levels_v4.is_empty() && c.levels_v6.is_empty());
        assert_eq!(eds_service_name(&from_yaml(EDS)), "reviews");
        let plain: Cluster = from_yaml("name: plain\ntype: EDS");
        assert_eq!(eds_service_name(&plain), "plain");
    }

    #[test]
    fn errors_in_an_assignment_are_the_assignments() {
        let cla: ClusterLoadAssignment = from_yaml(
            "cluster_name: reviews\nendpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: reviews.local, port_value: 80 } } } }] }]",
        );
        let e = compile_cluster(
            &from_yaml(EDS),
            Some(&cla),
            &super::super::dns_cluster::NoDns,
        )
        .unwrap_err();
        assert_eq!(e.kind, ResourceKind::ClusterLoadAssignment);
        assert_eq!(e.name, "reviews");
        assert_eq!(
            e.field,
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
        );
        assert!(e.message.contains("STRICT_DNS"), "{e}");
    }

    #[test]
    fn original_dst_is_passthrough_and_dns_clusters_wait_for_the_resolver() {
        let c = compile(
            "name: PassthroughCluster\ntype: ORIGINAL_DST\nlb_policy: CLUSTER_PROVIDED",
            None,
        );
        assert!(c.passthrough);
        assert!(c.levels_v4.is_empty());
        assert_eq!(fields(&c.ignored), ["lb_policy"]);

        for t in ["STRICT_DNS", "LOGICAL_DNS"] {
            let c = compile(
                &format!(
                    "name: ext\ntype: {t}\nload_assignment: {{ cluster_name: ext, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: example.com, port_value: 443 }} }} }} }}] }}] }}"
                ),
                None,
            );
            assert!(c.levels_v4.is_empty(), "no endpoint before DNS answers");
            assert_eq!(fields(&c.ignored), ["load_assignment"]);
            assert!(c.ignored[0].reason.contains("not resolved yet"));
        }

        let c = compile(
            "name: custom\ncluster_type: { name: envoy.clusters.aggregate, typed_config: { '@type': type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig, clusters: [a, b] } }",
            None,
        );
        assert_eq!(fields(&c.ignored), ["cluster_type"]);
    }

    #[test]
    fn hash_policies_take_their_table_sizes() {
        let c = compile("name: c\ntype: STATIC\nlb_policy: MAGLEV", None);
        assert_eq!(c.lb_policy, LbPolicy::Maglev { table_size: 65537 });
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = compile(
            "name: c\ntype: STATIC\nlb_policy: MAGLEV\nmaglev_lb_config: { table_size: 251 }\nload_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } } }] }] }",
            None,
        );
        assert_eq!(c.lb_policy, LbPolicy::Maglev { table_size: 251 });
        let table = c.levels_v4[0].hash_table.as_ref().unwrap();
        assert_eq!(table.slots.len(), 251);
        assert!(table.slots.iter().all(|&s| s == 0));
        let c = compile(
            "name: c\ntype: STATIC\nlb_policy: RING_HASH\nring_hash_lb_config: { minimum_ring_size: 64 }",
            None,
        );
        assert_eq!(
            c.lb_policy,
            LbPolicy::RingHash {
                minimum_ring_size: 64,
                maximum_ring_size: KN_MAX_RING_SIZE
            }
        );
        for bad in [
            "lb_policy: MAGLEV\nmaglev_lb_config: { table_size: 100 }",
            "lb_policy: MAGLEV\nmaglev_lb_config: { table_size: 5000011 }",
            "lb_policy: RING_HASH\nring_hash_lb_config: { minimum_ring_size: 100000 }",
        ] {
            let e = rejected(&format!("name: c\n{bad}"));
            assert!(e.to_string().contains("_lb_config."), "{e}");
        }
    }

    /// Issue 14 item 5: the whole ring is capped (Envoy's maximum_ring_size,
    /// and the daemon's own KN_MAX_RING_SIZE); a ring that could not fit is
    /// refused naming the cluster and the field.
    #[test]
    fn a_ring_over_the_caps_is_refused_naming_the_cluster_and_field() {
        for (config, field, cap) in [
            (
                "maximum_ring_size: 2000000",
                "ring_hash_lb_config.maximum_ring_size",
                "1048576",
            ),
            (
                "minimum_ring_size: 1024, maximum_ring_size: 9000000",
                "ring_hash_lb_config.maximum_ring_size",
                "1048576",
            ),
            (
                "minimum_ring_size: 100000",
                "ring_hash_lb_config.minimum_ring_size",
                "65537",
            ),
        ] {
            let e = rejected(&format!(
                "name: big-ring\nlb_policy: RING_HASH\nring_hash_lb_config: {{ {config} }}"
            ));
            assert_eq!(
                (e.name.as_str(), e.field.as_str()),
                ("big-ring", field),
                "{e}"
            );
            let shown = e.to_string();
            assert!(
                shown.contains("\"big-ring\"") && shown.contains(field) && shown.contains(cap),
                "{shown}"
            );
        }
    }

    /// Issue 14 item 5: maximum_ring_size is applied (no longer listed as
    /// ignored) and shown; the ring's points stay within [minimum, maximum].
    #[test]
    fn ring_hash_honours_maximum_ring_size() {
        let cluster = |ring: &str| {
            format!(
                "name: c\ntype: STATIC\nlb_policy: RING_HASH\nring_hash_lb_config: {{ {ring} }}\nload_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.1, port_value: 80 }} }} }}, load_balancing_weight: 1 }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.2, port_value: 80 }} }} }}, load_balancing_weight: 1000 }}] }}] }}"
            )
        };
        let c = compile(
            &cluster("minimum_ring_size: 64, maximum_ring_size: 128"),
            None,
        );
        assert_eq!(
            c.lb_policy,
            LbPolicy::RingHash {
                minimum_ring_size: 64,
                maximum_ring_size: 128
            }
        );
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let table = c.levels_v4[0].hash_table.as_ref().unwrap();
        assert_eq!(
            table.slots.len(),
            64,
            "the table keeps minimum_ring_size slots"
        );
        assert_eq!(table.ring_points, Some(128), "clamped to maximum_ring_size");

        // Unclamped, weights 1:1000 need 1001 points (one for the light endpoint).
        let c = compile(&cluster("minimum_ring_size: 64"), None);
        assert_eq!(
            c.levels_v4[0].hash_table.as_ref().unwrap().ring_points,
            Some(1001)
        );
    }

    #[test]
    fn policies_the_kernel_lacks_fall_back_to_round_robin() {
        let p = "CLUSTER_PROVIDED";
        let c = compile(&format!("name: c\ntype: STATIC\nlb_policy: {p}"), None);
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(fields(&c.ignored), ["lb_policy"]);
        assert!(c.ignored[0].reason.contains(p));
        let c = compile(
            "name: c\ncommon_lb_config: { locality_weighted_lb_config: {} }",
            None,
        );
        assert_eq!(
            fields(&c.ignored),
            ["common_lb_config.locality_config_specifier"]
        );
    }

    #[test]
    fn outlier_detection_counts_connect_failures() {
        let eps = "load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } } }, { endpoint: { address: { socket_address: { address: 10.0.0.2, port_value: 80 } } } }] }] }";
        let c = compile(&format!("name: c\noutlier_detection: {{}}\n{eps}"), None);
        assert_eq!(
            c.outlier_detection,
            Some(OutlierDetection {
                consecutive_failures: 5,
                base_ejection_ms: 30_000,
                max_ejection_percent: 10,
                max_ejected: 1,
            })
        );
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = compile(
            &format!("name: c\noutlier_detection: {{ consecutive_5xx: 9, split_external_local_origin_errors: true, consecutive_local_origin_failure: 3, base_ejection_time: 2s, max_ejection_percent: 100, interval: 1s }}\n{eps}"),
            None,
        );
        let od = c.outlier_detection.unwrap();
        assert_eq!(
            (od.consecutive_failures, od.base_ejection_ms, od.max_ejected),
            (3, 2000, 2)
        );
        assert_eq!(fields(&c.ignored), ["outlier_detection.interval"]);
        let e = rejected("name: c\noutlier_detection: { consecutive_5xx: 0 }");
        assert!(e.to_string().contains("consecutive_5xx"), "{e}");
    }

    #[test]
    fn least_request_takes_its_choice_count() {
        let c = compile("name: c\ntype: STATIC\nlb_policy: LEAST_REQUEST", None);
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest { choice_count: 2 });
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let c = compile(
            "name: c\ntype: STATIC\nlb_policy: LEAST_REQUEST\nleast_request_lb_config: { choice_count: 5, active_request_bias: { default_value: 1.0, runtime_key: k } }",
            None,
        );
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest { choice_count: 5 });
        assert_eq!(fields(&c.ignored), ["least_request_lb_config"]);
        let e = rejected(
            "name: c\nlb_policy: LEAST_REQUEST\nleast_request_lb_config: { choice_count: 9 }",
        );
        assert_eq!(e.field, "least_request_lb_config.choice_count");
    }

    #[test]
    fn circuit_breakers_enforce_the_default_priority_connection_limit() {
        let c = compile(
            "name: c\ncircuit_breakers: { thresholds: [{ priority: HIGH, max_connections: 9 }, { max_connections: 5, max_pending_requests: 1, max_requests: 2, max_retries: 3 }] }",
            None,
        );
        assert_eq!(
            c.circuit_breakers,
            Some(CircuitBreakers { max_connections: 5 })
        );
        assert_eq!(
            fields(&c.ignored),
            [
                "circuit_breakers.thresholds[0]",
                "circuit_breakers.thresholds[1].max_pending_requests",
                "circuit_breakers.thresholds[1].max_requests",
                "circuit_breakers.thresholds[1].max_retries",
            ]
        );
        assert!(c.ignored[1].reason.contains("no meaning for L4"));
        // A DEFAULT threshold without max_connections: Envoy's default 1024.
        let c = compile(
            "name: c\ncircuit_breakers: { thresholds: [{ max_requests: 2 }] }",
            None,
        );
        assert_eq!(
            c.circuit_breakers,
            Some(CircuitBreakers {
                max_connections: 1024
            })
        );
        // No threshold, no limit.
        let c = compile("name: c\ncircuit_breakers: {}", None);
        assert_eq!(c.circuit_breakers, None);
        let e = rejected(
            "name: c\ncircuit_breakers: { thresholds: [{ max_connections: 1 }, { max_connections: 2 }] }",
        );
        assert_eq!(e.field, "circuit_breakers.thresholds[1].priority");
    }

    /// Issue 14 item 4: Istio's 4294967295 (and anything from 2^31) is no
    /// limit: no breaker, so the kernel keeps no per-netns counter.
    #[test]
    fn max_connections_of_2_pow_31_or_more_is_no_limit() {
        for (limit, breaker) in [
            (
                2_147_483_647u64,
                Some(CircuitBreakers {
                    max_connections: 2_147_483_647,
                }),
            ),
            (2_147_483_648, None),
            (4_294_967_295, None),
        ] {
            let c = compile(
                &format!(
                    "name: c\ncircuit_breakers: {{ thresholds: [{{ max_connections: {limit} }}] }}"
                ),
                None,
            );
            assert_eq!(c.circuit_breakers, breaker, "{limit}");
            let noted = fields(&c.ignored) == ["circuit_breakers.thresholds[0].max_connections"];
            assert_eq!(noted, breaker.is_none(), "{limit}: {:?}", c.ignored);
        }
    }

    #[test]
    fn bad_endpoints_are_rejected_with_their_path() {
        let prefix = "load_assignment.endpoints[0].lb_endpoints[0]";
        let cases = [
            (
                "{ endpoint: { address: { socket_address: { address: backend, port_value: 80 } } } }",
                format!("{prefix}.endpoint.address.socket_address.address"),
            ),
            (
                "{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 0 } } } }",
                format!("{prefix}.endpoint.address.socket_address.port_value"),
            ),
            (
                "{ endpoint: { address: { socket_address: { address: 10.0.0.1, port_value: 80 } } }, load_balancing_weight: 0 }",
                format!("{prefix}.load_balancing_weight"),
            ),
            (
                "{ endpoint: { address: { pipe: { path: /s } } } }",
                format!("{prefix}.endpoint.address.pipe"),
            ),
            ("{ endpoint: {} }", format!("{prefix}.endpoint.address")),
            ("{ endpoint_name: missing }", format!("{prefix}.endpoint_name")),
        ];
        for (lb_endpoint, field) in cases {
            let e = rejected(&static_cluster(&format!(
                "{{ lb_endpoints: [{lb_endpoint}] }}"
            )));
            assert_eq!(e.kind, ResourceKind::Cluster);
            assert_eq!(e.field, field, "{lb_endpoint}: {e}");
        }
        let e = rejected(&format!("name: {}\ntype: STATIC", "n".repeat(128)));
        assert_eq!(e.field, "name");
    }

    #[test]
    fn named_endpoints_are_resolved() {
        let cla: ClusterLoadAssignment = from_yaml(
            "cluster_name: c\nnamed_endpoints: { a: { address: { socket_address: { address: 10.0.0.9, port_value: 80 } } } }\nendpoints: [{ lb_endpoints: [{ endpoint_name: a }] }]",
        );
        let levels = compile_load_assignment(&cla).unwrap();
        assert_eq!(levels.v4[0].endpoints, [ep("10.0.0.9", 80, 1)]);
    }

    #[test]
    fn too_many_priorities_are_rejected() {
        let localities: Vec<String> = (0..=KN_MAX_PRIORITIES)
            .map(|p| {
                format!("{{ priority: {p}, lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.{p}, port_value: 80 }} }} }} }}] }}")
            })
            .collect();
        let e = rejected(&static_cluster(&localities.join(", ")));
        assert_eq!(e.field, "load_assignment.endpoints");
        assert!(e.message.contains("KN_MAX_PRIORITIES"), "{e}");
        // The same count split over two families fits.
        let half: Vec<String> = (0..KN_MAX_PRIORITIES)
            .map(|p| {
                format!("{{ priority: {p}, lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.{p}, port_value: 80 }} }} }} }}, {{ endpoint: {{ address: {{ socket_address: {{ address: 'fd00::{p}', port_value: 80 }} }} }} }}] }}")
            })
            .collect();
        let c = compile(&static_cluster(&half.join(", ")), None);
        assert_eq!(c.levels_v4.len(), KN_MAX_PRIORITIES);
        assert_eq!(c.levels_v6.len(), KN_MAX_PRIORITIES);
    }

    fn lb_endpoint(addr: &str, weight: u32) -> LbEndpoint {
        LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: addr.into(),
                        port_specifier: Some(PortSpecifier::PortValue(80)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            load_balancing_weight: Some(UInt32Value { value: weight }),
            ..Default::default()
        }
    }

    fn cla_with(lb_endpoints: Vec<LbEndpoint>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "big".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_level_must_fit_the_kernel() {
        let e = compile_load_assignment(&cla_with(vec![
            lb_endpoint("10.0.0.1", u32::MAX),
            lb_endpoint("10.0.0.2", 1),
        ]))
        .unwrap_err();
        assert_eq!(e.field, "endpoints");
        assert!(e.message.contains("4294967296"), "{e}");

        let many = (0..=KN_MAX_ENDPOINTS_PER_LEVEL)
            .map(|i| {
                let [_, a, b, c] = u32::try_from(i).unwrap().to_be_bytes();
                lb_endpoint(&format!("10.{a}.{b}.{c}"), 1)
            })
            .collect();
        let e = compile_load_assignment(&cla_with(many)).unwrap_err();
        assert_eq!(e.kind, ResourceKind::ClusterLoadAssignment);
        assert!(e.message.contains("KN_MAX_ENDPOINTS_PER_LEVEL"), "{e}");
    }
}
