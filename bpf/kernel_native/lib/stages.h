/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The connect-time pipeline, one function per stage. Each stage is run as its
 * own program (tail call) for connect4 and for connect6: the kernel only lets a
 * program tail-call programs of the same attach type.
 *
 * Return values follow cgroup/connect: 1 lets the connect proceed (rewritten or
 * untouched), 0 rejects it (the caller sees EPERM).
 */
#ifndef KN_STAGES_H
#define KN_STAGES_H

#include "maps.h"
#include "addr.h"

#define KN_ALLOW 1
#define KN_REJECT 0

static __always_inline void *kn_listener_inner(struct kn_connect_ctx *c)
{
	return bpf_map_lookup_elem(&kn_listeners, &c->listener);
}

/* Entry: find the listener for the destination, exact address first, then the
 * wildcard address of the same port. Fills the scratch context. */
static __always_inline bool kn_find_listener(struct kn_connect_ctx *c)
{
	__builtin_memcpy(c->listener.addr, c->dst_addr, 16);
	if (bpf_map_lookup_elem(&kn_listeners, &c->listener))
		return true;
	__builtin_memset(c->listener.addr, 0, 16);
	return bpf_map_lookup_elem(&kn_listeners, &c->listener) != NULL;
}

/* Stage 1: pick the filter of the first chain-match entry whose prefix holds
 * the destination (the compiler ordered them most specific first). */
static __always_inline int kn_filter_chain_stage(struct kn_connect_ctx *c)
{
	void *inner = kn_listener_inner(c);
	struct kn_listener_record *rec;
	__u32 key = 0;

	if (!inner)
		return -1;
	rec = bpf_map_lookup_elem(inner, &key);
	if (!rec || rec->kind != KN_LREC_HEADER)
		return -1;

	__u32 count = rec->header.match_count;
	__u32 filter = rec->header.default_filter;

	for (__u32 i = 0; i < KN_MAX_CHAIN_MATCHES; i++) {
		if (i >= count)
			break;
		key = i + 1;
		rec = bpf_map_lookup_elem(inner, &key);
		if (!rec || rec->kind != KN_LREC_CHAIN_MATCH)
			return -1;
		struct kn_chain_match *m = &rec->chain_match;

		if (m->family != KN_FAMILY_ANY && m->family != c->dst_family)
			continue;
		if (kn_prefix_match(c->dst_addr, m->addr, m->prefix_len)) {
			filter = m->filter;
			break;
		}
	}
	if (filter == KN_NONE)
		return -1;
	c->filter = filter;
	return 0;
}

/* Stage 2: the filter decides the cluster (tcp_proxy), or leaves the
 * connection alone (HTTP on a stock kernel, passthrough). */
static __always_inline int kn_filter_stage(struct kn_connect_ctx *c)
{
	void *inner = kn_listener_inner(c);
	struct kn_listener_record *rec;

	if (!inner)
		return -1;
	rec = bpf_map_lookup_elem(inner, &c->filter);
	if (!rec || rec->kind != KN_LREC_FILTER)
		return -1;

	struct kn_filter *f = &rec->filter;

	if (f->kind == KN_FILTER_HTTP) {
		kn_count(KN_STAT_HTTP_UNTOUCHED);
		return -1;
	}
	if (f->kind != KN_FILTER_TCP_PROXY) {
		kn_count(KN_STAT_PASSTHROUGH);
		return -1;
	}
	if (f->weighted_count == 0) {
		__builtin_memcpy(&c->cluster, &f->cluster, sizeof(c->cluster));
		return 0;
	}
	if (f->total_weight == 0)
		return -1;

	/* weighted_clusters: a random point on the cumulative weights. */
	__u32 point = bpf_get_prandom_u32() % f->total_weight;
	__u32 first = f->weighted_first, count = f->weighted_count;

	for (__u32 i = 0; i < KN_MAX_WEIGHTED_CLUSTERS; i++) {
		if (i >= count)
			break;
		__u32 key = first + i;

		rec = bpf_map_lookup_elem(inner, &key);
		if (!rec || rec->kind != KN_LREC_WEIGHTED_CLUSTER)
			return -1;
		if (point < rec->weighted.cumulative_weight) {
			__builtin_memcpy(&c->cluster, &rec->weighted.cluster, sizeof(c->cluster));
			return 0;
		}
	}
	return -1;
}

/* Stage 3: pick an endpoint of the cluster. The lowest priority level that has
 * endpoints of the destination's family serves; within it the endpoint is
 * chosen on the cumulative weights by the cluster's lb policy. */
static __always_inline struct kn_endpoint *kn_pick_endpoint(void *inner, struct kn_cluster_header *hdr,
							    __u8 family)
{
	__u32 levels = hdr->level_count[family & 1];

	for (__u32 l = 0; l < KN_MAX_PRIORITIES; l++) {
		if (l >= levels)
			break;
		__u32 key = KN_CLUSTER_LEVEL_INDEX(family & 1, l);
		struct kn_cluster_record *rec = bpf_map_lookup_elem(inner, &key);

		if (!rec || rec->kind != KN_CREC_LEVEL)
			return NULL;
		struct kn_priority_level *level = &rec->level;

		if (level->count == 0 || level->total_weight == 0)
			continue;

		__u32 point;

		if (hdr->lb_policy == KN_LB_ROUND_ROBIN)
			point = __sync_fetch_and_add(&hdr->rr_cursor, 1) % level->total_weight;
		else
			point = bpf_get_prandom_u32() % level->total_weight;

		/* Smallest index whose cumulative weight exceeds the point. */
		__u32 lo = level->first, hi = level->first + level->count - 1;

		for (__u32 step = 0; step < KN_ENDPOINT_SEARCH_STEPS + 1; step++) {
			if (lo >= hi)
				break;
			__u32 mid = lo + (hi - lo) / 2;

			rec = bpf_map_lookup_elem(inner, &mid);
			if (!rec || rec->kind != KN_CREC_ENDPOINT)
				return NULL;
			if (rec->endpoint.cumulative_weight > point)
				hi = mid;
			else
				lo = mid + 1;
		}
		rec = bpf_map_lookup_elem(inner, &lo);
		if (!rec || rec->kind != KN_CREC_ENDPOINT)
			return NULL;
		return &rec->endpoint;
	}
	return NULL;
}

enum kn_cluster_outcome {
	KN_UNTOUCHED = 0,
	KN_REWRITE = 1,
	KN_NO_ENDPOINT = 2,
};

static __always_inline int kn_cluster_stage(struct kn_connect_ctx *c, struct kn_endpoint **picked)
{
	void *inner = bpf_map_lookup_elem(&kn_clusters, &c->cluster);
	__u32 zero = 0;

	if (!inner) {
		kn_count(KN_STAT_NO_CLUSTER);
		return KN_UNTOUCHED;
	}
	struct kn_cluster_record *rec = bpf_map_lookup_elem(inner, &zero);

	if (!rec || rec->kind != KN_CREC_HEADER)
		return KN_UNTOUCHED;
	if (rec->header.passthrough) {
		kn_count(KN_STAT_PASSTHROUGH);
		return KN_UNTOUCHED;
	}
	*picked = kn_pick_endpoint(inner, &rec->header, c->dst_family);
	if (!*picked) {
		kn_count(KN_STAT_NO_ENDPOINT);
		return KN_NO_ENDPOINT;
	}
	return KN_REWRITE;
}

/* Remember what the socket dialled, for getpeername and sockops. */
static __always_inline void kn_remember(struct bpf_sock_addr *ctx, struct kn_connect_ctx *c)
{
	struct kn_sock_state *st = bpf_sk_storage_get(&kn_socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!st)
		return;
	st->orig_family = c->dst_family;
	st->counted = 0;
	st->orig_port = (__u16)ctx->user_port;
	__builtin_memcpy(st->orig_addr, c->dst_addr, 16);
	__builtin_memcpy(&st->cluster, &c->cluster, sizeof(st->cluster));
}

#endif /* KN_STAGES_H */
