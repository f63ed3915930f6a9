/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection events for metrics and access logs: sockops notes when a
 * redirected socket starts connecting, reports when its active open completes
 * (KN_CONN_OPENED) and, at TCP_CLOSE, what it did (KN_CONN_CLOSED: addresses,
 * cluster, bytes, retransmissions, losses, duration). Events go through the
 * ring buffer kn_conn_events to the daemon.
 *
 * Off (kn_telemetry_config == 0) a redirected socket costs one array lookup
 * at connect and a failed SK_STORAGE lookup at its FIN transitions and at
 * close: no storage, no event.
 */
#ifndef KN_CONN_EVENTS_H
#define KN_CONN_EVENTS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "kernel_native.h"
#include "maps.h"

#define KN_AF_INET 2
#define KN_AF_INET6 10
#define KN_TCP_FIN_WAIT1 4
#define KN_TCP_CLOSE_WAIT 8
#define KN_TCP_LAST_ACK 9
#define KN_TCP_CLOSING 11

/* Written by the daemon (bits KN_TELEMETRY_*). One generation per daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} kn_telemetry_config SEC(".maps");

/* Consumed by the live daemon only: fresh per daemon, never pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KN_CONN_EVENTS_BYTES);
} kn_conn_events SEC(".maps");

/* Start time of each socket seen at TCP_CONNECT_CB while events were on. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct kn_conn_start);
} kn_conn_start SEC(".maps");

static __always_inline __u32 kn_telemetry(void)
{
	__u32 zero = 0;
	__u32 *flags = bpf_map_lookup_elem(&kn_telemetry_config, &zero);

	return flags ? *flags : 0;
}

/* TCP_CONNECT_CB of a redirected socket. `sk` is skops->sk, checked non-NULL
 * by the caller (the verifier tracks the checked copy, not a re-read). */
static __always_inline void kn_conn_started(struct bpf_sock *sk)
{
	struct kn_conn_start *cs;

	if (!kn_telemetry())
		return;
	cs = bpf_sk_storage_get(&kn_conn_start, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (cs)
		cs->start_ns = bpf_ktime_get_ns();
}


/* Waking the daemon for every event costs a context switch per connection.
 * Events are batched: the daemon drains the ring on a short timer, and is
 * woken early only when a batch has piled up.
 *
 * Only the event that takes the backlog over the mark wakes it. Forcing a
 * wakeup on every event while the backlog stays above the mark (until the
 * woken consumer gets to run) queued an irq_work, a self-IPI and a
 * cross-CPU wakeup per event, inside the sock_ops run: that cost grew with
 * whatever slowed the consumer (a busy daemon core) and was most of
 * sock_ops' per-connect time under a connect storm (issue 9). */
#define KN_CONN_EVENTS_WAKEUP_BYTES (64 * 1024)

static __always_inline __u64 kn_conn_events_wakeup(__u64 size)
{
	__u64 avail = bpf_ringbuf_query(&kn_conn_events, BPF_RB_AVAIL_DATA);

	/* + 8: the ring buffer's record header (BPF_RINGBUF_HDR_SZ) */
	return avail <= KN_CONN_EVENTS_WAKEUP_BYTES && avail + size + 8 > KN_CONN_EVENTS_WAKEUP_BYTES
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

/* The peer's FIN reached this socket: tcp_fin() sets SOCK_DONE. This also
 * covers FIN_WAIT2 -> CLOSE, where no state tells a received FIN from a
 * timeout or a reset. */
static __always_inline __u64 kn_peer_fin_received(struct bpf_sock *sk)
{
	struct tcp_sock *tp;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	return (tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags >> SOCK_DONE) & 1;
}

static __always_inline void kn_conn_emit(struct bpf_sock_ops *skops, const struct kn_sock_state *st,
					 struct kn_conn_start *cs, __u32 kind)
{
	struct kn_conn_event ev = {};

	ev.kind = kind;
	ev.established = st->established;
	ev.orig_family = st->orig_family;
	__builtin_memcpy(ev.orig_addr, st->orig_addr, sizeof(ev.orig_addr));
	ev.orig_port = bpf_ntohs(st->orig_port);
	if (skops->family == KN_AF_INET6) {
		ev.family = KN_FAMILY_V6;
		__u32 r[4] = {skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
			      skops->remote_ip6[3]};
		__u32 l[4] = {skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2],
			      skops->local_ip6[3]};
		__builtin_memcpy(ev.remote_addr, r, 16);
		__builtin_memcpy(ev.local_addr, l, 16);
	} else {
		__u32 r = skops->remote_ip4, l = skops->local_ip4;

		ev.family = KN_FAMILY_V4;
		__builtin_memcpy(ev.remote_addr, &r, 4);
		__builtin_memcpy(ev.local_addr, &l, 4);
	}
	/* remote_port: network byte order in the upper 16 bits; local_port: host order */
	ev.remote_port = (__u16)bpf_ntohl(skops->remote_port);
	ev.local_port = (__u16)skops->local_port;
	ev.netns_cookie = st->nc.netns_cookie;
	ev.duration_ns = bpf_ktime_get_ns() - cs->start_ns;
	/* Sequence space to payload: the SYN once the open completed, our FIN
	 * once everything we sent (it is last) is acknowledged, the peer's FIN. */
	__u64 acked = skops->bytes_acked, received = skops->bytes_received;
	__u64 overhead = st->established + (cs->fin_sent && skops->snd_una == skops->snd_nxt);

	ev.bytes_sent = acked > overhead ? acked - overhead : 0;
	__u64 fin_rcvd = cs->fin_rcvd || kn_peer_fin_received(skops->sk);

	ev.bytes_received = received > fin_rcvd ? received - fin_rcvd : 0;
	ev.total_retrans = skops->total_retrans;
	ev.lost_out = skops->lost_out;
	__builtin_memcpy(&ev.cluster, &st->nc.cluster, sizeof(ev.cluster));
	if (bpf_ringbuf_output(&kn_conn_events, &ev, sizeof(ev), kn_conn_events_wakeup(sizeof(ev))))
		kn_count(KN_STAT_CONN_EVENTS_DROPPED);
}

/* STATE_CB (any new state): note the FINs. */
static __always_inline void kn_conn_state(struct bpf_sock *sk, __u32 new_state)
{
	struct kn_conn_start *cs;

	if (new_state != KN_TCP_FIN_WAIT1 && new_state != KN_TCP_LAST_ACK &&
	    new_state != KN_TCP_CLOSE_WAIT && new_state != KN_TCP_CLOSING)
		return;
	cs = bpf_sk_storage_get(&kn_conn_start, sk, 0, 0);
	if (!cs)
		return;
	if (new_state == KN_TCP_FIN_WAIT1 || new_state == KN_TCP_LAST_ACK)
		cs->fin_sent = 1;
	else
		cs->fin_rcvd = 1;
}

/* ACTIVE_ESTABLISHED_CB: counted as opened now, so long-lived connections
 * show up while they live. Only metrics need it. */
static __always_inline void kn_conn_established(struct bpf_sock_ops *skops, struct bpf_sock *sk,
						const struct kn_sock_state *st)
{
	struct kn_conn_start *cs;

	if (!(kn_telemetry() & KN_TELEMETRY_METRICS))
		return;
	cs = bpf_sk_storage_get(&kn_conn_start, sk, 0, 0);
	if (cs)
		kn_conn_emit(skops, st, cs, KN_CONN_OPENED);
}

/* STATE_CB -> TCP_CLOSE: one event per socket whose start was recorded,
 * whatever the switches say now (an opened connection is always closed). */
static __always_inline void kn_conn_closed(struct bpf_sock_ops *skops, struct bpf_sock *sk,
					   const struct kn_sock_state *st)
{
	struct kn_conn_start *cs = bpf_sk_storage_get(&kn_conn_start, sk, 0, 0);

	if (!cs)
		return;
	kn_conn_emit(skops, st, cs, KN_CONN_CLOSED);
	bpf_sk_storage_delete(&kn_conn_start, sk);
}

#endif /* KN_CONN_EVENTS_H */
