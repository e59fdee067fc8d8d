#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netfilter.h"

static nf_denylist deny(const char *spec)
{
    nf_denylist l;
    const char *why = NULL;
    if (nf_denylist_parse(spec, &l, &why)) fail_msg("\"%s\" refused: %s", spec, why);
    return l;
}

static void expect_matches(const nf_denylist *l, const char *const *ips, size_t n, int want)
{
    for (size_t i = 0; i < n; i++)
        if (nf_denylist_match(l, ips[i]) != want) fail_msg("%s: want %d", ips[i], want);
}
#define EXPECT(l, want, ...)                                                                       \
    do {                                                                                           \
        const char *const ips_[] = {__VA_ARGS__};                                                  \
        expect_matches(l, ips_, sizeof ips_ / sizeof ips_[0], want);                               \
    } while (0)

static void test_cidr_basic(void **state)
{
    nf_denylist l = deny("10.0.0.0/8,::1/128");
    assert_int_equal(l.n, 2);
    EXPECT(&l, 1, "10.0.0.0", "10.1.2.3", "10.255.255.255", "::1", "::ffff:10.9.9.9");
    EXPECT(&l, 0, "11.0.0.0", "9.255.255.255", "::2", "::", "127.0.0.1", "2001:db8::1");
    assert_int_equal(nf_denylist_match(&l, "not-an-ip"), -1);
    assert_int_equal(nf_denylist_match(&l, ""), -1);
    assert_int_equal(nf_denylist_match(&l, NULL), -1);
    assert_int_equal(nf_denylist_match(&l, "10.0.0.1/32"), -1);
    nf_denylist_free(&l);
    nf_denylist_free(&l);
    nf_denylist_free(NULL);
}

static void test_cidr_prefix_edges(void **state)
{
    nf_denylist l = deny("192.0.2.0/31");
    EXPECT(&l, 1, "192.0.2.0", "192.0.2.1");
    EXPECT(&l, 0, "192.0.2.2", "192.0.1.255");
    nf_denylist_free(&l);

    /* No prefix: one host. */
    l = deny("198.51.100.7, 2001:db8::7");
    EXPECT(&l, 1, "198.51.100.7", "2001:db8::7", "::ffff:198.51.100.7");
    EXPECT(&l, 0, "198.51.100.6", "198.51.100.8", "2001:db8::6", "2001:db8::7:0");
    nf_denylist_free(&l);

    /* IPv4 /0 is all of IPv4 and nothing of native IPv6. */
    l = deny("0.0.0.0/0");
    EXPECT(&l, 1, "0.0.0.0", "255.255.255.255", "::ffff:1.2.3.4");
    EXPECT(&l, 0, "::1", "2001:db8::1", "::");
    nf_denylist_free(&l);

    /* ::/0 is everything, IPv4 (as mapped) included. */
    l = deny("::/0");
    EXPECT(&l, 1, "::1", "2001:db8::1", "1.2.3.4");
    nf_denylist_free(&l);

    /* Odd IPv6 prefixes: /65 splits the interface id's top bit; /127 a pair. */
    l = deny("2001:db8:0:1::/65, 2001:db8::ffff:0/127");
    EXPECT(&l, 1, "2001:db8:0:1::1", "2001:db8:0:1:7fff:ffff:ffff:ffff", "2001:db8::ffff:1");
    EXPECT(&l, 0, "2001:db8:0:1:8000::", "2001:db8:0:2::", "2001:db8::ffff:2");
    nf_denylist_free(&l);

    /* IPv4 /32 boundary and /1. */
    l = deny("128.0.0.0/1,1.2.3.4/32");
    EXPECT(&l, 1, "128.0.0.0", "255.1.1.1", "1.2.3.4");
    EXPECT(&l, 0, "127.255.255.255", "1.2.3.5");
    nf_denylist_free(&l);
}

static void test_cidr_spacing_and_empties(void **state)
{
    nf_denylist l = deny(" 10.0.0.0/8 , , \t::1 ,");
    assert_int_equal(l.n, 2);
    EXPECT(&l, 1, "10.0.0.1", "::1");
    nf_denylist_free(&l);
    l = deny("");
    assert_int_equal(l.n, 0);
    EXPECT(&l, 0, "10.0.0.1", "::1");
    nf_denylist_free(&l);
    l = deny(NULL);
    assert_int_equal(l.n, 0);
    nf_denylist_free(&l);
    l = deny(",,,");
    assert_int_equal(l.n, 0);
    nf_denylist_free(&l);
}

static void test_cidr_errors(void **state)
{
    const char *bad[] = {
        "10.0.0.1/8", /* host bits */
        "::1/64",     /* host bits */
        "10.0.0.0/33",
        "::/129",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/8x",
        "10.0.0.0/0008",
        "300.0.0.0/8",
        "10.0.0/8",
        "hello",
        "10.0.0.0/8,bad",
        "10.0.0.0 /8",
        "fe80::1%eth0",
        "/8",
        "1.2.3.4/+8",
        "0123:4567:89ab:cdef:0123:4567:89ab:cdef:0123/128",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nf_denylist l;
        const char *why = NULL;
        if (nf_denylist_parse(bad[i], &l, &why) != -1) fail_msg("\"%s\" accepted", bad[i]);
        assert_non_null(why);
        assert_int_equal(l.n, 0);
        assert_null(l.v);
    }
    nf_denylist l;
    const char *why;
    assert_int_equal(nf_denylist_parse("10.0.0.1/8", &l, &why), -1);
    assert_string_equal(why, "CIDR entry has host bits set below its prefix");
    assert_int_equal(nf_denylist_parse("10.0.0.0/33", &l, &why), -1);
    assert_string_equal(why, "CIDR prefix length out of range");
}

static void test_cidr_list_bound(void **state)
{
    size_t cap = (NF_LIST_MAX + 1) * 20;
    char *spec = malloc(cap);
    size_t o = 0;
    for (int i = 0; i <= NF_LIST_MAX; i++)
        o += (size_t)snprintf(spec + o, cap - o, "10.%d.%d.0/24,", i / 256, i % 256);
    nf_denylist l;
    const char *why;
    assert_int_equal(nf_denylist_parse(spec, &l, &why), -1);
    assert_string_equal(why, "too many CIDR entries");
    /* Exactly the maximum is fine. */
    *strrchr(spec, ',') = '\0';
    *strrchr(spec, ',') = '\0';
    assert_int_equal(nf_denylist_parse(spec, &l, &why), 0);
    assert_int_equal(l.n, NF_LIST_MAX);
    assert_int_equal(nf_denylist_match(&l, "10.15.255.9"), 1);
    assert_int_equal(nf_denylist_match(&l, "10.16.0.9"), 0);
    nf_denylist_free(&l);
    free(spec);
}

/* ---- origins ---- */

static void test_origin_allow_list(void **state)
{
    nf_origins l;
    const char *why = NULL;
    assert_int_equal(nf_origins_parse("https://chat.example.com, http://localhost:8080,"
                                      "HTTPS://[::1]:9443",
                                      &l, &why),
                     0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.v[0].host, "chat.example.com");
    assert_int_equal(l.v[0].port, 443);
    assert_string_equal(l.v[2].scheme, "https");
    const char *yes[] = {"https://chat.example.com", "https://CHAT.Example.COM",
                         "HTTPS://chat.example.com:443", "http://localhost:8080",
                         "https://[::1]:9443"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (nf_origins_match(&l, yes[i]) != 1) fail_msg("%s refused", yes[i]);
    const char *no[] = {
        "http://chat.example.com",           /* scheme */
        "https://chat.example.com:8443",     /* port */
        "https://chat.example.com.evil.com", /* suffix */
        "https://evil.chat.example.com",     /* subdomain */
        "https://evil.com/https://chat.example.com",
        "https://chat.example.com/", /* a path is not an origin */
        "https://chat.example.com:443x",
        "https://user@chat.example.com",
        "http://localhost",
        "http://localhost:80",
        "http://localhost:08080x",
        "https://[::1]",
        "null",
        "",
        " https://chat.example.com",
        "https://chat.example.com ",
        "chat.example.com",
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (nf_origins_match(&l, no[i]) != 0) fail_msg("%s allowed", no[i]);
    assert_int_equal(nf_origins_match(&l, NULL), 0);
    nf_origins_free(&l);
    nf_origins_free(&l);
    nf_origins_free(NULL);
}

static void test_origin_default_ports_and_other_schemes(void **state)
{
    nf_origins l;
    const char *why = NULL;
    assert_int_equal(nf_origins_parse("http://a.example:80,app://local,wss://b.example", &l, &why),
                     0);
    assert_int_equal(nf_origins_match(&l, "http://a.example"), 1);
    assert_int_equal(nf_origins_match(&l, "app://local"), 1);
    assert_int_equal(nf_origins_match(&l, "app://local:80"), 0);
    assert_int_equal(nf_origins_match(&l, "wss://b.example:443"), 1);
    assert_int_equal(nf_origins_match(&l, "https://b.example"), 0);
    nf_origins_free(&l);
    assert_int_equal(nf_origins_parse("", &l, &why), 0);
    assert_int_equal(l.n, 0);
    assert_int_equal(nf_origins_match(&l, "https://x.example"), 0);
    nf_origins_free(&l);
}

static void test_origin_errors(void **state)
{
    const char *bad[] = {
        "chat.example.com",
        "https://x.com/path",
        "https://x.com/",
        "https://x.com:0",
        "https://x.com:65536",
        "https://user@x.com",
        "https://",
        "://x.com",
        "1http://x.com",
        "https://[::1",
        "https://[zz::1]:80",
        "https://x.com:",
        "https://x.com?q",
        "*",
        "https://x.com:123456",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nf_origins l;
        const char *why = NULL;
        if (nf_origins_parse(bad[i], &l, &why) != -1) fail_msg("\"%s\" accepted", bad[i]);
        assert_string_equal(why, "bad origin (want scheme://host[:port], no path)");
        assert_int_equal(l.n, 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_basic),
        cmocka_unit_test(test_cidr_prefix_edges),
        cmocka_unit_test(test_cidr_spacing_and_empties),
        cmocka_unit_test(test_cidr_errors),
        cmocka_unit_test(test_cidr_list_bound),
        cmocka_unit_test(test_origin_allow_list),
        cmocka_unit_test(test_origin_default_ports_and_other_schemes),
        cmocka_unit_test(test_origin_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
