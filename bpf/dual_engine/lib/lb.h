/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connect-time routing: frontend -> service -> endpoint -> backend. */
#ifndef DE_LB_H
#define DE_LB_H

#include "maps.h"
#include "addr.h"

enum de_verdict {
	DE_UNTOUCHED = 0, /* the connect goes on to the dialled address */
	DE_REWRITE = 1,   /* the destination in de_route is to be written */
	DE_REFUSE = 2,    /* nothing to send it to: the connect fails (EPERM) */
	DE_WAYPOINT = 3,  /* the destination has a waypoint (in the de_waypoint out) */
};

/* de_route flags (constants after inlining, so the unused paths vanish). */
/* Route to endpoints even if the destination has a waypoint: a waypoint's
 * own connect, or the connect to the waypoint itself. */
#define DE_ROUTE_NO_WAYPOINT 1u
/* A port the service does not list is kept on the endpoint instead of
 * leaving the connect untouched: the waypoint listener port is not one of
 * the waypoint service's ports (Istio lists 15008/15021 only). */
#define DE_ROUTE_ANY_PORT 2u

/* Where a routed connect goes: address in frontend-key form, port in host order. */
struct de_route {
	__u8 addr[16];
	__u16 port;
};

/* Index of the dialled port among the service's ports, or -1. */
static __always_inline int de_port_index(const struct de_service_value *svc, __u16 port)
{
	for (int i = 0; i < DE_MAX_PORTS; i++) {
		if (i >= svc->port_count)
			break;
		if (svc->service_port[i] == port)
			return i;
	}
	return -1;
}

/* The priority level to pick from, or -1 when the policy has nothing to offer. */
static __always_inline int de_priority(const struct de_service_value *svc, __u8 family)
{
	if (svc->policy != DE_LB_FAILOVER)
		/* RANDOM puts every endpoint at priority 0; STRICT uses only 0. */
		return svc->endpoint_count[family][0] ? 0 : -1;
	for (int p = 0; p < DE_MAX_PRIORITIES; p++) {
		if (svc->endpoint_count[family][p])
			return p;
	}
	return -1;
}

/* A connect to a service address: pick an endpoint of the dialled port's
 * family from the service's live slot. `family` is DE_FAMILY_V4 or _V6. */
static __always_inline enum de_verdict de_route_service(__u32 service_id, __u8 family, __u16 port,
							struct de_route *out, struct de_waypoint *wp,
							const __u32 flags)
{
	const struct de_service_value *svc;
	const struct de_endpoint_value *ep;
	const struct de_backend_value *be;
	struct de_endpoint_key key = {};
	int port_idx, prio;
	__u32 count;

	de_count(DE_CNT_SERVICE_HITS);
	svc = bpf_map_lookup_elem(&de_services, &service_id);
	if (!svc) {
		de_count(DE_CNT_MAP_MISS);
		return DE_UNTOUCHED;
	}
	port_idx = de_port_index(svc, port);
	if ((port_idx < 0 || port_idx >= DE_MAX_PORTS) && !(flags & DE_ROUTE_ANY_PORT)) {
		/* A port the service does not expose: not ours to route. */
		de_count(DE_CNT_PASSTHROUGH);
		return DE_UNTOUCHED;
	}
	/* The waypoint decides before any policy of ours (PASSTHROUGH included). */
	if (!(flags & DE_ROUTE_NO_WAYPOINT) && svc->waypoint.port) {
		__builtin_memcpy(wp, &svc->waypoint, sizeof(*wp));
		return DE_WAYPOINT;
	}
	if (svc->policy == DE_LB_PASSTHROUGH) {
		de_count(DE_CNT_PASSTHROUGH);
		return DE_UNTOUCHED;
	}
	prio = de_priority(svc, family);
	if (prio < 0 || prio >= DE_MAX_PRIORITIES) {
		de_count(DE_CNT_NO_ENDPOINT);
		return DE_REFUSE;
	}
	count = svc->endpoint_count[family][prio];
	if (count > DE_MAX_ENDPOINTS_PER_PRIORITY)
		count = DE_MAX_ENDPOINTS_PER_PRIORITY;

	key.service_id = service_id;
	key.slot = (__u8)svc->slot;
	key.family = family;
	key.priority = (__u8)prio;
	/* Endpoints appear once per unit of weight: a uniform pick is weighted. */
	key.index = bpf_get_prandom_u32() % count;
	ep = bpf_map_lookup_elem(&de_endpoints, &key);
	if (!ep) {
		de_count(DE_CNT_MAP_MISS);
		return DE_UNTOUCHED;
	}
	be = bpf_map_lookup_elem(&de_backends, &ep->backend_id);
	if (!be || !de_backend_addr(be, family, out->addr)) {
		de_count(DE_CNT_MAP_MISS);
		return DE_UNTOUCHED;
	}
	/* 0: the workload listens on the service port itself; so does a port
	 * the service does not list (DE_ROUTE_ANY_PORT). */
	out->port = port;
	if (port_idx >= 0 && port_idx < DE_MAX_PORTS && ep->target_port[port_idx])
		out->port = ep->target_port[port_idx];
	return DE_REWRITE;
}

/* Route a TCP connect to `addr` (frontend-key form) : `port` (host order).
 * DE_WAYPOINT (never with DE_ROUTE_NO_WAYPOINT) fills `wp` instead of `out`. */
static __always_inline enum de_verdict de_route(const __u8 *addr, __u8 family, __u16 port,
						 struct de_route *out, struct de_waypoint *wp,
						 const __u32 flags)
{
	struct de_frontend_key key;
	const struct de_frontend_value *fe;

	__builtin_memcpy(key.addr, addr, 16);
	fe = bpf_map_lookup_elem(&de_frontends, &key);
	if (!fe)
		return DE_UNTOUCHED; /* not a mesh address */
	if (fe->kind == DE_FRONTEND_SERVICE)
		return de_route_service(fe->id, family, port, out, wp, flags);
	if (fe->kind == DE_FRONTEND_WORKLOAD) {
		/* Dialled a pod directly: it already is the endpoint, unless the
		 * workload has a waypoint (which then takes every port). */
		de_count(DE_CNT_WORKLOAD_HITS);
		if (!(flags & DE_ROUTE_NO_WAYPOINT)) {
			const struct de_backend_value *be = bpf_map_lookup_elem(&de_backends, &fe->id);

			if (be && be->waypoint.port) {
				__builtin_memcpy(wp, &be->waypoint, sizeof(*wp));
				return DE_WAYPOINT;
			}
		}
		return DE_UNTOUCHED;
	}
	de_count(DE_CNT_MAP_MISS);
	return DE_UNTOUCHED;
}

#endif /* DE_LB_H */
