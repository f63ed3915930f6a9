//! When a hostname is looked up next: pure decisions over an injected clock.
//!
//! Nothing here reads the time or sleeps. The caller passes `now` in, so the
//! tests drive the schedule with made-up instants and the driver uses the real
//! clock; the rules are the same either way.

use std::time::{Duration, Instant};

/// No refresh is scheduled sooner than this after the previous lookup, whatever
/// the TTL or refresh rate says. A record with TTL 0 (dnsmasq's default for
/// local data) would otherwise turn the queue into a busy loop against the
/// DNS server.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_REFRESH_RATE: Duration = Duration::from_secs(5);

/// The failure schedule of a subscriber that sets none: retry after 1 s,
/// doubling up to 30 s (and never later than the refresh rate). A DNS blip,
/// or a server that starts after the daemon, then costs a second or two,
/// not a whole refresh period; a long outage costs a query per 30 s.
pub const DEFAULT_FAILURE_REFRESH: FailureRefresh = FailureRefresh {
    base: MIN_REFRESH_INTERVAL,
    max: Duration::from_secs(30),
};

/// Exponential retry after failed lookups: Envoy's `dns_failure_refresh_rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRefresh {
    /// Delay after the first failure; doubles with each further failure.
    pub base: Duration,
    /// The delay never grows past this (raised to `base` if smaller).
    pub max: Duration,
}

/// How one subscriber wants its hostname refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Longest time between two lookups (Envoy's `dns_refresh_rate`).
    pub refresh_rate: Duration,
    /// Refresh when the answer's TTL runs out if that is sooner than
    /// `refresh_rate` (Envoy's `respect_dns_ttl`).
    pub respect_ttl: bool,
    /// Retry schedule after failures; `None` is [`DEFAULT_FAILURE_REFRESH`]
    /// with its cap lowered to `refresh_rate`. (Envoy retries at
    /// `dns_refresh_rate` when `dns_failure_refresh_rate` is unset; a minute
    /// of refresh rate would then be a minute without endpoints.)
    pub failure_refresh: Option<FailureRefresh>,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_rate: DEFAULT_REFRESH_RATE,
            respect_ttl: false,
            failure_refresh: None,
        }
    }
}

impl RefreshPolicy {
    /// One policy for a hostname that several subscribers share: the most
    /// eager of each setting. Refreshing sooner than a subscriber asked only
    /// costs a query; refreshing later would leave another subscriber stale.
    /// `None` when there are no policies (the hostname has no subscribers).
    pub fn merge<'a>(policies: impl IntoIterator<Item = &'a RefreshPolicy>) -> Option<Self> {
        policies.into_iter().copied().reduce(|a, b| Self {
            refresh_rate: a.refresh_rate.min(b.refresh_rate),
            respect_ttl: a.respect_ttl || b.respect_ttl,
            failure_refresh: match (a.failure_refresh, b.failure_refresh) {
                (None, None) => None,
                // An unset failure rate stands for the default backoff under
                // that subscriber's refresh rate; written out, the two merge
                // like any other pair.
                (x, y) => {
                    let x = x.unwrap_or_else(|| a.default_failure_refresh());
                    let y = y.unwrap_or_else(|| b.default_failure_refresh());
                    Some(FailureRefresh {
                        base: x.base.min(y.base),
                        max: x.max.min(y.max),
                    })
                }
            },
        })
    }

    /// The failure schedule an unset `failure_refresh` stands for: a retry
    /// never comes later than a refresh after a success would.
    fn default_failure_refresh(&self) -> FailureRefresh {
        FailureRefresh {
            base: DEFAULT_FAILURE_REFRESH.base,
            max: DEFAULT_FAILURE_REFRESH.max.min(self.effective_rate()),
        }
    }

    /// The refresh rate as used: never below [`MIN_REFRESH_INTERVAL`].
    fn effective_rate(&self) -> Duration {
        self.refresh_rate.max(MIN_REFRESH_INTERVAL)
    }

    /// Delay after a successful lookup whose records carried `ttl` (the
    /// smallest record TTL; `None` when the answer had no DNS records, e.g.
    /// an IP literal).
    pub fn success_delay(&self, ttl: Option<Duration>) -> Duration {
        let rate = self.effective_rate();
        match ttl {
            Some(ttl) if self.respect_ttl => ttl.clamp(MIN_REFRESH_INTERVAL, rate),
            _ => rate,
        }
    }

    /// Delay after the `consecutive`-th failure in a row (1 for the first).
    pub fn failure_delay(&self, consecutive: u32) -> Duration {
        let failure = self
            .failure_refresh
            .unwrap_or_else(|| self.default_failure_refresh());
        let base = failure.base.max(MIN_REFRESH_INTERVAL);
        let max = failure.max.max(base);
        // base * 2^(n-1), computed without overflow: once the shift or the
        // product overflows the result is past any sane `max` anyway.
        let doublings = consecutive.saturating_sub(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        base.checked_mul(factor).unwrap_or(max).min(max)
    }
}

/// The outcome of the latest lookup of one hostname, and when it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success { at: Instant, ttl: Option<Duration> },
    Failure { at: Instant },
}

/// Lookup history of one hostname, just enough to decide the next lookup.
///
/// The due time is derived on demand from the last outcome and the policy in
/// force *now*, so when a subscriber with a faster refresh rate joins (or the
/// fastest one leaves) the schedule follows without being rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSchedule {
    created: Instant,
    last: Option<Outcome>,
    consecutive_failures: u32,
}

impl RefreshSchedule {
    /// A hostname first seen at `now`: due at once.
    pub fn new(now: Instant) -> Self {
        Self {
            created: now,
            last: None,
            consecutive_failures: 0,
        }
    }

    /// A lookup that finished at `at` returned addresses. Resets the failure
    /// backoff.
    pub fn record_success(&mut self, at: Instant, ttl: Option<Duration>) {
        self.last = Some(Outcome::Success { at, ttl });
        self.consecutive_failures = 0;
    }

    /// A lookup that finished at `at` failed (timeout, NXDOMAIN, no records...).
    pub fn record_failure(&mut self, at: Instant) {
        self.last = Some(Outcome::Failure { at });
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the next lookup is due under `policy`.
    pub fn next_due(&self, policy: &RefreshPolicy) -> Instant {
        match self.last {
            None => self.created,
            Some(Outcome::Success { at, ttl }) => at + policy.success_delay(ttl),
            Some(Outcome::Failure { at }) => at + policy.failure_delay(self.consecutive_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn policy(rate: u64, respect_ttl: bool) -> RefreshPolicy {
        RefreshPolicy {
            refresh_rate: S(rate),
            respect_ttl,
            failure_refresh: None,
        }
    }

    fn with_backoff(rate: u64, base: u64, max: u64) -> RefreshPolicy {
        RefreshPolicy {
            failure_refresh: Some(FailureRefresh {
                base: S(base),
                max: S(max),
            }),
            ..policy(rate, false)
        }
    }

    #[test]
    fn new_hostname_is_due_immediately() {
        let t0 = Instant::now();
        let schedule = RefreshSchedule::new(t0);
        assert_eq!(schedule.next_due(&policy(5, true)), t0);
    }

    #[test]
    fn ttl_shorter_than_rate_refreshes_at_ttl() {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        schedule.record_success(t0, Some(S(2)));
        assert_eq!(schedule.next_due(&policy(30, true)), t0 + S(2));
    }

    #[test]
    fn ttl_longer_than_rate_refreshes_at_rate() {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        schedule.record_success(t0, Some(S(30)));
        assert_eq!(schedule.next_due(&policy(2, true)), t0 + S(2));
    }

    #[test]
    fn ttl_ignored_without_respect_ttl() {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        schedule.record_success(t0, Some(S(2)));
        assert_eq!(schedule.next_due(&policy(30, false)), t0 + S(30));
        schedule.record_success(t0, Some(S(300)));
        assert_eq!(schedule.next_due(&policy(30, false)), t0 + S(30));
    }

    #[test]
    fn answer_without_ttl_refreshes_at_rate() {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        schedule.record_success(t0, None);
        assert_eq!(schedule.next_due(&policy(7, true)), t0 + S(7));
    }

    #[test]
    fn floor_applies_to_ttl_rate_and_failures() {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        // TTL 0 (dnsmasq's default for local records).
        schedule.record_success(t0, Some(S(0)));
        assert_eq!(
            schedule.next_due(&policy(5, true)),
            t0 + MIN_REFRESH_INTERVAL
        );
        // A refresh rate below the floor.
        let fast = RefreshPolicy {
            refresh_rate: Duration::from_millis(10),
            ..policy(0, true)
        };
        schedule.record_success(t0, Some(S(30)));
        assert_eq!(schedule.next_due(&fast), t0 + MIN_REFRESH_INTERVAL);
        // A failure base below the floor.
        let eager = RefreshPolicy {
            failure_refresh: Some(FailureRefresh {
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
            }),
            ..policy(5, false)
        };
        schedule.record_failure(t0);
        assert_eq!(schedule.next_due(&eager), t0 + MIN_REFRESH_INTERVAL);
    }

    /// The delays after `n` failures in a row, each one 100 s after the last.
    fn failure_delays(p: &RefreshPolicy, n: u64) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        (0..n)
            .map(|i| {
                let at = t0 + S(100 * i);
                schedule.record_failure(at);
                schedule.next_due(p) - at
            })
            .collect()
    }

    #[test]
    fn failure_without_failure_rate_backs_off_from_1s_to_30s() {
        // The dual-engine policy: refresh at least every 60 s.
        assert_eq!(
            failure_delays(&policy(60, true), 8),
            [1, 2, 4, 8, 16, 30, 30, 30].map(S)
        );
        // Never later than the refresh rate a success would wait.
        assert_eq!(failure_delays(&policy(5, true), 5), [1, 2, 4, 5, 5].map(S));
        assert_eq!(failure_delays(&policy(1, false), 3), [1, 1, 1].map(S));
    }

    #[test]
    fn failure_backoff_doubles_up_to_max() {
        let p = with_backoff(5, 1, 10);
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        let mut delays = Vec::new();
        for n in 0..7 {
            let at = t0 + S(100 * n);
            schedule.record_failure(at);
            delays.push(schedule.next_due(&p) - at);
        }
        assert_eq!(delays, [1, 2, 4, 8, 10, 10, 10].map(S));
        assert_eq!(schedule.consecutive_failures(), 7);
    }

    #[test]
    fn failure_backoff_survives_huge_failure_counts() {
        let p = with_backoff(5, 3, 60);
        assert_eq!(p.failure_delay(u32::MAX), S(60));
        assert_eq!(p.failure_delay(40), S(60));
    }

    #[test]
    fn failure_max_below_base_is_raised_to_base() {
        let p = with_backoff(5, 4, 1);
        assert_eq!(p.failure_delay(1), S(4));
        assert_eq!(p.failure_delay(3), S(4));
    }

    #[test]
    fn success_resets_the_backoff() {
        let p = with_backoff(5, 1, 30);
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        schedule.record_failure(t0);
        schedule.record_failure(t0);
        schedule.record_failure(t0);
        assert_eq!(schedule.next_due(&p), t0 + S(4));

        let t1 = t0 + S(10);
        schedule.record_success(t1, Some(S(60)));
        assert_eq!(schedule.consecutive_failures(), 0);
        assert_eq!(schedule.next_due(&p), t1 + S(5));

        let t2 = t1 + S(5);
        schedule.record_failure(t2);
        assert_eq!(schedule.next_due(&p), t2 + S(1), "backoff starts over");
    }

    #[test]
    fn merge_takes_the_most_eager_settings() {
        let a = RefreshPolicy {
            refresh_rate: S(30),
            respect_ttl: true,
            failure_refresh: Some(FailureRefresh {
                base: S(2),
                max: S(60),
            }),
        };
        let b = RefreshPolicy {
            refresh_rate: S(5),
            respect_ttl: false,
            failure_refresh: Some(FailureRefresh {
                base: S(4),
                max: S(20),
            }),
        };
        let merged = RefreshPolicy::merge([&a, &b]).unwrap();
        assert_eq!(merged.refresh_rate, S(5));
        assert!(merged.respect_ttl);
        assert_eq!(
            merged.failure_refresh,
            Some(FailureRefresh {
                base: S(2),
                max: S(20)
            })
        );
        assert_eq!(RefreshPolicy::merge([]), None);
        assert_eq!(RefreshPolicy::merge([&b]), Some(b));
    }

    #[test]
    fn merge_reads_an_unset_failure_rate_as_the_default_backoff() {
        let backoff = with_backoff(30, 2, 60);
        let unset = policy(10, false);
        let merged = RefreshPolicy::merge([&backoff, &unset]).unwrap();
        assert_eq!(
            merged.failure_refresh,
            Some(FailureRefresh {
                base: S(1),
                max: S(10)
            })
        );
        assert_eq!(merged.failure_delay(1), S(1));
        assert_eq!(
            merged.failure_delay(5),
            S(10),
            "never later than the unset subscriber's retry"
        );
        let both_unset = RefreshPolicy::merge([&policy(10, false), &policy(3, false)]).unwrap();
        assert_eq!(both_unset.failure_refresh, None);
        assert_eq!(both_unset.failure_delay(1), S(1));
        assert_eq!(both_unset.failure_delay(4), S(3));
    }

    #[test]
    fn schedule_follows_the_policy_in_force() {
        // A faster subscriber joining shortens the wait already scheduled.
        let t0 = Instant::now();
        let mut schedule = RefreshSchedule::new(t0);
        schedule.record_success(t0, Some(S(300)));
        assert_eq!(schedule.next_due(&policy(30, true)), t0 + S(30));
        let merged = RefreshPolicy::merge([&policy(30, true), &policy(2, false)]).unwrap();
        assert_eq!(schedule.next_due(&merged), t0 + S(2));
    }
}
