#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"

#define MS 1000000LL
#define SEC 1000000000LL

static const uint8_t SEED[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static int count_passing(rl_bucket *b, int64_t now, int tries)
{
    int ok = 0;
    for (int i = 0; i < tries; i++)
        ok += rl_take(b, now, 1) == 0;
    return ok;
}

/* ---- buckets ---- */

static void test_connection_burst_then_rate(void **state)
{
    rl_bucket b;
    int64_t t0 = 5 * SEC; /* any origin: only differences matter */
    rl_bucket_init(&b, RL_CONN_MSG_RATE, RL_CONN_MSG_BURST, t0);
    /* 100 messages at once: exactly the burst passes. */
    assert_int_equal(count_passing(&b, t0, 100), 20);
    /* The next token is 100 ms away at 10/s. */
    assert_int_equal(rl_take(&b, t0, 1), 100);
    assert_int_equal(rl_take(&b, t0 + 40 * MS, 1), 60);
    /* One second later: exactly 10 more. */
    assert_int_equal(count_passing(&b, t0 + SEC, 100), 10);
    /* Half a second: 5. */
    assert_int_equal(count_passing(&b, t0 + SEC + 500 * MS, 100), 5);
    /* 99 ms later nothing, at 100 ms one. */
    assert_int_equal(count_passing(&b, t0 + SEC + 599 * MS, 10), 0);
    assert_int_equal(count_passing(&b, t0 + SEC + 600 * MS, 10), 1);
    /* A long pause refills to the burst, not beyond. */
    assert_int_equal(rl_available(&b, t0 + 3600 * SEC), 20);
    assert_int_equal(count_passing(&b, t0 + 3600 * SEC, 100), 20);
}

static void test_edge_message_bucket(void **state)
{
    rl_bucket b;
    rl_bucket_init(&b, RL_EDGE_MSG_RATE, RL_EDGE_MSG_BURST, 0);
    assert_int_equal(count_passing(&b, 0, 6000), 5000);
    /* 10,000/s is 10 per millisecond. */
    assert_int_equal(count_passing(&b, 1 * MS, 100), 10);
    /* 1 token short: 0.1 ms, reported as 1 ms (never 0 for a refusal). */
    assert_int_equal(rl_take(&b, 1 * MS, 1), 1);
    /* Steady state at the rate: 1,000 ms of 10 per ms all pass. */
    int ok = 0;
    for (int ms = 2; ms < 1002; ms++)
        ok += count_passing(&b, ms * MS, 10);
    assert_int_equal(ok, 10000);
}

static void test_bucket_edge_cases(void **state)
{
    rl_bucket b;
    /* rate 0 = unlimited */
    rl_bucket_init(&b, 0, 1, 0);
    assert_int_equal(count_passing(&b, 0, 1000), 1000);
    /* n > burst can never pass; n == burst can, once. */
    rl_bucket_init(&b, 10, 20, 0);
    assert_int_equal(rl_take(&b, 0, 21), RL_NEVER);
    assert_int_equal(rl_take(&b, 0, 20), 0);
    assert_int_equal(rl_take(&b, 0, 20), 2000);
    assert_int_equal(rl_take(&b, 0, 0), 0);
    /* A clock that steps back refills nothing and does not rewind. */
    rl_bucket_init(&b, 10, 1, 10 * SEC);
    assert_int_equal(rl_take(&b, 10 * SEC, 1), 0);
    assert_int_equal(count_passing(&b, 9 * SEC, 5), 0);
    assert_int_equal(count_passing(&b, 10 * SEC + 100 * MS, 5), 1);
    /* Burst 0 is clamped to 1; huge values are clamped, not overflowed. */
    rl_bucket_init(&b, 5, 0, 0);
    assert_int_equal(count_passing(&b, 0, 5), 1);
    rl_bucket_init(&b, UINT64_MAX, UINT64_MAX, 0);
    assert_int_equal(rl_available(&b, 0), RL_BURST_MAX);
    assert_int_equal(rl_take(&b, 0, RL_BURST_MAX), 0);
    assert_int_equal(rl_available(&b, INT64_MAX), RL_BURST_MAX);
    /* Fractional rates accumulate exactly: 3/s over 1/3 s is one token. */
    rl_bucket_init(&b, 3, 1, 0);
    assert_int_equal(rl_take(&b, 0, 1), 0);
    assert_int_equal(count_passing(&b, 333333333, 1), 0);
    assert_int_equal(count_passing(&b, 333333334, 1), 1);
}

/* ---- per-IP table ---- */

static rl_ip ip(const char *text)
{
    rl_ip a;
    if (rl_ip_parse(text, &a)) fail_msg("bad test address %s", text);
    return a;
}

static rl_ip ip4n(uint32_t n)
{
    char buf[32];
    snprintf(buf, sizeof buf, "10.%u.%u.%u", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    return ip(buf);
}

static void test_ip_parse(void **state)
{
    rl_ip a, b;
    assert_int_equal(rl_ip_parse("192.0.2.1", &a), 0);
    assert_int_equal(rl_ip_parse("::ffff:192.0.2.1", &b), 0);
    assert_memory_equal(a.b, b.b, 16);
    assert_int_equal(rl_ip_parse("2001:db8::1", &a), 0);
    assert_int_equal(rl_ip_parse("not an ip", &a), -1);
    assert_int_equal(rl_ip_parse("", &a), -1);
    assert_int_equal(rl_ip_parse(NULL, &a), -1);
    assert_int_equal(rl_ip_parse("192.0.2.1:80", &a), -1);
}

static void test_concurrent_cap_per_ip(void **state)
{
    rl_iptable_config c;
    rl_iptable_config_default(&c);
    c.max_conns = 3;
    c.conn_rate = 0;
    rl_iptable t;
    assert_int_equal(rl_iptable_init(&t, &c, SEED), 0);
    rl_ip a = ip("192.0.2.1"), b = ip("192.0.2.2");
    for (int i = 0; i < 3; i++)
        assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_ALLOW);
    assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_DENY_CONCURRENT);
    assert_int_equal(rl_ip_conns(&t, &a), 3);
    /* Another address is not affected. */
    assert_int_equal(rl_ip_conn_open(&t, &b, 0, NULL), RL_ALLOW);
    rl_ip_conn_close(&t, &a);
    assert_int_equal(rl_ip_conns(&t, &a), 2);
    assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_ALLOW);
    assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_DENY_CONCURRENT);
    /* The mapped spelling is the same address. */
    rl_ip m = ip("::ffff:192.0.2.1");
    assert_int_equal(rl_ip_conn_open(&t, &m, 0, NULL), RL_DENY_CONCURRENT);
    for (int i = 0; i < 5; i++) /* extra closes are ignored */
        rl_ip_conn_close(&t, &a);
    assert_int_equal(rl_ip_conns(&t, &a), 0);
    rl_ip unknown = ip("198.51.100.1");
    rl_ip_conn_close(&t, &unknown);
    assert_int_equal(rl_ip_conns(&t, &unknown), 0);
    assert_string_equal(rl_verdict_str(RL_DENY_CONCURRENT),
                        "too many connections from this address");
    rl_iptable_free(&t);
    rl_iptable_free(&t);
    rl_iptable_free(NULL);
}

static void test_new_connection_rate_per_ip(void **state)
{
    rl_iptable_config c;
    rl_iptable_config_default(&c);
    c.max_conns = 0;
    c.conn_rate = 2;
    c.conn_burst = 4;
    rl_iptable t;
    assert_int_equal(rl_iptable_init(&t, &c, SEED), 0);
    rl_ip a = ip("2001:db8::7");
    int ok = 0;
    int64_t retry = 0;
    for (int i = 0; i < 10; i++)
        ok += rl_ip_conn_open(&t, &a, SEC, &retry) == RL_ALLOW;
    assert_int_equal(ok, 4);
    assert_int_equal(retry, 500);
    assert_int_equal(rl_ip_conn_open(&t, &a, SEC, NULL), RL_DENY_RATE);
    assert_int_equal(rl_ip_conn_open(&t, &a, SEC + 500 * MS, NULL), RL_ALLOW);
    /* The same /64 shares the budget; another /64 has its own. */
    rl_ip same64 = ip("2001:db8::ffff:1"), other64 = ip("2001:db8:0:1::7");
    assert_int_equal(rl_ip_conn_open(&t, &same64, SEC + 500 * MS, NULL), RL_DENY_RATE);
    assert_int_equal(rl_ip_conn_open(&t, &other64, SEC + 500 * MS, NULL), RL_ALLOW);
    assert_int_equal(rl_ip_conns(&t, &same64), 5);
    rl_iptable_free(&t);

    /* v6_prefix 128 keys every address alone. */
    c.v6_prefix = 128;
    assert_int_equal(rl_iptable_init(&t, &c, SEED), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_ALLOW);
    assert_int_equal(rl_ip_conn_open(&t, &same64, 0, NULL), RL_ALLOW);
    rl_iptable_free(&t);
}

static void test_table_is_bounded_and_evicts_idle_lru(void **state)
{
    rl_iptable_config c;
    rl_iptable_config_default(&c);
    c.max_entries = 100;
    c.max_conns = 1;
    c.conn_rate = 1;
    c.conn_burst = 1;
    rl_iptable t;
    assert_int_equal(rl_iptable_init(&t, &c, SEED), 0);
    /* 50 addresses hold a connection throughout. */
    for (uint32_t i = 0; i < 50; i++) {
        rl_ip a = ip4n(i);
        assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_ALLOW);
    }
    /* 100,000 others come and go. */
    for (uint32_t i = 1000; i < 101000; i++) {
        rl_ip a = ip4n(i);
        assert_int_equal(rl_ip_conn_open(&t, &a, (int64_t)i * MS, NULL), RL_ALLOW);
        rl_ip_conn_close(&t, &a);
        assert_true(rl_iptable_size(&t) <= 100);
    }
    assert_int_equal(rl_iptable_size(&t), 100);
    /* Entries with connections are never evicted: the holders still count,
     * and their cap still holds. */
    for (uint32_t i = 0; i < 50; i++) {
        rl_ip a = ip4n(i);
        assert_int_equal(rl_ip_conns(&t, &a), 1);
        assert_int_equal(rl_ip_conn_open(&t, &a, 200 * SEC, NULL), RL_DENY_CONCURRENT);
    }
    /* The 50 most recent idle addresses are remembered (their buckets are
     * empty at this instant); the older ones were evicted and start fresh. */
    int64_t now = 101000 * MS;
    for (uint32_t i = 101000 - 50; i < 101000; i++) {
        rl_ip a = ip4n(i);
        assert_int_equal(rl_ip_conn_open(&t, &a, now - 1, NULL), RL_DENY_RATE);
    }
    rl_ip old = ip4n(1000);
    assert_int_equal(rl_ip_conn_open(&t, &old, now, NULL), RL_ALLOW);
    rl_iptable_free(&t);
}

static void test_table_full_of_busy_entries_fails_closed(void **state)
{
    rl_iptable_config c;
    rl_iptable_config_default(&c);
    c.max_entries = 4;
    c.conn_rate = 0;
    rl_iptable t;
    assert_int_equal(rl_iptable_init(&t, &c, SEED), 0);
    for (uint32_t i = 0; i < 4; i++) {
        rl_ip a = ip4n(i);
        assert_int_equal(rl_ip_conn_open(&t, &a, 0, NULL), RL_ALLOW);
    }
    rl_ip e = ip4n(4);
    assert_int_equal(rl_ip_conn_open(&t, &e, 0, NULL), RL_DENY_TABLE_FULL);
    /* Known addresses still work. */
    rl_ip a0 = ip4n(0);
    assert_int_equal(rl_ip_conn_open(&t, &a0, 0, NULL), RL_ALLOW);
    rl_ip a1 = ip4n(1);
    rl_ip_conn_close(&t, &a1);
    assert_int_equal(rl_ip_conn_open(&t, &e, 0, NULL), RL_ALLOW);
    assert_int_equal(rl_ip_conns(&t, &a1), 0);
    assert_int_equal(rl_ip_conns(&t, &a0), 2);
    rl_iptable_free(&t);
}

static void test_table_against_reference(void **state)
{
    /* Random opens and closes over 3,000 addresses in a 4,096-entry table
     * (no eviction): counts match a plain array. Then the same in a small
     * table, where evictions shuffle the index: addresses with open
     * connections keep exact counts. */
    enum { N = 3000 };
    static uint32_t ref[N];
    for (int round = 0; round < 2; round++) {
        rl_iptable_config c;
        rl_iptable_config_default(&c);
        c.max_entries = round == 0 ? 4096 : 700;
        c.max_conns = 0;
        c.conn_rate = 0;
        rl_iptable t;
        assert_int_equal(rl_iptable_init(&t, &c, SEED), 0);
        memset(ref, 0, sizeof ref);
        uint32_t busy = 0;
        uint64_t x = 88172645463325252ull;
        for (int i = 0; i < 300000; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            uint32_t k = (uint32_t)(x % N);
            rl_ip a = ip4n(k);
            if ((x >> 32) % 3 && ref[k] > 0) {
                rl_ip_conn_close(&t, &a);
                if (--ref[k] == 0) busy--;
            } else {
                rl_verdict v = rl_ip_conn_open(&t, &a, i, NULL);
                if (v == RL_ALLOW) {
                    if (ref[k]++ == 0) busy++;
                } else {
                    assert_int_equal(v, RL_DENY_TABLE_FULL);
                    assert_int_equal(ref[k], 0);
                    assert_int_equal(busy, c.max_entries);
                }
            }
            assert_true(rl_iptable_size(&t) <= c.max_entries);
        }
        for (uint32_t k = 0; k < N; k++) {
            rl_ip a = ip4n(k);
            if (ref[k]) assert_int_equal(rl_ip_conns(&t, &a), ref[k]);
        }
        rl_iptable_free(&t);
    }
}

static void test_iptable_init_errors(void **state)
{
    rl_iptable_config c;
    rl_iptable_config_default(&c);
    rl_iptable t;
    c.max_entries = 0;
    assert_int_equal(rl_iptable_init(&t, &c, SEED), -1);
    rl_iptable_free(&t);
    rl_iptable_config_default(&c);
    /* NULL seed: random key from the OS. */
    assert_int_equal(rl_iptable_init(&t, &c, NULL), 0);
    assert_true(t.k0 != 0 || t.k1 != 0);
    rl_iptable_free(&t);
}

/* ---- strikes ---- */

static void test_one_burst_is_one_strike(void **state)
{
    rl_strike_policy p;
    rl_strike_policy_default(&p);
    rl_strikes s = {0};
    /* 80 refused frames within 50 ms: warnings, never a close. */
    for (int i = 0; i < 80; i++)
        assert_int_equal(rl_strike(&s, &p, SEC + i * MS / 2), RL_STRIKE_WARN);
    assert_int_equal(s.count, 1);
}

static void test_persistent_violator_is_closed(void **state)
{
    rl_strike_policy p;
    rl_strike_policy_default(&p);
    rl_strikes s = {0};
    /* Throttled every 100 ms: a strike each second; the 6th closes. */
    int64_t t = 0;
    rl_strike_action a = RL_STRIKE_WARN;
    while (a == RL_STRIKE_WARN) {
        a = rl_strike(&s, &p, t);
        t += 100 * MS;
    }
    assert_int_equal(t - 100 * MS, 5 * SEC);
    assert_int_equal(s.count, 6);
}

static void test_strikes_forgotten_after_window(void **state)
{
    rl_strike_policy p;
    rl_strike_policy_default(&p);
    rl_strikes s = {0};
    /* One strike every 20 s: at most 3 in a 60 s window, never closed. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(rl_strike(&s, &p, i * 20 * SEC), RL_STRIKE_WARN);
    /* gap 0: every violation counts. */
    p.strike_gap_ns = 0;
    p.max_strikes = 3;
    rl_strikes s2 = {0};
    assert_int_equal(rl_strike(&s2, &p, 0), RL_STRIKE_WARN);
    assert_int_equal(rl_strike(&s2, &p, 0), RL_STRIKE_WARN);
    assert_int_equal(rl_strike(&s2, &p, 0), RL_STRIKE_WARN);
    assert_int_equal(rl_strike(&s2, &p, 0), RL_STRIKE_CLOSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connection_burst_then_rate),
        cmocka_unit_test(test_edge_message_bucket),
        cmocka_unit_test(test_bucket_edge_cases),
        cmocka_unit_test(test_ip_parse),
        cmocka_unit_test(test_concurrent_cap_per_ip),
        cmocka_unit_test(test_new_connection_rate_per_ip),
        cmocka_unit_test(test_table_is_bounded_and_evicts_idle_lru),
        cmocka_unit_test(test_table_full_of_busy_entries_fails_closed),
        cmocka_unit_test(test_table_against_reference),
        cmocka_unit_test(test_iptable_init_errors),
        cmocka_unit_test(test_one_burst_is_one_strike),
        cmocka_unit_test(test_persistent_violator_is_closed),
        cmocka_unit_test(test_strikes_forgotten_after_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
