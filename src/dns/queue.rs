//! The refresh queue: which hostnames are wanted, by whom, what they resolved
//! to, and which are due. No I/O and no clock: every call that depends on
//! time takes `now`, so the driver and the tests share one state machine.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::answer::{Answer, LookupError, LookupFamily};
use super::timing::{RefreshPolicy, RefreshSchedule};

/// A hostname as resolved for one family: the unit the queue refreshes and
/// subscribers share.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct HostKey {
    pub host: String,
    pub family: LookupFamily,
}

/// A lookup handed out by [`RefreshQueue::take_due`], to be given back to
/// [`RefreshQueue::complete`]. The number ties the result to the entry it was
/// taken from: if the hostname is dropped and subscribed again while the
/// lookup runs, the late result must not settle the new entry's lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) key: HostKey,
    /// The addresses in force when the lookup was taken: what a family whose
    /// query fails keeps. They cannot change while the lookup runs (only its
    /// own `complete` changes them).
    pub(crate) known: Vec<IpAddr>,
    number: u64,
}

/// One hostname a subscriber wants kept resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub host: String,
    pub family: LookupFamily,
    pub policy: RefreshPolicy,
}

/// Sent when a hostname's address set changes, including its first
/// successful resolution. Never sent for a failure: the addresses stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChanged {
    pub host: String,
    pub family: LookupFamily,
    /// The new addresses in the order of the answer that changed them.
    pub addresses: Vec<IpAddr>,
    /// Smallest record TTL of that answer.
    pub ttl: Option<Duration>,
    /// Subscribers of the hostname, to know what to rewrite.
    pub owners: Vec<String>,
}

/// One hostname's state, for the config dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub host: String,
    pub family: LookupFamily,
    pub owners: Vec<String>,
    /// Last good addresses (empty until the first success).
    pub addresses: Vec<IpAddr>,
    /// TTL of the latest successful answer.
    pub ttl: Option<Duration>,
    /// Time left until the next lookup; zero while one is running or due.
    pub next_refresh_in: Duration,
    /// Error of the latest lookup, or of the family that failed in a lookup
    /// another family answered (its last good addresses are kept); `None`
    /// once every family asked answers.
    pub last_error: Option<String>,
    /// Lookups completed, successful or not.
    pub lookups: u64,
    /// Lookups that failed.
    pub failures: u64,
    pub consecutive_failures: u32,
}

#[derive(Debug)]
struct Entry {
    owners: BTreeMap<String, RefreshPolicy>,
    /// Merge of `owners`' policies, kept in step with them.
    policy: RefreshPolicy,
    schedule: RefreshSchedule,
    /// Last address set notified (see `complete`).
    addresses: Vec<IpAddr>,
    ttl: Option<Duration>,
    /// Ticket number of the lookup running for this entry.
    in_flight: Option<u64>,
    last_error: Option<String>,
    lookups: u64,
    failures: u64,
}

impl Entry {
    fn new(now: Instant, policy: RefreshPolicy) -> Self {
        Self {
            owners: BTreeMap::new(),
            policy,
            schedule: RefreshSchedule::new(now),
            addresses: Vec::new(),
            ttl: None,
            in_flight: None,
            last_error: None,
            lookups: 0,
            failures: 0,
        }
    }

    fn due(&self) -> Instant {
        self.schedule.next_due(&self.policy)
    }

    fn owner_names(&self) -> Vec<String> {
        self.owners.keys().cloned().collect()
    }
}

#[derive(Debug, Default)]
pub(crate) struct RefreshQueue {
    entries: BTreeMap<HostKey, Entry>,
    /// The reverse index of `Entry::owners`, so that removing an owner does
    /// not scan every hostname.
    by_owner: BTreeMap<String, BTreeSet<HostKey>>,
    next_ticket: u64,
}

impl RefreshQueue {
    /// Adds (or updates) `owner`'s interest in `key`. A new hostname is due at
    /// once. Returns the addresses already known (empty if none yet).
    pub(crate) fn subscribe(
        &mut self,
        owner: &str,
        key: HostKey,
        policy: RefreshPolicy,
        now: Instant,
    ) -> Vec<IpAddr> {
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(now, policy));
        entry.owners.insert(owner.to_owned(), policy);
        entry.policy = merged(entry);
        self.by_owner
            .entry(owner.to_owned())
            .or_default()
            .insert(key);
        entry.addresses.clone()
    }

    /// Removes `owner`'s interest in `key`; the hostname leaves the queue when
    /// nobody else wants it.
    pub(crate) fn unsubscribe(&mut self, owner: &str, key: &HostKey) {
        if let Some(keys) = self.by_owner.get_mut(owner) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_owner.remove(owner);
            }
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.owners.remove(owner);
        if entry.owners.is_empty() {
            tracing::debug!(host = %key.host, family = %key.family, "hostname dropped from the DNS queue");
            self.entries.remove(key);
        } else {
            entry.policy = merged(entry);
        }
    }

    /// Removes every interest of `owner`.
    pub(crate) fn unsubscribe_owner(&mut self, owner: &str) {
        let keys = self.by_owner.get(owner).cloned().unwrap_or_default();
        for key in &keys {
            self.unsubscribe(owner, key);
        }
    }

    /// Makes `subscriptions` the whole interest of `owner`: new ones are added,
    /// missing ones removed, and hostnames kept stay resolved throughout.
    /// Returns the addresses already known for each subscription, in order.
    pub(crate) fn set_owner(
        &mut self,
        owner: &str,
        subscriptions: &[Subscription],
        now: Instant,
    ) -> Vec<Vec<IpAddr>> {
        let wanted: HashSet<HostKey> = subscriptions
            .iter()
            .map(|s| HostKey {
                host: s.host.clone(),
                family: s.family,
            })
            .collect();
        // Add before removing, so a hostname another owner shares, or one this
        // owner keeps, is never dropped in between.
        let known = subscriptions
            .iter()
            .map(|s| {
                let key = HostKey {
                    host: s.host.clone(),
                    family: s.family,
                };
                self.subscribe(owner, key, s.policy, now)
            })
            .collect();
        let stale: Vec<HostKey> = self
            .by_owner
            .get(owner)
            .map(|keys| {
                keys.iter()
                    .filter(|k| !wanted.contains(*k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for key in &stale {
            self.unsubscribe(owner, key);
        }
        known
    }

    /// Hostnames due at `now` and not already being looked up; they are marked
    /// in flight until `complete`. A linear scan: the queue holds the
    /// hostnames of one node's config, thousands at most.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Ticket> {
        let mut due = Vec::new();
        for (key, entry) in &mut self.entries {
            if entry.in_flight.is_none() && entry.due() <= now {
                self.next_ticket += 1;
                entry.in_flight = Some(self.next_ticket);
                due.push(Ticket {
                    key: key.clone(),
                    known: entry.addresses.clone(),
                    number: self.next_ticket,
                });
            }
        }
        due
    }

    /// When the next hostname falls due (`None`: nothing to wait for).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| e.in_flight.is_none())
            .map(Entry::due)
            .min()
    }

    /// Records the result of a lookup that finished at `now`. Returns the
    /// notification to send if the address set changed. A result for a
    /// hostname dropped meanwhile (even if subscribed again since) is
    /// discarded.
    ///
    /// Addresses are compared as sets: a server that rotates the order of its
    /// records does not cause a rewrite each refresh, and the first address
    /// (LOGICAL_DNS's pick) stays put while the set is unchanged.
    pub(crate) fn complete(
        &mut self,
        ticket: &Ticket,
        result: Result<Answer, LookupError>,
        now: Instant,
    ) -> Option<HostChanged> {
        let key = &ticket.key;
        let entry = match self.entries.get_mut(key) {
            Some(entry) if entry.in_flight == Some(ticket.number) => entry,
            _ => {
                tracing::debug!(host = %key.host, "lookup result for a dropped hostname ignored");
                return None;
            }
        };
        entry.in_flight = None;
        entry.lookups += 1;
        match result {
            Ok(answer) => {
                entry.schedule.record_success(now, answer.ttl);
                entry.ttl = answer.ttl;
                let partial = answer
                    .partial_failure
                    .map(|reason| format!("{}: {reason}", key.host));
                if let Some(error) = &partial {
                    // Worth a warning when it starts; a family that always
                    // fails (a server that refuses AAAA) would flood the log
                    // at every refresh.
                    if entry.last_error.as_ref() != Some(error) {
                        tracing::warn!(%error, family = %key.family, "DNS lookup answered for one address family only; the family that failed keeps its last good addresses");
                    } else {
                        tracing::debug!(%error, "DNS lookup answered for one address family only, again");
                    }
                }
                entry.last_error = partial;
                if same_set(&entry.addresses, &answer.addresses) {
                    tracing::debug!(host = %key.host, family = %key.family, ttl = ?answer.ttl, "DNS answer unchanged");
                    return None;
                }
                tracing::info!(
                    host = %key.host,
                    family = %key.family,
                    addresses = ?answer.addresses,
                    ttl = ?answer.ttl,
                    "DNS answer changed"
                );
                entry.addresses = answer.addresses;
                Some(HostChanged {
                    host: key.host.clone(),
                    family: key.family,
                    addresses: entry.addresses.clone(),
                    ttl: entry.ttl,
                    owners: entry.owner_names(),
                })
            }
            Err(err) => {
                entry.schedule.record_failure(now);
                entry.failures += 1;
                let consecutive = entry.schedule.consecutive_failures();
                let retry_in = entry.due().saturating_duration_since(now);
                // The first failure of a run is worth a warning; the retries
                // of a long outage would only flood the log.
                if consecutive == 1 {
                    tracing::warn!(error = %err, kept = ?entry.addresses, ?retry_in, "DNS lookup failed; keeping the last good addresses");
                } else {
                    tracing::debug!(error = %err, consecutive, ?retry_in, "DNS lookup failed again");
                }
                entry.last_error = Some(err.to_string());
                None
            }
        }
    }

    /// Addresses last notified for `key`, if it is in the queue.
    pub(crate) fn addresses(&self, key: &HostKey) -> Option<Vec<IpAddr>> {
        self.entries.get(key).map(|e| e.addresses.clone())
    }

    pub(crate) fn snapshot(&self, now: Instant) -> Vec<HostState> {
        self.entries
            .iter()
            .map(|(key, e)| HostState {
                host: key.host.clone(),
                family: key.family,
                owners: e.owner_names(),
                addresses: e.addresses.clone(),
                ttl: e.ttl,
                next_refresh_in: if e.in_flight.is_some() {
                    Duration::ZERO
                } else {
                    e.due().saturating_duration_since(now)
                },
                last_error: e.last_error.clone(),
                lookups: e.lookups,
                failures: e.failures,
                consecutive_failures: e.schedule.consecutive_failures(),
            })
            .collect()
    }
}

fn merged(entry: &Entry) -> RefreshPolicy {
    RefreshPolicy::merge(entry.owners.values()).unwrap_or(entry.policy)
}

fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let a: BTreeSet<&IpAddr> = a.iter().collect();
    let b: BTreeSet<&IpAddr> = b.iter().collect();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::timing::{FailureRefresh, MIN_REFRESH_INTERVAL};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn key(host: &str) -> HostKey {
        HostKey {
            host: host.into(),
            family: LookupFamily::V4Only,
        }
    }

    fn rate(secs: u64, respect_ttl: bool) -> RefreshPolicy {
        RefreshPolicy {
            refresh_rate: S(secs),
            respect_ttl,
            failure_refresh: None,
        }
    }

    fn answer(addrs: &[&str], ttl: u64) -> Result<Answer, LookupError> {
        Ok(Answer::records(
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
            Some(S(ttl)),
        ))
    }

    fn timeout(host: &str) -> Result<Answer, LookupError> {
        Err(LookupError::Failed {
            host: host.into(),
            reason: "request timed out".into(),
        })
    }

    fn state<'a>(states: &'a [HostState], host: &str) -> &'a HostState {
        states.iter().find(|s| s.host == host).unwrap()
    }

    /// Hostnames handed out at `now` (now in flight).
    fn due_keys(q: &mut RefreshQueue, now: Instant) -> Vec<HostKey> {
        q.take_due(now).into_iter().map(|t| t.key).collect()
    }

    /// The ticket of `host`, which must be due at `now`.
    fn take(q: &mut RefreshQueue, host: &str, now: Instant) -> Ticket {
        let due = q.take_due(now);
        due.into_iter()
            .find(|t| t.key.host == host)
            .unwrap_or_else(|| panic!("{host} not due"))
    }

    /// A lookup of `host` that is due at `now` and finishes at once.
    fn lookup(
        q: &mut RefreshQueue,
        host: &str,
        result: Result<Answer, LookupError>,
        now: Instant,
    ) -> Option<HostChanged> {
        let ticket = take(q, host, now);
        q.complete(&ticket, result, now)
    }

    #[test]
    fn new_hostname_is_due_once_until_completed() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        assert!(q
            .subscribe("c1", key("a.test"), rate(5, false), t0)
            .is_empty());
        assert_eq!(due_keys(&mut q, t0), vec![key("a.test")]);
        // In flight: not handed out again, and nothing else to wait for.
        assert!(due_keys(&mut q, t0 + S(60)).is_empty());
        assert_eq!(q.next_due(), None);
        assert_eq!(q.snapshot(t0)[0].next_refresh_in, Duration::ZERO);
    }

    #[test]
    fn success_notifies_then_schedules_by_ttl_and_rate() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(30, true), t0);
        let ticket = take(&mut q, "a.test", t0);
        let t1 = t0 + Duration::from_millis(20);
        let changed = q
            .complete(&ticket, answer(&["10.0.0.1", "10.0.0.2"], 2), t1)
            .unwrap();
        assert_eq!(changed.addresses.len(), 2);
        assert_eq!(changed.ttl, Some(S(2)));
        assert_eq!(changed.owners, vec!["c1".to_string()]);
        // TTL 2 s < rate 30 s with respect_ttl: due 2 s after the answer.
        assert_eq!(q.next_due(), Some(t1 + S(2)));
        assert!(due_keys(&mut q, t1 + S(1)).is_empty());
        assert_eq!(due_keys(&mut q, t1 + S(2)), vec![key("a.test")]);
        let s = q.snapshot(t1);
        assert_eq!(s[0].lookups, 1);
        assert_eq!(s[0].failures, 0);
    }

    #[test]
    fn ttl_longer_than_rate_is_refreshed_at_rate() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(2, true), t0);
        lookup(&mut q, "a.test", answer(&["10.0.0.1"], 30), t0);
        assert_eq!(q.next_due(), Some(t0 + S(2)));
        assert_eq!(q.snapshot(t0 + S(1))[0].next_refresh_in, S(1));
    }

    #[test]
    fn unchanged_set_in_another_order_is_not_a_change() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(5, false), t0);
        let first = lookup(&mut q, "a.test", answer(&["10.0.0.1", "10.0.0.2"], 5), t0);
        assert!(first.is_some());
        let t1 = t0 + S(5);
        let rotated = lookup(&mut q, "a.test", answer(&["10.0.0.2", "10.0.0.1"], 5), t1);
        assert!(rotated.is_none());
        // The notified order stays: LOGICAL_DNS's first address does not move.
        assert_eq!(
            q.addresses(&key("a.test")).unwrap()[0],
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        let t2 = t0 + S(10);
        let changed = lookup(&mut q, "a.test", answer(&["10.0.0.3"], 5), t2).unwrap();
        assert_eq!(
            changed.addresses,
            vec!["10.0.0.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn failure_keeps_addresses_and_backs_off_then_recovers() {
        let t0 = Instant::now();
        let policy = RefreshPolicy {
            failure_refresh: Some(FailureRefresh {
                base: S(1),
                max: S(4),
            }),
            ..rate(5, false)
        };
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), policy, t0);
        lookup(&mut q, "a.test", answer(&["10.0.0.1"], 5), t0);

        let mut t = t0 + S(5);
        let mut delays = Vec::new();
        for _ in 0..4 {
            assert!(lookup(&mut q, "a.test", timeout("a.test"), t).is_none());
            let next = q.next_due().unwrap();
            delays.push(next - t);
            t = next;
        }
        assert_eq!(delays, [1, 2, 4, 4].map(S));
        let s = &q.snapshot(t)[0];
        assert_eq!(s.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!((s.lookups, s.failures, s.consecutive_failures), (5, 4, 4));
        assert_eq!(s.last_error.as_deref(), Some("a.test: request timed out"));

        // Back: the new answer is applied, the error cleared, backoff reset.
        let changed = lookup(&mut q, "a.test", answer(&["10.0.0.9"], 60), t);
        assert!(changed.is_some());
        let s = &q.snapshot(t)[0];
        assert_eq!((s.last_error.clone(), s.consecutive_failures), (None, 0));
        assert_eq!(q.next_due(), Some(t + S(5)));
    }

    #[test]
    fn first_lookup_failing_notifies_nothing_and_retries() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(3, false), t0);
        let nx = Err(LookupError::NxDomain {
            host: "a.test".into(),
        });
        assert!(lookup(&mut q, "a.test", nx, t0).is_none());
        assert!(q.addresses(&key("a.test")).unwrap().is_empty());
        // No failure schedule set: the default backoff, from 1 s.
        assert_eq!(q.next_due(), Some(t0 + S(1)));
    }

    #[test]
    fn an_answer_with_a_failed_family_is_a_success_that_shows_the_failure() {
        let t0 = Instant::now();
        let all = HostKey {
            host: "a.test".into(),
            family: LookupFamily::All,
        };
        let mut q = RefreshQueue::default();
        q.subscribe("c1", all.clone(), rate(30, true), t0);
        let ticket = q.take_due(t0).remove(0);
        assert!(
            ticket.known.is_empty(),
            "nothing known before the first answer"
        );
        q.complete(&ticket, answer(&["10.0.0.1", "fd00::1"], 5), t0);

        // The next lookup is handed what is in force, for the family that
        // fails to keep; its answer is applied as any success.
        let t1 = t0 + S(5);
        let ticket = q.take_due(t1).remove(0);
        assert_eq!(
            ticket.known,
            ["10.0.0.1", "fd00::1"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        let partial = answer(&["10.0.0.2", "fd00::1"], 2).map(|a| Answer {
            partial_failure: Some("AAAA: Query Refused".into()),
            ..a
        });
        let changed = q.complete(&ticket, partial, t1).unwrap();
        assert_eq!(changed.addresses.len(), 2);
        let s = &q.snapshot(t1)[0];
        assert_eq!(s.last_error.as_deref(), Some("a.test: AAAA: Query Refused"));
        assert_eq!((s.failures, s.consecutive_failures), (0, 0));
        assert_eq!(q.next_due(), Some(t1 + S(2)), "refreshed at the TTL");

        // Every family answering clears the error.
        let t2 = t1 + S(2);
        lookup(&mut q, "a.test", answer(&["10.0.0.2", "fd00::1"], 2), t2);
        assert_eq!(q.snapshot(t2)[0].last_error, None);
    }

    #[test]
    fn shared_hostname_is_dropped_only_when_its_last_owner_leaves() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(30, false), t0);
        q.subscribe("c2", key("a.test"), rate(2, false), t0);
        q.subscribe("c2", key("b.test"), rate(5, false), t0);
        let tickets = q.take_due(t0);
        assert_eq!(tickets.len(), 2, "one lookup per hostname, not per owner");
        q.complete(&tickets[0], answer(&["10.0.0.1"], 60), t0);
        q.complete(&tickets[1], answer(&["10.0.0.2"], 60), t0);
        // The faster owner sets the pace while it is there.
        assert_eq!(q.next_due(), Some(t0 + S(2)));

        q.unsubscribe_owner("c2");
        let s = q.snapshot(t0);
        assert_eq!(s.len(), 1);
        assert_eq!(state(&s, "a.test").owners, vec!["c1".to_string()]);
        assert_eq!(
            q.next_due(),
            Some(t0 + S(30)),
            "pace back to the remaining owner"
        );

        q.unsubscribe_owner("c1");
        assert!(q.snapshot(t0).is_empty());
        assert_eq!(q.next_due(), None);
        assert!(q.take_due(t0 + S(3600)).is_empty());
    }

    #[test]
    fn result_for_a_dropped_hostname_is_discarded() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(5, false), t0);
        let old = take(&mut q, "a.test", t0);
        q.unsubscribe_owner("c1");
        assert!(q.complete(&old, answer(&["10.0.0.1"], 5), t0).is_none());
        assert!(
            q.snapshot(t0).is_empty(),
            "not resurrected by a late result"
        );

        // Subscribed again while the old lookup still runs: the new entry gets
        // its own lookup, and the old result does not settle it.
        let t1 = t0 + S(1);
        q.subscribe("c1", key("a.test"), rate(5, false), t1);
        let new = take(&mut q, "a.test", t1);
        assert!(q.complete(&old, answer(&["10.0.0.1"], 5), t1).is_none());
        let s = &q.snapshot(t1)[0];
        assert_eq!((s.lookups, s.addresses.len()), (0, 0));
        assert!(
            q.take_due(t1 + S(60)).is_empty(),
            "the new lookup is still in flight"
        );
        assert!(q.complete(&new, answer(&["10.0.0.2"], 5), t1).is_some());
    }

    #[test]
    fn late_subscriber_gets_the_known_addresses() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(5, false), t0);
        lookup(&mut q, "a.test", answer(&["10.0.0.1"], 5), t0);
        let known = q.subscribe("c2", key("a.test"), rate(5, false), t0 + S(1));
        assert_eq!(known, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(
            q.take_due(t0 + S(1)).is_empty(),
            "no extra lookup for a known hostname"
        );
    }

    #[test]
    fn set_owner_replaces_without_dropping_kept_hostnames() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        let sub = |host: &str| Subscription {
            host: host.into(),
            family: LookupFamily::V4Only,
            policy: rate(5, false),
        };
        q.set_owner("c1", &[sub("a.test"), sub("b.test")], t0);
        let tickets = q.take_due(t0);
        q.complete(&tickets[0], answer(&["10.0.0.1"], 5), t0);

        let known = q.set_owner("c1", &[sub("a.test"), sub("c.test")], t0 + S(1));
        assert_eq!(known[0], vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert!(known[1].is_empty());
        let hosts: Vec<String> = q.snapshot(t0).into_iter().map(|s| s.host).collect();
        assert_eq!(hosts, ["a.test", "c.test"]);
        assert_eq!(
            state(&q.snapshot(t0), "a.test").lookups,
            1,
            "a.test kept its state"
        );

        q.set_owner("c1", &[], t0 + S(2));
        assert!(q.snapshot(t0).is_empty());
    }

    #[test]
    fn zero_ttl_is_floored() {
        let t0 = Instant::now();
        let mut q = RefreshQueue::default();
        q.subscribe("c1", key("a.test"), rate(5, true), t0);
        lookup(&mut q, "a.test", answer(&["10.0.0.1"], 0), t0);
        assert_eq!(q.next_due(), Some(t0 + MIN_REFRESH_INTERVAL));
    }
}
