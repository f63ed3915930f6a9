//! Listener → one [`CompiledListener`] per address it is reached on.
//!
//! The kernel decides at connect(): it knows the destination address and
//! port, nothing else (no SNI, no ALPN, no bytes). Envoy picks a filter chain
//! by destination port, then the longest destination prefix, then criteria
//! seen only after the handshake (server names, transport and application
//! protocols, source). So the chain table keeps Envoy's first two steps
//! exactly, and where the later criteria could change the outcome the entry
//! leaves the connection untouched instead of guessing.

use std::collections::btree_map::{BTreeMap, Entry};
use std::net::{IpAddr, Ipv4Addr};

use envoy_types::pb::envoy::config::core::v3::{socket_address::Protocol, Address, CidrRange};
use envoy_types::pb::envoy::config::listener::v3::{
    listener::ListenerSpecifier, FilterChain, FilterChainMatch, Listener,
};

use super::field::{
    ignored, ignored_within, ip_and_port, join, socket_address, FieldError, FieldResult,
};
use super::filter::{compile_chain, ChainOutcome};
use crate::kernel_native::limits::KN_MAX_CHAIN_MATCHES;
use crate::kernel_native::plan::{
    ChainMatch, CompiledListener, CompiledRouteConfig, FilterAction, Ignored, ListenerKey,
};
use crate::kernel_native::resources::{ResourceError, ResourceKind};

/// Compiles a listener into one entry per address (its `address` and its
/// `additional_addresses`).
///
/// A listener with no TCP address (UDP, an `api_listener`, an internal
/// listener) is accepted and compiles to no entries: the kernel steers TCP
/// connects only, and there is no key to hang the listener on.
pub fn compile_listener(
    l: &Listener,
) -> Result<Vec<(ListenerKey, CompiledListener)>, ResourceError> {
    let reject = |e: FieldError| e.into_resource_error(ResourceKind::Listener, &l.name);
    let mut notes = listener_notes(l);
    let keys = listener_keys(l, &mut notes).map_err(reject)?;

    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| compile_chain_entry(l, i, c))
        .collect::<FieldResult<Vec<_>>>()
        .map_err(reject)?;
    check_duplicate_matches(&l.filter_chains).map_err(reject)?;
    for (i, chain) in chains.iter().enumerate() {
        notes.extend(ignored_within(
            &format!("filter_chains[{i}]"),
            chain.outcome.ignored.clone(),
        ));
    }
    let default = match &l.default_filter_chain {
        Some(c) => {
            let outcome = compile_chain(c, &format!("{}/default_filter_chain", l.name))
                .map_err(|e| reject(e.within("default_filter_chain")))?;
            notes.extend(ignored_within(
                "default_filter_chain",
                outcome.ignored.clone(),
            ));
            Some(outcome)
        }
        None => None,
    };
    // With a matcher tree, Envoy does not use filter_chain_match at all, and
    // the tree is not compiled: nothing on this listener is steered.
    let matcher = l.filter_chain_matcher.is_some();
    let default_action = match &default {
        Some(d) if !matcher => d.action.clone(),
        _ => None,
    };
    let inline_route_configs = inline_route_configs(&chains, default.as_ref()).map_err(reject)?;

    let mut tables: BTreeMap<u16, (Vec<ChainMatch>, Vec<Ignored>)> = BTreeMap::new();
    let mut out = Vec::new();
    for key in keys {
        let (matches, port_notes) = match tables.entry(key.port) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if matcher => e.insert((Vec::new(), Vec::new())),
            Entry::Vacant(e) => {
                e.insert(chain_table(&chains, default_action.as_ref(), key.port).map_err(reject)?)
            }
        };
        let mut ignored_list = notes.clone();
        ignored_list.extend(port_notes.iter().cloned());
        out.push((
            key,
            CompiledListener {
                name: l.name.clone(),
                matches: matches.clone(),
                default_action: default_action.clone(),
                ignored: ignored_list,
                inline_route_configs: inline_route_configs.clone(),
            },
        ));
    }
    Ok(out)
}

/// The inline route configurations of the chains, by name. Two different
/// configurations under one name would make one chain route by the other's
/// rules, so that is an error.
fn inline_route_configs(
    chains: &[ChainEntry],
    default: Option<&ChainOutcome>,
) -> FieldResult<BTreeMap<String, CompiledRouteConfig>> {
    let mut configs = BTreeMap::new();
    let all = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("filter_chains[{i}]"), &c.outcome))
        .chain(default.map(|d| ("default_filter_chain".to_string(), d)));
    for (field, outcome) in all {
        let Some((name, config)) = &outcome.inline_route_config else {
            continue;
        };
        match configs.get(name) {
            Some(existing) if existing != config => {
                return Err(FieldError::new(
                    field,
                    format!(
                        "another chain has a different inline route configuration named {name:?}"
                    ),
                ))
            }
            Some(_) => {}
            None => {
                configs.insert(name.clone(), config.clone());
            }
        }
    }
    Ok(configs)
}

/// Listener settings that do not change the connect-time decision.
fn listener_notes(l: &Listener) -> Vec<Ignored> {
    let mut notes = Vec::new();
    let socket_only = "a setting of Envoy's own listening socket";
    let settings = [
        (
            "bind_to_port",
            l.bind_to_port.is_some(),
            "connects to the address are matched whether or not Envoy binds it",
        ),
        (
            "use_original_dst",
            l.use_original_dst.is_some(),
            "the kernel sees the original destination of every connect",
        ),
        (
            "traffic_direction",
            l.traffic_direction != 0,
            "informational: the kernel matches by address",
        ),
        ("transparent", l.transparent.is_some(), socket_only),
        ("freebind", l.freebind.is_some(), socket_only),
        ("socket_options", !l.socket_options.is_empty(), socket_only),
        (
            "api_listener",
            l.api_listener.is_some(),
            "API listeners are for Envoy's own clients",
        ),
        (
            "filter_chain_matcher",
            l.filter_chain_matcher.is_some(),
            "the matcher tree is not compiled: connections to this listener are left untouched",
        ),
    ];
    for (field, set, reason) in settings {
        if set {
            notes.push(ignored(field, reason));
        }
    }
    for (i, f) in l.listener_filters.iter().enumerate() {
        notes.push(ignored(
            format!("listener_filters[{i}]"),
            format!(
                "{}: listener filters do not run in the kernel (only the destination is known at connect)",
                f.name
            ),
        ));
    }
    notes
}

/// The keys the listener is reached on, in order, without duplicates.
fn listener_keys(l: &Listener, notes: &mut Vec<Ignored>) -> FieldResult<Vec<ListenerKey>> {
    let mut keys = Vec::new();
    match &l.address {
        Some(a) => add_keys(a, "address", &mut keys, notes)?,
        None if l.api_listener.is_some() => return Ok(keys),
        None if matches!(
            l.listener_specifier,
            Some(ListenerSpecifier::InternalListener(_))
        ) =>
        {
            return Ok(keys)
        }
        None => return Err(FieldError::new("address", "required")),
    }
    for (i, extra) in l.additional_addresses.iter().enumerate() {
        let field = format!("additional_addresses[{i}].address");
        let a = extra
            .address
            .as_ref()
            .ok_or_else(|| FieldError::new(&field, "required"))?;
        add_keys(a, &field, &mut keys, notes)?;
    }
    Ok(keys)
}

fn add_keys(
    a: &Address,
    field: &str,
    keys: &mut Vec<ListenerKey>,
    notes: &mut Vec<Ignored>,
) -> FieldResult<()> {
    let sa = socket_address(a).map_err(|e| e.within(field))?;
    let sa_field = join(field, "socket_address");
    if sa.protocol == Protocol::Udp as i32 {
        notes.push(ignored(
            join(&sa_field, "protocol"),
            "UDP: the kernel steers TCP connects only; no key for this address",
        ));
        return Ok(());
    }
    let (addr, port) = ip_and_port(sa).map_err(|e| e.within(&sa_field))?;
    let key = ListenerKey { addr, port };
    if keys.contains(&key) {
        return Err(FieldError::new(
            field,
            format!("{} is listed twice", show_key(&key)),
        ));
    }
    keys.push(key);
    // `[::]` with ipv4_compat also accepts IPv4 (and a v4-mapped address its
    // IPv4 form): the kernel sees those connects as IPv4.
    if let (true, IpAddr::V6(v6)) = (sa.ipv4_compat, addr) {
        let v4 = if v6.is_unspecified() {
            Some(Ipv4Addr::UNSPECIFIED)
        } else {
            v6.to_ipv4_mapped()
        };
        if let Some(v4) = v4 {
            let key = ListenerKey {
                addr: IpAddr::V4(v4),
                port,
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(())
}

pub(crate) fn show_key(key: &ListenerKey) -> String {
    match key.addr {
        IpAddr::V4(a) => format!("{a}:{}", key.port),
        IpAddr::V6(a) => format!("[{a}]:{}", key.port),
    }
}

/// A masked destination prefix and its length; `None` = any destination.
type Prefix = Option<(IpAddr, u8)>;

/// A filter chain with what the table needs from it.
struct ChainEntry {
    label: String,
    destination_port: Option<u32>,
    /// Masked destination prefixes; empty = any destination.
    prefixes: Vec<(IpAddr, u8)>,
    /// The set criteria that connect() cannot see.
    hidden_criteria: Vec<&'static str>,
    outcome: ChainOutcome,
}

fn compile_chain_entry(l: &Listener, i: usize, c: &FilterChain) -> FieldResult<ChainEntry> {
    let field = format!("filter_chains[{i}]");
    let outcome = compile_chain(c, &format!("{}/{i}", l.name)).map_err(|e| e.within(&field))?;
    let m = c.filter_chain_match.clone().unwrap_or_default();
    let mut prefixes = Vec::new();
    for (j, range) in m.prefix_ranges.iter().enumerate() {
        let p = prefix(range)
            .map_err(|e| e.within(&format!("{field}.filter_chain_match.prefix_ranges[{j}]")))?;
        if !prefixes.contains(&p) {
            prefixes.push(p);
        }
    }
    Ok(ChainEntry {
        label: if c.name.is_empty() {
            field
        } else {
            c.name.clone()
        },
        destination_port: m.destination_port.map(|p| p.value),
        prefixes,
        hidden_criteria: hidden_criteria(&m),
        outcome,
    })
}

/// A CIDR range, validated and masked to its length (paths relative to it).
fn prefix(range: &CidrRange) -> FieldResult<(IpAddr, u8)> {
    let addr: IpAddr = range.address_prefix.parse().map_err(|_| {
        FieldError::new(
            "address_prefix",
            format!("{:?} is not an IPv4 or IPv6 address", range.address_prefix),
        )
    })?;
    let len = range.prefix_len.as_ref().map_or(0, |l| l.value);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| {
            FieldError::new(
                "prefix_len",
                format!(
                    "{len} is longer than an {} address ({max} bits)",
                    family(addr)
                ),
            )
        })?;
    Ok((mask(addr, len), len))
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// Criteria Envoy evaluates after the destination, from data a connect()
/// does not have.
fn hidden_criteria(m: &FilterChainMatch) -> Vec<&'static str> {
    [
        ("server_names", !m.server_names.is_empty()),
        ("transport_protocol", !m.transport_protocol.is_empty()),
        ("application_protocols", !m.application_protocols.is_empty()),
        (
            "direct_source_prefix_ranges",
            !m.direct_source_prefix_ranges.is_empty(),
        ),
        ("source_type", m.source_type != 0),
        ("source_prefix_ranges", !m.source_prefix_ranges.is_empty()),
        ("source_ports", !m.source_ports.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

/// Envoy refuses a listener whose chains have the same match; so does this
/// compiler, since nothing could tell such chains apart.
fn check_duplicate_matches(chains: &[FilterChain]) -> FieldResult<()> {
    let matches: Vec<FilterChainMatch> = chains
        .iter()
        .map(|c| c.filter_chain_match.clone().unwrap_or_default())
        .collect();
    for (j, m) in matches.iter().enumerate() {
        if let Some(i) = matches[..j].iter().position(|earlier| earlier == m) {
            return Err(FieldError::new(
                format!("filter_chains[{j}].filter_chain_match"),
                format!("same match as filter_chains[{i}]"),
            ));
        }
    }
    Ok(())
}

/// The ordered match table for connects to `port`, with notes on what it
/// leaves out.
fn chain_table(
    chains: &[ChainEntry],
    default_action: Option<&FilterAction>,
    port: u16,
) -> FieldResult<(Vec<ChainMatch>, Vec<Ignored>)> {
    let mut notes = Vec::new();
    // Step 1, destination port: chains naming this port, if any, hide the
    // others (Envoy does not fall back to port-less chains; an unmatched
    // connect goes to the default chain).
    let port_specific = chains
        .iter()
        .any(|c| c.destination_port == Some(u32::from(port)));
    let mut selected = Vec::new();
    for (i, c) in chains.iter().enumerate() {
        match c.destination_port {
            Some(p) if p == u32::from(port) => selected.push(i),
            Some(p) => notes.push(ignored(
                format!("filter_chains[{i}].filter_chain_match.destination_port"),
                format!("port {p}: unreachable through port {port}"),
            )),
            None if port_specific => notes.push(ignored(
                format!("filter_chains[{i}]"),
                format!("chains with destination_port {port} take precedence: unreachable through port {port}"),
            )),
            None => selected.push(i),
        }
    }

    // Step 2, destination prefix: one group per distinct prefix, in chain order.
    let mut groups: Vec<(Prefix, Vec<usize>)> = Vec::new();
    let mut add = |prefix: Prefix, chain: usize| match groups.iter_mut().find(|(p, _)| *p == prefix)
    {
        Some((_, members)) => {
            if !members.contains(&chain) {
                members.push(chain);
            }
        }
        None => groups.push((prefix, vec![chain])),
    };
    for &i in &selected {
        if chains[i].prefixes.is_empty() {
            add(None, i);
        }
        for &p in &chains[i].prefixes {
            add(Some(p), i);
        }
    }
    // Envoy treats a chain without prefix_ranges as 0.0.0.0/0 plus ::/0, so
    // it competes with explicit /0 chains of either family.
    let any: Vec<usize> = groups
        .iter()
        .find(|(p, _)| p.is_none())
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    for (p, members) in groups.iter_mut() {
        if matches!(p, Some((_, 0))) {
            for &i in &any {
                if !members.contains(&i) {
                    members.push(i);
                }
            }
        }
    }

    let mut table: Vec<ChainMatch> = groups
        .iter()
        .map(|(p, members)| {
            let (action, note) = group_action(chains, members, default_action);
            if let Some(reason) = note {
                notes.push(ignored(
                    "filter_chains",
                    format!(
                        "{} (destination {}): {reason}",
                        labels(chains, members),
                        show_prefix(p)
                    ),
                ));
            }
            ChainMatch {
                prefix: p.map(|(a, _)| a),
                prefix_len: p.map_or(0, |(_, l)| l),
                chain_name: labels(chains, members),
                action,
            }
        })
        .collect();
    // First match wins in the kernel: longest prefix first, and at equal
    // length a family-specific /0 before "any" (it absorbed the "any" chains).
    table.sort_by_key(|m| (std::cmp::Reverse(m.prefix_len), m.prefix.is_none()));
    if table.len() > KN_MAX_CHAIN_MATCHES {
        return Err(FieldError::new(
            "filter_chains",
            format!(
                "{} destination-prefix entries for port {port}, more than the kernel's \
                 {KN_MAX_CHAIN_MATCHES} (KN_MAX_CHAIN_MATCHES)",
                table.len()
            ),
        ));
    }
    Ok((table, notes))
}

/// The action for a prefix group, and why there is none when the chains (or
/// the default chain Envoy falls back to) could disagree.
fn group_action(
    chains: &[ChainEntry],
    members: &[usize],
    default_action: Option<&FilterAction>,
) -> (Option<FilterAction>, Option<String>) {
    let hidden: Vec<&str> = {
        let mut h: Vec<&str> = members
            .iter()
            .flat_map(|&i| chains[i].hidden_criteria.iter().copied())
            .collect();
        h.sort_unstable();
        h.dedup();
        h
    };
    let actions: Vec<Option<&FilterAction>> = members
        .iter()
        .map(|&i| chains[i].outcome.action.as_ref())
        .collect();
    let first = actions.first().copied().flatten();
    if actions.iter().any(|a| *a != first) {
        let why = if hidden.is_empty() {
            "the chains overlap and lead to different places".to_string()
        } else {
            format!(
                "the chains lead to different places and the choice depends on {} \
                 (not known at connect)",
                hidden.join(", ")
            )
        };
        return (None, Some(format!("{why}: left untouched")));
    }
    // If every chain may decline the connection, Envoy falls back to the
    // default chain (or closes the connection without one).
    if !hidden.is_empty() && first.is_some() && default_action != first {
        return (
            None,
            Some(format!(
                "when {} does not match, Envoy uses the default filter chain (or closes \
                 the connection), which does something else: left untouched",
                hidden.join(", ")
            )),
        );
    }
    (first.cloned(), None)
}

fn labels(chains: &[ChainEntry], members: &[usize]) -> String {
    members
        .iter()
        .map(|&i| chains[i].label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn show_prefix(p: &Prefix) -> String {
    match p {
        Some((a, l)) => format!("{a}/{l}"),
        None => "any".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::kernel_native::compiler::testutil::{fields, first_in_file, from_yaml};
    use crate::kernel_native::limits::KN_MAX_WEIGHTED_CLUSTERS;

    fn compile(yaml: &str) -> Vec<(ListenerKey, CompiledListener)> {
        compile_listener(&from_yaml(yaml)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn only(yaml: &str) -> CompiledListener {
        let mut entries = compile(yaml);
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.remove(0).1
    }

    fn rejected(yaml: &str) -> ResourceError {
        compile_listener(&from_yaml(yaml)).expect_err("listener must be rejected")
    }

    fn tcp(cluster: &str) -> Option<FilterAction> {
        Some(FilterAction::TcpProxy {
            cluster: cluster.into(),
        })
    }

    fn key(addr: &str, port: u16) -> ListenerKey {
        ListenerKey {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    /// A chain whose only filter is a tcp_proxy to `cluster`, as YAML flow.
    fn proxy_to(cluster: &str) -> String {
        format!(
            r#"[{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: "{cluster}" }} }}]"#
        )
    }

    fn rate_limited(yaml_bucket: &str) -> String {
        format!(
            r#"
name: rl
address: {{ socket_address: {{ address: 10.96.0.10, port_value: 9000 }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.local_ratelimit
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
      stat_prefix: rl
      token_bucket: {yaml_bucket}
  - {{ name: envoy.filters.network.tcp_proxy, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c }} }}
"#
        )
    }

    #[test]
    fn a_local_rate_limit_before_tcp_proxy_is_compiled_into_the_action() {
        let l = only(&rate_limited(
            "{ max_tokens: 10, tokens_per_fill: 5, fill_interval: 1s }",
        ));
        assert_eq!(
            l.matches[0].action,
            Some(FilterAction::RateLimited {
                limit: crate::kernel_native::plan::LocalRateLimit {
                    stat_prefix: "rl".into(),
                    max_tokens: 10,
                    tokens_per_fill: 5,
                    fill_interval_ns: 1_000_000_000,
                },
                then: Box::new(tcp("c").unwrap()),
            })
        );
        assert!(l.ignored.is_empty(), "{:?}", l.ignored);
        // tokens_per_fill defaults to 1.
        let l = only(&rate_limited("{ max_tokens: 3, fill_interval: 0.5s }"));
        match &l.matches[0].action {
            Some(FilterAction::RateLimited { limit, .. }) => {
                assert_eq!(
                    (limit.tokens_per_fill, limit.fill_interval_ns),
                    (1, 500_000_000)
                )
            }
            other => panic!("{other:?}"),
        }
        for (bucket, field) in [
            ("{ max_tokens: 0, fill_interval: 1s }", "max_tokens"),
            ("{ max_tokens: 1, fill_interval: 0.01s }", "fill_interval"),
            (
                "{ max_tokens: 1, tokens_per_fill: 0, fill_interval: 1s }",
                "tokens_per_fill",
            ),
            ("{ max_tokens: 1 }", "fill_interval"),
        ] {
            let e = rejected(&rate_limited(bucket));
            assert_eq!(
                e.field,
                format!("filter_chains[0].filters[0].typed_config.token_bucket.{field}"),
                "{bucket}"
            );
        }
    }

    #[test]
    fn a_tcp_proxy_listener_compiles_to_one_any_entry() {
        let l = only(&format!(
            r#"
name: tcp
address: {{ socket_address: {{ address: 10.96.0.10, port_value: 9000 }} }}
filter_chains:
- filters: {}
"#,
            proxy_to("backend")
        ));
        assert_eq!(l.name, "tcp");
        assert_eq!(
            l.matches,
            [ChainMatch {
                prefix: None,
                prefix_len: 0,
                chain_name: "filter_chains[0]".into(),
                action: tcp("backend"),
            }]
        );
        assert_eq!(l.default_action, None);
        assert!(l.ignored.is_empty(), "{:?}", l.ignored);
    }

    #[test]
    fn every_address_is_a_key() {
        let entries = compile(&format!(
            r#"
name: multi
address: {{ socket_address: {{ address: "::", port_value: 80, ipv4_compat: true }} }}
additional_addresses:
- address: {{ socket_address: {{ address: 10.0.0.1, port_value: 8080 }} }}
filter_chains:
- filters: {}
"#,
            proxy_to("c")
        ));
        let keys: Vec<ListenerKey> = entries.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [key("::", 80), key("0.0.0.0", 80), key("10.0.0.1", 8080)]
        );
        assert!(entries.iter().all(|(_, l)| l.matches[0].action == tcp("c")));
    }

    #[test]
    fn addresses_the_kernel_cannot_match_are_rejected() {
        let cases = [
            (
                "address: { pipe: { path: /tmp/sock } }",
                "address.pipe",
            ),
            (
                "address: { envoy_internal_address: { server_listener_name: x } }",
                "address.envoy_internal_address",
            ),
            (
                "address: { socket_address: { address: backend.local, port_value: 80 } }",
                "address.socket_address.address",
            ),
            (
                "address: { socket_address: { address: 10.0.0.1, port_value: 0 } }",
                "address.socket_address.port_value",
            ),
            (
                "address: { socket_address: { address: 10.0.0.1, port_value: 70000 } }",
                "address.socket_address.port_value",
            ),
            (
                "address: { socket_address: { address: 10.0.0.1, named_port: http } }",
                "address.socket_address.named_port",
            ),
            ("stat_prefix: x", "address"),
            (
                "address: { socket_address: { address: 10.0.0.1, port_value: 80 } }\n\
                 additional_addresses: [{ address: { socket_address: { address: 10.0.0.1, port_value: 80 } } }]",
                "additional_addresses[0].address",
            ),
        ];
        for (yaml, field) in cases {
            let e = rejected(&format!("name: bad\n{yaml}"));
            assert_eq!(e.field, field, "{yaml}: {e}");
            assert_eq!(e.kind, ResourceKind::Listener);
            assert_eq!(e.name, "bad");
        }
    }

    #[test]
    fn udp_listeners_compile_to_no_keys() {
        let entries = compile(
            "name: dns\naddress: { socket_address: { protocol: UDP, address: 0.0.0.0, port_value: 53 } }",
        );
        assert!(entries.is_empty());
    }

    #[test]
    fn chains_for_the_listener_port_hide_the_others() {
        let l = only(&format!(
            r#"
name: ports
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 15006 }} }}
filter_chains:
- name: other-port
  filter_chain_match: {{ destination_port: 8080 }}
  filters: {a}
- name: no-port
  filters: {b}
- name: this-port
  filter_chain_match: {{ destination_port: 15006 }}
  filters: {c}
"#,
            a = proxy_to("a"),
            b = proxy_to("b"),
            c = proxy_to("c")
        ));
        assert_eq!(l.matches.len(), 1);
        assert_eq!(l.matches[0].chain_name, "this-port");
        assert_eq!(l.matches[0].action, tcp("c"));
        let f = fields(&l.ignored);
        assert!(
            f.contains(&"filter_chains[0].filter_chain_match.destination_port"),
            "{f:?}"
        );
        assert!(f.contains(&"filter_chains[1]"), "{f:?}");

        // Without a chain for its port, the port-less chains apply.
        let l = only(&format!(
            r#"
name: ports
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 9090 }} }}
filter_chains:
- filter_chain_match: {{ destination_port: 8080 }}
  filters: {a}
- name: no-port
  filters: {b}
"#,
            a = proxy_to("a"),
            b = proxy_to("b")
        ));
        assert_eq!(l.matches.len(), 1);
        assert_eq!(l.matches[0].action, tcp("b"));
    }

    #[test]
    fn longest_prefix_comes_first_and_prefixes_are_masked() {
        let l = only(&format!(
            r#"
name: prefixes
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}
filter_chains:
- name: any
  filters: {any}
- name: wide
  filter_chain_match: {{ prefix_ranges: [{{ address_prefix: 10.9.9.9, prefix_len: 8 }}] }}
  filters: {wide}
- name: narrow
  filter_chain_match:
    prefix_ranges:
    - {{ address_prefix: 10.1.2.3, prefix_len: 16 }}
    - {{ address_prefix: "fd00::1", prefix_len: 64 }}
  filters: {narrow}
"#,
            any = proxy_to("any"),
            wide = proxy_to("wide"),
            narrow = proxy_to("narrow")
        ));
        let table: Vec<(Option<IpAddr>, u8, &str)> = l
            .matches
            .iter()
            .map(|m| (m.prefix, m.prefix_len, m.chain_name.as_str()))
            .collect();
        assert_eq!(
            table,
            [
                (Some("fd00::".parse().unwrap()), 64, "narrow"),
                (Some("10.1.0.0".parse().unwrap()), 16, "narrow"),
                (Some("10.0.0.0".parse().unwrap()), 8, "wide"),
                (None, 0, "any"),
            ]
        );
        assert_eq!(l.matches[0].action, tcp("narrow"));
        assert_eq!(l.matches[3].action, tcp("any"));
    }

    #[test]
    fn a_chain_without_prefixes_competes_with_explicit_zero_prefixes() {
        let l = only(&format!(
            r#"
name: zero
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}
filter_chains:
- name: any
  filters: {a}
- name: v4-all
  filter_chain_match: {{ prefix_ranges: [{{ address_prefix: 0.0.0.0, prefix_len: 0 }}], server_names: [a.example] }}
  filters: {b}
"#,
            a = proxy_to("a"),
            b = proxy_to("b")
        ));
        // IPv4 destinations may reach either chain (by SNI): untouched.
        // IPv6 destinations only reach "any".
        assert_eq!(l.matches[0].prefix, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(l.matches[0].chain_name, "v4-all, any");
        assert_eq!(l.matches[0].action, None);
        assert_eq!(l.matches[1].prefix, None);
        assert_eq!(l.matches[1].action, tcp("a"));
    }

    #[test]
    fn chains_told_apart_only_after_connect_leave_the_prefix_untouched() {
        let l = only(&format!(
            r#"
name: sniffing
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 443 }} }}
filter_chains:
- name: tls
  filter_chain_match: {{ transport_protocol: tls, server_names: [a.example] }}
  filters: {a}
- name: plain
  filter_chain_match: {{ transport_protocol: raw_buffer }}
  filters: {b}
- name: narrow
  filter_chain_match: {{ prefix_ranges: [{{ address_prefix: 10.0.0.0, prefix_len: 8 }}] }}
  filters: {c}
"#,
            a = proxy_to("a"),
            b = proxy_to("b"),
            c = proxy_to("c")
        ));
        assert_eq!(l.matches.len(), 2);
        assert_eq!(l.matches[0].action, tcp("c"));
        assert_eq!(l.matches[1].chain_name, "tls, plain");
        assert_eq!(l.matches[1].action, None);
        let note = l
            .ignored
            .iter()
            .find(|i| i.field == "filter_chains")
            .expect("the ambiguity is explained");
        assert!(
            note.reason.contains("server_names, transport_protocol"),
            "{note:?}"
        );
    }

    #[test]
    fn agreeing_chains_keep_their_action_only_if_the_fallback_agrees() {
        let yaml = |default: &str| {
            format!(
                r#"
name: agree
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 443 }} }}
filter_chains:
- filter_chain_match: {{ transport_protocol: tls }}
  filters: {a}
- filter_chain_match: {{ transport_protocol: raw_buffer }}
  filters: {a}
{default}
"#,
                a = proxy_to("a")
            )
        };
        // No default chain: Envoy closes what neither chain takes.
        let l = only(&yaml(""));
        assert_eq!(l.matches[0].action, None);
        // A default chain that goes to the same cluster: no difference.
        let l = only(&yaml(&format!(
            "default_filter_chain: {{ filters: {} }}",
            proxy_to("a")
        )));
        assert_eq!(l.matches[0].action, tcp("a"));
        assert_eq!(l.default_action, tcp("a"));
    }

    #[test]
    fn a_single_unconditional_chain_and_the_default_chain() {
        let l = only(&format!(
            r#"
name: default
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}
filter_chains:
- filter_chain_match: {{ prefix_ranges: [{{ address_prefix: 10.0.0.0, prefix_len: 8 }}] }}
  filters: {a}
default_filter_chain:
  filters: {b}
"#,
            a = proxy_to("a"),
            b = proxy_to("b")
        ));
        assert_eq!(l.matches.len(), 1);
        assert_eq!(l.matches[0].action, tcp("a"));
        assert_eq!(l.default_action, tcp("b"));
    }

    #[test]
    fn bad_prefix_ranges_are_rejected() {
        for (range, field) in [
            (
                "{ address_prefix: 10.0.0.0, prefix_len: 33 }",
                "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len",
            ),
            (
                "{ address_prefix: 'fd00::', prefix_len: 129 }",
                "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len",
            ),
            (
                "{ address_prefix: ten, prefix_len: 8 }",
                "filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix",
            ),
        ] {
            let e = rejected(&format!(
                "name: bad\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}\n\
                 filter_chains: [{{ filter_chain_match: {{ prefix_ranges: [{range}] }}, filters: {} }}]",
                proxy_to("a")
            ));
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn too_many_prefix_entries_are_rejected() {
        let ranges: Vec<String> = (0..=KN_MAX_CHAIN_MATCHES)
            .map(|i| format!("{{ address_prefix: 10.0.{i}.0, prefix_len: 24 }}"))
            .collect();
        let e = rejected(&format!(
            "name: big\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}\n\
             filter_chains: [{{ filter_chain_match: {{ prefix_ranges: [{}] }}, filters: {} }}]",
            ranges.join(", "),
            proxy_to("a")
        ));
        assert_eq!(e.field, "filter_chains");
        assert!(e.message.contains("KN_MAX_CHAIN_MATCHES"), "{e}");
        assert!(e.message.contains("65"), "{e}");
    }

    #[test]
    fn duplicate_matches_are_rejected() {
        let e = rejected(&format!(
            "name: dup\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}\n\
             filter_chains: [{{ filters: {a} }}, {{ filter_chain_match: {{}}, filters: {a} }}]",
            a = proxy_to("a")
        ));
        assert_eq!(e.field, "filter_chains[1].filter_chain_match");
    }

    #[test]
    fn an_istio_inbound_listener_is_accepted_with_its_ignored_list() {
        let listener: Listener = first_in_file(crate::xds::file::tests::ISTIO_INBOUND);
        let entries = compile_listener(&listener).unwrap();
        assert_eq!(entries.len(), 1);
        let (k, l) = &entries[0];
        assert_eq!(*k, key("10.244.1.5", 9080));
        assert_eq!(l.matches.len(), 1);
        assert_eq!(l.matches[0].action, tcp("inbound|9080||"));
        assert_eq!(
            fields(&l.ignored),
            [
                "bind_to_port",
                "use_original_dst",
                "traffic_direction",
                "listener_filters[0]",
                "listener_filters[1]",
                "filter_chains[0].transport_socket",
                "filter_chains[0].filters[0]",
                "filter_chains[0].filters[1]",
                "filter_chains[0].filters[2]",
            ]
        );
        let reasons: Vec<&str> = l.ignored.iter().map(|i| i.reason.as_str()).collect();
        assert!(reasons[3].contains("envoy.filters.listener.original_dst"));
        assert!(reasons[6]
            .contains("TypedStruct-wrapped type.googleapis.com/envoy.tcp.metadataexchange"));
        assert!(reasons[7].contains("stats.PluginConfig"));
        assert!(reasons[8].contains("RBAC"));
    }

    #[test]
    fn an_unknown_terminal_filter_leaves_connections_untouched() {
        let l = only(
            r#"
name: redis
address: { socket_address: { address: 10.0.0.1, port_value: 6379 } }
filter_chains:
- filters:
  - name: envoy.filters.network.redis_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
      stat_prefix: redis
      settings: { op_timeout: 1s }
      prefix_routes: { catch_all_route: { cluster: redis } }
"#,
        );
        assert_eq!(l.matches[0].action, None);
        assert_eq!(fields(&l.ignored), ["filter_chains[0].filters[0]"]);
        assert!(l.ignored[0].reason.contains("RedisProxy"));
    }

    #[test]
    fn a_terminal_filter_must_be_last() {
        let e = rejected(&format!(
            r#"
name: order
address: {{ socket_address: {{ address: 10.0.0.1, port_value: 80 }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: a }}
  - {}
"#,
            &proxy_to("b")[1..proxy_to("b").len() - 1]
        ));
        assert_eq!(e.field, "filter_chains[0].filters[0].typed_config");
    }

    fn with_filter(type_url: &str, value: Vec<u8>) -> Listener {
        let mut l: Listener = from_yaml(
            "name: raw\naddress: { socket_address: { address: 10.0.0.1, port_value: 80 } }\nfilter_chains: [{}]",
        );
        l.filter_chains[0].filters.push(Filter {
            name: "f".into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: type_url.into(),
                value,
            })),
        });
        l
    }

    #[test]
    fn malformed_typed_config_bytes_are_rejected() {
        let mut l = with_filter(
            "type.googleapis.com/udpa.type.v1.TypedStruct",
            vec![0x0a, 0x09],
        );
        // Not last, so it is read as an observer (only its type_url).
        let observer = l.filter_chains[0].filters[0].clone();
        l.filter_chains[0].filters.push(observer);
        let e = compile_listener(&l).unwrap_err();
        assert_eq!(e.field, "filter_chains[0].filters[0].typed_config", "{e}");
        for t in [
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        ] {
            let e = compile_listener(&with_filter(t, vec![0x0a, 0x09, b'x'])).unwrap_err();
            assert_eq!(e.field, "filter_chains[0].filters[0].typed_config", "{e}");
            assert!(e.message.contains("malformed"), "{e}");
        }
    }

    #[test]
    fn weighted_clusters_are_checked() {
        let yaml = |clusters: &str| {
            format!(
                r#"
name: weighted
address: {{ socket_address: {{ address: 10.0.0.1, port_value: 80 }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: s
      weighted_clusters: {{ clusters: [{clusters}] }}
"#
            )
        };
        let l = only(&yaml(
            "{ name: a, weight: 0 }, { name: b, weight: 3 }, { name: c, weight: 1 }",
        ));
        assert_eq!(
            l.matches[0].action,
            Some(FilterAction::WeightedClusters {
                clusters: vec![("b".into(), 3), ("c".into(), 1)]
            })
        );
        let prefix = "filter_chains[0].filters[0].typed_config.weighted_clusters.clusters";
        let e = rejected(&yaml("{ name: a, weight: 0 }"));
        assert_eq!(e.field, prefix, "{e}");
        let e = rejected(&yaml(
            "{ name: a, weight: 4294967295 }, { name: b, weight: 1 }",
        ));
        assert_eq!(e.field, format!("{prefix}[1].weight"), "{e}");
        let many: Vec<String> = (0..=KN_MAX_WEIGHTED_CLUSTERS)
            .map(|i| format!("{{ name: c{i}, weight: 1 }}"))
            .collect();
        let e = rejected(&yaml(&many.join(", ")));
        assert_eq!(e.field, prefix, "{e}");
        assert!(e.message.contains("KN_MAX_WEIGHTED_CLUSTERS"), "{e}");
        let long = "x".repeat(128);
        let e = rejected(&yaml(&format!("{{ name: {long}, weight: 1 }}")));
        assert_eq!(e.field, format!("{prefix}[0].name"), "{e}");
    }

    #[test]
    fn cluster_names_must_fit_the_kernel() {
        let e = rejected(&format!(
            "name: long\naddress: {{ socket_address: {{ address: 10.0.0.1, port_value: 80 }} }}\n\
             filter_chains: [{{ filters: {} }}]",
            proxy_to(&"c".repeat(128))
        ));
        assert_eq!(e.field, "filter_chains[0].filters[0].typed_config.cluster");
        assert!(e.message.contains("127"), "{e}");
        let e = rejected(&format!(
            "name: nul\naddress: {{ socket_address: {{ address: 10.0.0.1, port_value: 80 }} }}\n\
             filter_chains: [{{ filters: {} }}]",
            proxy_to("a\\u0000b")
        ));
        assert_eq!(e.field, "filter_chains[0].filters[0].typed_config.cluster");
    }

    #[test]
    fn tunneling_and_subsets_leave_connections_untouched() {
        let l = only(
            r#"
name: tunnel
address: { socket_address: { address: 10.0.0.1, port_value: 80 } }
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: s
      cluster: waypoint
      tunneling_config: { hostname: "%DOWNSTREAM_LOCAL_ADDRESS%" }
"#,
        );
        assert_eq!(l.matches[0].action, None);
        assert_eq!(
            fields(&l.ignored),
            ["filter_chains[0].filters[0].typed_config.tunneling_config"]
        );
    }

    const HCM: &str =
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

    #[test]
    fn http_connection_managers_route_by_rds_or_inline_config() {
        let l = only(&format!(
            r#"
name: http
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 8080 }} }}
filter_chains:
- filter_chain_match: {{ prefix_ranges: [{{ address_prefix: 10.0.0.0, prefix_len: 8 }}] }}
  filters:
  - name: hcm
    typed_config: {{ "@type": {HCM}, stat_prefix: s, rds: {{ route_config_name: "8080" }} }}
- filters:
  - name: hcm
    typed_config:
      "@type": {HCM}
      stat_prefix: s
      route_config:
        virtual_hosts: [{{ name: vh, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: web }} }}] }}]
"#
        ));
        assert_eq!(
            l.matches[0].action,
            Some(FilterAction::Http {
                route_config: "8080".into()
            })
        );
        assert_eq!(
            l.matches[1].action,
            Some(FilterAction::Http {
                route_config: "http/1".into()
            })
        );
        let inline = &l.inline_route_configs["http/1"];
        assert_eq!(inline.virtual_hosts[0].routes[0].name, "");

        let e = rejected(&format!(
            "name: bad\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}\n\
             filter_chains: [{{ filters: [{{ name: hcm, typed_config: {{ '@type': {HCM}, stat_prefix: s }} }}] }}]"
        ));
        assert_eq!(
            e.field,
            "filter_chains[0].filters[0].typed_config.route_specifier"
        );
        let e = rejected(&format!(
            "name: bad\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}\n\
             filter_chains: [{{ filters: [{{ name: hcm, typed_config: {{ '@type': {HCM}, stat_prefix: s, \
             route_config: {{ virtual_hosts: [{{ name: vh, domains: [] }}] }} }} }}] }}]"
        ));
        assert_eq!(
            e.field,
            "filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].domains"
        );
    }

    #[test]
    fn two_inline_route_configs_may_not_share_a_name() {
        let chain = |prefix: &str, cluster: &str| {
            format!(
                r#"
- filter_chain_match: {{ prefix_ranges: [{{ address_prefix: {prefix}, prefix_len: 8 }}] }}
  filters:
  - name: hcm
    typed_config:
      "@type": {HCM}
      stat_prefix: s
      route_config:
        name: shared
        virtual_hosts: [{{ name: vh, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}]"#
            )
        };
        let yaml = |second: &str| {
            format!(
                "name: clash\naddress: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}\nfilter_chains:{}{}",
                chain("10.0.0.0", "a"),
                chain("11.0.0.0", second)
            )
        };
        assert_eq!(only(&yaml("a")).inline_route_configs.len(), 1);
        let e = rejected(&yaml("b"));
        assert_eq!(e.field, "filter_chains[1]");
        assert!(e.message.contains("\"shared\""), "{e}");
    }

    #[test]
    fn a_filter_chain_matcher_leaves_the_listener_untouched() {
        let l = only(&format!(
            r#"
name: matcher
address: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}
filter_chain_matcher:
  on_no_match: {{ action: {{ name: a, typed_config: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: a }} }} }}
filter_chains:
- name: a
  filters: {}
default_filter_chain: {{ filters: {} }}
"#,
            proxy_to("a"),
            proxy_to("b")
        ));
        assert!(l.matches.is_empty());
        assert_eq!(l.default_action, None);
        assert!(fields(&l.ignored).contains(&"filter_chain_matcher"));
    }
}
