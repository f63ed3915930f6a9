/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every dual-engine map, declared once. The four lookup maps are flat hashes
 * without preallocation: the daemon sizes them (max_entries) before load from
 * its capacity settings, and memory is used only for entries really written. */
#ifndef DE_MAPS_H
#define DE_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "dual_engine.h"

/* One read-only instance of each shared record type: they put the C layouts
 * into the generated skeleton (map key/value types alone do not), where the
 * Rust encoder takes its sizes and offsets from. Never read at run time. */
const volatile struct de_frontend_key de_layout_frontend_key;
const volatile struct de_frontend_value de_layout_frontend_value;
const volatile struct de_service_value de_layout_service_value;
const volatile struct de_endpoint_key de_layout_endpoint_key;
const volatile struct de_endpoint_value de_layout_endpoint_value;
const volatile struct de_backend_value de_layout_backend_value;
const volatile struct de_sock_state de_layout_sock_state;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct de_frontend_key);
	__type(value, struct de_frontend_value);
	__uint(max_entries, 1); /* set by the daemon */
} de_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* service id */
	__type(value, struct de_service_value);
	__uint(max_entries, 1); /* set by the daemon */
} de_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct de_endpoint_key);
	__type(value, struct de_endpoint_value);
	__uint(max_entries, 1); /* set by the daemon: both slots' worth */
} de_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* backend (workload) id */
	__type(value, struct de_backend_value);
	__uint(max_entries, 1); /* set by the daemon */
} de_backends SEC(".maps");

/* Per-connect outcomes (enum de_counter); per-CPU, so no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, DE_CNT_COUNT);
} de_counters SEC(".maps");

/* The dialled address of each redirected socket (for getpeername). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct de_sock_state);
} de_socks SEC(".maps");

/* Sockets sent to a waypoint, from establishment until their PROXY header
 * is out (key: socket cookie). The sk_msg program is attached to this map,
 * so it runs on these sockets' sends and on no other socket's. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, DE_MAX_PROXY_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} de_proxy_socks SEC(".maps");

static __always_inline void de_count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&de_counters, &counter);

	if (value)
		*value += 1;
}

#endif /* DE_MAPS_H */
