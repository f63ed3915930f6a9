/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Dual-engine mode: the one definition of every map key and value that the
 * eBPF programs (bpf/dual_engine/) and the daemon (src/workload/writer.rs)
 * share. The Rust side uses the skeleton's BTF-generated copies of these
 * structs, so a change here changes both sides.
 *
 * Lookup at connect (all maps are flat hashes, sized by the daemon):
 *
 *   de_frontends  addr (16 bytes, IPv4 as ::ffff:a.b.c.d) -> service id | workload id
 *   de_services   service id -> ports, policy, live endpoint slot, counts
 *   de_endpoints  (service id, slot, family, priority, index) -> backend id + target ports
 *   de_backends   backend id -> its IPv4 and/or IPv6 address
 *
 * Make-before-break without map-in-map: a service's endpoints live in one of
 * two slots. An update writes the new endpoint set into the slot not in use,
 * then flips the service record to it with one map update (a connect sees
 * either the old set or the new one, never a mix), then deletes the old
 * slot's entries. One inner map per service would cost 50,000+ map objects
 * at production scale; two slots cost one spare copy of one service at a
 * time.
 */
#ifndef KMESH_DUAL_ENGINE_H
#define KMESH_DUAL_ENGINE_H

#ifdef __BPF__
#include "vmlinux.h"
#else
#include <linux/types.h>
#endif

/* Ports one service exposes (service_port -> target_port pairs). */
#define DE_MAX_PORTS 10
/* Locality priority levels: 0 = matches every routing preference, up to
 * one level per preference scope (there are 6 scopes) + "matches none". */
#define DE_MAX_PRIORITIES 7
/* Endpoints of one service, per address family and priority. */
#define DE_MAX_ENDPOINTS_PER_PRIORITY (1u << 20)

enum de_family {
	DE_FAMILY_V4 = 0,
	DE_FAMILY_V6 = 1,
	DE_FAMILY_COUNT = 2,
};

enum de_frontend_kind {
	DE_FRONTEND_SERVICE = 1,
	DE_FRONTEND_WORKLOAD = 2,
};

/* How a service picks an endpoint. */
enum de_lb_policy {
	/* Uniformly random over priority 0 (every endpoint is there). */
	DE_LB_RANDOM = 0,
	/* Random within the lowest non-empty priority (locality FAILOVER). */
	DE_LB_FAILOVER = 1,
	/* Random within priority 0 only; empty = connect refused (locality STRICT). */
	DE_LB_STRICT = 2,
	/* No endpoint selection: the dialled address is kept (ServiceEntry NONE). */
	DE_LB_PASSTHROUGH = 3,
};

struct de_frontend_key {
	__u8 addr[16]; /* network byte order; IPv4 as IPv4-mapped IPv6 */
};

struct de_frontend_value {
	__u32 kind; /* enum de_frontend_kind */
	__u32 id;   /* service id or backend (workload) id */
};

/* A waypoint to hand connections to: a connect to a service (on one of its
 * ports) or to a workload that has one goes to addr:port instead, and the
 * dialled address travels to the waypoint in a PROXY protocol v2 header.
 * addr may be a service VIP (the waypoint service): it is then load-balanced
 * like any service, port = the waypoint listener port on its endpoints. */
struct de_waypoint {
	__u8 addr[16]; /* IPv4 as IPv4-mapped */
	__u16 port;    /* host byte order; 0 = no waypoint */
	__u16 pad;
};

/* Sockets whose first bytes must carry a PROXY header, registered by
 * sockops when the connection is established (sk_msg runs on the sends of
 * the sockets in this map only). Closed sockets leave it by themselves. */
#define DE_MAX_PROXY_SOCKS 65536

/* PROXY protocol v2 header sizes: 16 fixed bytes + addresses and ports. */
#define DE_PROXY_V2_LEN4 (16 + 12)
#define DE_PROXY_V2_LEN6 (16 + 36)

/* Default socket mark of a waypoint's own upstream connections (see
 * de_waypoint_mark in bpf/dual_engine/dual_engine.bpf.c). */
#define DE_DEFAULT_WAYPOINT_MARK 0x539

/* Which object a service or backend id belongs to: the first bytes of the
 * SHA-256 of its store key (service `namespace/hostname`, workload uid).
 * The programs never read it. A restarted daemon reads it back to give each
 * key the id its records already have, and no other key an id the kernel
 * still uses: otherwise a frontend adopted from the earlier daemon would
 * point, for the length of the first write, at another service's records. */
#define DE_OWNER_LEN 16

struct de_service_value {
	__u32 policy;    /* enum de_lb_policy */
	__u32 slot;      /* 0 or 1: which endpoint slot is live */
	__u32 port_count;
	__u32 pad;
	/* Live endpoints per family and priority. */
	__u32 endpoint_count[DE_FAMILY_COUNT][DE_MAX_PRIORITIES];
	__u16 service_port[DE_MAX_PORTS]; /* host byte order */
	struct de_waypoint waypoint;
	__u8 owner[DE_OWNER_LEN];
};

struct de_endpoint_key {
	__u32 service_id;
	__u8 slot;     /* 0 or 1 */
	__u8 family;   /* enum de_family */
	__u8 priority; /* < DE_MAX_PRIORITIES */
	__u8 pad;
	__u32 index;   /* < endpoint_count[family][priority] */
};

struct de_endpoint_value {
	__u32 backend_id;
	/* Target port for each of the service's ports (same order as
	 * service_port); the workload's own mapping already applied. */
	__u16 target_port[DE_MAX_PORTS];
};

struct de_backend_value {
	__u8 addr4[4];  /* network byte order; valid if has_v4 */
	__u8 addr6[16]; /* valid if has_v6 */
	__u8 has_v4;
	__u8 has_v6;
	__u16 pad;
	struct de_waypoint waypoint;
	__u8 owner[DE_OWNER_LEN];
};

/* Per-connect outcomes, counted in de_counters (a PERCPU_ARRAY). */
enum de_counter {
	DE_CNT_CONNECTS = 0,        /* connects seen by the programs */
	DE_CNT_SERVICE_HITS = 1,    /* destination was a known service VIP */
	DE_CNT_REDIRECTED = 2,      /* rewritten to an endpoint */
	DE_CNT_PASSTHROUGH = 3,     /* known service, PASSTHROUGH or unknown port */
	DE_CNT_NO_ENDPOINT = 4,     /* refused: no endpoint to use */
	DE_CNT_MAP_MISS = 5,        /* a record pointed at a missing one (update race) */
	DE_CNT_WORKLOAD_HITS = 6,   /* destination was a workload address (kept as dialled) */
	DE_CNT_WAYPOINT = 7,        /* sent to a waypoint (PROXY header pending) */
	DE_CNT_WAYPOINT_SKIPPED = 8, /* a waypoint's own connect: not sent back to a waypoint */
	DE_CNT_WAYPOINT_REFUSED = 9, /* had a waypoint this connect cannot reach (family, no endpoint) */
	DE_CNT_PROXY_SENT = 10,     /* PROXY headers prepended to a first send */
	DE_CNT_PROXY_FAILED = 11,   /* a waypoint socket that could not get its header */
	DE_CNT_COUNT = 12,
};

/* What a redirected socket dialled, kept in its socket storage so that
 * getpeername() reports the service address, as it would through a proxy. */
struct de_sock_state {
	__u8 orig_addr[16]; /* as a frontend key: IPv4 as IPv4-mapped */
	__u16 orig_port;    /* network byte order, as in the sockaddr */
	__u8 orig_family;   /* enum de_family */
	__u8 proxy;         /* enum de_proxy_state */
	__u32 pad;
	/* Socket cookie: its key in de_proxy_socks, set when sockops adds it
	 * (sk_msg programs cannot read a socket's cookie themselves). */
	__u64 cookie;
};

/* Whether a socket's first bytes still owe the waypoint a PROXY header. */
enum de_proxy_state {
	DE_PROXY_NONE = 0,    /* not sent to a waypoint */
	DE_PROXY_PENDING = 1, /* sent to a waypoint; header not yet prepended */
	DE_PROXY_DONE = 2,    /* header prepended to the first send */
};

#endif /* KMESH_DUAL_ENGINE_H */
