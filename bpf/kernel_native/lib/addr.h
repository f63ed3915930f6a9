/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reading and rewriting the destination of a sock_addr context. */
#ifndef KN_ADDR_H
#define KN_ADDR_H

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include "kernel_native.h"

/* Does the first prefix_len bits of addr equal those of prefix? */
static __always_inline bool kn_prefix_match(const __u8 *addr, const __u8 *prefix, __u32 prefix_len)
{
	for (int i = 0; i < 16; i++) {
		if (prefix_len == 0)
			return true;
		if (prefix_len < 8) {
			__u8 mask = (__u8)(0xff << (8 - prefix_len));

			return ((addr[i] ^ prefix[i]) & mask) == 0;
		}
		if (addr[i] != prefix[i])
			return false;
		prefix_len -= 8;
	}
	return true;
}

/* Read the dialled address of a connect6/getpeername6 context. A v4-mapped
 * address (::ffff:a.b.c.d) is reported as IPv4, so that a dual-stack socket
 * dialling an IPv4 VIP is routed like an IPv4 socket. */
static __always_inline __u8 kn_read_dst6(struct bpf_sock_addr *ctx, __u8 *addr)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		__builtin_memcpy(addr, &w3, 4);
		return KN_FAMILY_V4;
	}
	__builtin_memcpy(addr, &w0, 4);
	__builtin_memcpy(addr + 4, &w1, 4);
	__builtin_memcpy(addr + 8, &w2, 4);
	__builtin_memcpy(addr + 12, &w3, 4);
	return KN_FAMILY_V6;
}

/* Write a destination into a connect4/getpeername4 context. */
static __always_inline void kn_write_dst4(struct bpf_sock_addr *ctx, const __u8 *addr, __u16 port_be)
{
	__u32 ip;

	__builtin_memcpy(&ip, addr, 4);
	ctx->user_ip4 = ip;
	ctx->user_port = port_be;
}

/* Write a destination into a connect6/getpeername6 context; IPv4 becomes v4-mapped. */
static __always_inline void kn_write_dst6(struct bpf_sock_addr *ctx, __u8 family, const __u8 *addr,
					  __u16 port_be)
{
	__u32 w[4] = {};

	if (family == KN_FAMILY_V4) {
		w[2] = bpf_htonl(0x0000ffff);
		__builtin_memcpy(&w[3], addr, 4);
	} else {
		__builtin_memcpy(w, addr, 16);
	}
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = port_be;
}

#endif /* KN_ADDR_H */
