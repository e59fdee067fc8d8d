#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "dedup.h"

static void test_repeats_are_caught(void **state)
{
    edge_dedup d;
    assert_int_equal(dedup_init(&d, 4), 0);
    assert_int_equal(dedup_check_add(&d, 1), 0);
    assert_int_equal(dedup_check_add(&d, 2), 0);
    assert_int_equal(dedup_check_add(&d, 1), 1);
    assert_int_equal(dedup_check_add(&d, 2), 1);
    assert_int_equal(dedup_check_add(&d, 0), 0);
    assert_int_equal(dedup_check_add(&d, 0), 0);
    dedup_free(&d);
}

static void test_window_evicts_oldest(void **state)
{
    edge_dedup d;
    assert_int_equal(dedup_init(&d, 3), 0);
    for (uint64_t s = 1; s <= 4; s++)
        assert_int_equal(dedup_check_add(&d, s), 0);
    /* 1 fell out of the window; 2..4 are still remembered. */
    assert_int_equal(dedup_check_add(&d, 3), 1);
    assert_int_equal(dedup_check_add(&d, 1), 0);
    dedup_free(&d);
}

static void test_many_against_reference(void **state)
{
    /* A long pseudo-random run exercises probing and backward-shift deletion. */
    enum { W = 1000, N = 200000 };
    edge_dedup d;
    static uint64_t recent[W];
    assert_int_equal(dedup_init(&d, W), 0);
    uint64_t x = 88172645463325252ull;
    size_t head = 0, count = 0;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t seq = x % 5000 + 1;
        int expect = 0;
        for (size_t j = 0; j < count; j++)
            if (recent[(head + j) % W] == seq) expect = 1;
        assert_int_equal(dedup_check_add(&d, seq), expect);
        if (!expect) {
            if (count == W) {
                recent[head] = seq;
                head = (head + 1) % W;
            } else {
                recent[(head + count++) % W] = seq;
            }
        }
    }
    dedup_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repeats_are_caught),
        cmocka_unit_test(test_window_evicts_oldest),
        cmocka_unit_test(test_many_against_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
