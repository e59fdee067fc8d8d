#include "netfilter.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Longest CIDR entry: a full IPv6 text form with an IPv4 tail, "/128". */
#define CIDR_TEXT_MAX (INET6_ADDRSTRLEN + 4)
#define HOST_MAX 253

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* Calls fn on each trimmed, non-empty comma-separated entry of spec;
 * stops at the first non-zero return. */
static int for_each_entry(const char *spec, int (*fn)(const char *, size_t, void *), void *arg)
{
    const char *p = spec;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end) end = p + strlen(p);
        const char *s = p, *e = end;
        while (s < e && is_space(*s))
            s++;
        while (e > s && is_space(e[-1]))
            e--;
        if (e > s) {
            int rc = fn(s, (size_t)(e - s), arg);
            if (rc) return rc;
        }
        if (!*end) return 0;
        p = end + 1;
    }
}

/* ---- CIDR deny list ---- */

static void map_v4(const struct in_addr *a4, uint8_t out[16])
{
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, a4, 4);
}

/* A textual IPv4 / IPv6 address into 16 bytes; 1 if it was IPv4, 0 if
 * IPv6, -1 if neither. */
static int addr_parse(const char *text, uint8_t out[16])
{
    struct in_addr a4;
    if (inet_pton(AF_INET, text, &a4) == 1) {
        map_v4(&a4, out);
        return 1;
    }
    return inet_pton(AF_INET6, text, out) == 1 ? 0 : -1;
}

static int prefix_match(const uint8_t *a, const uint8_t *net, unsigned prefix)
{
    unsigned full = prefix / 8, rest = prefix % 8;
    if (memcmp(a, net, full) != 0) return 0;
    if (rest == 0) return 1;
    uint8_t mask = (uint8_t)(0xff00u >> rest);
    return (a[full] & mask) == (net[full] & mask);
}

struct deny_ctx {
    nf_denylist *l;
    size_t cap;
    const char *why;
};

static int deny_entry(const char *s, size_t n, void *arg)
{
    struct deny_ctx *c = arg;
    char buf[CIDR_TEXT_MAX + 1];
    if (c->l->n >= NF_LIST_MAX) {
        c->why = "too many CIDR entries";
        return -1;
    }
    if (n > CIDR_TEXT_MAX) {
        c->why = "bad CIDR entry (too long)";
        return -1;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *slash = strchr(buf, '/');
    long prefix = -1;
    if (slash) {
        *slash = '\0';
        const char *d = slash + 1;
        size_t dl = strlen(d);
        if (dl == 0 || dl > 3) {
            c->why = "bad CIDR prefix length";
            return -1;
        }
        prefix = 0;
        for (size_t i = 0; i < dl; i++) {
            if (d[i] < '0' || d[i] > '9') {
                c->why = "bad CIDR prefix length";
                return -1;
            }
            prefix = prefix * 10 + (d[i] - '0');
        }
    }
    nf_cidr e;
    int v4 = addr_parse(buf, e.addr);
    if (v4 < 0) {
        c->why = "bad address in CIDR entry";
        return -1;
    }
    long max = v4 ? 32 : 128;
    if (prefix < 0) prefix = max;
    if (prefix > max) {
        c->why = "CIDR prefix length out of range";
        return -1;
    }
    e.prefix = (uint8_t)(v4 ? prefix + 96 : prefix);
    /* Host bits below the prefix: "10.0.0.1/8" is more likely a typo for
     * /32 than a wish to block 16 million addresses. */
    for (unsigned bit = e.prefix; bit < 128; bit++) {
        if (e.addr[bit / 8] & (0x80u >> (bit % 8))) {
            c->why = "CIDR entry has host bits set below its prefix";
            return -1;
        }
    }
    if (c->l->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 8;
        nf_cidr *v = realloc(c->l->v, ncap * sizeof *v);
        if (!v) {
            c->why = "out of memory";
            return -1;
        }
        c->l->v = v;
        c->cap = ncap;
    }
    c->l->v[c->l->n++] = e;
    return 0;
}

int nf_denylist_parse(const char *spec, nf_denylist *out, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    memset(out, 0, sizeof *out);
    if (!spec) return 0;
    struct deny_ctx c = {.l = out, .cap = 0, .why = NULL};
    if (for_each_entry(spec, deny_entry, &c)) {
        *why = c.why;
        nf_denylist_free(out);
        return -1;
    }
    return 0;
}

void nf_denylist_free(nf_denylist *l)
{
    if (!l) return;
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int nf_denylist_match16(const nf_denylist *l, const uint8_t addr[16])
{
    for (size_t i = 0; i < l->n; i++)
        if (prefix_match(addr, l->v[i].addr, l->v[i].prefix)) return 1;
    return 0;
}

int nf_denylist_match(const nf_denylist *l, const char *ip)
{
    uint8_t a[16];
    if (!ip || addr_parse(ip, a) < 0) return -1;
    return nf_denylist_match16(l, a);
}

/* ---- Origin allow-list ---- */

typedef struct origin_view {
    const char *scheme;
    size_t scheme_len;
    const char *host;
    size_t host_len;
    int port;
} origin_view;

static int default_port(const char *scheme, size_t n)
{
    if ((n == 4 && strncasecmp(scheme, "http", 4) == 0) ||
        (n == 2 && strncasecmp(scheme, "ws", 2) == 0))
        return 80;
    if ((n == 5 && strncasecmp(scheme, "https", 5) == 0) ||
        (n == 3 && strncasecmp(scheme, "wss", 3) == 0))
        return 443;
    return -1;
}

/* scheme "://" host [":" port], nothing else (RFC 6454's serialisation). */
static int origin_parse(const char *s, size_t n, origin_view *v)
{
    size_t i = 0;
    while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
        i++;
    if (i == 0 || !isalpha((unsigned char)s[0]) || n - i < 3 || memcmp(s + i, "://", 3) != 0)
        return -1;
    v->scheme = s;
    v->scheme_len = i;
    i += 3;
    size_t h = i;
    if (i < n && s[i] == '[') {
        const char *close = memchr(s + i, ']', n - i);
        if (!close) return -1;
        size_t inner = (size_t)(close - (s + i)) - 1;
        char buf[INET6_ADDRSTRLEN + 1];
        uint8_t a[16];
        if (inner == 0 || inner > INET6_ADDRSTRLEN) return -1;
        memcpy(buf, s + i + 1, inner);
        buf[inner] = '\0';
        if (inet_pton(AF_INET6, buf, a) != 1) return -1;
        i = (size_t)(close - s) + 1;
    } else {
        while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'))
            i++;
    }
    if (i == h || i - h > HOST_MAX) return -1;
    v->host = s + h;
    v->host_len = i - h;
    v->port = default_port(v->scheme, v->scheme_len);
    if (i < n && s[i] == ':') {
        i++;
        size_t d = i;
        long port = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - d < 5)
            port = port * 10 + (s[i++] - '0');
        if (i == d || port < 1 || port > 65535) return -1;
        v->port = (int)port;
    }
    return i == n ? 0 : -1;
}

static char *lower_dup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d) return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = (char)tolower((unsigned char)s[i]);
    d[n] = '\0';
    return d;
}

struct origin_ctx {
    nf_origins *l;
    size_t cap;
    const char *why;
};

static int origin_entry(const char *s, size_t n, void *arg)
{
    struct origin_ctx *c = arg;
    origin_view v;
    if (c->l->n >= NF_LIST_MAX) {
        c->why = "too many allowed origins";
        return -1;
    }
    if (origin_parse(s, n, &v)) {
        c->why = "bad origin (want scheme://host[:port], no path)";
        return -1;
    }
    if (c->l->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 8;
        nf_origin *nv = realloc(c->l->v, ncap * sizeof *nv);
        if (!nv) goto oom;
        c->l->v = nv;
        c->cap = ncap;
    }
    nf_origin *o = &c->l->v[c->l->n];
    o->scheme = lower_dup(v.scheme, v.scheme_len);
    o->host = lower_dup(v.host, v.host_len);
    o->port = v.port;
    c->l->n++;
    if (!o->scheme || !o->host) goto oom;
    return 0;
oom:
    c->why = "out of memory";
    return -1;
}

int nf_origins_parse(const char *spec, nf_origins *out, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    memset(out, 0, sizeof *out);
    if (!spec) return 0;
    struct origin_ctx c = {.l = out, .cap = 0, .why = NULL};
    if (for_each_entry(spec, origin_entry, &c)) {
        *why = c.why;
        nf_origins_free(out);
        return -1;
    }
    return 0;
}

void nf_origins_free(nf_origins *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].scheme);
        free(l->v[i].host);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int nf_origins_match(const nf_origins *l, const char *origin)
{
    origin_view v;
    if (!origin || origin_parse(origin, strlen(origin), &v)) return 0;
    for (size_t i = 0; i < l->n; i++) {
        const nf_origin *o = &l->v[i];
        if (o->port == v.port && strlen(o->scheme) == v.scheme_len &&
            strncasecmp(o->scheme, v.scheme, v.scheme_len) == 0 && strlen(o->host) == v.host_len &&
            strncasecmp(o->host, v.host, v.host_len) == 0)
            return 1;
    }
    return 0;
}
