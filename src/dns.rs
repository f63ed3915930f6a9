//! DNS resolution with a shared refresh queue, for both modes: kernel-native
//! STRICT_DNS/LOGICAL_DNS clusters and dual-engine ServiceEntry hostnames.
//! Hostnames in, addresses + TTL out, change notifications; no mode's types.
//!
//! # API
//!
//! ```text
//! DnsResolver::start(&ResolverSettings) -> Result<(DnsResolver, UnboundedReceiver<HostChanged>), DnsError>
//! resolver.subscribe(owner, host, LookupFamily, RefreshPolicy) -> Result<Vec<IpAddr>, DnsError>
//! resolver.set_owner(owner, &[Subscription]) -> Result<Vec<Vec<IpAddr>>, DnsError>
//! resolver.unsubscribe_owner(owner)
//! resolver.addresses(host, LookupFamily) -> Option<Vec<IpAddr>>
//! resolver.snapshot() -> Vec<HostState>          // for /debug/config_dump
//! ```
//!
//! - [`ResolverSettings::servers`] empty: /etc/resolv.conf; otherwise the
//!   daemon's `--dns-server ADDR:PORT` list.
//! - An *owner* is whatever names hostnames (a cluster, a ServiceEntry). Each
//!   `(host, family)` is looked up once however many owners name it, at the
//!   pace of the most eager owner ([`RefreshPolicy::merge`]); it leaves the
//!   queue when its last owner unsubscribes.
//! - Timing ([`RefreshPolicy`], pure, in `timing`): after an answer, next
//!   lookup at `min(record TTL, refresh_rate)` with `respect_ttl`, else at
//!   `refresh_rate` (default [`DEFAULT_REFRESH_RATE`], 5 s), never sooner than
//!   [`MIN_REFRESH_INTERVAL`] (1 s). After a failure (NXDOMAIN, no records,
//!   timeout, server down) the last good addresses stay and the retry follows
//!   [`FailureRefresh`] (`base * 2^(n-1)` capped at `max`, as Envoy's
//!   `dns_failure_refresh_rate`), or when unset [`DEFAULT_FAILURE_REFRESH`]
//!   (1 s doubling to 30 s, at most `refresh_rate`).
//! - Families ([`LookupFamily`], as Envoy's `dns_lookup_family`): a lookup
//!   that asks for both A and AAAA succeeds when either answers. With `ALL`
//!   a family whose query fails (REFUSED, SERVFAIL, timeout) keeps its own
//!   last good addresses and the other family's fresh ones are used; with
//!   `AUTO`/`V4_PREFERRED` a preferred family that fails with none of its
//!   addresses in force gives way to the other one (one that has some keeps
//!   them). The failed family shows in [`HostState::last_error`].
//! - [`HostChanged`] is sent when a hostname's address *set* changes (its
//!   first answer included), never on failure. hickory's cache is disabled, so
//!   every lookup reaches the server and reports the TTL it gave.
//!
//! # Using it for kernel-native DNS clusters
//!
//! On each CDS push, for every STRICT_DNS/LOGICAL_DNS cluster call
//! `set_owner(cluster_name, subs)` with one [`Subscription`] per distinct
//! endpoint hostname (family from `dns_lookup_family`, policy from
//! `dns_refresh_rate`/`respect_dns_ttl`/`dns_failure_refresh_rate`); call
//! `unsubscribe_owner` for removed clusters. Keep, per cluster, its host
//! entries (hostname, port, weight, locality) and the latest addresses per
//! hostname: seed them from `set_owner`'s return value, update them from each
//! `HostChanged` (its `owners` says which clusters to rebuild). Then build the
//! endpoints:
//! - STRICT_DNS: every address of every host entry is an endpoint with that
//!   entry's port, weight and locality;
//! - LOGICAL_DNS: only the first address of the (single) host entry. The
//!   notified order is kept while the set is unchanged, so the pick is stable.
//!
//! and write the cluster's endpoints make-before-break, like any other write.
//! A host with no addresses yet contributes no endpoint. `snapshot()` gives the
//! per-hostname state for the config dump (addresses, TTL, next refresh, last
//! error, lookups, failures).

mod answer;
mod driver;
mod lookup;
mod queue;
mod timing;

pub use answer::{Answer, LookupError, LookupFamily};
pub use driver::DnsResolver;
pub use lookup::ResolverSettings;
pub use queue::{HostChanged, HostState, Subscription};
pub use timing::{
    FailureRefresh, RefreshPolicy, RefreshSchedule, DEFAULT_FAILURE_REFRESH, DEFAULT_REFRESH_RATE,
    MIN_REFRESH_INTERVAL,
};

use std::net::IpAddr;

use hickory_resolver::net::NetError;

/// The latest addresses of a hostname, as far as the resolver knows. The
/// compilers of both modes read DNS through this, so they stay pure (a map
/// in tests, the running [`DnsResolver`] in the daemon).
pub trait ResolvedHosts {
    fn addresses(&self, host: &str, family: LookupFamily) -> Option<Vec<IpAddr>>;
}

/// No resolver: every hostname is unresolved.
pub struct NoDns;

impl ResolvedHosts for NoDns {
    fn addresses(&self, _: &str, _: LookupFamily) -> Option<Vec<IpAddr>> {
        None
    }
}

impl ResolvedHosts for DnsResolver {
    fn addresses(&self, host: &str, family: LookupFamily) -> Option<Vec<IpAddr>> {
        DnsResolver::addresses(self, host, family)
    }
}

/// Why the resolver could not start or a subscription was refused. Lookup
/// failures are not errors of the API: they show in [`HostState::last_error`].
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("reading the system DNS configuration (/etc/resolv.conf): {0}")]
    SystemConfig(#[source] NetError),
    #[error("no DNS server configured (none in /etc/resolv.conf and no --dns-server)")]
    NoNameservers,
    #[error("building the DNS resolver: {0}")]
    Build(#[source] NetError),
    #[error("the DNS resolver must be started inside a tokio runtime")]
    NoRuntime,
    #[error("invalid hostname {host:?}: {reason}")]
    InvalidHostname { host: String, reason: String },
}
