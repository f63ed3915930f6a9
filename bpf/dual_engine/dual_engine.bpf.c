// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Dual-engine mode, L4 at connect:
 *
 *   cgroup/connect4|6      frontend -> service -> endpoint -> backend (lib/lb.h);
 *                          rewrite the destination, remember what was dialled
 *   cgroup/getpeername4|6  report the dialled service address, not the endpoint
 *
 * A connect with nothing to go to (STRICT/FAILOVER with no endpoint left)
 * returns 0: connect() fails at once with EPERM instead of reaching the VIP,
 * which nothing answers. Only TCP is steered; other sockets pass untouched.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dual_engine.h"
#include "lib/maps.h"
#include "lib/addr.h"
#include "lib/lb.h"

#define DE_SOCK_STREAM 1
#define DE_ALLOW 1
#define DE_REJECT 0

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Remember the dialled destination of a redirected socket. */
static __always_inline void de_remember(struct bpf_sock_addr *ctx, const __u8 *addr, __u8 family)
{
	struct de_sock_state *st = bpf_sk_storage_get(&de_socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!st)
		return; /* getpeername then shows the endpoint: harmless */
	__builtin_memcpy(st->orig_addr, addr, 16);
	st->orig_port = (__u16)ctx->user_port;
	st->orig_family = family;
}

/* A socket may connect again after a failed attempt: what an earlier,
 * redirected attempt stored must not leak into this one's getpeername. */
static __always_inline void de_forget(struct bpf_sock_addr *ctx)
{
	if (bpf_sk_storage_get(&de_socks, ctx->sk, 0, 0))
		bpf_sk_storage_delete(&de_socks, ctx->sk);
}

/* Common body of connect4/6. `v6` is a constant after inlining: connect4
 * programs may not touch user_ip6, so that branch must vanish at compile time. */
static __always_inline int de_connect(struct bpf_sock_addr *ctx, const bool v6)
{
	struct de_route route = {};
	__u8 dst[16];
	__u8 family;
	enum de_verdict verdict;

	if (ctx->type != DE_SOCK_STREAM)
		return DE_ALLOW;
	de_count(DE_CNT_CONNECTS);
	if (v6) {
		family = de_read_dst6(ctx, dst);
	} else {
		de_read_dst4(ctx, dst);
		family = DE_FAMILY_V4;
	}
	verdict = de_route(dst, family, bpf_ntohs((__u16)ctx->user_port), &route);
	if (verdict != DE_REWRITE) {
		de_forget(ctx);
		return verdict == DE_REFUSE ? DE_REJECT : DE_ALLOW;
	}
	de_remember(ctx, dst, family);
	if (v6)
		de_write_dst6(ctx, route.addr, bpf_htons(route.port));
	else
		de_write_dst4(ctx, route.addr, bpf_htons(route.port));
	de_count(DE_CNT_REDIRECTED);
	return DE_ALLOW;
}

SEC("cgroup/connect4")
int de_connect4(struct bpf_sock_addr *ctx)
{
	return de_connect(ctx, false);
}

SEC("cgroup/connect6")
int de_connect6(struct bpf_sock_addr *ctx)
{
	return de_connect(ctx, true);
}

/* A redirected socket reports the address it dialled, as through a proxy. */
SEC("cgroup/getpeername4")
int de_getpeername4(struct bpf_sock_addr *ctx)
{
	struct de_sock_state *st = bpf_sk_storage_get(&de_socks, ctx->sk, 0, 0);

	if (st && st->orig_family == DE_FAMILY_V4)
		de_write_dst4(ctx, st->orig_addr, st->orig_port);
	return DE_ALLOW;
}

SEC("cgroup/getpeername6")
int de_getpeername6(struct bpf_sock_addr *ctx)
{
	struct de_sock_state *st = bpf_sk_storage_get(&de_socks, ctx->sk, 0, 0);

	/* The stored address is v4-mapped for IPv4: right for an AF_INET6 socket. */
	if (st)
		de_write_dst6(ctx, st->orig_addr, st->orig_port);
	return DE_ALLOW;
}
