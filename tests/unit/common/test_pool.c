/* dw/pool.h: every task runs exactly once or is cancelled exactly once,
 * the queue limit holds, and stop finishes the running ones first. */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "dw/pool.h"
#include "dw/util.h"

typedef struct counted {
    dw_task task;
    atomic_int *ran, *cancelled;
    pthread_mutex_t *gate; /* held by the test: run blocks until released */
    atomic_int *started;   /* with a gate: set once run began */
} counted;

static void counted_run(dw_task *t)
{
    counted *c = (counted *)t;
    if (c->gate) {
        atomic_store(c->started, 1);
        pthread_mutex_lock(c->gate);
        pthread_mutex_unlock(c->gate);
    }
    atomic_fetch_add(c->ran, 1);
    free(c);
}

static void counted_cancel(dw_task *t)
{
    counted *c = (counted *)t;
    atomic_fetch_add(c->cancelled, 1);
    free(c);
}

static counted *counted_new(atomic_int *ran, atomic_int *cancelled, pthread_mutex_t *gate)
{
    counted *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->task.run = counted_run;
    c->task.cancel = counted_cancel;
    c->ran = ran;
    c->cancelled = cancelled;
    c->gate = gate;
    return c;
}

static void test_every_task_runs_once(void **state)
{
    atomic_int ran = 0, cancelled = 0;
    dw_pool *p = NULL;
    assert_int_equal(dw_pool_start(&p, 4, 0), 0);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(dw_pool_submit(p, &counted_new(&ran, &cancelled, NULL)->task), 0);
    int64_t deadline = dw_mono_ns() + 10000000000LL;
    while (atomic_load(&ran) < 2000 && dw_mono_ns() < deadline)
        sched_yield();
    assert_int_equal(atomic_load(&ran), 2000);
    /* A worker counts itself idle only after its task returned, which is
     * after the task counted itself as run. */
    while (dw_pool_depth(p) && dw_mono_ns() < deadline)
        sched_yield();
    assert_int_equal(dw_pool_depth(p), 0);
    dw_pool_stop(p);
    assert_int_equal(atomic_load(&cancelled), 0);
}

/* One worker held inside a task: the queue fills to its limit, the next
 * submit is refused, and stop lets the running task end and cancels the
 * queued ones. */
static void test_limit_and_stop(void **state)
{
    atomic_int ran = 0, cancelled = 0, started = 0;
    pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
    dw_pool *p = NULL;
    assert_int_equal(dw_pool_start(&p, 1, 3), 0);
    pthread_mutex_lock(&gate);
    counted *first = counted_new(&ran, &cancelled, &gate);
    first->started = &started;
    assert_int_equal(dw_pool_submit(p, &first->task), 0);
    int64_t deadline = dw_mono_ns() + 10000000000LL;
    while (!atomic_load(&started)) { /* the worker took it: the queue is empty */
        assert_true(dw_mono_ns() < deadline);
        sched_yield();
    }
    int queued = 0;
    for (int i = 0; i < 10; i++) {
        counted *c = counted_new(&ran, &cancelled, NULL);
        if (dw_pool_submit(p, &c->task) == 0)
            queued++;
        else
            free(c);
    }
    assert_int_equal(queued, 3); /* the limit */
    assert_int_equal(dw_pool_depth(p), 4);
    pthread_mutex_unlock(&gate);
    dw_pool_stop(p);
    assert_int_equal(atomic_load(&ran) + atomic_load(&cancelled), 1 + queued);
    assert_true(atomic_load(&ran) >= 1);
}

static void test_bad_start_and_null_stop(void **state)
{
    dw_pool *p = (dw_pool *)1;
    assert_int_equal(dw_pool_start(&p, 0, 0), -1);
    assert_null(p);
    dw_pool_stop(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_runs_once),
        cmocka_unit_test(test_limit_and_stop),
        cmocka_unit_test(test_bad_start_and_null_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
