// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Dual-engine mode, L4 at connect, L7 handed to a waypoint:
 *
 *   cgroup/connect4|6      frontend -> service -> endpoint -> backend (lib/lb.h);
 *                          rewrite the destination, remember what was dialled.
 *                          A destination with a waypoint goes to the waypoint
 *                          (itself load-balanced when it is a service VIP)
 *   cgroup/getpeername4|6  report the dialled service address, not the endpoint
 *   sockops                register an established socket that was sent to a
 *                          waypoint in de_proxy_socks, unregister it as its
 *                          first send goes out
 *   sk_msg (on de_proxy_socks)  prepend a PROXY v2 header carrying the
 *                          dialled address to the first send (lib/proxy.h)
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
#include "lib/proxy.h"

#define DE_SOCK_STREAM 1
#define DE_ALLOW 1
#define DE_REJECT 0

#define DE_SK_PASS 1
#define DE_SK_DROP 0

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Socket mark of a waypoint's own upstream connections (set by the daemon
 * before load; 0 = none): a connect from a socket with all these bits set
 * is routed to endpoints but never to a waypoint. A waypoint proxy sends on
 * to the address its client dialled, so without this its connect would be
 * sent straight back to it. Envoy sets the mark with a SO_MARK socket
 * option on its clusters (examples/waypoint-envoy.yaml). */
const volatile __u32 de_waypoint_mark = DE_DEFAULT_WAYPOINT_MARK;

/* Remember the dialled destination of a redirected socket, and whether it
 * owes a waypoint a PROXY header. Returns false if it could not be stored. */
static __always_inline bool de_remember(struct bpf_sock_addr *ctx, const __u8 *addr, __u8 family,
					__u8 proxy)
{
	struct de_sock_state *st = bpf_sk_storage_get(&de_socks, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!st)
		return false;
	__builtin_memcpy(st->orig_addr, addr, 16);
	st->orig_port = (__u16)ctx->user_port;
	st->orig_family = family;
	st->proxy = proxy;
	st->cookie = 0;
	return true;
}

/* Same 16-byte address? (No memcmp in BPF: word by word.) */
static __always_inline bool de_same_addr(const __u8 *a, const __u8 *b)
{
	__u32 x[4], y[4];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* Is this connect a waypoint's own (its socket carries the waypoint mark)? */
static __always_inline bool de_from_waypoint(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 mark = de_waypoint_mark;

	if (!sk || !mark)
		return false;
	return (sk->mark & mark) == mark;
}

/* Where a connect handed to waypoint `wp` goes: the waypoint address, or one
 * of its endpoints when it is a service VIP (the listener port kept, unless
 * the waypoint service maps it). DE_REFUSE when this connect cannot reach
 * it: an IPv4 socket and an IPv6 waypoint, or a waypoint service with no
 * endpoint left. Sending the connect on to its destination instead would
 * bypass the L7 policy the waypoint is there for. */
static __always_inline enum de_verdict de_to_waypoint(const struct de_waypoint *wp, const bool v6,
						      struct de_route *route)
{
	struct de_waypoint ignored;
	enum de_verdict verdict;
	__u32 w[3];
	__u8 family;

	__builtin_memcpy(w, wp->addr, 12);
	family = (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff)) ? DE_FAMILY_V4
									    : DE_FAMILY_V6;
	if (!v6 && family == DE_FAMILY_V6)
		return DE_REFUSE;
	verdict = de_route(wp->addr, family, wp->port, route, &ignored,
			   DE_ROUTE_NO_WAYPOINT | DE_ROUTE_ANY_PORT);
	if (verdict == DE_REFUSE)
		return DE_REFUSE;
	if (verdict != DE_REWRITE) {
		/* A waypoint pod's own address: dial it as it is. */
		__builtin_memcpy(route->addr, wp->addr, 16);
		route->port = wp->port;
	}
	return DE_REWRITE;
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
	struct de_waypoint wp = {};
	__u8 proxy = DE_PROXY_NONE;
	__u8 dst[16];
	__u8 family;
	enum de_verdict verdict;
	__u16 port;

	if (ctx->type != DE_SOCK_STREAM)
		return DE_ALLOW;
	de_count(DE_CNT_CONNECTS);
	if (v6) {
		family = de_read_dst6(ctx, dst);
	} else {
		de_read_dst4(ctx, dst);
		family = DE_FAMILY_V4;
	}
	port = bpf_ntohs((__u16)ctx->user_port);
	verdict = de_route(dst, family, port, &route, &wp, 0);
	if (verdict == DE_WAYPOINT) {
		if (de_from_waypoint(ctx) || de_same_addr(dst, wp.addr)) {
			/* The waypoint's own connect (or one to the waypoint
			 * itself): plain L4, never back to a waypoint. */
			de_count(DE_CNT_WAYPOINT_SKIPPED);
			verdict = de_route(dst, family, port, &route, &wp, DE_ROUTE_NO_WAYPOINT);
		} else {
			verdict = de_to_waypoint(&wp, v6, &route);
			if (verdict == DE_REFUSE)
				de_count(DE_CNT_WAYPOINT_REFUSED);
			proxy = DE_PROXY_PENDING;
		}
	}
	if (verdict != DE_REWRITE) {
		de_forget(ctx);
		return verdict == DE_REFUSE ? DE_REJECT : DE_ALLOW;
	}
	if (!de_remember(ctx, dst, family, proxy) && proxy == DE_PROXY_PENDING) {
		/* The waypoint would get no original destination: refuse
		 * rather than send it bytes it cannot route. */
		de_count(DE_CNT_PROXY_FAILED);
		return DE_REJECT;
	}
	if (proxy == DE_PROXY_PENDING)
		de_count(DE_CNT_WAYPOINT);
	/* (A plain redirect whose state could not be stored only loses the
	 * VIP in getpeername: harmless.) */
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

/* A socket sent to a waypoint is established: register it so that the
 * sk_msg program sees its first send, and take it out again while that
 * send is being transmitted. Other sockets are not touched (and never pay
 * for sk_msg).
 *
 * Why so short a stay: a socket in a socket map has a psock, and Linux
 * then reads it through tcp_bpf_recvmsg (installed as the socket's
 * recvmsg for every psock, also one with only an sk_msg program). Its
 * blocking wait, tcp_msg_wait_data, is a single sk_wait_event: when the
 * socket is woken without data (an ACK that frees send-buffer space after
 * a send had to wait for it, a signal, an error) the read fails with
 * EAGAIN. A plain TCP socket (tcp_recvmsg) waits again instead. sk_msg
 * programs may not delete from a socket map themselves; sockops may, and
 * BPF_SOCK_OPS_HDR_OPT_LEN_CB runs on every segment the socket builds,
 * first from tcp_sendmsg_locked (through tcp_current_mss) inside the very
 * send whose sk_msg verdict prepended the header. The psock goes when its
 * last user lets go: at the end of that send, unless a reader of the
 * same socket is already waiting (see docs/waypoint-l7.md). */
SEC("sockops")
int de_sockops(struct bpf_sock_ops *skops)
{
	struct de_sock_state *st;
	struct bpf_sock *sk;
	__u32 op = skops->op;
	__u64 cookie;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_HDR_OPT_LEN_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	st = bpf_sk_storage_get(&de_socks, sk, 0, 0);
	if (!st)
		return 1;
	if (op == BPF_SOCK_OPS_HDR_OPT_LEN_CB) {
		/* (Reserves no option space: no WRITE_HDR_OPT_CB follows.)
		 * Until the first send's verdict, segments (the handshake's
		 * last ACK) pass by. */
		if (st->proxy == DE_PROXY_DONE && st->cookie) {
			cookie = st->cookie;
			bpf_map_delete_elem(&de_proxy_socks, &cookie);
			st->cookie = 0;
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags &
								 ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		}
		return 1;
	}
	if (st->proxy != DE_PROXY_PENDING)
		return 1;
	cookie = bpf_get_socket_cookie(skops);
	if (bpf_sock_hash_update(skops, &de_proxy_socks, &cookie, BPF_NOEXIST)) {
		/* Full: the first send finds the header missing and fails. */
		de_count(DE_CNT_PROXY_FAILED);
		return 1;
	}
	st->cookie = cookie;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
	return 1;
}

/* First send of a socket sent to a waypoint: prepend the PROXY v2 header.
 * Later sends pass untouched. If the header cannot be inserted the send is
 * dropped (the caller gets an error): bytes without it would reach a
 * waypoint that cannot tell where they were going. */
SEC("sk_msg")
int de_proxy_header(struct sk_msg_md *msg)
{
	struct de_sock_state *st;
	struct bpf_sock *sk = msg->sk;

	if (!sk)
		return DE_SK_PASS;
	st = bpf_sk_storage_get(&de_socks, sk, 0, 0);
	if (!st || st->proxy != DE_PROXY_PENDING)
		return DE_SK_PASS;
	/* Before the push: a header is never sent twice, even if this fails. */
	st->proxy = DE_PROXY_DONE;
	if (de_proxy_prepend(msg, st)) {
		de_count(DE_CNT_PROXY_FAILED);
		return DE_SK_DROP;
	}
	de_count(DE_CNT_PROXY_SENT);
	/* sockops takes the socket out of de_proxy_socks as this send goes out. */
	return DE_SK_PASS;
}
