/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every kernel-native map, declared once. Sizes marked "set by the daemon"
 * are placeholders: the loader sets them from its capacity flags before load. */
#ifndef KN_MAPS_H
#define KN_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "kernel_native.h"

/* One read-only instance of each shared record type. They give the object
 * full BTF for types that are otherwise only reached through inner-map
 * templates (clang would emit forward declarations), and they put the C
 * layouts into the generated skeleton, where the Rust tests compare them with
 * the daemon's own definitions. Never read at run time. */
const volatile struct kn_listener_record kn_layout_listener_record;
const volatile struct kn_cluster_record kn_layout_cluster_record;
const volatile struct kn_listener_key kn_layout_listener_key;
const volatile struct kn_name kn_layout_name;
const volatile struct kn_sock_state kn_layout_sock_state;
const volatile struct kn_cluster_conns kn_layout_cluster_conns;
const volatile struct kn_netns_cluster_key kn_layout_netns_cluster_key;
const volatile struct kn_netns_conns kn_layout_netns_conns;
const volatile struct kn_endpoint_key kn_layout_endpoint_key;
const volatile struct kn_endpoint_conns kn_layout_endpoint_conns;
const volatile struct kn_rl_key kn_layout_rl_key;
const volatile struct kn_rl_bucket kn_layout_rl_bucket;
const volatile struct kn_conn_event kn_layout_conn_event;

/* Template of one listener's flattened tree. Real inner maps are created by
 * the daemon with exactly as many records as the listener needs. */
struct kn_listener_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct kn_listener_record);
	__uint(max_entries, 1);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, struct kn_listener_key);
	__uint(max_entries, 16384); /* set by the daemon: --max-listeners */
	__array(values, struct kn_listener_inner);
} kn_listeners SEC(".maps");

struct kn_cluster_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct kn_cluster_record);
	__uint(max_entries, 1);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, struct kn_name);
	__uint(max_entries, 65536); /* set by the daemon: --max-clusters */
	__array(values, struct kn_cluster_inner);
} kn_clusters SEC(".maps");

/* Active connections per cluster, kept by sockops. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kn_name);
	__type(value, struct kn_cluster_conns);
	__uint(max_entries, 65536); /* set by the daemon: --max-clusters */
} kn_cluster_conns SEC(".maps");

/* Circuit breaking: active connections per (client netns, cluster). LRU: a
 * namespace that goes away takes its entries with it eventually. An entry
 * evicted under open connections loses their count (see kn_sock_state). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kn_netns_cluster_key);
	__type(value, struct kn_netns_conns);
	__uint(max_entries, 65536); /* set by the daemon: --max-netns-cluster-counters */
} kn_netns_conns SEC(".maps");

/* Active connections per endpoint (by cluster name + address + port). The
 * daemon deletes the entries of endpoints that left their cluster. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kn_endpoint_key);
	__type(value, struct kn_endpoint_conns);
	__uint(max_entries, 65536); /* set by the daemon: --max-endpoint-counters */
} kn_endpoint_conns SEC(".maps");

/* Local rate limit token buckets per (client netns, listener, filter). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kn_rl_key);
	__type(value, struct kn_rl_bucket);
	__uint(max_entries, 65536); /* fixed; LRU evicts the least recently used */
} kn_rl_buckets SEC(".maps");

/* What each redirected socket dialled (for getpeername) and where it went. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct kn_sock_state);
} kn_socks SEC(".maps");

/* Scratch carried from one tail-call stage to the next. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct kn_connect_ctx);
	__uint(max_entries, 1);
} kn_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KN_STAT_COUNT);
} kn_stats SEC(".maps");

static __always_inline void kn_count(__u32 stat)
{
	__u64 *value = bpf_map_lookup_elem(&kn_stats, &stat);

	if (value)
		*value += 1; /* per-CPU: no atomics needed */
}

/* The generation of a new counter entry: random (no state shared between
 * CPUs or daemons), never 0, which means "holds nothing" in kn_sock_state. */
static __always_inline __u64 kn_new_gen(void)
{
	return (((__u64)bpf_get_prandom_u32() << 32) | bpf_get_prandom_u32()) | 1;
}

/* Give one back to a counter without ever going below zero. The generation
 * check keeps a socket from releasing into an entry it holds nothing in, but
 * an entry evicted or deleted under a program is recycled at once and may be
 * zeroed between the check and the decrement: a decrement that finds 0 is
 * undone straight away, so a wrapped value never stays. */
static __always_inline void kn_put(__u64 *counter)
{
	if (__sync_fetch_and_sub(counter, 1) == 0)
		__sync_fetch_and_add(counter, 1);
}

/* The cluster's counter entry, created (with a fresh generation) on first use. */
static __always_inline struct kn_cluster_conns *kn_cluster_conns_get(const struct kn_name *cluster)
{
	struct kn_cluster_conns *cc = bpf_map_lookup_elem(&kn_cluster_conns, cluster);

	if (cc)
		return cc;
	struct kn_cluster_conns fresh = { .gen = kn_new_gen() };

	bpf_map_update_elem(&kn_cluster_conns, cluster, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&kn_cluster_conns, cluster);
}

static __always_inline struct kn_connect_ctx *kn_ctx(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&kn_scratch, &zero);
}

#endif /* KN_MAPS_H */
