/* dw_id_random / dw_id_valid / dw_iso8601_ms / dw_time_parse, the clocks
 * and the monotonic condition variables. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "dw/util.h"

static const char id_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void test_id_random_shape(void **state)
{
    char id[DW_ID_LEN + 1];
    memset(id, 'x', sizeof id);
    assert_int_equal(dw_id_random(id), 0);
    assert_int_equal(strlen(id), DW_ID_LEN);
    assert_int_equal(DW_ID_LEN, 16);
    for (size_t i = 0; i < DW_ID_LEN; i++)
        assert_non_null(strchr(id_chars, id[i]));
    assert_true(dw_id_valid(id, strlen(id)));
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, DW_ID_LEN);
}

#define N_IDS 10000

static void test_id_random_distinct_and_in_alphabet(void **state)
{
    char(*ids)[DW_ID_LEN + 1] = calloc(N_IDS, sizeof *ids);
    assert_non_null(ids);
    int seen[256] = {0};
    for (int i = 0; i < N_IDS; i++) {
        assert_int_equal(dw_id_random(ids[i]), 0);
        assert_int_equal(strlen(ids[i]), DW_ID_LEN);
        for (size_t j = 0; j < DW_ID_LEN; j++) {
            assert_non_null(strchr(id_chars, ids[i][j]));
            seen[(unsigned char)ids[i][j]]++;
        }
    }
    qsort(ids, N_IDS, sizeof *ids, cmp_id);
    for (int i = 1; i < N_IDS; i++)
        assert_true(memcmp(ids[i - 1], ids[i], DW_ID_LEN) != 0);
    /* 160k characters from a uniform 64-letter alphabet: every letter shows up
     * (expected 2500 each); a stuck bit would leave half the alphabet unused. */
    for (size_t k = 0; k < sizeof id_chars - 1; k++)
        assert_true(seen[(unsigned char)id_chars[k]] > 1000);
    free(ids);
}

static void test_id_valid(void **state)
{
    assert_true(dw_id_valid("AZaz09-_AZaz09-_", 16));
    assert_true(dw_id_valid("abcdefghijklmnop", 16));
    assert_false(dw_id_valid("abcdefghijklmno", 15));   /* short */
    assert_false(dw_id_valid("abcdefghijklmnopq", 17)); /* long */
    assert_false(dw_id_valid("abcdefghijklmno+", 16));  /* base64, not base64url */
    assert_false(dw_id_valid("abcdefghijklmno/", 16));
    assert_false(dw_id_valid("abcdefghijklmno=", 16));
    assert_false(dw_id_valid("abcdefg.ijklmnop", 16)); /* a '.' would split subjects */
    assert_false(dw_id_valid("abcdefg ijklmnop", 16));
    assert_false(dw_id_valid("abcdefg\0ijklmnop", 16)); /* embedded NUL */
    assert_false(dw_id_valid("", 0));
    assert_false(dw_id_valid(NULL, 16));
}

static void check_iso(int64_t ms, const char *want)
{
    char buf[32];
    memset(buf, '#', sizeof buf);
    dw_iso8601_ms(ms, buf, sizeof buf);
    assert_string_equal(buf, want);
}

static void test_iso8601_known_values(void **state)
{
    check_iso(0, "1970-01-01T00:00:00.000Z");
    check_iso(1700000000123LL, "2023-11-14T22:13:20.123Z");
    check_iso(999, "1970-01-01T00:00:00.999Z");
    check_iso(86399999, "1970-01-01T23:59:59.999Z");
    check_iso(951782400000LL, "2000-02-29T00:00:00.000Z");
    check_iso(4102444799001LL, "2099-12-31T23:59:59.001Z");
}

static void test_iso8601_exact_buffer(void **state)
{
    /* The header promises 25 bytes are enough: 24 characters and the NUL. */
    char buf[25];
    dw_iso8601_ms(1700000000123LL, buf, sizeof buf);
    assert_string_equal(buf, "2023-11-14T22:13:20.123Z");
    char small[8];
    dw_iso8601_ms(1700000000123LL, small, sizeof small);
    assert_string_equal(small, "2023-11");
}

static void test_clocks(void **state)
{
    int64_t wall = dw_now_ms();
    assert_true(wall > 1700000000000LL); /* after 2023-11-14 */
    int64_t a = dw_mono_ns();
    int64_t b = dw_mono_ns();
    assert_true(b >= a);
}

/* A timed wait on a monotonic condition variable ends at its deadline (a
 * past one at once) and reports ETIMEDOUT; a signal ends it early. */
static void test_cond_wait_until(void **state)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    assert_int_equal(dw_cond_init_mono(&cv), 0);
    pthread_mutex_lock(&mu);
    int64_t t0 = dw_mono_ns();
    assert_int_equal(dw_cond_wait_until(&cv, &mu, t0 - 1000000), ETIMEDOUT);
    int rc;
    do
        rc = dw_cond_wait_until(&cv, &mu, t0 + 20000000);
    while (rc == 0); /* spurious */
    assert_int_equal(rc, ETIMEDOUT);
    int64_t waited = dw_mono_ns() - t0;
    assert_true(waited >= 20000000);
    assert_true(waited < 5000000000LL); /* not the wall clock's epoch */
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
}

static int parse3339(const char *s, int64_t *ms)
{
    return dw_time_parse(s, DW_TIME_RFC3339, ms, NULL);
}

static void test_time_parse_rfc3339(void **state)
{
    int64_t ms = 0;
    assert_int_equal(parse3339("2026-11-25T08:54:27Z", &ms), 0);
    assert_int_equal(ms, 1795596867000LL);
    assert_int_equal(parse3339("2026-11-25T08:54:27.123Z", &ms), 0);
    assert_int_equal(ms, 1795596867123LL);
    assert_int_equal(parse3339("2026-11-25T08:54:27.1Z", &ms), 0);
    assert_int_equal(ms, 1795596867100LL);
    assert_int_equal(parse3339("2026-11-25T08:54:27.123456789z", &ms), 0);
    assert_int_equal(ms, 1795596867123LL);
    assert_int_equal(parse3339("2026-11-25T10:54:27+02:00", &ms), 0);
    assert_int_equal(ms, 1795596867000LL);
    assert_int_equal(parse3339("2026-11-25 07:24:27-0130", &ms), 0);
    assert_int_equal(ms, 1795596867000LL);
    assert_int_equal(parse3339("1970-01-01T00:00:00Z", &ms), 0);
    assert_int_equal(ms, 0);

    const char *bad[] = {"2026-11-25T08:54:27",
                         "2026-11-25",
                         "2026-11-25T08:54Z",
                         "2026-02-30T00:00:00Z",
                         "2026-13-01T00:00:00Z",
                         "2026-11-25T24:00:00Z",
                         "2026-11-25T08:54:27.Z",
                         "2026-11-25T08:54:27Zx",
                         "yesterday",
                         "",
                         "2026-11-25T08:54:27+2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(parse3339(bad[i], &ms), -1);
    assert_int_equal(parse3339(NULL, &ms), -1);
}

/* The compact shape of checkpoint names, and *end for what follows. */
static void test_time_parse_basic(void **state)
{
    int64_t ms = 0;
    const char *end = NULL;
    assert_int_equal(dw_time_parse("20261125T085427.123Z-4711", DW_TIME_BASIC_MS, &ms, &end), 0);
    assert_int_equal(ms, 1795596867123LL);
    assert_string_equal(end, "-4711");
    assert_int_equal(dw_time_parse("19700101T000000.000Z", DW_TIME_BASIC_MS, &ms, NULL), 0);
    assert_int_equal(ms, 0);
    const char *bad[] = {"20261125T085427Z",     "20261125T085427.12Z",  "20261325T085427.123Z",
                         "20260231T085427.123Z", "20261125T245427.123Z", "2026-11-25T08:54:27.123Z",
                         "20261125T085427.123"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(dw_time_parse(bad[i], DW_TIME_BASIC_MS, &ms, NULL), -1);
    /* both shapes refuse a day the month does not have */
    assert_int_equal(parse3339("2026-02-31T00:00:00Z", &ms), -1);
    assert_int_equal(parse3339("2028-02-29T00:00:00Z", &ms), 0);
    assert_int_equal(parse3339("2026-04-31T00:00:00Z", &ms), -1);
}

static void test_raise_nofile(void **state)
{
    assert_true(dw_raise_nofile() > 0);
}

/* Pooled random bytes: across pool refills, no run repeats, sizes over the
 * pool's share go straight to the CSPRNG. */
static void test_random_bytes(void **state)
{
    unsigned char a[32], b[32], big[5000];
    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    assert_int_equal(dw_random_bytes(a, sizeof a), 0);
    for (int i = 0; i < 300; i++) /* past a refill (4096 bytes) */
        assert_int_equal(dw_random_bytes(b, sizeof b), 0);
    assert_memory_not_equal(a, b, sizeof a);
    assert_int_equal(dw_random_bytes(big, sizeof big), 0);
    assert_int_equal(dw_random_bytes(a, 0), 0);
    int zeros = 0;
    for (size_t i = 0; i < sizeof big; i++)
        zeros += big[i] == 0;
    assert_true(zeros < 100); /* ~20 expected */
}

/* The stop's one budget (dw_stop_left_ms): before a stop as if it started
 * now, then counted from the first request; the reserve is never handed
 * out; a second request does not restart the clock. Last: it sets
 * dw_stop for the rest of the process. */
static void test_stop_clock(void **state)
{
    dw_stop_set_timeout_ms(500); /* below the floor: the floor */
    assert_int_equal(dw_stop_timeout_ms(), 2 * DW_STOP_RESERVE_MS);
    dw_stop_set_timeout_ms(5000);
    assert_int_equal(dw_stop_since_ns(), 0);
    int64_t left = dw_stop_left_ms(100000);
    assert_true(left > 5000 - DW_STOP_RESERVE_MS - 50 && left <= 5000 - DW_STOP_RESERVE_MS);
    assert_int_equal(dw_stop_left_ms(300), 300);
    assert_int_equal(dw_stop_left_ms(-5), 0);

    assert_int_equal(dw_stop, 0);
    dw_stop_request();
    assert_int_equal(dw_stop, 1);
    int64_t since = dw_stop_since_ns();
    assert_true(since > 0 && since <= dw_mono_ns());
    dw_stop_request();
    assert_int_equal(dw_stop_since_ns(), since);
    /* Counted from the request: time passes, the budget shrinks. */
    struct timespec ts = {0, 30 * 1000000};
    nanosleep(&ts, NULL);
    left = dw_stop_left_ms(100000);
    assert_true(left <= 5000 - DW_STOP_RESERVE_MS - 30 && left > 3000);
    /* A smaller budget that has already run out: 0, not negative. */
    dw_stop_set_timeout_ms(2 * DW_STOP_RESERVE_MS);
    ts.tv_nsec = 0;
    ts.tv_sec = DW_STOP_RESERVE_MS / 1000;
    nanosleep(&ts, NULL);
    assert_int_equal(dw_stop_left_ms(100000), 0);

    assert_null(dw_stop_step_now());
    dw_stop_step("draining");
    assert_string_equal(dw_stop_step_now(), "draining");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_random_shape),
        cmocka_unit_test(test_id_random_distinct_and_in_alphabet),
        cmocka_unit_test(test_id_valid),
        cmocka_unit_test(test_iso8601_known_values),
        cmocka_unit_test(test_iso8601_exact_buffer),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_cond_wait_until),
        cmocka_unit_test(test_time_parse_rfc3339),
        cmocka_unit_test(test_time_parse_basic),
        cmocka_unit_test(test_raise_nofile),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_stop_clock), /* last: it sets dw_stop */
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
