/* Partition leases (services/dispatcher/lease.c): who is live, who is
 * preferred, and what each dispatcher does about each partition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "lease.h"

#define P 16
#define TTL 2000

static void test_live_and_now(void **state)
{
    lease_instance in[] = {{"a", 10000}, {"b", 7000}, {"c", 0}};
    assert_int_equal(lease_now(in, 3), 10000);
    assert_true(lease_live(&in[0], 10000, TTL));
    assert_false(lease_live(&in[1], 10000, TTL)); /* 3 s old */
    assert_false(lease_live(&in[2], 10000, TTL)); /* never heard */
    assert_true(lease_live(&in[1], 9000, TTL));
}

static void test_preferred_spreads_and_is_stable(void **state)
{
    lease_instance in[] = {{"alpha", 5000}, {"beta", 5000}, {"gamma", 5000}};
    int count[3] = {0};
    const char *first[P];
    for (uint32_t p = 0; p < P; p++) {
        first[p] = lease_preferred(in, 3, p, 5000, TTL);
        assert_non_null(first[p]);
        for (int i = 0; i < 3; i++)
            if (first[p] == in[i].id) count[i]++;
    }
    for (int i = 0; i < 3; i++)
        assert_true(count[i] >= 2); /* none starves (16 over 3) */
    /* gamma dies: only its partitions move. */
    in[2].stamp_ms = 1000;
    for (uint32_t p = 0; p < P; p++) {
        const char *now = lease_preferred(in, 3, p, 5000, TTL);
        if (first[p] != in[2].id)
            assert_ptr_equal(now, first[p]);
        else
            assert_true(now == in[0].id || now == in[1].id);
    }
    lease_instance none[] = {{"x", 1}};
    assert_null(lease_preferred(none, 1, 0, 5000, TTL));
}

/* Two dispatchers, one bucket: every partition ends with exactly one owner
 * after both act on their plans, and a dead owner's partitions are taken. */
static void test_plan_converges(void **state)
{
    lease_instance in[] = {{"a", 5000}, {"b", 5000}};
    const char *owner[P];
    lease_part parts[P];
    uint8_t held_a[P] = {0}, held_b[P] = {0};
    lease_action act[P];
    for (int p = 0; p < P; p++) {
        owner[p] = "";
        parts[p] = (lease_part){0, "", 0};
    }
    for (int round = 0; round < 3; round++) {
        for (int who = 0; who < 2; who++) {
            const char *me = in[who].id;
            uint8_t *held = who ? held_b : held_a;
            for (int p = 0; p < P; p++)
                parts[p] = (lease_part){owner[p][0] != 0 || parts[p].exists, owner[p], 0};
            lease_plan(me, 1, in, 2, TTL, parts, held, P, act);
            for (int p = 0; p < P; p++) {
                if (act[p] == LEASE_ACQUIRE) {
                    owner[p] = me;
                    held[p] = 1;
                } else if (act[p] == LEASE_RELEASE) {
                    owner[p] = "";
                    held[p] = 0;
                } else if (act[p] == LEASE_LOST) {
                    held[p] = 0;
                }
            }
        }
    }
    int na = 0, nb = 0;
    for (int p = 0; p < P; p++) {
        assert_true(held_a[p] ^ held_b[p]);
        assert_string_equal(owner[p], held_a[p] ? "a" : "b");
        na += held_a[p];
        nb += held_b[p];
    }
    assert_true(na > 0 && nb > 0);
    /* b dies (stale heartbeat): a takes everything; b, alive again but late,
     * finds its partitions taken and drops them. */
    in[1].stamp_ms = 2000;
    for (int p = 0; p < P; p++)
        parts[p] = (lease_part){1, owner[p], 1};
    lease_plan("a", 1, in, 2, TTL, parts, held_a, P, act);
    for (int p = 0; p < P; p++) {
        assert_int_equal(act[p], held_a[p] ? LEASE_KEEP : LEASE_ACQUIRE);
        if (act[p] == LEASE_ACQUIRE) owner[p] = "a";
    }
    for (int p = 0; p < P; p++)
        parts[p] = (lease_part){1, owner[p], 2};
    lease_plan("b", 1, in, 2, TTL, parts, held_b, P, act);
    for (int p = 0; p < P; p++)
        assert_int_equal(act[p], held_b[p] ? LEASE_LOST : LEASE_NONE);
}

static void test_plan_not_live_drops_everything(void **state)
{
    lease_instance in[] = {{"a", 5000}};
    lease_part parts[2] = {{1, "a", 3}, {1, "", 4}};
    uint8_t held[2] = {1, 0};
    lease_action act[2];
    lease_plan("a", 0, in, 1, TTL, parts, held, 2, act);
    assert_int_equal(act[0], LEASE_LOST);
    assert_int_equal(act[1], LEASE_NONE);
    /* Ours in the bucket but not held (dropped after a reconnect): take it again. */
    held[0] = 0;
    lease_plan("a", 1, in, 1, TTL, parts, held, 2, act);
    assert_int_equal(act[0], LEASE_ACQUIRE);
    assert_int_equal(act[1], LEASE_ACQUIRE);
}

static void test_value_round_trip(void **state)
{
    char buf[64], owner[32];
    uint64_t floor = 1;
    assert_int_equal(lease_value(buf, sizeof buf, "abcDEF_-12", 12345), 0);
    assert_int_equal(lease_parse(buf, strlen(buf), owner, sizeof owner, &floor), 0);
    assert_string_equal(owner, "abcDEF_-12");
    assert_int_equal(floor, 12345);
    assert_int_equal(lease_value(buf, sizeof buf, "", 7), 0);
    assert_int_equal(lease_parse(buf, strlen(buf), owner, sizeof owner, &floor), 0);
    assert_string_equal(owner, "");
    assert_int_equal(floor, 7);
    assert_int_equal(lease_parse("x", 1, owner, sizeof owner, &floor), 0);
    assert_int_equal(floor, 0);
    assert_int_equal(lease_parse("x 12a", 5, owner, sizeof owner, &floor), -1);
    assert_int_equal(lease_parse("a.b 1", 5, owner, sizeof owner, &floor), -1);
    assert_int_equal(lease_parse("x 99999999999999999999", 22, owner, sizeof owner, &floor), -1);
    assert_int_equal(lease_parse("toolongname 1", 13, owner, 4, &floor), -1);
    assert_int_equal(lease_value(buf, 4, "abcdef", 1), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_and_now),
        cmocka_unit_test(test_preferred_spreads_and_is_stable),
        cmocka_unit_test(test_plan_converges),
        cmocka_unit_test(test_plan_not_live_drops_everything),
        cmocka_unit_test(test_value_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
