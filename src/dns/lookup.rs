//! The queries themselves, through hickory-resolver.
//!
//! hickory's own response cache is kept out of the way: the refresh queue
//! decides when to ask, and every answer must carry the TTL the server gave,
//! not what is left of a cached one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::TokioResolver;

use super::answer::{self, Answer, Family, LookupError, LookupFamily, QueryError, QueryResult};
use super::DnsError;

/// Where queries go and how patiently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolverSettings {
    /// DNS servers as `ADDR:PORT`, asked over UDP (TCP when truncated). Empty:
    /// the nameservers, search domains and options of /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// Per-query timeout; `None` keeps the resolv.conf/hickory default (5 s).
    pub timeout: Option<Duration>,
    /// Retries after a query that timed out or failed, before the lookup
    /// counts as failed; `None` keeps the resolv.conf/hickory default (2).
    /// UDP to a stopped server is not refused but times out, so a lookup
    /// against a dead server takes `timeout * (1 + attempts)`.
    pub attempts: Option<usize>,
}

/// A hostname-to-addresses lookup, cheap to clone into each lookup task.
#[derive(Clone)]
pub(crate) struct NameLookup {
    resolver: TokioResolver,
}

impl NameLookup {
    pub(crate) fn new(settings: &ResolverSettings) -> Result<Self, DnsError> {
        let (config, mut opts) = if settings.servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(DnsError::SystemConfig)?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|addr| name_server(*addr))
                .collect();
            let mut opts = ResolverOpts::default();
            // Explicit servers replace the system's resolution entirely; an
            // /etc/hosts entry would otherwise shadow what the server says.
            opts.use_hosts_file = ResolveHosts::Never;
            (ResolverConfig::from_name_servers(servers), opts)
        };
        if config.name_servers().is_empty() {
            return Err(DnsError::NoNameservers);
        }
        // No response cache: see the module comment. Each query also clears
        // its entry (see `query`), because a zero-capacity cache may still
        // hold an entry until its next housekeeping.
        opts.cache_size = 0;
        if let Some(timeout) = settings.timeout {
            opts.timeout = timeout;
        }
        if let Some(attempts) = settings.attempts {
            opts.attempts = attempts;
        }
        tracing::info!(
            servers = ?config.name_servers().iter().map(|ns| ns.ip).collect::<Vec<_>>(),
            from_resolv_conf = settings.servers.is_empty(),
            "DNS resolver configured"
        );
        let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(DnsError::Build)?;
        Ok(Self { resolver })
    }

    /// Addresses of `host` for `family`, with the smallest record TTL.
    /// `known` are the addresses in force (the last good answer): a family
    /// whose query fails keeps its share of them (see `answer`).
    pub(crate) async fn resolve(
        &self,
        host: &str,
        family: LookupFamily,
        known: &[IpAddr],
    ) -> Result<Answer, LookupError> {
        let result = match answer::literal(host, family) {
            Some(result) => result,
            None => match Name::from_utf8(host) {
                Ok(name) => self.resolve_name(&name, family, known).await,
                Err(err) => Err(QueryError::Failed(format!("invalid hostname: {err}"))),
            },
        };
        answer::finish(host, family, result)
    }

    async fn resolve_name(
        &self,
        name: &Name,
        family: LookupFamily,
        known: &[IpAddr],
    ) -> QueryResult {
        match family {
            LookupFamily::V4Only => self.query(name, Family::A).await,
            LookupFamily::V6Only => self.query(name, Family::Aaaa).await,
            LookupFamily::Auto => self.preferred(name, Family::Aaaa, Family::A, known).await,
            LookupFamily::V4Preferred => self.preferred(name, Family::A, Family::Aaaa, known).await,
            LookupFamily::All => {
                let (v4, v6) =
                    tokio::join!(self.query(name, Family::A), self.query(name, Family::Aaaa));
                answer::merge_all(v4, v6, known)
            }
        }
    }

    async fn preferred(
        &self,
        name: &Name,
        first: Family,
        then: Family,
        known: &[IpAddr],
    ) -> QueryResult {
        let result = self.query(name, first).await;
        if answer::preferred_settles(&result, first, known) {
            result
        } else {
            let other = self.query(name, then).await;
            answer::fallback(result, first, other)
        }
    }

    /// One query of one type, straight to the server.
    async fn query(&self, name: &Name, family: Family) -> QueryResult {
        let record_type = match family {
            Family::A => RecordType::A,
            Family::Aaaa => RecordType::AAAA,
        };
        self.resolver.clear_lookup_cache(name.clone(), record_type);
        match self.resolver.lookup(name.clone(), record_type).await {
            Ok(lookup) => {
                let records = lookup.answers();
                let addresses = records
                    .iter()
                    .filter(|r| r.record_type() == record_type)
                    .filter_map(|r| r.data.ip_addr())
                    .collect();
                // The CNAMEs on the way to the addresses count: the answer is
                // only as fresh as the shortest-lived record in the chain.
                let ttl = records
                    .iter()
                    .map(|r| Duration::from_secs(u64::from(r.ttl)))
                    .min();
                Ok(Answer::records(addresses, ttl))
            }
            Err(err) => Err(query_error(&err)),
        }
    }
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut server.connections {
        connection.port = addr.port();
    }
    server
}

fn query_error(err: &NetError) -> QueryError {
    if err.is_nx_domain() {
        QueryError::NoRecords { nxdomain: true }
    } else if err.is_no_records_found() {
        QueryError::NoRecords { nxdomain: false }
    } else {
        QueryError::Failed(err.to_string())
    }
}
