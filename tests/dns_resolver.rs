//! The `dns` module against a real DNS server: dnsmasq on a 127.0.0.x address
//! of its own, records changed at run time through its hosts directory. No
//! root needed; every query goes to the test's own dnsmasq.
//!
//! Timings are measured from the resolver's own counters and notifications
//! (the moment `lookups` grows, the moment a `HostChanged` arrives), so they
//! include the real query round trip and the driver's scheduling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/dnsmasq.rs"]
mod dnsmasq;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dnsmasq::{dnsmasq_or_skip, Dnsmasq};
use kmesh::dns::{
    DnsResolver, FailureRefresh, HostChanged, HostState, LookupFamily, RefreshPolicy,
    ResolverSettings,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// Slack for a refresh measured against its expected time: the lookup's round
/// trip plus the driver's wake-up, on a loaded 2-core CI machine.
const SLACK: Duration = Duration::from_millis(600);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ips(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

fn set(addrs: &[IpAddr]) -> BTreeSet<IpAddr> {
    addrs.iter().copied().collect()
}

fn policy(refresh: u64, respect_ttl: bool) -> RefreshPolicy {
    RefreshPolicy {
        refresh_rate: secs(refresh),
        respect_ttl,
        failure_refresh: None,
    }
}

/// A resolver that asks only `server`, giving up on a dead one after one
/// 500 ms try (dnsmasq on loopback answers in well under a millisecond).
fn resolver_for(server: &Dnsmasq) -> (DnsResolver, UnboundedReceiver<HostChanged>) {
    DnsResolver::start(&ResolverSettings {
        servers: vec![server.addr],
        timeout: Some(Duration::from_millis(500)),
        attempts: Some(0),
    })
    .unwrap()
}

async fn next_change(rx: &mut UnboundedReceiver<HostChanged>, within: Duration) -> HostChanged {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no DNS change notification within {within:?}"))
        .expect("resolver stopped")
}

fn state(resolver: &DnsResolver, host: &str, family: LookupFamily) -> HostState {
    resolver
        .snapshot()
        .into_iter()
        .find(|s| s.host == host && s.family == family)
        .unwrap_or_else(|| panic!("{host} ({family}) not in the queue"))
}

/// Polls the snapshot until `done` holds for the hostname's state.
async fn wait_state(
    resolver: &DnsResolver,
    host: &str,
    family: LookupFamily,
    within: Duration,
    done: impl Fn(&HostState) -> bool,
) -> HostState {
    let deadline = Instant::now() + within;
    loop {
        let s = state(resolver, host, family);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{host}: condition not met within {within:?}; state {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The instants at which the next `count` lookups of `host` completed.
async fn lookup_times(
    resolver: &DnsResolver,
    host: &str,
    family: LookupFamily,
    count: usize,
) -> Vec<Instant> {
    let mut seen = state(resolver, host, family).lookups;
    let mut times = Vec::new();
    while times.len() < count {
        let s = wait_state(resolver, host, family, secs(40), |s| s.lookups > seen).await;
        times.push(Instant::now());
        seen = s.lookups;
    }
    times
}

fn assert_near(what: &str, measured: Duration, expected: Duration) {
    eprintln!("{what}: {measured:?} (expected ~{expected:?})");
    assert!(
        measured + Duration::from_millis(100) >= expected && measured <= expected + SLACK,
        "{what}: {measured:?}, expected {expected:?} (-100 ms, +{SLACK:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_are_all_returned() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(
        &bin,
        5,
        "10.1.0.1 web.test\n10.1.0.2 web.test\n10.1.0.3 other.test\n",
    );
    let (resolver, mut rx) = resolver_for(&server);

    let known = resolver
        .subscribe(
            "cluster-a",
            "web.test",
            LookupFamily::V4Only,
            policy(5, true),
        )
        .unwrap();
    assert!(known.is_empty(), "nothing known before the first answer");
    let change = next_change(&mut rx, secs(5)).await;
    assert_eq!(change.host, "web.test");
    assert_eq!(set(&change.addresses), ips(&["10.1.0.1", "10.1.0.2"]));
    assert_eq!(change.ttl, Some(secs(5)));
    assert_eq!(change.owners, vec!["cluster-a".to_string()]);

    // A second owner shares the hostname: no new lookup, the addresses at once.
    let known = resolver
        .subscribe(
            "cluster-b",
            "web.test",
            LookupFamily::V4Only,
            policy(5, true),
        )
        .unwrap();
    assert_eq!(set(&known), ips(&["10.1.0.1", "10.1.0.2"]));
    let s = state(&resolver, "web.test", LookupFamily::V4Only);
    assert_eq!(s.owners, ["cluster-a", "cluster-b"]);
    assert_eq!((s.lookups, s.failures), (1, 0));

    // The IPv4 families that fall back or merge give the same A records.
    for family in [LookupFamily::V4Preferred, LookupFamily::All] {
        resolver
            .subscribe("cluster-c", "web.test", family, policy(5, false))
            .unwrap();
        let change = next_change(&mut rx, secs(5)).await;
        assert_eq!(change.family, family);
        assert_eq!(set(&change.addresses), ips(&["10.1.0.1", "10.1.0.2"]));
    }

    // Unsubscribing every owner drops the hostname.
    resolver.unsubscribe_owner("cluster-a");
    resolver.unsubscribe_owner("cluster-b");
    resolver.unsubscribe_owner("cluster-c");
    assert!(resolver.snapshot().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_only_name_resolves_for_v6_families() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(&bin, 5, "fd00:db8::5 six.test\n");
    let (resolver, mut rx) = resolver_for(&server);

    for family in [
        LookupFamily::V6Only,
        LookupFamily::Auto,
        LookupFamily::V4Preferred,
        LookupFamily::All,
    ] {
        resolver
            .subscribe("svc", "six.test", family, policy(5, false))
            .unwrap();
        let change = next_change(&mut rx, secs(5)).await;
        assert_eq!(change.family, family);
        assert_eq!(
            change.addresses,
            vec!["fd00:db8::5".parse::<IpAddr>().unwrap()],
            "{family}"
        );
    }

    // V4_ONLY finds no A record: a failure, nothing notified.
    resolver
        .subscribe("svc", "six.test", LookupFamily::V4Only, policy(5, false))
        .unwrap();
    let s = wait_state(&resolver, "six.test", LookupFamily::V4Only, secs(5), |s| {
        s.failures > 0
    })
    .await;
    assert!(s.addresses.is_empty());
    let error = s.last_error.unwrap();
    assert!(error.contains("no addresses for V4_ONLY"), "{error}");
    assert!(
        rx.try_recv().is_err(),
        "no notification for a failed lookup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_longer_than_refresh_rate_refreshes_at_the_rate() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    // TTL 30 s, refresh rate 2 s: refreshed at ~2 s, and a changed record is
    // seen then, not when the TTL runs out.
    let server = Dnsmasq::start(&bin, 30, "10.2.0.1 rate.test\n");
    let (resolver, mut rx) = resolver_for(&server);
    resolver
        .subscribe("c", "rate.test", LookupFamily::V4Only, policy(2, true))
        .unwrap();
    let first = next_change(&mut rx, secs(5)).await;
    assert_eq!(first.ttl, Some(secs(30)));

    let times = lookup_times(&resolver, "rate.test", LookupFamily::V4Only, 2).await;
    assert_near(
        "TTL 30 s / rate 2 s: interval between lookups",
        times[1] - times[0],
        secs(2),
    );
    let s = state(&resolver, "rate.test", LookupFamily::V4Only);
    assert!(s.next_refresh_in <= secs(2), "{s:?}");

    // Change the record right after a lookup: seen at the next one, ~2 s later.
    lookup_times(&resolver, "rate.test", LookupFamily::V4Only, 1).await;
    let changed_at = Instant::now();
    server.set_hosts("10.2.0.9 rate.test\n");
    let change = next_change(&mut rx, secs(5)).await;
    assert_eq!(
        change.addresses,
        vec!["10.2.0.9".parse::<IpAddr>().unwrap()]
    );
    let seen_after = changed_at.elapsed();
    eprintln!("TTL 30 s / rate 2 s: record change seen after {seen_after:?}");
    assert!(
        seen_after <= secs(2) + SLACK,
        "change seen after {seen_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_shorter_than_refresh_rate_refreshes_at_the_ttl() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    // TTL 2 s, refresh rate 30 s, respect_ttl: refreshed at ~2 s, and a
    // changed record is seen within TTL + 1 s.
    let server = Dnsmasq::start(&bin, 2, "10.3.0.1 ttl.test\n");
    let (resolver, mut rx) = resolver_for(&server);
    resolver
        .subscribe("c", "ttl.test", LookupFamily::V4Only, policy(30, true))
        .unwrap();
    let first = next_change(&mut rx, secs(5)).await;
    assert_eq!(first.ttl, Some(secs(2)));

    let times = lookup_times(&resolver, "ttl.test", LookupFamily::V4Only, 3).await;
    assert_near(
        "TTL 2 s / rate 30 s: interval 1",
        times[1] - times[0],
        secs(2),
    );
    assert_near(
        "TTL 2 s / rate 30 s: interval 2",
        times[2] - times[1],
        secs(2),
    );

    // Changed at an arbitrary moment: seen within TTL + 1 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let changed_at = Instant::now();
    server.set_hosts("10.3.0.7 ttl.test\n10.3.0.8 ttl.test\n");
    let change = next_change(&mut rx, secs(5)).await;
    assert_eq!(set(&change.addresses), ips(&["10.3.0.7", "10.3.0.8"]));
    let seen_after = changed_at.elapsed();
    eprintln!("TTL 2 s / rate 30 s: record change seen after {seen_after:?}");
    assert!(
        seen_after <= secs(3),
        "change seen after {seen_after:?}, TTL + 1 s is 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_ignored_without_respect_ttl() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(&bin, 1, "10.4.0.1 plain.test\n");
    let (resolver, mut rx) = resolver_for(&server);
    resolver
        .subscribe("c", "plain.test", LookupFamily::V4Only, policy(3, false))
        .unwrap();
    next_change(&mut rx, secs(5)).await;
    let times = lookup_times(&resolver, "plain.test", LookupFamily::V4Only, 2).await;
    assert_near(
        "TTL 1 s / rate 3 s, respect_ttl off",
        times[1] - times[0],
        secs(3),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_keeps_the_last_good_addresses_until_it_is_back() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let mut server = Dnsmasq::start(&bin, 1, "10.5.0.1 down.test\n10.5.0.2 down.test\n");
    let (resolver, mut rx) = resolver_for(&server);
    let backoff = RefreshPolicy {
        refresh_rate: secs(1),
        respect_ttl: true,
        failure_refresh: Some(FailureRefresh {
            base: secs(1),
            max: secs(2),
        }),
    };
    resolver
        .subscribe("c", "down.test", LookupFamily::V4Only, backoff)
        .unwrap();
    let first = next_change(&mut rx, secs(5)).await;
    let good = set(&first.addresses);
    assert_eq!(good, ips(&["10.5.0.1", "10.5.0.2"]));

    server.stop();
    let down_at = Instant::now();
    // The first failure ends ~1 s (refresh) + 0.5 s (query timeout) after the
    // stop, then retries come 1 s and 2 s (backoff) + 0.5 s later: ~5 s.
    let s = wait_state(
        &resolver,
        "down.test",
        LookupFamily::V4Only,
        secs(15),
        |s| s.consecutive_failures >= 3,
    )
    .await;
    let third_failure = down_at.elapsed();
    eprintln!("server down: 3 consecutive failures after {third_failure:?}");
    // The last success was 0-1 s before the stop: third failure 4.5-5.5 s after it.
    assert!(
        third_failure >= Duration::from_millis(4400)
            && third_failure <= Duration::from_millis(5500) + SLACK,
        "third failure after {third_failure:?}, expected 4.5-5.5 s"
    );
    assert_eq!(set(&s.addresses), good, "last good addresses kept");
    assert!(s.failures >= 3);
    assert!(s.last_error.is_some());
    assert!(s.next_refresh_in <= secs(2), "backoff capped at 2 s: {s:?}");
    assert!(rx.try_recv().is_err(), "failures notify nothing");
    assert_eq!(
        resolver
            .addresses("down.test", LookupFamily::V4Only)
            .map(|a| set(&a)),
        Some(good)
    );

    // Back, with a new answer: applied at the next retry (at most the cap).
    server.set_hosts("10.5.0.3 down.test\n");
    server.restart();
    let back_at = Instant::now();
    let change = next_change(&mut rx, secs(2) + SLACK).await;
    eprintln!(
        "server back: new answer applied after {:?}",
        back_at.elapsed()
    );
    assert_eq!(
        change.addresses,
        vec!["10.5.0.3".parse::<IpAddr>().unwrap()]
    );
    let s = state(&resolver, "down.test", LookupFamily::V4Only);
    assert_eq!((s.last_error, s.consecutive_failures), (None, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_keeps_the_last_good_addresses() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(&bin, 1, "10.6.0.1 gone.test\n");
    let (resolver, mut rx) = resolver_for(&server);
    resolver
        .subscribe("c", "gone.test", LookupFamily::Auto, policy(1, true))
        .unwrap();
    let first = next_change(&mut rx, secs(5)).await;
    assert_eq!(first.addresses, vec!["10.6.0.1".parse::<IpAddr>().unwrap()]);

    // The name disappears: NXDOMAIN, the old address stays.
    server.set_hosts("10.6.0.50 unrelated.test\n");
    let s = wait_state(&resolver, "gone.test", LookupFamily::Auto, secs(5), |s| {
        s.failures >= 2
    })
    .await;
    assert_eq!(s.addresses, first.addresses);
    let error = s.last_error.unwrap();
    assert!(error.contains("NXDOMAIN"), "{error}");

    // It comes back with another address: applied.
    server.set_hosts("10.6.0.2 gone.test\n");
    let change = next_change(&mut rx, secs(3)).await;
    assert_eq!(
        change.addresses,
        vec!["10.6.0.2".parse::<IpAddr>().unwrap()]
    );
}

/// Issue 14: one family failing (here dnsmasq REFUSES AAAA for a name it has
/// only an A record for, having no upstream) must not throw the other
/// family's answer away, for every family that asks for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_family_does_not_throw_the_other_familys_answer_away() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(
        &bin,
        2,
        "127.0.0.69 four.example\nfd00:db8::69 six.example\n",
    );
    let (resolver, mut rx) = resolver_for(&server);

    // A answers, AAAA is refused: ALL and AUTO (AAAA preferred) use the A
    // answer; AAAA-only: V4_PREFERRED falls back to it when A is refused.
    for (host, family, want) in [
        ("four.example", LookupFamily::All, "127.0.0.69"),
        ("four.example", LookupFamily::Auto, "127.0.0.69"),
        ("six.example", LookupFamily::V4Preferred, "fd00:db8::69"),
        ("six.example", LookupFamily::All, "fd00:db8::69"),
    ] {
        resolver
            .subscribe("svc", host, family, policy(30, true))
            .unwrap();
        let change = next_change(&mut rx, secs(5)).await;
        assert_eq!((change.host.as_str(), change.family), (host, family));
        assert_eq!(change.addresses, vec![want.parse::<IpAddr>().unwrap()]);
        assert_eq!(change.ttl, Some(secs(2)), "{host} {family}");
        let s = state(&resolver, host, family);
        assert_eq!((s.failures, s.consecutive_failures), (0, 0), "{s:?}");
        let error = s.last_error.clone().unwrap_or_default();
        assert!(error.contains("Refused"), "{host} {family}: {s:?}");
        // A success: refreshed at the TTL, not on a failure schedule.
        assert!(s.next_refresh_in <= secs(2), "{s:?}");
    }
}

/// Issue 14: with both families asked for (ALL), a family whose query fails
/// keeps its own last good addresses while the other's fresh answer is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_family_keeps_its_own_last_good_addresses() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(&bin, 1, "10.7.0.1 dual.example\nfd00::7:1 dual.example\n");
    let (resolver, mut rx) = resolver_for(&server);
    resolver
        .subscribe("svc", "dual.example", LookupFamily::All, policy(30, true))
        .unwrap();
    let first = next_change(&mut rx, secs(5)).await;
    assert_eq!(set(&first.addresses), ips(&["10.7.0.1", "fd00::7:1"]));

    // The A record changes and AAAA starts being refused: the new A address
    // with the last good AAAA one.
    server.set_hosts("10.7.0.2 dual.example\n");
    let change = next_change(&mut rx, secs(3)).await;
    assert_eq!(set(&change.addresses), ips(&["10.7.0.2", "fd00::7:1"]));
    let s = state(&resolver, "dual.example", LookupFamily::All);
    assert!(
        s.last_error.as_deref().is_some_and(|e| e.contains("AAAA")),
        "{s:?}"
    );

    // The other way round: AAAA answers anew, A is refused and keeps 10.7.0.2.
    server.set_hosts("fd00::7:2 dual.example\n");
    let change = next_change(&mut rx, secs(3)).await;
    assert_eq!(set(&change.addresses), ips(&["10.7.0.2", "fd00::7:2"]));

    // Both answer again: exactly the fresh records, the error cleared.
    server.set_hosts("10.7.0.3 dual.example\nfd00::7:3 dual.example\n");
    let change = next_change(&mut rx, secs(3)).await;
    assert_eq!(set(&change.addresses), ips(&["10.7.0.3", "fd00::7:3"]));
    let s = wait_state(&resolver, "dual.example", LookupFamily::All, secs(3), |s| {
        s.last_error.is_none()
    })
    .await;
    assert_eq!(s.failures, 0, "{s:?}");

    // Neither family answers (the name is gone, both refused): a failure,
    // every last good address stays.
    server.set_hosts("10.7.0.50 unrelated.example\n");
    let s = wait_state(&resolver, "dual.example", LookupFamily::All, secs(3), |s| {
        s.failures >= 1
    })
    .await;
    assert_eq!(set(&s.addresses), ips(&["10.7.0.3", "fd00::7:3"]));
    assert!(rx.try_recv().is_err(), "a failure notifies nothing");
}

/// Issue 14: a lookup that fails without a failure schedule of its own (the
/// dual-engine ServiceEntry policy: refresh at least every 60 s) is retried
/// after 1 s, then 2 s, 4 s... (to 30 s), not after the 60 s refresh rate;
/// once the name resolves it is seen at the next retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lookups_back_off_from_one_second_and_an_answer_is_seen_at_the_next_retry() {
    let Some(bin) = dnsmasq_or_skip() else { return };
    let server = Dnsmasq::start(&bin, 2, "10.8.0.50 unrelated.test\n");
    let (resolver, mut rx) = resolver_for(&server);
    resolver
        .subscribe("svc", "late.test", LookupFamily::All, policy(60, true))
        .unwrap();
    let s = wait_state(&resolver, "late.test", LookupFamily::All, secs(5), |s| {
        s.failures >= 1
    })
    .await;
    assert!(
        s.next_refresh_in <= secs(1),
        "first retry in at most 1 s: {s:?}"
    );

    // NXDOMAIN comes back at once, so the lookups are the retry schedule:
    // after the k-th failure in a row the next lookup comes 2^(k-1) s later.
    // Each lookup is timed as it is seen, with the failure count it left, up
    // to the fourth failure (1 s, 2 s, 4 s apart).
    // (when a lookup was seen, the failures it left, lookups so far); the
    // start is not a lookup's time, so the first interval is not judged.
    let mut seen = (None, s.consecutive_failures, s.lookups);
    while seen.1 < 4 {
        let s = wait_state(&resolver, "late.test", LookupFamily::All, secs(40), |s| {
            s.lookups > seen.2
        })
        .await;
        let now = Instant::now();
        if let Some(at) = seen.0.filter(|_| s.consecutive_failures == seen.1 + 1) {
            assert_near(
                &format!("retry after failure {}", seen.1),
                now - at,
                secs(1 << (seen.1 - 1)),
            );
        }
        seen = (Some(now), s.consecutive_failures, s.lookups);
    }
    let s = state(&resolver, "late.test", LookupFamily::All);
    assert_eq!(s.consecutive_failures, 4, "{s:?}");
    assert!(s.next_refresh_in <= secs(8), "next retry in 8 s: {s:?}");

    // The name appears: seen at the next retry, at most 8 s away.
    server.set_hosts("10.8.0.1 late.test\n");
    let added = Instant::now();
    let change = next_change(&mut rx, secs(8) + SLACK).await;
    eprintln!("name added: resolved after {:?}", added.elapsed());
    assert_eq!(
        change.addresses,
        vec!["10.8.0.1".parse::<IpAddr>().unwrap()]
    );
    let s = state(&resolver, "late.test", LookupFamily::All);
    assert_eq!((s.consecutive_failures, s.last_error.clone()), (0, None));
    assert!(s.next_refresh_in <= secs(2), "back on the TTL: {s:?}");
}
