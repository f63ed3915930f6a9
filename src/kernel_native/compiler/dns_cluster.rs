//! STRICT_DNS and LOGICAL_DNS clusters: which hostnames to resolve, and the
//! cluster's load assignment with hostnames replaced by their addresses.
//!
//! The compiler stays pure: it reads resolved addresses through
//! [`ResolvedHosts`] (the daemon's resolver, or a map in tests) and never
//! waits for DNS. A hostname not resolved yet contributes no endpoint.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{DiscoveryType, DnsLookupFamily};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment,
};

use crate::dns::{FailureRefresh, LookupFamily, RefreshPolicy, Subscription};
pub use crate::dns::{NoDns, ResolvedHosts};

impl ResolvedHosts for BTreeMap<(String, LookupFamily), Vec<IpAddr>> {
    fn addresses(&self, host: &str, family: LookupFamily) -> Option<Vec<IpAddr>> {
        self.get(&(host.to_string(), family)).cloned()
    }
}

pub fn is_dns_cluster(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType;
    matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t))
            if t == DiscoveryType::StrictDns as i32 || t == DiscoveryType::LogicalDns as i32
    )
}

fn is_logical(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType;
    matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::LogicalDns as i32
    )
}

/// Envoy's `dns_lookup_family` (default AUTO).
pub fn lookup_family(c: &Cluster) -> LookupFamily {
    match DnsLookupFamily::try_from(c.dns_lookup_family) {
        Ok(DnsLookupFamily::V4Only) => LookupFamily::V4Only,
        Ok(DnsLookupFamily::V6Only) => LookupFamily::V6Only,
        Ok(DnsLookupFamily::V4Preferred) => LookupFamily::V4Preferred,
        Ok(DnsLookupFamily::All) => LookupFamily::All,
        _ => LookupFamily::Auto,
    }
}

fn duration(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    d.as_ref()
        .filter(|d| d.seconds >= 0 && d.nanos >= 0)
        .map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
        .filter(|d| !d.is_zero())
}

/// The refresh policy from `dns_refresh_rate`, `respect_dns_ttl`, `dns_failure_refresh_rate`.
// These Cluster fields are deprecated upstream in favour of the DnsCluster
// extension, but Istiod still sends them; the extension is not read yet.
#[allow(deprecated)]
pub fn refresh_policy(c: &Cluster) -> RefreshPolicy {
    let mut policy = RefreshPolicy {
        respect_ttl: c.respect_dns_ttl,
        ..RefreshPolicy::default()
    };
    if let Some(rate) = duration(&c.dns_refresh_rate) {
        policy.refresh_rate = rate;
    }
    if let Some(f) = &c.dns_failure_refresh_rate {
        if let (Some(base), max) = (duration(&f.base_interval), duration(&f.max_interval)) {
            policy.failure_refresh = Some(FailureRefresh {
                base,
                max: max.unwrap_or(base * 10),
            });
        }
    }
    policy
}

/// Hostnames of a load assignment's endpoints (IP literals need no lookup).
fn hostnames(la: &ClusterLoadAssignment) -> Vec<String> {
    let mut hosts = Vec::new();
    for locality in &la.endpoints {
        for lbe in &locality.lb_endpoints {
            if let Some(HostIdentifier::Endpoint(e)) = &lbe.host_identifier {
                if let Some(address::Address::SocketAddress(sa)) =
                    e.address.as_ref().and_then(|a| a.address.as_ref())
                {
                    if sa.address.parse::<IpAddr>().is_err() && !hosts.contains(&sa.address) {
                        hosts.push(sa.address.clone());
                    }
                }
            }
        }
    }
    hosts
}

/// What the resolver must keep fresh for this cluster (empty unless DNS).
pub fn dns_subscriptions(c: &Cluster) -> Vec<Subscription> {
    let Some(la) = c.load_assignment.as_ref().filter(|_| is_dns_cluster(c)) else {
        return Vec::new();
    };
    let (family, policy) = (lookup_family(c), refresh_policy(c));
    let mut hosts = hostnames(la);
    if is_logical(c) {
        hosts.truncate(1);
    }
    hosts
        .into_iter()
        .map(|host| Subscription {
            host,
            family,
            policy,
        })
        .collect()
}

/// The load assignment with every hostname endpoint replaced by one endpoint
/// per resolved address (same port, weight, health, priority). LOGICAL_DNS
/// keeps only the first address of its first host, as Envoy does. Returns the
/// hostnames that have no address yet.
pub fn resolve(
    c: &Cluster,
    la: &ClusterLoadAssignment,
    dns: &dyn ResolvedHosts,
) -> (ClusterLoadAssignment, Vec<String>) {
    let family = lookup_family(c);
    let logical = is_logical(c);
    let mut out = la.clone();
    let mut pending = Vec::new();
    let mut taken = false;
    for locality in &mut out.endpoints {
        let mut expanded = Vec::new();
        for lbe in std::mem::take(&mut locality.lb_endpoints) {
            if logical && taken {
                break;
            }
            let host = match &lbe.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => {
                    match e.address.as_ref().and_then(|a| a.address.as_ref()) {
                        Some(address::Address::SocketAddress(sa))
                            if sa.address.parse::<IpAddr>().is_err() =>
                        {
                            Some((sa.address.clone(), sa.port_specifier.clone()))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some((host, port)) = host else {
                // An IP literal (or something the endpoint checks will reject).
                taken = true;
                expanded.push(lbe);
                continue;
            };
            let addrs = dns.addresses(&host, family).unwrap_or_default();
            if addrs.is_empty() {
                pending.push(host);
                continue;
            }
            let addrs = if logical { &addrs[..1] } else { &addrs[..] };
            for ip in addrs {
                let mut resolved = lbe.clone();
                if let Some(HostIdentifier::Endpoint(e)) = &mut resolved.host_identifier {
                    if let Some(address::Address::SocketAddress(sa)) =
                        e.address.as_mut().and_then(|a| a.address.as_mut())
                    {
                        sa.address = ip.to_string();
                        sa.port_specifier = port.clone().or(Some(PortSpecifier::PortValue(0)));
                    }
                }
                expanded.push(resolved);
            }
            taken = true;
        }
        locality.lb_endpoints = expanded;
    }
    (out, pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_native::compiler::testutil::from_yaml;

    const STRICT: &str = r#"
name: ext
type: STRICT_DNS
dns_lookup_family: V4_ONLY
dns_refresh_rate: 2s
respect_dns_ttl: true
load_assignment:
  cluster_name: ext
  endpoints:
  - lb_endpoints:
    - endpoint: { address: { socket_address: { address: db.example, port_value: 5432 } } }
      load_balancing_weight: 3
    - endpoint: { address: { socket_address: { address: 127.0.0.9, port_value: 5432 } } }
"#;

    fn answers(
        pairs: &[(&str, &[&str])],
        family: LookupFamily,
    ) -> BTreeMap<(String, LookupFamily), Vec<IpAddr>> {
        pairs
            .iter()
            .map(|(h, a)| {
                (
                    (h.to_string(), family),
                    a.iter().map(|s| s.parse().unwrap()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn subscriptions_carry_family_and_refresh_policy_and_skip_ip_literals() {
        let c: Cluster = from_yaml(STRICT);
        let subs = dns_subscriptions(&c);
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].host, "db.example");
        assert_eq!(subs[0].family, LookupFamily::V4Only);
        assert_eq!(subs[0].policy.refresh_rate, Duration::from_secs(2));
        assert!(subs[0].policy.respect_ttl);
    }

    #[test]
    fn strict_dns_makes_an_endpoint_of_every_address_and_logical_dns_one() {
        let c: Cluster = from_yaml(STRICT);
        let la = c.load_assignment.clone().unwrap();
        let dns = answers(
            &[("db.example", &["127.0.0.2", "127.0.0.3"])],
            LookupFamily::V4Only,
        );
        let (resolved, pending) = resolve(&c, &la, &dns);
        assert!(pending.is_empty());
        let eps = &resolved.endpoints[0].lb_endpoints;
        assert_eq!(eps.len(), 3, "two addresses of the host + the IP literal");
        assert_eq!(
            eps[0].load_balancing_weight.as_ref().unwrap().value,
            3,
            "weight kept"
        );

        let logical: Cluster = from_yaml(&STRICT.replace("STRICT_DNS", "LOGICAL_DNS"));
        let (resolved, _) = resolve(&logical, &la, &dns);
        let eps = &resolved.endpoints[0].lb_endpoints;
        assert_eq!(eps.len(), 1, "LOGICAL_DNS: the first address only");
        assert_eq!(dns_subscriptions(&logical).len(), 1);
    }

    #[test]
    fn unresolved_hosts_are_reported_and_give_no_endpoint() {
        let c: Cluster = from_yaml(STRICT);
        let la = c.load_assignment.clone().unwrap();
        let (resolved, pending) = resolve(&c, &la, &NoDns);
        assert_eq!(pending, vec!["db.example".to_string()]);
        assert_eq!(
            resolved.endpoints[0].lb_endpoints.len(),
            1,
            "the IP literal stays"
        );
    }
}
