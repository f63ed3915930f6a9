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
    /// AAAA first; A when AAAA gives nothing (no such records, or a failed
    /// query while no IPv6 address is in force). This is Envoy's `AUTO`
    /// (documented there as a future `V6_PREFERRED`).
    Auto,
    /// A first; AAAA when A gives nothing (as `Auto`, the other way round).
    V4Preferred,
    /// A and AAAA, all addresses (IPv4 first); either family answering is
    /// enough.
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
    /// Why a family the lookup asked for gave nothing while another family
    /// answered (`AAAA: Query Refused`). Whatever that family still had is
    /// kept in `addresses` (see [`merge_all`], [`fallback`]).
    pub partial_failure: Option<String>,
}

impl Answer {
    /// The addresses of one query, nothing failed.
    pub(crate) fn records(addresses: Vec<IpAddr>, ttl: Option<Duration>) -> Self {
        Self {
            addresses,
            ttl,
            partial_failure: None,
        }
    }
}

/// The record type one query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// A records: IPv4.
    A,
    /// AAAA records: IPv6.
    Aaaa,
}

impl Family {
    fn holds(self, addr: IpAddr) -> bool {
        match self {
            Self::A => addr.is_ipv4(),
            Self::Aaaa => addr.is_ipv6(),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::Aaaa => "AAAA",
        }
    }
}

/// Why one query (A or AAAA) gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// The server answered: the name does not exist (NXDOMAIN) or has no
    /// records of this type (NODATA). The family has no addresses.
    NoRecords { nxdomain: bool },
    /// No usable answer: timeout, server down, SERVFAIL, REFUSED... Says
    /// nothing about the family's addresses, so the last good ones stay.
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

/// Whether a query gave addresses to use.
fn answered(result: &QueryResult) -> bool {
    matches!(result, Ok(a) if !a.addresses.is_empty())
}

/// Why a query that did not answer gave nothing (an empty answer, possible
/// with a server that returns only CNAMEs, counts as no records).
fn nothing(result: QueryResult) -> QueryError {
    match result {
        Ok(_) => QueryError::NoRecords { nxdomain: false },
        Err(e) => e,
    }
}

/// The error of a lookup whose two queries both gave nothing: a failure if
/// either failed (the name may well have addresses), else no records.
fn both_nothing(a: QueryResult, b: QueryResult) -> QueryError {
    match (nothing(a), nothing(b)) {
        (QueryError::Failed(reason), _) | (_, QueryError::Failed(reason)) => {
            QueryError::Failed(reason)
        }
        (QueryError::NoRecords { nxdomain: x }, QueryError::NoRecords { nxdomain: y }) => {
            QueryError::NoRecords { nxdomain: x || y }
        }
    }
}

/// The failure of `result`, named by its family, for [`Answer::partial_failure`].
fn failure_of(family: Family, result: &QueryResult) -> Option<String> {
    match result {
        Err(QueryError::Failed(reason)) => Some(format!("{}: {reason}", family.as_str())),
        _ => None,
    }
}

/// `V4_PREFERRED` / `AUTO`, once the preferred family's query is back:
/// whether it settles the lookup without asking the other family. It does
/// when it answered, and when it failed while addresses of that family are in
/// force (`known`): they are kept, rather than the endpoints flipping to the
/// other family each time the server hiccups. Otherwise (the name has no
/// such records, or the query failed with nothing of that family to keep)
/// the other family is asked: one family failing must not leave a name
/// unresolved that the other family resolves.
pub(crate) fn preferred_settles(first: &QueryResult, preferred: Family, known: &[IpAddr]) -> bool {
    match first {
        Ok(a) => !a.addresses.is_empty(),
        Err(QueryError::Failed(_)) => known.iter().any(|a| preferred.holds(*a)),
        Err(QueryError::NoRecords { .. }) => false,
    }
}

/// `V4_PREFERRED` / `AUTO` when the preferred family (`first`) did not settle
/// the lookup: the other family's answer, or a failure if it has none either.
pub(crate) fn fallback(first: QueryResult, preferred: Family, second: QueryResult) -> QueryResult {
    if answered(&second) {
        let partial_failure = failure_of(preferred, &first);
        return second.map(|a| Answer {
            partial_failure,
            ..a
        });
    }
    Err(both_nothing(first, second))
}

/// `ALL`: both families' addresses, IPv4 first. One family answering is
/// enough; a family whose query failed meanwhile keeps its addresses from
/// `known` (the last good answer), and one the server says has no records
/// has none. When neither answered the lookup fails and the queue keeps
/// every last good address.
pub(crate) fn merge_all(v4: QueryResult, v6: QueryResult, known: &[IpAddr]) -> QueryResult {
    if !answered(&v4) && !answered(&v6) {
        return Err(both_nothing(v4, v6));
    }
    let mut merged = Answer::records(Vec::new(), None);
    for (family, result) in [(Family::A, v4), (Family::Aaaa, v6)] {
        if let Some(reason) = failure_of(family, &result) {
            merged
                .addresses
                .extend(known.iter().copied().filter(|a| family.holds(*a)));
            merged.partial_failure = Some(reason);
        } else if let Ok(a) = result {
            merged.addresses.extend(a.addresses);
            merged.ttl = min_ttl(merged.ttl, a.ttl);
        }
    }
    Ok(merged)
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
        Ok(Answer::records(vec![addr], None))
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

    fn ok(list: &[&str], ttl: u64) -> QueryResult {
        Ok(Answer::records(addrs(list), Some(Duration::from_secs(ttl))))
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

    fn addrs(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn partial(answer: QueryResult, reason: &str) -> QueryResult {
        answer.map(|a| Answer {
            partial_failure: Some(reason.into()),
            ..a
        })
    }

    #[test]
    fn preferred_family_settles_when_it_answers_or_has_addresses_to_keep() {
        let none: &[IpAddr] = &[];
        assert!(preferred_settles(&ok(&["10.0.0.1"], 5), Family::A, none));
        assert!(!preferred_settles(&ok(&[], 5), Family::A, none));
        assert!(!preferred_settles(&nodata(), Family::A, none));
        assert!(!preferred_settles(&nx(), Family::A, &addrs(&["10.0.0.1"])));
        // A failure with nothing of the preferred family in force asks the
        // other family; with addresses of it in force it keeps them.
        assert!(!preferred_settles(&failed(), Family::A, none));
        assert!(!preferred_settles(
            &failed(),
            Family::A,
            &addrs(&["fd00::1"])
        ));
        assert!(preferred_settles(
            &failed(),
            Family::A,
            &addrs(&["10.0.0.1"])
        ));
        assert!(preferred_settles(
            &failed(),
            Family::Aaaa,
            &addrs(&["fd00::1"])
        ));
    }

    #[test]
    fn fallback_uses_the_other_family_and_says_when_the_preferred_one_failed() {
        assert_eq!(
            fallback(nodata(), Family::A, ok(&["fd00::1"], 7)),
            ok(&["fd00::1"], 7)
        );
        assert_eq!(
            fallback(failed(), Family::Aaaa, ok(&["10.0.0.1"], 3)),
            partial(ok(&["10.0.0.1"], 3), "AAAA: timed out")
        );
        assert_eq!(fallback(nodata(), Family::A, nx()), nx());
        assert_eq!(fallback(failed(), Family::A, nodata()), failed());
        assert_eq!(fallback(nodata(), Family::A, failed()), failed());
        assert_eq!(
            fallback(nodata(), Family::A, ok(&[], 3)),
            nodata(),
            "an empty answer is no answer"
        );
    }

    #[test]
    fn all_merges_both_families_v4_first_with_min_ttl() {
        let merged = merge_all(ok(&["10.0.0.1"], 30), ok(&["fd00::1"], 7), &[]).unwrap();
        assert_eq!(merged.addresses, addrs(&["10.0.0.1", "fd00::1"]));
        assert_eq!(merged.ttl, Some(Duration::from_secs(7)));
        assert_eq!(merged.partial_failure, None);
    }

    #[test]
    fn all_with_one_family_missing_uses_the_other() {
        let known = addrs(&["10.0.0.9", "fd00::9"]);
        assert_eq!(
            merge_all(nodata(), ok(&["fd00::1"], 7), &known),
            ok(&["fd00::1"], 7)
        );
        assert_eq!(
            merge_all(ok(&["10.0.0.1"], 3), nx(), &known),
            ok(&["10.0.0.1"], 3)
        );
        assert_eq!(merge_all(nodata(), nx(), &known), nx());
        assert_eq!(merge_all(nodata(), nodata(), &known), nodata());
    }

    #[test]
    fn all_with_one_family_failed_keeps_that_familys_last_good_addresses() {
        let known = addrs(&["10.0.0.9", "fd00::9", "fd00::8"]);
        assert_eq!(
            merge_all(ok(&["10.0.0.1"], 3), failed(), &known),
            partial(
                ok(&["10.0.0.1", "fd00::9", "fd00::8"], 3),
                "AAAA: timed out"
            )
        );
        assert_eq!(
            merge_all(failed(), ok(&["fd00::1"], 4), &known),
            partial(ok(&["10.0.0.9", "fd00::1"], 4), "A: timed out")
        );
        // Nothing of the failed family known yet: the other family alone.
        assert_eq!(
            merge_all(ok(&["10.0.0.1"], 3), failed(), &[]),
            partial(ok(&["10.0.0.1"], 3), "AAAA: timed out")
        );
    }

    #[test]
    fn all_fails_when_no_family_answered() {
        let known = addrs(&["10.0.0.9", "fd00::9"]);
        assert_eq!(merge_all(failed(), failed(), &known), failed());
        assert_eq!(merge_all(failed(), nodata(), &known), failed());
        assert_eq!(merge_all(nx(), failed(), &known), failed());
        assert_eq!(merge_all(ok(&[], 3), nodata(), &known), nodata());
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
        let empty = Ok(Answer::records(vec![], Some(Duration::from_secs(5))));
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
