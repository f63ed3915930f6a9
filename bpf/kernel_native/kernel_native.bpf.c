// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Kernel-native mode, compat (stock kernel) L4 pipeline:
 *
 *   cgroup/connect4|6  find the listener  --tail call-->  filter chain
 *   --tail call-->  filter (tcp_proxy)  --tail call-->  cluster: rewrite the destination
 *
 *   cgroup/getpeername4|6  report the address the client dialled, not the endpoint
 *   sockops                count active connections per cluster; release what a
 *                          socket holds (circuit-breaker slot, endpoint count) at close;
 *                          report connect outcomes to outlier detection (lib/outlier.h)
 *
 * A connect refused by policy (circuit breaker, local rate limit) returns 0
 * from cgroup/connect: the application's connect() fails at once with EPERM.
 *
 * Only TCP is steered; other sockets pass untouched.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "kernel_native.h"
#include "lib/maps.h"
#include "lib/addr.h"
#include "lib/stages.h"
#include "lib/conn_events.h"

#define KN_SOCK_STREAM 1
#define KN_TCP_CLOSE 7

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Declared here, filled in by libbpf from the initializers below the stages. */
struct kn_stage_array {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, KN_STAGE_COUNT);
	__uint(key_size, sizeof(__u32)); /* no BTF key: the kernel refuses BTF on prog arrays */
	__array(values, int(struct bpf_sock_addr *));
};
extern struct kn_stage_array kn_stages4 SEC(".maps");
extern struct kn_stage_array kn_stages6 SEC(".maps");

/* ---- the last stage: rewrite ---- */

/* `v6` is a constant after inlining: connect4 programs may not touch
 * user_ip6, so the other branch must disappear at compile time. */
static __always_inline int kn_finish(struct bpf_sock_addr *ctx, struct kn_connect_ctx *c, const bool v6)
{
	struct kn_endpoint *ep = NULL;
	int outcome = kn_cluster_stage(c, &ep);

	if (outcome == KN_NO_ENDPOINT)
		return KN_REJECT;
	if (outcome != KN_REWRITE || !ep)
		return KN_ALLOW;
	if (!kn_admit(ctx, c, ep)) {
		kn_count(KN_STAT_CX_OVERFLOW);
		return KN_REJECT;
	}
	if (v6)
		kn_write_dst6(ctx, ep->family, ep->addr, bpf_htons(ep->port));
	else
		kn_write_dst4(ctx, ep->addr, bpf_htons(ep->port));
	kn_count(KN_STAT_REDIRECTED);
	return KN_ALLOW;
}

/* ---- stage programs, once per family (tail calls need the same attach type) ---- */

#define KN_STAGE_PROGRAMS(fam, sec)                                                  \
	SEC(sec)                                                                     \
	int kn_cluster##fam(struct bpf_sock_addr *ctx)                              \
	{                                                                            \
		struct kn_connect_ctx *c = kn_ctx();                                 \
		return c ? kn_finish(ctx, c, fam == 6) : KN_ALLOW;                   \
	}                                                                            \
	SEC(sec)                                                                     \
	int kn_filter##fam(struct bpf_sock_addr *ctx)                               \
	{                                                                            \
		struct kn_connect_ctx *c = kn_ctx();                                 \
		if (!c)                                                              \
			return KN_ALLOW;                                             \
		int verdict = kn_filter_stage(c);                                    \
		if (verdict == KN_FILTER_REJECT)                                     \
			return KN_REJECT;                                            \
		if (verdict < 0)                                                     \
			return KN_ALLOW;                                             \
		bpf_tail_call(ctx, &kn_stages##fam, KN_STAGE_CLUSTER);               \
		kn_count(KN_STAT_TAIL_CALL_FAILED);                                  \
		return KN_ALLOW;                                                     \
	}                                                                            \
	SEC(sec)                                                                     \
	int kn_filter_chain##fam(struct bpf_sock_addr *ctx)                         \
	{                                                                            \
		struct kn_connect_ctx *c = kn_ctx();                                 \
		if (!c)                                                              \
			return KN_ALLOW;                                             \
		if (kn_filter_chain_stage(c) < 0) {                                  \
			kn_count(KN_STAT_NO_CHAIN);                                  \
			return KN_ALLOW;                                             \
		}                                                                    \
		bpf_tail_call(ctx, &kn_stages##fam, KN_STAGE_FILTER);                \
		kn_count(KN_STAT_TAIL_CALL_FAILED);                                  \
		return KN_ALLOW;                                                     \
	}

KN_STAGE_PROGRAMS(4, "cgroup/connect4")
KN_STAGE_PROGRAMS(6, "cgroup/connect6")

struct kn_stage_array kn_stages4 SEC(".maps") = {
	.values = {
		[KN_STAGE_FILTER_CHAIN] = (void *)&kn_filter_chain4,
		[KN_STAGE_FILTER] = (void *)&kn_filter4,
		[KN_STAGE_CLUSTER] = (void *)&kn_cluster4,
	},
};

struct kn_stage_array kn_stages6 SEC(".maps") = {
	.values = {
		[KN_STAGE_FILTER_CHAIN] = (void *)&kn_filter_chain6,
		[KN_STAGE_FILTER] = (void *)&kn_filter6,
		[KN_STAGE_CLUSTER] = (void *)&kn_cluster6,
	},
};

/* ---- entry programs ---- */

/* Common start of connect4/6: fill the scratch context and find the listener.
 * NULL: not ours (not TCP, or no listener) and the connect goes on untouched. */
static __always_inline struct kn_connect_ctx *kn_begin(struct bpf_sock_addr *ctx, const bool v6)
{
	struct kn_connect_ctx *c;

	if (ctx->type != KN_SOCK_STREAM)
		return NULL;
	kn_count(KN_STAT_CONNECT_SEEN);
	c = kn_ctx();
	if (!c)
		return NULL;
	__builtin_memset(c, 0, sizeof(*c));
	c->nc.netns_cookie = bpf_get_netns_cookie(ctx);
	if (v6) {
		c->dst_family = kn_read_dst6(ctx, c->dst_addr);
	} else {
		__u32 ip = ctx->user_ip4;

		__builtin_memcpy(c->dst_addr, &ip, 4);
		c->dst_family = KN_FAMILY_V4;
	}
	c->listener.family = c->dst_family;
	c->listener.port = bpf_ntohs((__u16)ctx->user_port);
	if (!kn_find_listener(c)) {
		kn_count(KN_STAT_NO_LISTENER);
		return NULL;
	}
	return c;
}

SEC("cgroup/connect4")
int kn_connect4(struct bpf_sock_addr *ctx)
{
	if (!kn_begin(ctx, false))
		return KN_ALLOW;
	bpf_tail_call(ctx, &kn_stages4, KN_STAGE_FILTER_CHAIN);
	kn_count(KN_STAT_TAIL_CALL_FAILED);
	return KN_ALLOW;
}

SEC("cgroup/connect6")
int kn_connect6(struct bpf_sock_addr *ctx)
{
	if (!kn_begin(ctx, true))
		return KN_ALLOW;
	bpf_tail_call(ctx, &kn_stages6, KN_STAGE_FILTER_CHAIN);
	kn_count(KN_STAT_TAIL_CALL_FAILED);
	return KN_ALLOW;
}

/* A redirected socket reports the address it dialled, as it would through a proxy. */
SEC("cgroup/getpeername4")
int kn_getpeername4(struct bpf_sock_addr *ctx)
{
	struct kn_sock_state *st = bpf_sk_storage_get(&kn_socks, ctx->sk, 0, 0);

	if (st && st->orig_family == KN_FAMILY_V4)
		kn_write_dst4(ctx, st->orig_addr, st->orig_port);
	return KN_ALLOW;
}

SEC("cgroup/getpeername6")
int kn_getpeername6(struct bpf_sock_addr *ctx)
{
	struct kn_sock_state *st = bpf_sk_storage_get(&kn_socks, ctx->sk, 0, 0);

	if (st)
		kn_write_dst6(ctx, st->orig_family, st->orig_addr, st->orig_port);
	return KN_ALLOW;
}

/* Active connections per cluster: +1 when a redirected socket is established,
 * -1 when it closes.
 *
 * Circuit-breaker slots and endpoint counts are taken at connect (in
 * cgroup/connect, so concurrent connects cannot overshoot max_connections)
 * and given back (to the entry they were taken from, never below zero)
 * when the socket reaches TCP_CLOSE from any state: the state
 * callback is switched on at TCP_CONNECT_CB, before the SYN leaves, so a
 * refused or timed-out active open (SYN_SENT -> CLOSE) releases too. */
SEC("sockops")
int kn_sockops(struct bpf_sock_ops *skops)
{
	struct kn_sock_state *st;
	struct kn_cluster_conns *conns;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		st = bpf_sk_storage_get(&kn_socks, sk, 0, 0);
		if (st) {
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
			kn_conn_started(sk);
		}
		return 1;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		st = bpf_sk_storage_get(&kn_socks, sk, 0, 0);
		if (!st || st->cc_gen)
			return 1;
		st->established = 1;
		kn_outlier_outcome(st, false);
		kn_conn_established(skops, sk, st);
		/* Looked up first (kn_cluster_conns_get): the counter exists after
		 * a cluster's first connection, and an update (even one refused
		 * with BPF_NOEXIST) hashes the 128-byte name once more and takes
		 * the bucket lock, on every connection. */
		conns = kn_cluster_conns_get(&st->nc.cluster);
		if (!conns)
			return 1;
		__sync_fetch_and_add(&conns->active, 1);
		__sync_fetch_and_add(&conns->total, 1);
		st->cc_gen = conns->gen;
		/* Normally on since TCP_CONNECT_CB; a socket that connected
		 * before these programs were attached gets it here. */
		if (!(skops->bpf_sock_ops_cb_flags & BPF_SOCK_OPS_STATE_CB_FLAG))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] != KN_TCP_CLOSE) {
			kn_conn_state(sk, skops->args[1]);
			return 1;
		}
		st = bpf_sk_storage_get(&kn_socks, sk, 0, 0);
		if (!st)
			return 1;
		kn_outlier_outcome(st, !st->established);
		kn_conn_closed(skops, sk, st);
		kn_release(st);
		if (!st->cc_gen)
			return 1;
		/* The daemon deletes a removed cluster's counter; one made again
		 * when the cluster came back never counted this socket. */
		conns = bpf_map_lookup_elem(&kn_cluster_conns, &st->nc.cluster);
		if (conns && conns->gen == st->cc_gen)
			kn_put(&conns->active);
		st->cc_gen = 0;
		return 1;
	}
	return 1;
}
