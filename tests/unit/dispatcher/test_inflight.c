/* inflight: the bounded FIFO of batches between the fetch thread and the
 * settle thread. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "dw/util.h"
#include "inflight.h"

static int64_t in_ms(int64_t ms)
{
    return dw_mono_ns() + ms * 1000000;
}

static void test_slots_in_order_and_bounded(void **state)
{
    inflight *q = NULL;
    assert_int_equal(inflight_create(&q, 2), 0);
    assert_int_equal(inflight_reserve(q, in_ms(0)), 0);
    /* Not pushed yet: the same slot again. */
    assert_int_equal(inflight_reserve(q, in_ms(0)), 0);
    inflight_push(q);
    assert_int_equal(inflight_reserve(q, in_ms(0)), 1);
    inflight_push(q);
    assert_int_equal(inflight_count(q), 2);
    /* Full: waits until the deadline, then gives up. */
    int64_t t0 = dw_mono_ns();
    assert_int_equal(inflight_reserve(q, in_ms(20)), -1);
    assert_true(dw_mono_ns() - t0 >= 19 * 1000000);

    assert_int_equal(inflight_front(q), 0);
    inflight_pop(q);
    assert_int_equal(inflight_reserve(q, in_ms(0)), 0); /* the ring wraps */
    inflight_push(q);
    assert_int_equal(inflight_front(q), 1); /* oldest first */
    inflight_pop(q);
    assert_int_equal(inflight_front(q), 0);
    inflight_pop(q);
    assert_int_equal(inflight_count(q), 0);
    inflight_close(q);
    assert_int_equal(inflight_front(q), -1);
    inflight_destroy(q);
    inflight_destroy(NULL);
}

static void test_depth_one(void **state)
{
    inflight *q = NULL;
    assert_int_equal(inflight_create(&q, 0), -1);
    assert_int_equal(inflight_create(&q, 1), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(inflight_reserve(q, in_ms(0)), 0);
        inflight_push(q);
        assert_int_equal(inflight_reserve(q, in_ms(0)), -1);
        assert_int_equal(inflight_front(q), 0);
        inflight_pop(q);
    }
    inflight_destroy(q);
}

/* A consumer thread settles slots while the producer keeps the queue full:
 * every pushed batch is seen once, in push order, and close drains. */
typedef struct run {
    inflight *q;
    size_t depth;
    int seen[1000];
    int n_seen;
    int value[8]; /* per slot: the batch number it holds */
} run;

static void *consumer(void *arg)
{
    run *r = arg;
    long slot;
    while ((slot = inflight_front(r->q)) >= 0) {
        r->seen[r->n_seen++] = r->value[slot];
        inflight_pop(r->q);
    }
    return NULL;
}

static void test_producer_consumer(void **state)
{
    run *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->depth = 3;
    assert_int_equal(inflight_create(&r->q, r->depth), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, consumer, r), 0);
    for (int i = 0; i < 1000; i++) {
        long slot;
        while ((slot = inflight_reserve(r->q, in_ms(1000))) < 0)
            ;
        assert_true(inflight_count(r->q) < r->depth);
        r->value[slot] = i;
        inflight_push(r->q);
    }
    inflight_close(r->q);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(r->n_seen, 1000);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(r->seen[i], i);
    assert_int_equal(inflight_count(r->q), 0);
    inflight_destroy(r->q);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slots_in_order_and_bounded),
        cmocka_unit_test(test_depth_one),
        cmocka_unit_test(test_producer_consumer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
