/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Outlier detection on connect failures (Cluster.outlier_detection).
 *
 * At L4 a failed active open (SYN_SENT -> CLOSE without ESTABLISHED: refused,
 * timed out, unreachable) is the only failure the kernel sees, so it counts
 * as Envoy's local-origin failure (consecutive_local_origin_failure with
 * split_external_local_origin_errors, else consecutive_5xx). An established
 * connection resets the endpoint's count. At the threshold the endpoint is
 * ejected until now + base_ejection_time x times ejected, if the cluster has
 * room (fewer than od_max_ejected current ejections); the cluster stage
 * steps over ejected endpoints.
 */
#ifndef KN_OUTLIER_H
#define KN_OUTLIER_H

#include "maps.h"

/* Per endpoint, by identity. The daemon deletes the entries of endpoints
 * that left their cluster; LRU bounds what it has not seen yet. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kn_endpoint_key);
	__type(value, struct kn_outlier);
	__uint(max_entries, 65536); /* fixed; LRU evicts the least recently used */
} kn_outliers SEC(".maps");

const volatile struct kn_outlier kn_layout_outlier;

/* cgroup/connect: whether `c->probe` (an endpoint of the chosen cluster) is
 * ejected now. */
static __always_inline bool kn_probe_ejected(struct kn_connect_ctx *c)
{
	struct kn_outlier *o = bpf_map_lookup_elem(&kn_outliers, &c->probe);

	return o && o->ejected_until_ns > bpf_ktime_get_ns();
}

/* cgroup/connect: remember the cluster's settings on the socket, so that
 * sockops can report the outcome of this connect. */
static __always_inline void kn_outlier_track(struct kn_sock_state *st, struct kn_connect_ctx *c)
{
	st->od_tracked = c->od_failures ? 1 : 0;
	st->od_failures = c->od_failures;
	st->od_max_ejected = c->od_max_ejected;
	st->od_base_ejection_ms = c->od_base_ejection_ms;
}

/* Take a free ejection entry of the cluster (compare-and-swap on an entry
 * that is 0 or past). False: od_max_ejected endpoints are ejected already. */
static __always_inline bool kn_claim_ejection(struct kn_sock_state *st, __u64 now, __u64 until)
{
	struct kn_cluster_conns *cc = kn_cluster_conns_get(&st->nc.cluster);

	if (!cc)
		return false;
	for (__u32 i = 0; i < KN_MAX_EJECTED; i++) {
		if (i >= st->od_max_ejected)
			break;
		__u64 old = cc->ejected_until_ns[i];

		if (old > now)
			continue;
		if (__sync_val_compare_and_swap(&cc->ejected_until_ns[i], old, until) == old)
			return true;
	}
	return false;
}

/* sockops: the active open of a tracked socket completed or failed. */
static __always_inline void kn_outlier_outcome(struct kn_sock_state *st, bool failed)
{
	struct kn_outlier *o;

	if (!st->od_tracked)
		return;
	st->od_tracked = 0;
	o = bpf_map_lookup_elem(&kn_outliers, &st->endpoint);
	if (!failed) {
		if (o && o->failures)
			o->failures = 0;
		return;
	}
	if (!o) {
		struct kn_outlier fresh = {};

		bpf_map_update_elem(&kn_outliers, &st->endpoint, &fresh, BPF_NOEXIST);
		o = bpf_map_lookup_elem(&kn_outliers, &st->endpoint);
		if (!o)
			return;
	}
	if (__sync_fetch_and_add(&o->failures, 1) + 1 < st->od_failures)
		return;

	__u64 now = bpf_ktime_get_ns();

	if (o->ejected_until_ns > now)
		return; /* already ejected (connects that were under way) */
	__u64 times = o->times_ejected + 1;
	__u64 until = now + (__u64)st->od_base_ejection_ms * 1000000ULL * times;

	if (!kn_claim_ejection(st, now, until))
		return; /* max_ejection_percent reached: keep counting */
	o->times_ejected = times;
	o->ejected_until_ns = until;
	o->failures = 0;
	__sync_fetch_and_add(&o->ejections, 1);
}

#endif /* KN_OUTLIER_H */
