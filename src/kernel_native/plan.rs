//! The compiled form of a kernel-native configuration: what the compiler
//! produces from Envoy resources and what the writer turns into map records.
//!
//! These types are semantic (names, not map indices); the writer lays them out
//! as the C records of `include/kernel_native.h`. Everything here is
//! serializable because it *is* the `/debug/config_dump/kernel-native` view.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

/// Address family of a listener key, a chain match or an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    V4,
    V6,
}

/// Where a listener is reached: the key of the `kn_listeners` outer map.
/// The wildcard listener of a port has the unspecified address (0.0.0.0 or ::).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ListenerKey {
    pub addr: IpAddr,
    pub port: u16,
}

/// The whole compiled configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// One entry per address a listener is reachable on (its `address` and its
    /// `additional_addresses`); several keys may carry equal listeners.
    pub listeners: BTreeMap<ListenerKey, CompiledListener>,
    /// Clusters that can be routed to, by name, with their endpoints.
    pub clusters: BTreeMap<String, CompiledCluster>,
    /// HTTP route configurations (executed only by the enhanced kernel).
    pub route_configs: BTreeMap<String, CompiledRouteConfig>,
    /// DNS clusters with hostnames the resolver has no answer for yet. A
    /// writer that finds such a cluster already in the maps (written by an
    /// earlier daemon) keeps it until the answers come, rather than emptying it.
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub awaiting_dns: std::collections::BTreeSet<String>,
}

/// What changes between two plans: `Some` adds or replaces an entry, `None`
/// removes it. Built by the state from what changed, so its size follows
/// the update, not the plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanDelta {
    pub listeners: BTreeMap<ListenerKey, Option<CompiledListener>>,
    pub clusters: BTreeMap<String, Option<CompiledCluster>>,
    pub route_configs: BTreeMap<String, Option<CompiledRouteConfig>>,
    /// `true`: the cluster joins `Plan::awaiting_dns`; `false`: it leaves.
    pub awaiting_dns: BTreeMap<String, bool>,
}

/// The plan entries an applied delta touched: what the writer must write
/// (when the plan has the entry) or delete (when it no longer does).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changed {
    pub listeners: Vec<ListenerKey>,
    pub clusters: Vec<String>,
}

impl Plan {
    /// Applies a delta in place.
    pub fn apply(&mut self, delta: PlanDelta) -> Changed {
        fn put<K: Ord + Clone, V>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) {
            match value {
                Some(v) => {
                    map.insert(key, v);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        let mut changed = Changed::default();
        for (key, value) in delta.listeners {
            changed.listeners.push(key);
            put(&mut self.listeners, key, value);
        }
        let mut clusters = std::collections::BTreeSet::new();
        for (name, value) in delta.clusters {
            clusters.insert(name.clone());
            put(&mut self.clusters, name, value);
        }
        for (name, value) in delta.route_configs {
            put(&mut self.route_configs, name, value);
        }
        for (name, awaiting) in delta.awaiting_dns {
            if awaiting {
                self.awaiting_dns.insert(name.clone());
            } else {
                self.awaiting_dns.remove(&name);
            }
            clusters.insert(name);
        }
        changed.clusters = clusters.into_iter().collect();
        changed
    }
}

/// A listener flattened for connect-time matching.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledListener {
    /// The Envoy listener's name.
    pub name: String,
    /// Ordered: the kernel takes the first entry whose prefix contains the
    /// destination. At most `KN_MAX_CHAIN_MATCHES`.
    pub matches: Vec<ChainMatch>,
    /// Used when no entry matches (Envoy's `default_filter_chain`).
    pub default_action: Option<FilterAction>,
    /// What the kernel does not act on, listed for the dump.
    pub ignored: Vec<Ignored>,
    /// Route configurations given inline in an HTTP connection manager, by
    /// the name its `FilterAction::Http` refers to; merged into
    /// `Plan::route_configs`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inline_route_configs: BTreeMap<String, CompiledRouteConfig>,
}

/// One destination-prefix entry of a listener's filter-chain table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainMatch {
    /// `None` with `prefix_len == 0`: any destination address.
    pub prefix: Option<IpAddr>,
    pub prefix_len: u8,
    /// Name of the Envoy filter chain this entry came from (for the dump).
    pub chain_name: String,
    /// `None`: the connection is left untouched (e.g. the chains that share
    /// this prefix disagree on something only visible after connect).
    pub action: Option<FilterAction>,
}

/// What the filter stage does with a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// tcp_proxy with a single `cluster`.
    TcpProxy { cluster: String },
    /// tcp_proxy with `weighted_clusters`: (cluster, weight), weights > 0,
    /// at most `KN_MAX_WEIGHTED_CLUSTERS` entries.
    WeightedClusters { clusters: Vec<(String, u32)> },
    /// HTTP connection manager: routed by `route_config` (RDS name or the
    /// inline configuration's name). Stock kernels leave it untouched.
    Http { route_config: String },
    /// Keep the original destination.
    Passthrough,
    /// A local rate limit network filter in front of the terminal filter:
    /// a new connection without a token is refused at connect() (EPERM).
    RateLimited {
        limit: LocalRateLimit,
        then: Box<FilterAction>,
    },
}

impl FilterAction {
    /// The terminal filter's action, under any policing filters.
    pub fn terminal(&self) -> &FilterAction {
        match self {
            FilterAction::RateLimited { then, .. } => then.terminal(),
            other => other,
        }
    }
}

/// `envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit`:
/// one token bucket per client network namespace and filter chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    /// The bucket starts full; at most this many tokens.
    pub max_tokens: u32,
    /// Tokens added every `fill_interval_ns` (Envoy's default 1).
    pub tokens_per_fill: u32,
    pub fill_interval_ns: u64,
}

/// A cluster ready for the kernel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledCluster {
    pub lb_policy: LbPolicy,
    /// Per family, the priority levels that have at least one endpoint, lowest
    /// Envoy priority first (at most `KN_MAX_PRIORITIES` per family).
    pub levels_v4: Vec<PriorityLevel>,
    pub levels_v6: Vec<PriorityLevel>,
    /// Set for clusters that keep the original destination (ORIGINAL_DST).
    pub passthrough: bool,
    /// `circuit_breakers.thresholds` of the DEFAULT priority, enforced per
    /// client network namespace; `None`: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakers>,
    /// `outlier_detection` on connect failures; `None`: no ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    pub ignored: Vec<Ignored>,
}

/// Ejection of endpoints whose connects fail (the only failure seen at L4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierDetection {
    /// Consecutive failed connects that eject an endpoint.
    pub consecutive_failures: u16,
    /// An ejection lasts this × the times the endpoint was ejected.
    pub base_ejection_ms: u32,
    pub max_ejection_percent: u32,
    /// Endpoints that may be ejected at once: `max_ejection_percent` of the
    /// cluster's endpoints, at least one (as Envoy), at most `KN_MAX_EJECTED`.
    pub max_ejected: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CircuitBreakers {
    /// Connections (connecting or established, until closed) one client
    /// netns may hold to the cluster; the next connect() fails with EPERM.
    pub max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    RoundRobin,
    Random,
    /// Fewest active connections among `choice_count` random picks.
    LeastRequest {
        choice_count: u32,
    },
    /// Consistent hashing on the client's network namespace (see
    /// [`HashTable`]): `table_size` slots per priority level, a prime.
    Maglev {
        table_size: u32,
    },
    /// A hash ring of between `minimum_ring_size` and `maximum_ring_size`
    /// points in all (Envoy's rule), sampled into a lookup table of
    /// `minimum_ring_size` slots.
    RingHash {
        minimum_ring_size: u32,
        maximum_ring_size: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityLevel {
    /// The Envoy priority these endpoints came from.
    pub priority: u32,
    /// Non-empty; every weight > 0.
    pub endpoints: Vec<Endpoint>,
    /// MAGLEV / RING_HASH: the level's lookup table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_table: Option<HashTable>,
}

/// A consistent-hash lookup table: slot → position of an endpoint in its
/// level. The kernel reads slot `mix64(netns cookie) % len`. Dumped as a
/// summary (size and first slots), not slot by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTable {
    pub slots: Vec<u32>,
    /// RING_HASH: the points of the ring the table was sampled from.
    pub ring_points: Option<u64>,
}

/// Slots shown in dumps.
pub const HASH_TABLE_SHOWN: usize = 16;

impl Serialize for HashTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("HashTable", 3)?;
        st.serialize_field("size", &self.slots.len())?;
        if let Some(points) = self.ring_points {
            st.serialize_field("ring_points", &points)?;
        }
        st.serialize_field(
            "first_slots",
            &self.slots[..self.slots.len().min(HASH_TABLE_SHOWN)],
        )?;
        st.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// An HTTP route configuration, flattened for the dump (and the L7 stage).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledRouteConfig {
    pub virtual_hosts: Vec<CompiledVirtualHost>,
    pub ignored: Vec<Ignored>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledVirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<CompiledRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompiledRoute {
    pub name: String,
    pub path_match: PathMatch,
    /// (header name, exact value) pairs that must all be present.
    pub headers: Vec<(String, String)>,
    pub action: RouteAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Cluster(String),
    WeightedClusters(Vec<(String, u32)>),
    /// Redirects, direct responses and other non-forwarding actions.
    NonForwarding(String),
}

/// Something in a resource that does not change the connect-time decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// Where it was, e.g. `filter_chains[0].transport_socket`.
    pub field: String,
    /// Why it does not matter here, e.g. "mTLS is not done by the kernel".
    pub reason: String,
}
