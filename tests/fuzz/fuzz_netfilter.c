/* The Origin header (client-controlled) against an allow-list, the peer
 * address against a deny list, and both parsers on arbitrary text (they
 * read configuration, which is worth hardening too). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "netfilter.h"
#include "ratelimit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    static nf_origins origins;
    static nf_denylist deny;
    static int ready;
    if (!ready) {
        if (nf_origins_parse("https://chat.example.com, http://localhost:8080, https://[::1]:9443",
                             &origins, NULL) ||
            nf_denylist_parse("10.0.0.0/8, 192.0.2.0/31, ::1/128, 2001:db8::/33", &deny, NULL))
            abort();
        ready = 1;
    }
    int m = nf_origins_match(&origins, s);
    if (m != 0 && m != 1) abort();
    int d = nf_denylist_match(&deny, s);
    rl_ip ip;
    /* The two address parsers agree on what an address is. */
    if ((d == -1) != (rl_ip_parse(s, &ip) != 0)) abort();
    if (d >= 0 && nf_denylist_match16(&deny, ip.b) != d) abort();

    nf_origins o;
    const char *why = NULL;
    if (nf_origins_parse(s, &o, &why) == 0) {
        /* Every entry that parsed matches itself as an Origin value. */
        for (size_t i = 0; i < o.n; i++) {
            char buf[600];
            if (o.v[i].port > 0)
                snprintf(buf, sizeof buf, "%s://%s:%d", o.v[i].scheme, o.v[i].host, o.v[i].port);
            else
                snprintf(buf, sizeof buf, "%s://%s", o.v[i].scheme, o.v[i].host);
            if (!nf_origins_match(&o, buf)) abort();
        }
        nf_origins_free(&o);
    } else if (!why || o.n) {
        abort();
    }
    nf_denylist l;
    if (nf_denylist_parse(s, &l, &why) == 0) {
        for (size_t i = 0; i < l.n; i++) {
            if (l.v[i].prefix > 128 || !nf_denylist_match16(&l, l.v[i].addr)) abort();
        }
        nf_denylist_free(&l);
    } else if (!why || l.n) {
        abort();
    }
    free(s);
    return 0;
}
