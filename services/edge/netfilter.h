/* The WAF part of the edge that looks at who is asking, before any
 * WebSocket work: a deny list of CIDR ranges (DW_DENY_CIDRS) and an Origin
 * allow-list (DW_ALLOWED_ORIGINS). Parsed once at start, matched on every
 * connection. Pure functions; read-only after parsing, so any thread may
 * match. */
#ifndef EDGE_NETFILTER_H
#define EDGE_NETFILTER_H

#include <stddef.h>
#include <stdint.h>

/* Entries per list; a longer list is a configuration error. */
#define NF_LIST_MAX 4096

/* One range over 16-byte addresses: IPv4 ranges are kept as IPv4-mapped
 * IPv6 (::ffff:0:0/96 + prefix), so "10.0.0.0/8" also matches the
 * "::ffff:10.1.2.3" a dual-stack socket reports. */
typedef struct nf_cidr {
    uint8_t addr[16]; /* host bits zero */
    uint8_t prefix;   /* 0..128 */
} nf_cidr;

typedef struct nf_denylist {
    nf_cidr *v; /* malloc'd */
    size_t n;
} nf_denylist;

/* Parse "10.0.0.0/8, 192.0.2.7, 2001:db8::/32, ::1/128". An address
 * without /prefix is one host. Empty entries are skipped; NULL or "" gives
 * an empty list. Host bits set below the prefix ("10.0.0.1/8") are refused
 * as a likely typo. 0, or -1 with *why set (*out then empty). Free with
 * nf_denylist_free(). */
int nf_denylist_parse(const char *spec, nf_denylist *out, const char **why);
void nf_denylist_free(nf_denylist *l); /* NULL-safe */

/* 1 when the textual address (IPv4, IPv6, IPv4-mapped) is in a listed
 * range, 0 when not, -1 when it is not an address (callers deny). */
int nf_denylist_match(const nf_denylist *l, const char *ip);
/* Same for a 16-byte address (IPv4 as ::ffff:a.b.c.d): 1 or 0. */
int nf_denylist_match16(const nf_denylist *l, const uint8_t addr[16]);

/* One allowed origin, normalised: lower-case scheme and host, and the
 * scheme's default port filled in (http 80, https 443) so that
 * "https://a.example" and "https://a.example:443" are the same. */
typedef struct nf_origin {
    char *scheme;
    char *host; /* an IPv6 literal keeps its brackets */
    int port;   /* -1: no port and no default for the scheme */
} nf_origin;

typedef struct nf_origins {
    nf_origin *v; /* malloc'd */
    size_t n;
} nf_origins;

/* Parse "https://chat.example.com, http://localhost:8080": entries are
 * scheme://host[:port] with nothing after (no path, no '/'), separated by
 * commas and optional spaces. NULL or "" gives an empty list, which the
 * caller treats as "no Origin check". 0, or -1 with *why. */
int nf_origins_parse(const char *spec, nf_origins *out, const char **why);
void nf_origins_free(nf_origins *l); /* NULL-safe */

/* 1 when the Origin header value names a listed origin (scheme and host
 * case-insensitive, default ports equal to absent), else 0 -- also for a
 * missing (NULL), "null" or malformed Origin. */
int nf_origins_match(const nf_origins *l, const char *origin);

#endif
