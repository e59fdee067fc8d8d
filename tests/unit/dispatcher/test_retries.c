/* retries: per-message progress between delivery attempts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "retries.h"

static int has(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i], s)) return 1;
    return 0;
}

static void test_note_accumulates(void **state)
{
    retries *t = NULL;
    assert_int_equal(retries_create(&t, 16, 60000), 0);
    assert_null(retries_get(t, 7));

    char *took1[] = {"edge-a"}, *failed1[] = {"edge-b", "edge-c"};
    assert_int_equal(
        retries_note(t, 7, 1000, 10, "edge_timeout:edge-b,edge-c", took1, 1, failed1, 2, 1), 0);
    char *took2[] = {"edge-c", "edge-a"}, *failed2[] = {"edge-b"};
    assert_int_equal(retries_note(t, 7, 1400, 20, "edge_timeout:edge-b", took2, 2, failed2, 1, 1),
                     0);
    const retry_entry *e = retries_get(t, 7);
    assert_non_null(e);
    assert_int_equal(e->seq, 7);
    /* took is the union over attempts, without repeats */
    assert_int_equal(e->n_took, 2);
    assert_true(has(e->took, e->n_took, "edge-a"));
    assert_true(has(e->took, e->n_took, "edge-c"));
    /* failed is the last answered attempt's */
    assert_int_equal(e->n_failed, 1);
    assert_string_equal(e->failed[0], "edge-b");
    assert_string_equal(e->reason, "edge_timeout:edge-b");
    assert_int_equal(e->n_attempts, 2);
    assert_int_equal(e->attempt_ms[0], 1000);
    assert_int_equal(e->attempt_ms[1], 1400);

    /* The registry failed this time: the edge lists stay. */
    assert_int_equal(retries_note(t, 7, 2000, 30, "registry_unavailable", NULL, 0, NULL, 0, 0), 0);
    e = retries_get(t, 7);
    assert_int_equal(e->n_failed, 1);
    assert_int_equal(e->n_took, 2);
    assert_string_equal(e->reason, "registry_unavailable");
    assert_int_equal(e->n_attempts, 3);

    retries_forget(t, 7);
    assert_null(retries_get(t, 7));
    assert_int_equal(retries_count(t), 0);
    retries_forget(t, 7); /* twice is fine */
    retries_destroy(t);
    retries_destroy(NULL);
}

static void test_bounded_and_swept(void **state)
{
    retries *t = NULL;
    assert_int_equal(retries_create(&t, 3, 1000), 0);
    for (uint64_t s = 1; s <= 3; s++)
        assert_int_equal(retries_note(t, s, 0, (int64_t)s, "r", NULL, 0, NULL, 0, 0), 0);
    /* 1 fails again: now 2 is the least recently failed */
    assert_int_equal(retries_note(t, 1, 0, 10, "r", NULL, 0, NULL, 0, 0), 0);
    assert_int_equal(retries_note(t, 4, 0, 11, "r", NULL, 0, NULL, 0, 0), 0);
    assert_int_equal(retries_count(t), 3);
    assert_null(retries_get(t, 2));
    assert_non_null(retries_get(t, 1));
    assert_non_null(retries_get(t, 3));
    assert_non_null(retries_get(t, 4));

    /* TTL: 3 (touched at 3) goes at 1003; 1 and 4 stay until 1010/1011. */
    assert_int_equal(retries_sweep(t, 1002), 0);
    assert_int_equal(retries_sweep(t, 1003), 1);
    assert_null(retries_get(t, 3));
    assert_int_equal(retries_sweep(t, 2000), 2);
    assert_int_equal(retries_count(t), 0);
    retries_destroy(t);
}

static void test_many_sequences(void **state)
{
    /* Past the bucket count: every entry is found again. */
    retries *t = NULL;
    assert_int_equal(retries_create(&t, 5000, 1000000), 0);
    for (uint64_t s = 1; s <= 5000; s++)
        assert_int_equal(retries_note(t, s * 3, 0, 1, "r", NULL, 0, NULL, 0, 0), 0);
    for (uint64_t s = 1; s <= 5000; s++) {
        const retry_entry *e = retries_get(t, s * 3);
        assert_non_null(e);
        assert_int_equal(e->seq, s * 3);
        assert_null(retries_get(t, s * 3 + 1));
    }
    for (uint64_t s = 1; s <= 5000; s += 2)
        retries_forget(t, s * 3);
    assert_int_equal(retries_count(t), 2500);
    assert_non_null(retries_get(t, 6));
    assert_null(retries_get(t, 3));
    retries_destroy(t);
}

static void test_attempt_times_bounded(void **state)
{
    retries *t = NULL;
    assert_int_equal(retries_create(&t, 4, 1000), 0);
    for (int64_t a = 0; a < RETRIES_MAX_ATTEMPTS + 10; a++)
        assert_int_equal(retries_note(t, 1, a * 100, a, "r", NULL, 0, NULL, 0, 0), 0);
    const retry_entry *e = retries_get(t, 1);
    assert_int_equal(e->n_attempts, RETRIES_MAX_ATTEMPTS);
    assert_int_equal(e->attempt_ms[0], 0); /* the first one is kept */
    assert_int_equal(e->attempt_ms[RETRIES_MAX_ATTEMPTS - 1], (RETRIES_MAX_ATTEMPTS + 9) * 100);
    /* a reason longer than the buffer is cut, not overflowed */
    char longr[RETRIES_REASON_MAX * 2];
    memset(longr, 'x', sizeof longr - 1);
    longr[sizeof longr - 1] = '\0';
    assert_int_equal(retries_note(t, 1, 0, 0, longr, NULL, 0, NULL, 0, 0), 0);
    assert_int_equal(strlen(retries_get(t, 1)->reason), RETRIES_REASON_MAX - 1);
    assert_int_equal(retries_create(&t, 0, 1), -1);
    retries_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_note_accumulates),
        cmocka_unit_test(test_bounded_and_swept),
        cmocka_unit_test(test_many_sequences),
        cmocka_unit_test(test_attempt_times_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
