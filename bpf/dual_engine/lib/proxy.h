/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* PROXY protocol v2 (haproxy.org proxy-protocol.txt, section 2.2): how the
 * address a client dialled reaches a waypoint. 16 fixed bytes
 *
 *   12-byte signature \r\n\r\n\0\r\nQUIT\n, 0x21 (version 2, command PROXY),
 *   0x11 (TCP over IPv4) or 0x21 (TCP over IPv6), address length (u16, BE)
 *
 * then source address, destination address, source port, destination port,
 * all in network byte order. The destination is what the client dialled (the
 * service VIP and port), the source the client socket's own address. */
#ifndef DE_PROXY_H
#define DE_PROXY_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dual_engine.h"

#define DE_AF_INET 2
#define DE_AF_INET6 10

/* The first 16 bytes of a PROXY v2 header for `fam_proto` and address length. */
static __always_inline void de_proxy_fixed(__u8 *h, __u8 fam_proto, __u16 addr_len)
{
	static const __u8 sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
				      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

	__builtin_memcpy(h, sig, 12);
	h[12] = 0x21;
	h[13] = fam_proto;
	h[14] = addr_len >> 8;
	h[15] = addr_len & 0xff;
}

/* Insert `len` bytes at the start of this send and copy `hdr` there. */
static __always_inline int de_proxy_insert(struct sk_msg_md *msg, const __u8 *hdr, const __u32 len)
{
	void *data, *end;

	if (bpf_msg_push_data(msg, 0, len, 0))
		return -1;
	/* The pushed bytes may sit in a fresh page: make [0, len) linear and
	 * re-read the pointers, which the push invalidated. */
	if (bpf_msg_pull_data(msg, 0, len, 0))
		return -1;
	data = msg->data;
	end = msg->data_end;
	if (data + len > end)
		return -1;
	__builtin_memcpy(data, hdr, len);
	return 0;
}

/* The client socket's own address as the context gives it. Every field is
 * read once, up front, through barrier_var: otherwise the compiler may turn
 * a choice between two context fields into one load from a computed offset,
 * which the verifier refuses for a context pointer. */
struct de_local {
	__u32 family;
	__u32 ip4;
	__u32 ip6[4];
	__u16 port_be;
};

static __always_inline void de_read_local(struct sk_msg_md *msg, struct de_local *l)
{
	__u32 family = msg->family, ip4 = msg->local_ip4, port = msg->local_port;
	__u32 a = msg->local_ip6[0], b = msg->local_ip6[1];
	__u32 c = msg->local_ip6[2], d = msg->local_ip6[3];

	barrier_var(family);
	barrier_var(ip4);
	barrier_var(port);
	barrier_var(a);
	barrier_var(b);
	barrier_var(c);
	barrier_var(d);
	l->family = family;
	l->port_be = bpf_htons((__u16)port); /* local_port is in host order */
	if (family == DE_AF_INET6) {
		l->ip6[0] = a;
		l->ip6[1] = b;
		l->ip6[2] = c;
		l->ip6[3] = d;
		l->ip4 = d; /* the IPv4 address of a v4-mapped one */
	} else {
		/* An AF_INET socket: the v4-mapped form, for completeness. */
		l->ip6[0] = 0;
		l->ip6[1] = 0;
		l->ip6[2] = bpf_htonl(0x0000ffff);
		l->ip6[3] = ip4;
		l->ip4 = ip4;
	}
}

/* Prepend the PROXY v2 header for the dialled address in `st`. An IPv4
 * destination (also one dialled from an AF_INET6 socket, v4-mapped) gets an
 * IPv4 header; an IPv6 one an IPv6 header. */
static __always_inline int de_proxy_prepend(struct sk_msg_md *msg, const struct de_sock_state *st)
{
	struct de_local l;

	de_read_local(msg, &l);
	if (st->orig_family == DE_FAMILY_V4) {
		__u8 h[DE_PROXY_V2_LEN4];

		de_proxy_fixed(h, 0x11, DE_PROXY_V2_LEN4 - 16);
		__builtin_memcpy(h + 16, &l.ip4, 4);
		__builtin_memcpy(h + 20, st->orig_addr + 12, 4);
		__builtin_memcpy(h + 24, &l.port_be, 2);
		__builtin_memcpy(h + 26, &st->orig_port, 2);
		return de_proxy_insert(msg, h, DE_PROXY_V2_LEN4);
	} else {
		__u8 h[DE_PROXY_V2_LEN6];

		de_proxy_fixed(h, 0x21, DE_PROXY_V2_LEN6 - 16);
		__builtin_memcpy(h + 16, l.ip6, 16);
		__builtin_memcpy(h + 32, st->orig_addr, 16);
		__builtin_memcpy(h + 48, &l.port_be, 2);
		__builtin_memcpy(h + 50, &st->orig_port, 2);
		return de_proxy_insert(msg, h, DE_PROXY_V2_LEN6);
	}
}

#endif /* DE_PROXY_H */
