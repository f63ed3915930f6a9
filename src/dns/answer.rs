//! Lookup families and how per-type answers (A, AAAA) combine into one
//! answer. Pure: the queries themselves are in `lookup`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Which address families a hostname resolves to, as Envoy's
/// `dns_lookup_family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupFamily {
    /// A records only.
    V4Only,
    /// AAAA records only.
    V6Only,
    /// AAAA first; A only when the name has no AAAA records. This is Envoy's
    /// `AUTO` (documented there as a future `V6_PREFERRED`).
    Auto,
    /// A first; AAAA only when the name has no A records.
    V4Preferred,
    /// A and AAAA, all addresses (IPv4 first).
    All,
}

impl LookupFamily {
    /// Envoy's spelling, for logs and dumps.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4Only => "V4_ONLY",
            Self::V6Only => "V6_ONLY",
            Self::Auto => "AUTO",
            Self::V4Preferred => "V4_PREFERRED",
            Self::All => "ALL",
        }
    }

    /// Whether an address of this kind may appear in an answer for this family.
    pub(crate) fn admits(self, addr: IpAddr) -> bool {
        match self {
            Self::V4Only => addr.is_ipv4(),
            Self::V6Only => addr.is_ipv6(),
            Self::Auto | Self::V4Preferred | Self::All => true,
        }
    }
}

impl fmt::Display for LookupFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Addresses a lookup returned, in answer order, and the smallest TTL of the
/// records behind them (`None` when no DNS record was involved: an IP literal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addresses: Vec<IpAddr>,
    pub ttl: Option<Duration>,
}

/// Why one query (A or AAAA) gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// The server answered: the name does not exist (NXDOMAIN) or has no
    /// records of this type (NODATA). Only this makes the preferred families
    /// fall back to the other one.
    NoRecords { nxdomain: bool },
    /// No usable answer: timeout, server down, SERVFAIL, REFUSED...
    Failed(String),
}

pub(crate) type QueryResult = Result<Answer, QueryError>;

/// A lookup that produced no addresses. The queue keeps the last good
/// addresses and retries later, whatever the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{host}: no such domain (NXDOMAIN)")]
    NxDomain { host: String },
    #[error("{host}: no addresses for {family}")]
    NoAddresses { host: String, family: LookupFamily },
    #[error("{host}: {reason}")]
    Failed { host: String, reason: String },
}

/// Whether a preferred family's result sends the lookup on to the other
/// family. A failed query does not: the name may well have addresses of the
/// preferred family, and answering with the other family would flip the
/// endpoints between families each time the server hiccups.
pub(crate) fn falls_back(first: &QueryResult) -> bool {
    matches!(first, Err(QueryError::NoRecords { .. }))
}

/// `ALL`: both families' addresses. If either query failed the whole lookup
/// fails, so that a transient error on one family keeps the last good answer
/// instead of silently dropping that family's endpoints.
pub(crate) fn merge_all(v4: QueryResult, v6: QueryResult) -> QueryResult {
    match (v4, v6) {
        (Err(QueryError::Failed(reason)), _) | (_, Err(QueryError::Failed(reason))) => {
            Err(QueryError::Failed(reason))
        }
        (Ok(a), Ok(b)) => Ok(Answer {
            addresses: a.addresses.into_iter().chain(b.addresses).collect(),
            ttl: min_ttl(a.ttl, b.ttl),
        }),
        (Ok(a), Err(_)) | (Err(_), Ok(a)) => Ok(a),
        (
            Err(QueryError::NoRecords { nxdomain: x }),
            Err(QueryError::NoRecords { nxdomain: y }),
        ) => Err(QueryError::NoRecords { nxdomain: x || y }),
    }
}

/// The smaller of two optional TTLs; a missing TTL does not constrain.
pub(crate) fn min_ttl(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer for an IP literal used as a hostname (Envoy accepts those in DNS
/// clusters): the address itself, if the family admits it. `None` when `host`
/// is not an IP literal.
pub(crate) fn literal(host: &str, family: LookupFamily) -> Option<QueryResult> {
    let addr: IpAddr = host.parse().ok()?;
    Some(if family.admits(addr) {
        Ok(Answer {
            addresses: vec![addr],
            ttl: None,
        })
    } else {
        Err(QueryError::NoRecords { nxdomain: false })
    })
}

/// The final result of a lookup, with an error that names the host. An answer
/// with no address (possible with a server that returns only CNAMEs) is a
/// failure: the queue must not replace good addresses with none.
pub(crate) fn finish(
    host: &str,
    family: LookupFamily,
    result: QueryResult,
) -> Result<Answer, LookupError> {
    match result {
        Ok(answer) if !answer.addresses.is_empty() => Ok(dedup(answer)),
        Ok(_) | Err(QueryError::NoRecords { nxdomain: false }) => Err(LookupError::NoAddresses {
            host: host.to_owned(),
            family,
        }),
        Err(QueryError::NoRecords { nxdomain: true }) => Err(LookupError::NxDomain {
            host: host.to_owned(),
        }),
        Err(QueryError::Failed(reason)) => Err(LookupError::Failed {
            host: host.to_owned(),
            reason,
        }),
    }
}

/// Drops repeated addresses, keeping the first occurrence so the answer order
/// (which LOGICAL_DNS consumers read the first address of) is preserved.
fn dedup(mut answer: Answer) -> Answer {
    let mut seen = std::collections::HashSet::new();
    answer.addresses.retain(|addr| seen.insert(*addr));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(addrs: &[&str], ttl: u64) -> QueryResult {
        Ok(Answer {
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ttl: Some(Duration::from_secs(ttl)),
        })
    }

    fn nodata() -> QueryResult {
        Err(QueryError::NoRecords { nxdomain: false })
    }

    fn nx() -> QueryResult {
        Err(QueryError::NoRecords { nxdomain: true })
    }

    fn failed() -> QueryResult {
        Err(QueryError::Failed("timed out".into()))
    }

    #[test]
    fn only_missing_records_fall_back() {
        assert!(falls_back(&nodata()));
        assert!(falls_back(&nx()));
        assert!(!falls_back(&failed()));
        assert!(!falls_back(&ok(&["10.0.0.1"], 5)));
    }

    #[test]
    fn all_merges_both_families_v4_first_with_min_ttl() {
        let merged = merge_all(ok(&["10.0.0.1"], 30), ok(&["fd00::1"], 7)).unwrap();
        assert_eq!(
            merged.addresses,
            ["10.0.0.1", "fd00::1"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert_eq!(merged.ttl, Some(Duration::from_secs(7)));
    }

    #[test]
    fn all_with_one_family_missing_uses_the_other() {
        assert_eq!(
            merge_all(nodata(), ok(&["fd00::1"], 7)),
            ok(&["fd00::1"], 7)
        );
        assert_eq!(merge_all(ok(&["10.0.0.1"], 3), nx()), ok(&["10.0.0.1"], 3));
        assert_eq!(merge_all(nodata(), nx()), nx());
        assert_eq!(merge_all(nodata(), nodata()), nodata());
    }

    #[test]
    fn all_fails_if_either_query_failed() {
        assert_eq!(merge_all(ok(&["10.0.0.1"], 3), failed()), failed());
        assert_eq!(merge_all(failed(), ok(&["fd00::1"], 3)), failed());
        assert_eq!(merge_all(failed(), nodata()), failed());
    }

    #[test]
    fn literals_answer_themselves_per_family() {
        let v4 = literal("10.1.2.3", LookupFamily::Auto).unwrap().unwrap();
        assert_eq!(v4.addresses, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(v4.ttl, None);
        assert_eq!(literal("10.1.2.3", LookupFamily::V6Only), Some(nodata()));
        assert!(literal("fd00::9", LookupFamily::V6Only).unwrap().is_ok());
        assert_eq!(literal("web.example", LookupFamily::All), None);
    }

    #[test]
    fn finish_names_the_host_and_rejects_empty_answers() {
        let empty = Ok(Answer {
            addresses: vec![],
            ttl: Some(Duration::from_secs(5)),
        });
        assert_eq!(
            finish("a.test", LookupFamily::V4Only, empty),
            Err(LookupError::NoAddresses {
                host: "a.test".into(),
                family: LookupFamily::V4Only
            })
        );
        assert_eq!(
            finish("a.test", LookupFamily::Auto, nx()),
            Err(LookupError::NxDomain {
                host: "a.test".into()
            })
        );
        let err = finish("a.test", LookupFamily::Auto, failed()).unwrap_err();
        assert_eq!(err.to_string(), "a.test: timed out");
    }

    #[test]
    fn finish_drops_duplicates_keeping_answer_order() {
        let answer = finish(
            "a.test",
            LookupFamily::V4Only,
            ok(&["10.0.0.2", "10.0.0.1", "10.0.0.2"], 5),
        )
        .unwrap();
        assert_eq!(
            answer.addresses,
            ["10.0.0.2", "10.0.0.1"].map(|a| a.parse::<IpAddr>().unwrap())
        );
    }
}
