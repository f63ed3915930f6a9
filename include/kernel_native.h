/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Kernel-native mode: the one definition of every map key and value that the
 * eBPF programs (bpf/kernel_native/) and the daemon (src/kernel_native/writer)
 * share. The Rust side asserts the sizes and offsets below in its tests.
 *
 * Shape of the data (map-in-map, see DESIGN.md "make-before-break"):
 *
 *   kn_listeners  HASH_OF_MAPS  struct kn_listener_key -> inner HASH(u32 -> struct kn_listener_record)
 *   kn_clusters   HASH_OF_MAPS  struct kn_name         -> inner HASH(u32 -> struct kn_cluster_record)
 *
 * Inside an inner map, records point at each other by index (the u32 key).
 * Between resources, references are by name (a cluster name in a filter).
 */
#ifndef KMESH_KERNEL_NATIVE_H
#define KMESH_KERNEL_NATIVE_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

/* ---- limits (all named; the compiler checks a plan against them) ---- */

/* Cluster and route configuration names, NUL padded. Longer names are rejected. */
#define KMESH_NAME_LEN 128
/* Filter-chain match entries per listener (one per destination prefix). */
#define KN_MAX_CHAIN_MATCHES 64
/* Clusters in one tcp_proxy weighted_clusters. */
#define KN_MAX_WEIGHTED_CLUSTERS 32
/* Distinct priority levels with endpoints, per address family, per cluster. */
#define KN_MAX_PRIORITIES 8
/* Binary-search steps over one priority level: bounds endpoints per level. */
#define KN_ENDPOINT_SEARCH_STEPS 17
#define KN_MAX_ENDPOINTS_PER_LEVEL (1u << KN_ENDPOINT_SEARCH_STEPS)

/* LEAST_REQUEST: at most this many random picks compared (choice_count). */
#define KN_MAX_CHOICES 8

/* MAGLEV / RING_HASH: slots of one priority level's lookup table (Envoy's
 * default Maglev table size, a prime), and slots packed per table record. */
#define KN_MAX_HASH_TABLE_SIZE 65537
#define KN_HASH_SLOTS_PER_RECORD 4

/* Outlier detection: endpoints of one cluster ejected at the same time at
 * most (on top of max_ejection_percent), and picks tried per connect to
 * step over ejected endpoints before one is used anyway (as Envoy's panic). */
#define KN_MAX_EJECTED 16
#define KN_EJECT_REPICKS 4

/* "No record": a filter index meaning "leave this connection untouched". */
#define KN_NONE 0xffffffffu

enum kn_family {
	KN_FAMILY_V4 = 0,
	KN_FAMILY_V6 = 1,
	KN_FAMILY_COUNT = 2,
	/* Only in chain matches: matches a destination of either family. */
	KN_FAMILY_ANY = 2,
};

/* ---- tail-call stages: index into kn_stages4 / kn_stages6 ---- */
enum kn_stage {
	KN_STAGE_FILTER_CHAIN = 0,
	KN_STAGE_FILTER = 1,
	KN_STAGE_CLUSTER = 2,
	KN_STAGE_COUNT = 3,
};

/* ---- keys ---- */

struct kn_listener_key {
	__u8 family;  /* enum kn_family (V4 or V6) */
	__u8 pad;
	__u16 port;   /* host byte order */
	__u8 addr[16]; /* network byte order; IPv4 uses the first 4 bytes */
};

struct kn_name {
	char name[KMESH_NAME_LEN];
};

/* ---- listener inner map: index -> record ---- */

enum kn_listener_record_kind {
	KN_LREC_HEADER = 1,          /* always at index 0 */
	KN_LREC_CHAIN_MATCH = 2,     /* at indices 1..=match_count, first match wins */
	KN_LREC_FILTER = 3,
	KN_LREC_WEIGHTED_CLUSTER = 4,
};

struct kn_listener_header {
	__u32 match_count;
	/* Filter record used when no chain match applies (default_filter_chain), or KN_NONE. */
	__u32 default_filter;
};

struct kn_chain_match {
	__u8 family;     /* enum kn_family, KN_FAMILY_ANY with prefix_len 0 = any destination */
	__u8 prefix_len; /* bits of addr that must equal the destination */
	__u16 pad;
	__u32 filter;    /* index of a KN_LREC_FILTER record, or KN_NONE = leave untouched */
	__u8 addr[16];
};

enum kn_filter_kind {
	KN_FILTER_TCP_PROXY = 1,  /* route to `cluster`, or to the weighted list */
	KN_FILTER_HTTP = 2,       /* HTTP connection manager: needs the enhanced kernel */
	KN_FILTER_PASSTHROUGH = 3 /* keep the original destination */
};

struct kn_filter {
	__u32 kind;            /* enum kn_filter_kind */
	__u32 weighted_first;  /* index of the first KN_LREC_WEIGHTED_CLUSTER, if weighted_count > 0 */
	__u32 weighted_count;
	__u32 total_weight;    /* sum of the weighted entries' weights */
	struct kn_name cluster; /* TCP_PROXY with weighted_count == 0: the cluster; HTTP: route config name */
	/* Local rate limit (network filter before the terminal one): a token
	 * bucket per client netns and filter record. rl_max_tokens == 0: none. */
	__u32 rl_max_tokens;
	__u32 rl_tokens_per_fill;
	__u64 rl_fill_interval_ns;
};

struct kn_weighted_cluster {
	__u32 cumulative_weight; /* weights of this entry and all before it */
	__u32 pad;
	struct kn_name cluster;
};

struct kn_listener_record {
	__u32 kind; /* enum kn_listener_record_kind */
	__u32 pad;
	union {
		struct kn_listener_header header;
		struct kn_chain_match chain_match;
		struct kn_filter filter;
		struct kn_weighted_cluster weighted;
	};
};

/* ---- cluster inner map: index -> record ---- */

enum kn_lb_policy {
	KN_LB_ROUND_ROBIN = 0,
	KN_LB_RANDOM = 1,
	KN_LB_LEAST_REQUEST = 2,
	/* Consistent hashing on the client's netns cookie through the level's
	 * lookup table (the source address is not bound yet at connect). */
	KN_LB_MAGLEV = 3,
	KN_LB_RING_HASH = 4,
};

enum kn_cluster_record_kind {
	KN_CREC_HEADER = 1,    /* index 0 */
	KN_CREC_LEVEL = 2,     /* index KN_CLUSTER_LEVEL_INDEX(family, level) */
	KN_CREC_ENDPOINT = 3,  /* index >= KN_CLUSTER_FIRST_ENDPOINT */
	KN_CREC_HASH_SLOTS = 4, /* after all endpoints: a level's lookup table */
};

#define KN_CLUSTER_LEVEL_INDEX(family, level) (1u + (family) * KN_MAX_PRIORITIES + (level))
#define KN_CLUSTER_FIRST_ENDPOINT (1u + KN_FAMILY_COUNT * KN_MAX_PRIORITIES)

struct kn_cluster_header {
	__u32 lb_policy;   /* enum kn_lb_policy */
	__u32 rr_cursor;   /* advanced atomically by the kernel for ROUND_ROBIN */
	__u8 level_count[KN_FAMILY_COUNT]; /* priority levels written, lowest priority first */
	__u8 passthrough; /* 1: keep the original destination (ORIGINAL_DST cluster) */
	__u8 choice_count; /* LEAST_REQUEST: endpoints compared per pick (>= 2) */
	/* Circuit breaking: active connections allowed per client netns, 0 = no
	 * limit (always below KN_MAX_CONNECTIONS_LIMIT). */
	__u32 max_connections;
	/* Outlier detection: consecutive failed connects that eject an endpoint
	 * (0 = none), endpoints that may be ejected at once, base ejection time. */
	__u16 od_failures;
	__u8 od_max_ejected;
	__u8 od_pad;
	__u32 od_base_ejection_ms;
};

/* One priority level of one family: endpoints [first, first + count). */
struct kn_priority_level {
	__u32 first;
	__u32 count;
	__u32 total_weight;
	__u32 priority;    /* the Envoy priority this level came from (for dumps) */
	/* MAGLEV / RING_HASH: the level's lookup table, table_size slots in
	 * KN_CREC_HASH_SLOTS records from index table_first; 0 = no table. */
	__u32 table_first;
	__u32 table_size;
};

/* KN_HASH_SLOTS_PER_RECORD consecutive slots of a lookup table: slot s is
 * in record table_first + s / KN_HASH_SLOTS_PER_RECORD. Each holds the
 * index of a KN_CREC_ENDPOINT record of the same level. */
struct kn_hash_slots {
	__u32 endpoint[KN_HASH_SLOTS_PER_RECORD];
};

struct kn_endpoint {
	__u8 addr[16];             /* network byte order; IPv4 uses the first 4 bytes */
	__u32 cumulative_weight;   /* within its level: this endpoint's weight and all before it */
	__u16 port;                /* host byte order */
	__u8 family;               /* enum kn_family */
	__u8 pad;
};

struct kn_cluster_record {
	__u32 kind; /* enum kn_cluster_record_kind */
	__u32 pad;
	union {
		struct kn_cluster_header header;
		struct kn_priority_level level;
		struct kn_endpoint endpoint;
		struct kn_hash_slots slots;
	};
};

/* ---- per-connection state ---- */

/* Per endpoint, by identity (survives rewrites of the cluster's records). */
struct kn_endpoint_key {
	struct kn_name cluster;
	__u8 addr[16];  /* as in struct kn_endpoint */
	__u16 port;     /* host byte order */
	__u8 family;
	__u8 pad[5];
};

/* Circuit breaking: per (client netns, cluster). */
struct kn_netns_cluster_key {
	__u64 netns_cookie; /* bpf_get_netns_cookie() of the connecting socket */
	struct kn_name cluster;
};


/* Carried between tail-call stages of one connect (per-CPU scratch; a connect
 * runs start to end on one CPU). */
struct kn_connect_ctx {
	struct kn_listener_key listener; /* the key that found the listener */
	__u8 dst_family;  /* enum kn_family of the dialled address (v4-mapped IPv6 counts as V4) */
	__u8 pad[3];
	__u32 filter;     /* filter record chosen by the filter-chain stage */
	__u8 dst_addr[16]; /* the dialled address; IPv4 uses the first 4 bytes */
	struct kn_netns_cluster_key nc; /* the client's netns; the cluster chosen by the filter stage */
	struct kn_endpoint_key probe;   /* scratch key for per-endpoint lookups */
	__u32 max_connections;          /* of the chosen cluster */
	__u16 od_failures;              /* outlier detection of the chosen cluster */
	__u8 od_max_ejected;
	__u8 pad2;
	__u32 od_base_ejection_ms;
	__u32 pad3;
};

/* Socket-local storage of a redirected socket: what it dialled and where it went.
 *
 * The counts it holds are remembered by the generation of the counter entry
 * it incremented (0 = holds none). A counter entry can vanish under an open
 * connection (LRU eviction, the daemon deleting a cluster's counter) and be
 * created again, with a new generation, by another connection: the socket
 * then gives nothing back to the new entry, whose count never included it. */
struct kn_sock_state {
	__u8 orig_family;   /* enum kn_family */
	__u8 established;   /* 1 once the active open completed */
	__u16 orig_port;    /* network byte order, as in the sockaddr */
	__u8 orig_addr[16];
	__u8 od_tracked;    /* 1: the connect's outcome still goes to outlier detection */
	__u8 od_max_ejected;
	__u16 od_failures;  /* outlier detection of its cluster (0 = none) */
	__u32 od_base_ejection_ms;
	__u64 cb_gen;       /* its circuit-breaker slot in kn_netns_conns (released at TCP_CLOSE) */
	__u64 ep_gen;       /* its active count in kn_endpoint_conns */
	__u64 cc_gen;       /* its active count in kn_cluster_conns (taken once established) */
	struct kn_netns_cluster_key nc;  /* client netns and the cluster it went to */
	struct kn_endpoint_key endpoint; /* the endpoint it went to */
};

/* max_connections at or above this is no limit (Istio sends 4294967295 on
 * every cluster): the compiler writes 0 and no counter is kept. */
#define KN_MAX_CONNECTIONS_LIMIT 2147483648

struct kn_netns_conns {
	__u64 active;   /* connects steered and not yet closed (any state) */
	__u64 overflow; /* connects refused at max_connections */
	__u64 gen;      /* this entry's generation (see struct kn_sock_state) */
};

struct kn_endpoint_conns {
	__u64 active;   /* connects steered to it and not yet closed (LEAST_REQUEST) */
	__u64 total;
	__u64 gen;      /* this entry's generation (see struct kn_sock_state) */
};

/* Local rate limit: one token bucket per (client netns, listener, filter record). */
struct kn_rl_key {
	__u64 netns_cookie;
	struct kn_listener_key listener;
	__u32 filter;   /* index of the KN_LREC_FILTER record */
};

/* Updated without a lock (compare-and-swap): under concurrent connects of one
 * netns a refill may briefly leave more than max_tokens, never fewer. */
struct kn_rl_bucket {
	__u64 tokens;
	__u64 last_fill_ns; /* bpf_ktime_get_ns() of the last whole fill interval accounted for */
	__u64 limited;      /* connects refused for want of a token */
};

struct kn_cluster_conns {
	__u64 active;  /* established and not yet closed */
	__u64 total;   /* established since the counter was created */
	__u64 cx_overflow; /* connects refused by max_connections (all client netns) */
	__u64 gen;     /* this entry's generation (see struct kn_sock_state) */
	/* Outlier detection: end of each current ejection (0 or past = free);
	 * a new ejection needs a free entry among the cluster's od_max_ejected. */
	__u64 ejected_until_ns[KN_MAX_EJECTED];
};

/* Outlier detection per endpoint (struct kn_endpoint_key: survives rewrites). */
struct kn_outlier {
	__u64 ejected_until_ns;   /* bpf_ktime_get_ns() when the ejection ends; 0 = never ejected */
	__u32 failures;           /* consecutive failed connects */
	__u32 times_ejected;      /* the ejection time is base_ejection_time x this */
	__u64 ejections;          /* total, for the dump */
};

/* ---- counters (PERCPU_ARRAY kn_stats, index = enum kn_stat) ---- */
enum kn_stat {
	KN_STAT_CONNECT_SEEN = 0,     /* TCP connects inspected */
	KN_STAT_NO_LISTENER = 1,      /* no listener for the destination: untouched */
	KN_STAT_NO_CHAIN = 2,         /* listener but no filter chain matched: untouched */
	KN_STAT_HTTP_UNTOUCHED = 3,   /* HTTP-only chain on a stock kernel: untouched */
	KN_STAT_PASSTHROUGH = 4,      /* passthrough filter/cluster: untouched */
	KN_STAT_NO_CLUSTER = 5,       /* the referenced cluster is not known: untouched */
	KN_STAT_NO_ENDPOINT = 6,      /* cluster has no endpoint of the family: rejected */
	KN_STAT_REDIRECTED = 7,       /* destination rewritten to an endpoint */
	KN_STAT_TAIL_CALL_FAILED = 8, /* a stage could not be entered: untouched */
	KN_STAT_CX_OVERFLOW = 9,      /* refused: the cluster's max_connections for this netns */
	KN_STAT_RATE_LIMITED = 10,    /* refused: no token in the local rate limit bucket */
	KN_STAT_CONN_EVENTS_DROPPED = 11, /* connection events lost: the ring buffer was full */
	KN_STAT_COUNT = 12,
};

/* ---- connection events (sockops -> ring buffer kn_conn_events -> daemon) ---- */

/* kn_telemetry_config[0]: what the daemon wants; 0 = no events at all. */
#define KN_TELEMETRY_METRICS (1u << 0)
#define KN_TELEMETRY_ACCESS_LOG (1u << 1)

/* Ring buffer size in bytes (a power of two, a multiple of the page size). */
#define KN_CONN_EVENTS_BYTES (1u << 20)

enum kn_conn_event_kind {
	KN_CONN_OPENED = 1, /* the active open completed (only with KN_TELEMETRY_METRICS) */
	KN_CONN_CLOSED = 2, /* the socket reached TCP_CLOSE, established or not */
};

/* Per redirected socket (SK_STORAGE kn_conn_start): when its connect began. */
struct kn_conn_start {
	__u64 start_ns; /* bpf_ktime_get_ns() at TCP_CONNECT_CB */
	/* The kernel's bytes_acked / bytes_received count sequence space: the SYN
	 * and FINs are in it. These say which FINs to take out. */
	__u8 fin_sent;  /* entered FIN_WAIT1 or LAST_ACK */
	__u8 fin_rcvd;  /* entered CLOSE_WAIT or CLOSING */
	__u8 pad[6];
};

struct kn_conn_event {
	__u32 kind;          /* enum kn_conn_event_kind */
	__u8 established;    /* 1: the active open completed (0 at close = failed connection) */
	__u8 family;         /* enum kn_family of the socket (local/remote addresses) */
	__u8 orig_family;    /* enum kn_family of the dialled address */
	__u8 pad;
	__u8 orig_addr[16];  /* the dialled VIP; IPv4 uses the first 4 bytes */
	__u8 remote_addr[16]; /* the endpoint the socket is connected to */
	__u8 local_addr[16]; /* the client's address */
	__u16 orig_port;     /* host byte order (all ports here) */
	__u16 remote_port;
	__u16 local_port;
	__u16 pad2;
	__u64 netns_cookie;  /* the client's network namespace */
	__u64 duration_ns;   /* TCP_CONNECT_CB to this event */
	__u64 bytes_sent;    /* payload bytes acknowledged by the peer (bytes_acked without SYN/FIN) */
	__u64 bytes_received; /* payload bytes received (bytes_received without FIN) */
	__u32 total_retrans;
	__u32 lost_out;
	struct kn_name cluster;
};

#endif /* KMESH_KERNEL_NATIVE_H */
