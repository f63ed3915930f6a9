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
#include "outlier.h"

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

/* Take one token from the bucket of this client netns and filter, refilling it
 * first for the whole fill intervals that passed. Lock-free: the refill is
 * claimed by moving last_fill_ns with compare-and-swap, tokens are taken with
 * compare-and-swap (a few attempts; a connect that loses every race is
 * refused, as if the bucket were empty). */
static __always_inline bool kn_rl_take(struct kn_connect_ctx *c, struct kn_filter *f)
{
	struct kn_rl_key key = {};
	struct kn_rl_bucket *b;
	__u64 now = bpf_ktime_get_ns();
	__u64 max = f->rl_max_tokens;

	key.netns_cookie = c->nc.netns_cookie;
	__builtin_memcpy(&key.listener, &c->listener, sizeof(key.listener));
	key.filter = c->filter;
	b = bpf_map_lookup_elem(&kn_rl_buckets, &key);
	if (!b) {
		struct kn_rl_bucket fresh = { .tokens = max, .last_fill_ns = now };

		bpf_map_update_elem(&kn_rl_buckets, &key, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&kn_rl_buckets, &key);
		if (!b)
			return true; /* no state: fail open */
	}
	__u64 interval = f->rl_fill_interval_ns;
	__u64 last = b->last_fill_ns;

	if (interval && now > last && now - last >= interval) {
		__u64 fills = (now - last) / interval;

		if (__sync_val_compare_and_swap(&b->last_fill_ns, last, last + fills * interval) == last) {
			__u64 add = fills >= max ? max * f->rl_tokens_per_fill : fills * f->rl_tokens_per_fill;
			__u64 t = __sync_fetch_and_add(&b->tokens, add) + add;

			if (t > max)
				__sync_val_compare_and_swap(&b->tokens, t, max);
		}
	}
	for (int i = 0; i < 4; i++) {
		__u64 t = b->tokens;

		if (t == 0)
			break;
		if (__sync_val_compare_and_swap(&b->tokens, t, t - 1) == t)
			return true;
	}
	__sync_fetch_and_add(&b->limited, 1);
	return false;
}

#define KN_FILTER_CONTINUE 0
#define KN_FILTER_UNTOUCHED -1
#define KN_FILTER_REJECT -2

/* Stage 2: the filter decides the cluster (tcp_proxy), or leaves the
 * connection alone (HTTP on a stock kernel, passthrough). A local rate limit
 * in front of it refuses a connect that finds no token (KN_FILTER_REJECT). */
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

	if (f->rl_max_tokens && !kn_rl_take(c, f)) {
		kn_count(KN_STAT_RATE_LIMITED);
		return KN_FILTER_REJECT;
	}
	if (f->kind == KN_FILTER_HTTP) {
		kn_count(KN_STAT_HTTP_UNTOUCHED);
		return -1;
	}
	if (f->kind != KN_FILTER_TCP_PROXY) {
		kn_count(KN_STAT_PASSTHROUGH);
		return -1;
	}
	if (f->weighted_count == 0) {
		__builtin_memcpy(&c->nc.cluster, &f->cluster, sizeof(c->nc.cluster));
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
			__builtin_memcpy(&c->nc.cluster, &rec->weighted.cluster, sizeof(c->nc.cluster));
			return 0;
		}
	}
	return -1;
}

/* The endpoint of a level whose cumulative weight range holds `point`:
 * the smallest index whose cumulative weight exceeds it. */
static __always_inline struct kn_endpoint *kn_search(void *inner, struct kn_priority_level *level, __u32 point)
{
	struct kn_cluster_record *rec;
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

/* Fill the scratch endpoint key (its cluster name is already set) for `ep`. */
static __always_inline void kn_probe_set(struct kn_connect_ctx *c, struct kn_endpoint *ep)
{
	__builtin_memcpy(c->probe.addr, ep->addr, 16);
	c->probe.port = ep->port;
	c->probe.family = ep->family;
}

static __always_inline __u64 kn_endpoint_active(struct kn_connect_ctx *c, struct kn_endpoint *ep)
{
	struct kn_endpoint_conns *conns;

	kn_probe_set(c, ep);
	conns = bpf_map_lookup_elem(&kn_endpoint_conns, &c->probe);
	return conns ? conns->active : 0;
}

/* LEAST_REQUEST at L4: `choice_count` weighted random picks (with
 * replacement, as Envoy's power-of-two-choices), the one with the fewest
 * active connections wins; ties keep the earlier pick. */
static __always_inline struct kn_endpoint *kn_least_request(struct kn_connect_ctx *c, void *inner,
							    struct kn_priority_level *level, __u32 choices)
{
	struct kn_endpoint *best = NULL;
	__u64 best_active = 0;

	for (__u32 i = 0; i < KN_MAX_CHOICES; i++) {
		if (i >= choices)
			break;
		struct kn_endpoint *ep = kn_search(inner, level, bpf_get_prandom_u32() % level->total_weight);

		if (!ep)
			return NULL;
		__u64 active = kn_endpoint_active(c, ep);

		if (!best || active < best_active) {
			best = ep;
			best_active = active;
		}
	}
	return best;
}

/* splitmix64's finaliser; the compiler (hash_lb.rs, mix64) applies the same
 * function when it checks its tables. */
static __always_inline __u64 kn_mix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* MAGLEV / RING_HASH: the endpoint in the level's lookup table at the slot of
 * the key, `probe` slots further on (to step over an ejected endpoint).
 *
 * The key is the client's network namespace cookie: at connect time the
 * source address is not bound yet, and a netns is one client pod, so every
 * connection of a pod goes to the same endpoint, as a sidecar's own view of
 * "source IP" hashing would. */
static __always_inline struct kn_endpoint *kn_hash_pick(struct kn_connect_ctx *c, void *inner,
							struct kn_priority_level *level, __u32 probe)
{
	struct kn_cluster_record *rec;
	__u32 size = level->table_size;

	if (size == 0 || size > KN_MAX_HASH_TABLE_SIZE)
		return NULL;
	__u32 slot = (__u32)((kn_mix64(c->nc.netns_cookie) + probe) % size);
	__u32 key = level->table_first + slot / KN_HASH_SLOTS_PER_RECORD;

	rec = bpf_map_lookup_elem(inner, &key);
	if (!rec || rec->kind != KN_CREC_HASH_SLOTS)
		return NULL;
	key = rec->slots.endpoint[slot & (KN_HASH_SLOTS_PER_RECORD - 1)];
	rec = bpf_map_lookup_elem(inner, &key);
	if (!rec || rec->kind != KN_CREC_ENDPOINT)
		return NULL;
	return &rec->endpoint;
}

/* Stage 3: pick an endpoint of the cluster. The lowest priority level that has
 * endpoints of the destination's family serves; within it the endpoint is
 * chosen on the cumulative weights by the cluster's lb policy. */
static __always_inline struct kn_endpoint *kn_pick_endpoint(struct kn_connect_ctx *c, void *inner,
							    struct kn_cluster_header *hdr, __u8 family,
							    __u32 attempt)
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
		if (hdr->lb_policy == KN_LB_LEAST_REQUEST)
			return kn_least_request(c, inner, level, hdr->choice_count);
		if (hdr->lb_policy == KN_LB_MAGLEV || hdr->lb_policy == KN_LB_RING_HASH)
			return kn_hash_pick(c, inner, level, attempt);

		__u32 point;

		if (hdr->lb_policy == KN_LB_ROUND_ROBIN)
			point = __sync_fetch_and_add(&hdr->rr_cursor, 1) % level->total_weight;
		else
			point = bpf_get_prandom_u32() % level->total_weight;
		return kn_search(inner, level, point);
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
	void *inner = bpf_map_lookup_elem(&kn_clusters, &c->nc.cluster);
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
	c->max_connections = rec->header.max_connections;
	__builtin_memcpy(&c->probe.cluster, &c->nc.cluster, sizeof(c->probe.cluster));
	c->od_failures = rec->header.od_failures;
	c->od_max_ejected = rec->header.od_max_ejected;
	c->od_base_ejection_ms = rec->header.od_base_ejection_ms;
	*picked = kn_pick_endpoint(c, inner, &rec->header, c->dst_family, 0);
	/* Outlier detection: pick again (the next slot for hash policies) while
	 * the pick is ejected; after KN_EJECT_REPICKS the last pick is used. */
	for (__u32 attempt = 1; attempt <= KN_EJECT_REPICKS; attempt++) {
		if (!c->od_failures || !*picked)
			break;
		kn_probe_set(c, *picked);
		if (!kn_probe_ejected(c))
			break;
		*picked = kn_pick_endpoint(c, inner, &rec->header, c->dst_family, attempt);
	}
	if (!*picked) {
		kn_count(KN_STAT_NO_ENDPOINT);
		return KN_NO_ENDPOINT;
	}
	return KN_REWRITE;
}

/* Give back what a socket holds: its circuit-breaker slot and its active
 * count on the endpoint, each to the very entry it took them from (same
 * generation), if that entry still exists. Called when it closes (any state)
 * and when the socket connects again after a failed connect. */
static __always_inline void kn_release(struct kn_sock_state *st)
{
	if (st->cb_gen) {
		struct kn_netns_conns *n = bpf_map_lookup_elem(&kn_netns_conns, &st->nc);

		if (n && n->gen == st->cb_gen)
			kn_put(&n->active);
		st->cb_gen = 0;
	}
	if (st->ep_gen) {
		struct kn_endpoint_conns *e = bpf_map_lookup_elem(&kn_endpoint_conns, &st->endpoint);

		if (e && e->gen == st->ep_gen)
			kn_put(&e->active);
		st->ep_gen = 0;
	}
}

/* Circuit breaking: take a slot of the (netns, cluster) budget, or refuse.
 * `*held`: the generation of the entry the slot was taken in (0: none, when
 * no entry could be made and the connect is let through uncounted). */
static __always_inline bool kn_cb_reserve(struct kn_connect_ctx *c, __u64 *held)
{
	struct kn_netns_conns *n = bpf_map_lookup_elem(&kn_netns_conns, &c->nc);

	*held = 0;
	if (!n) {
		struct kn_netns_conns fresh = { .gen = kn_new_gen() };

		bpf_map_update_elem(&kn_netns_conns, &c->nc, &fresh, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&kn_netns_conns, &c->nc);
		if (!n)
			return true; /* no state: fail open */
	}
	if (__sync_fetch_and_add(&n->active, 1) < c->max_connections) {
		*held = n->gen;
		return true;
	}
	kn_put(&n->active);
	__sync_fetch_and_add(&n->overflow, 1);

	struct kn_cluster_conns *cc = kn_cluster_conns_get(&c->nc.cluster);

	if (cc)
		__sync_fetch_and_add(&cc->cx_overflow, 1);
	return false;
}

/* Count the socket on its endpoint (for LEAST_REQUEST and the dump). */
static __always_inline void kn_endpoint_hold(struct kn_sock_state *st)
{
	struct kn_endpoint_conns *e = bpf_map_lookup_elem(&kn_endpoint_conns, &st->endpoint);

	if (!e) {
		struct kn_endpoint_conns fresh = { .gen = kn_new_gen() };

		bpf_map_update_elem(&kn_endpoint_conns, &st->endpoint, &fresh, BPF_NOEXIST);
		e = bpf_map_lookup_elem(&kn_endpoint_conns, &st->endpoint);
		if (!e)
			return;
	}
	__sync_fetch_and_add(&e->active, 1);
	__sync_fetch_and_add(&e->total, 1);
	st->ep_gen = e->gen;
}

/* Remember what the socket dialled (getpeername, sockops) and take what it
 * holds: a circuit-breaker slot when the cluster has max_connections, and an
 * active count on the endpoint. Returns false (and keeps nothing) when the
 * circuit breaker refuses the connect. */
static __always_inline bool kn_admit(struct bpf_sock_addr *ctx, struct kn_connect_ctx *c, struct kn_endpoint *ep)
{
	struct kn_sock_state *st = bpf_sk_storage_get(&kn_socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u64 cb_gen = 0;

	if (!st) {
		/* Without socket storage nothing could be released: no accounting. */
		return true;
	}
	kn_release(st); /* a second connect() on a socket whose first one failed */
	if (c->max_connections && !kn_cb_reserve(c, &cb_gen)) {
		bpf_sk_storage_delete(&kn_socks, ctx->sk);
		return false;
	}
	st->cb_gen = cb_gen;
	st->orig_family = c->dst_family;
	st->cc_gen = 0;
	st->established = 0;
	st->orig_port = (__u16)ctx->user_port;
	__builtin_memcpy(st->orig_addr, c->dst_addr, 16);
	__builtin_memcpy(&st->nc, &c->nc, sizeof(st->nc));
	kn_probe_set(c, ep);
	__builtin_memcpy(&st->endpoint, &c->probe, sizeof(st->endpoint));
	kn_endpoint_hold(st);
	kn_outlier_track(st, c);
	return true;
}

#endif /* KN_STAGES_H */
