//! A filter chain's network filters → the one [`FilterAction`] the kernel
//! takes for it.
//!
//! Envoy runs the filters in order and the last one (the terminal filter)
//! decides where the connection goes; the others observe or police it
//! (stats, metadata exchange, RBAC). At connect() the kernel can only act as
//! the terminal filter would, so the others are listed as ignored, and a
//! terminal filter it cannot imitate leaves the connection untouched
//! (`None`) rather than sending it somewhere Envoy would not.

use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as EnvoyLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::field::{check_name, ignored, ignored_within, join, FieldError, FieldResult};
use super::route::compile_route_config_body;
use crate::kernel_native::limits::KN_MAX_WEIGHTED_CLUSTERS;
use crate::kernel_native::plan::{CompiledRouteConfig, FilterAction, Ignored, LocalRateLimit};

const TYPED_STRUCT: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];
const NETWORK_RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// What a filter chain does, as far as connect() can tell.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChainOutcome {
    /// `None`: leave the connection untouched.
    pub action: Option<FilterAction>,
    /// Paths relative to the chain (`filters[0]`, `transport_socket`).
    pub ignored: Vec<Ignored>,
    /// An HTTP connection manager's inline `route_config`, by the name the
    /// action refers to.
    pub inline_route_config: Option<(String, CompiledRouteConfig)>,
}

impl ChainOutcome {
    fn within_typed_config(mut self) -> Self {
        self.ignored = ignored_within("typed_config", self.ignored).collect();
        self
    }
}

/// Compiles a chain's filters. `fallback_route_name` names an inline route
/// configuration that has no name of its own.
pub(crate) fn compile_chain(
    chain: &FilterChain,
    fallback_route_name: &str,
) -> FieldResult<ChainOutcome> {
    let mut out = ChainOutcome {
        action: None,
        ignored: Vec::new(),
        inline_route_config: None,
    };
    if chain.transport_socket.is_some() {
        out.ignored.push(ignored(
            "transport_socket",
            "TLS is not terminated by the kernel: the connection is redirected as it is",
        ));
    }
    let Some((last, observers)) = chain.filters.split_last() else {
        out.ignored.push(ignored(
            "filters",
            "no filters: nothing routes this chain's connections, they are left untouched",
        ));
        return Ok(out);
    };
    let mut rate_limit: Option<LocalRateLimit> = None;
    for (k, f) in observers.iter().enumerate() {
        let field = format!("filters[{k}]");
        let type_name = typed_config(f).map(|any| message_name(&any.type_url));
        if matches!(type_name, Some(t) if is_terminal(t)) {
            return Err(FieldError::new(
                join(&field, "typed_config"),
                format!(
                    "{} is a terminal filter and must be the last filter",
                    f.name
                ),
            ));
        }
        if type_name == Some(EnvoyLocalRateLimit::full_name().as_str()) {
            let Some(any) = typed_config(f) else {
                continue;
            };
            let within = join(&field, "typed_config");
            let config = EnvoyLocalRateLimit::decode(any.value.as_slice())
                .map_err(|e| FieldError::new(&within, format!("malformed LocalRateLimit: {e}")))?;
            let (limit, notes) = local_rate_limit(&config).map_err(|e| e.within(&within))?;
            out.ignored.extend(ignored_within(&within, notes));
            match (limit, &rate_limit) {
                (Some(l), None) => rate_limit = Some(l),
                (Some(_), Some(_)) => out.ignored.push(ignored(
                    &field,
                    "a second local rate limit in one chain is not enforced: \
                     only the first one is",
                )),
                (None, _) => {}
            }
            continue;
        }
        let reason = observer_reason(f).map_err(|e| e.within(&field))?;
        out.ignored.push(ignored(&field, reason));
    }
    let field = format!("filters[{}]", observers.len());
    let terminal = compile_terminal(last, fallback_route_name).map_err(|e| e.within(&field))?;
    out.action = match (terminal.action, rate_limit) {
        (Some(action), Some(limit)) => Some(FilterAction::RateLimited {
            limit,
            then: Box::new(action),
        }),
        (action, _) => action,
    };
    out.ignored.extend(ignored_within(&field, terminal.ignored));
    out.inline_route_config = terminal.inline_route_config;
    Ok(out)
}

fn typed_config(f: &Filter) -> Option<&Any> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    }
}

/// The message name of a type URL (what follows the last `/`).
fn message_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

fn is_terminal(type_name: &str) -> bool {
    type_name == TcpProxy::full_name() || type_name == HttpConnectionManager::full_name()
}

/// Why a non-terminal filter does not matter at connect().
fn observer_reason(f: &Filter) -> FieldResult<String> {
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Ok(format!(
                "{}: configured through extension config discovery, which is not fetched; \
                 it does not choose the destination",
                f.name
            ))
        }
        None => return Ok(format!("{}: does not choose the destination", f.name)),
    };
    let type_name = message_name(&any.type_url);
    if TYPED_STRUCT.contains(&type_name) {
        let inner = decode_typed_struct_type(any)?;
        return Ok(format!(
            "{} (TypedStruct-wrapped {inner}): not run by the kernel; it does not choose the destination",
            f.name
        ));
    }
    if type_name == NETWORK_RBAC {
        return Ok(format!(
            "{}: network RBAC is not enforced in kernel-native mode",
            f.name
        ));
    }
    Ok(format!(
        "{} ({type_name}): not run by the kernel; it does not choose the destination",
        f.name
    ))
}

/// The `type_url` of a TypedStruct: enough to say what it wraps.
fn decode_typed_struct_type(any: &Any) -> FieldResult<String> {
    // Field 1 of both TypedStruct flavours; the Struct value is skipped.
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypedStructHead {
        #[prost(string, tag = "1")]
        type_url: String,
    }
    TypedStructHead::decode(any.value.as_slice())
        .map(|t| t.type_url)
        .map_err(|e| FieldError::new("typed_config", format!("malformed TypedStruct: {e}")))
}

/// Paths relative to the filter.
fn compile_terminal(f: &Filter, fallback_route_name: &str) -> FieldResult<ChainOutcome> {
    let untouched = |reason: String| ChainOutcome {
        action: None,
        ignored: vec![ignored("", reason)],
        inline_route_config: None,
    };
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        Some(filter::ConfigType::ConfigDiscovery(_)) => {
            return Ok(untouched(format!(
                "terminal filter {} is configured through extension config discovery, \
                 which is not fetched: connections are left untouched",
                f.name
            )))
        }
        None => {
            return Ok(untouched(format!(
                "terminal filter {} has no typed_config: connections are left untouched",
                f.name
            )))
        }
    };
    let type_name = message_name(&any.type_url);
    if type_name == TcpProxy::full_name() {
        let proxy = TcpProxy::decode(any.value.as_slice())
            .map_err(|e| FieldError::new("typed_config", format!("malformed TcpProxy: {e}")))?;
        return tcp_proxy(&proxy)
            .map(ChainOutcome::within_typed_config)
            .map_err(|e| e.within("typed_config"));
    }
    if type_name == HttpConnectionManager::full_name() {
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).map_err(|e| {
            FieldError::new(
                "typed_config",
                format!("malformed HttpConnectionManager: {e}"),
            )
        })?;
        return http_connection_manager(&hcm, fallback_route_name)
            .map(ChainOutcome::within_typed_config)
            .map_err(|e| e.within("typed_config"));
    }
    Ok(untouched(format!(
        "terminal filter {} ({type_name}) cannot be imitated at connect(): \
         connections are left untouched",
        f.name
    )))
}

/// Envoy requires `fill_interval` of at least 50 ms.
const MIN_FILL_INTERVAL_NS: u64 = 50_000_000;

/// Paths relative to the LocalRateLimit. `None`: disabled (runtime flag off).
fn local_rate_limit(
    config: &EnvoyLocalRateLimit,
) -> FieldResult<(Option<LocalRateLimit>, Vec<Ignored>)> {
    let mut notes = Vec::new();
    let bucket = config
        .token_bucket
        .as_ref()
        .ok_or_else(|| FieldError::new("token_bucket", "required"))?;
    if bucket.max_tokens == 0 {
        return Err(FieldError::new(
            "token_bucket.max_tokens",
            "must be greater than 0",
        ));
    }
    let tokens_per_fill = bucket.tokens_per_fill.map_or(1, |v| v.value);
    if tokens_per_fill == 0 {
        return Err(FieldError::new(
            "token_bucket.tokens_per_fill",
            "must be greater than 0",
        ));
    }
    let interval = bucket
        .fill_interval
        .as_ref()
        .ok_or_else(|| FieldError::new("token_bucket.fill_interval", "required"))?;
    let fill_interval_ns = u64::try_from(interval.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000_000))
        .and_then(|ns| ns.checked_add(u64::try_from(interval.nanos).ok()?))
        .ok_or_else(|| FieldError::new("token_bucket.fill_interval", "out of range"))?;
    if fill_interval_ns < MIN_FILL_INTERVAL_NS {
        return Err(FieldError::new(
            "token_bucket.fill_interval",
            "must be at least 50ms",
        ));
    }
    if !config.share_key.is_empty() {
        notes.push(ignored(
            "share_key",
            "buckets are never shared: each client netns and filter chain has its own",
        ));
    }
    if let Some(flag) = &config.runtime_enabled {
        notes.push(ignored(
            "runtime_enabled.runtime_key",
            "runtime is not read: the default_value decides",
        ));
        if !flag.default_value.as_ref().is_some_and(|v| v.value) {
            return Ok((None, notes));
        }
    }
    Ok((
        Some(LocalRateLimit {
            stat_prefix: config.stat_prefix.clone(),
            max_tokens: bucket.max_tokens,
            tokens_per_fill,
            fill_interval_ns,
        }),
        notes,
    ))
}

/// Paths relative to the TcpProxy.
fn tcp_proxy(proxy: &TcpProxy) -> FieldResult<ChainOutcome> {
    let mut ignored_list = Vec::new();
    // Reasons the kernel cannot do what Envoy would: the connection is then
    // left alone rather than sent to an endpoint Envoy would not pick.
    let mut cannot = Vec::new();
    if proxy.tunneling_config.is_some() {
        cannot.push(ignored(
            "tunneling_config",
            "tunneling over HTTP CONNECT is not done by the kernel: connections are left untouched",
        ));
    }
    if proxy.metadata_match.is_some() {
        cannot.push(ignored(
            "metadata_match",
            "endpoint subsets (metadata_match) are not selected by the kernel: \
             connections are left untouched",
        ));
    }
    if proxy.on_demand.is_some() {
        ignored_list.push(ignored(
            "on_demand",
            "on-demand cluster discovery is not done: the cluster must be known",
        ));
    }
    if !proxy.hash_policy.is_empty() {
        ignored_list.push(ignored(
            "hash_policy",
            "hash-based load balancing is not done by the kernel",
        ));
    }
    let action = match &proxy.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => {
            check_name("cluster", name)?;
            FilterAction::TcpProxy {
                cluster: name.clone(),
            }
        }
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            let mut clusters = Vec::new();
            let mut total: u32 = 0;
            for (i, cw) in weighted.clusters.iter().enumerate() {
                let field = format!("weighted_clusters.clusters[{i}]");
                check_name(&join(&field, "name"), &cw.name)?;
                if cw.metadata_match.is_some() {
                    cannot.push(ignored(
                        join(&field, "metadata_match"),
                        "endpoint subsets (metadata_match) are not selected by the kernel: \
                         connections are left untouched",
                    ));
                }
                if cw.weight == 0 {
                    ignored_list.push(ignored(join(&field, "weight"), "weight 0: never chosen"));
                    continue;
                }
                total = total.checked_add(cw.weight).ok_or_else(|| {
                    FieldError::new(
                        join(&field, "weight"),
                        format!("the weights add up to more than {}", u32::MAX),
                    )
                })?;
                clusters.push((cw.name.clone(), cw.weight));
            }
            if clusters.is_empty() {
                return Err(FieldError::new(
                    "weighted_clusters.clusters",
                    "no cluster with a weight above 0",
                ));
            }
            if clusters.len() > KN_MAX_WEIGHTED_CLUSTERS {
                return Err(FieldError::new(
                    "weighted_clusters.clusters",
                    format!(
                        "{} clusters with a weight above 0, more than the kernel's \
                         {KN_MAX_WEIGHTED_CLUSTERS} (KN_MAX_WEIGHTED_CLUSTERS)",
                        clusters.len()
                    ),
                ));
            }
            FilterAction::WeightedClusters { clusters }
        }
        None => {
            return Err(FieldError::new(
                "cluster_specifier",
                "neither cluster nor weighted_clusters is set",
            ))
        }
    };
    let action = cannot.is_empty().then_some(action);
    ignored_list.extend(cannot);
    Ok(ChainOutcome {
        action,
        ignored: ignored_list,
        inline_route_config: None,
    })
}

/// Paths relative to the HttpConnectionManager.
fn http_connection_manager(
    hcm: &HttpConnectionManager,
    fallback_route_name: &str,
) -> FieldResult<ChainOutcome> {
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            check_name("rds.route_config_name", &rds.route_config_name)?;
            Ok(ChainOutcome {
                action: Some(FilterAction::Http {
                    route_config: rds.route_config_name.clone(),
                }),
                ignored: Vec::new(),
                inline_route_config: None,
            })
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            let name = if rc.name.is_empty() {
                fallback_route_name
            } else {
                &rc.name
            };
            check_name("route_config.name", name)?;
            let compiled = compile_route_config_body(rc).map_err(|e| e.within("route_config"))?;
            Ok(ChainOutcome {
                action: Some(FilterAction::Http {
                    route_config: name.to_string(),
                }),
                ignored: Vec::new(),
                inline_route_config: Some((name.to_string(), compiled)),
            })
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => Ok(ChainOutcome {
            action: None,
            ignored: vec![ignored(
                "scoped_routes",
                "scoped route configurations are not supported: connections are left untouched",
            )],
            inline_route_config: None,
        }),
        None => Err(FieldError::new(
            "route_specifier",
            "one of rds, route_config or scoped_routes is required",
        )),
    }
}
