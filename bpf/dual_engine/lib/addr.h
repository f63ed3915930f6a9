/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Destinations of a sock_addr context in the frontend-key form: 16 bytes,
 * IPv4 as ::ffff:a.b.c.d. One form for both families means one frontend map
 * and one stored "dialled address" for getpeername4 and getpeername6. */
#ifndef DE_ADDR_H
#define DE_ADDR_H

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include "dual_engine.h"

/* The destination of a connect4/getpeername4 context as a frontend key. */
static __always_inline void de_read_dst4(struct bpf_sock_addr *ctx, __u8 *addr)
{
	__u32 w[4] = { 0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4 };

	__builtin_memcpy(addr, w, 16);
}

/* The destination of a connect6/getpeername6 context as a frontend key, and
 * its family: a v4-mapped address (a dual-stack socket dialling an IPv4
 * address) is IPv4, so it is routed like a connect4 of the same address. */
static __always_inline __u8 de_read_dst6(struct bpf_sock_addr *ctx, __u8 *addr)
{
	/* Word by word: the verifier accepts only 4-byte loads of user_ip6. */
	__u32 w[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };

	__builtin_memcpy(addr, w, 16);
	if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff))
		return DE_FAMILY_V4;
	return DE_FAMILY_V6;
}

/* Rewrite a connect4/getpeername4 destination to the IPv4 address at the end
 * of a frontend-key-form address. */
static __always_inline void de_write_dst4(struct bpf_sock_addr *ctx, const __u8 *addr16, __u16 port_be)
{
	__u32 ip;

	__builtin_memcpy(&ip, addr16 + 12, 4);
	ctx->user_ip4 = ip;
	ctx->user_port = port_be;
}

/* Rewrite a connect6/getpeername6 destination (16 bytes, v4-mapped for IPv4). */
static __always_inline void de_write_dst6(struct bpf_sock_addr *ctx, const __u8 *addr16, __u16 port_be)
{
	__u32 w[4];

	__builtin_memcpy(w, addr16, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = port_be;
}

/* A backend's address of the connect's family in frontend-key form;
 * false when the backend has none of that family. */
static __always_inline bool de_backend_addr(const struct de_backend_value *be, __u8 family, __u8 *addr16)
{
	if (family == DE_FAMILY_V4) {
		__u32 w[3] = { 0, 0, bpf_htonl(0x0000ffff) };

		if (!be->has_v4)
			return false;
		__builtin_memcpy(addr16, w, 12);
		__builtin_memcpy(addr16 + 12, be->addr4, 4);
		return true;
	}
	if (!be->has_v6)
		return false;
	__builtin_memcpy(addr16, be->addr6, 16);
	return true;
}

#endif /* DE_ADDR_H */
