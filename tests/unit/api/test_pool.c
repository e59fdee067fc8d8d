/* pool.c and the checks of ops.c that need no bus: every job comes back
 * through its done callback exactly once, with the operation's answer. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ops.h"
#include "pool.h"

static api_ops no_bus = {.nc = NULL,
                         .js = NULL,
                         .cfg = {.registry_timeout_ms = 10,
                                 .edge_timeout_ms = 10,
                                 .publish_timeout_ms = 10,
                                 .max_message = 8}};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int done_count;
static unsigned statuses[600];

static void on_done(api_job *job)
{
    pthread_mutex_lock(&lock);
    statuses[(size_t)job->owner] = job->res.status;
    done_count++;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    api_job_free(job);
}

static void test_ops_checks_without_bus(void **state)
{
    api_result res;
    api_ops_run(&no_bus, API_OP_GET, "", NULL, 0, &res);
    assert_int_equal(res.status, 400);
    api_ops_run(&no_bus, API_OP_POST, "AAAAAAAAAAAAAAAA", (const uint8_t *)"123456789", 9, &res);
    assert_int_equal(res.status, 413);
    /* ids edges never make are nobody's */
    api_ops_run(&no_bus, API_OP_GET, "R0oXAdfD0kwCH6w=", NULL, 0, &res);
    assert_int_equal(res.status, 410);
    api_ops_run(&no_bus, API_OP_DELETE, "short", NULL, 0, &res);
    assert_int_equal(res.status, 410);
    api_ops_run(&no_bus, API_OP_COUNT, "AAAAAAAAAAAAAAAA", NULL, 0, &res);
    assert_int_equal(res.status, 400);
    assert_string_equal(api_op_name(API_OP_POST), "post");
    assert_string_equal(api_op_name(API_OP_DELETE), "delete");
    api_result_clear(&res);
    api_result_clear(NULL);
}

static void test_every_job_comes_back_once(void **state)
{
    api_pool *p = NULL;
    assert_int_equal(api_pool_start(&p, &no_bus, 4, 1000), 0);
    done_count = 0;
    int submitted = 0;
    for (size_t i = 0; i < 500; i++) {
        api_job *job = api_job_new(i % 2 ? API_OP_GET : API_OP_POST, i % 3 ? "x=" : "",
                                   (const uint8_t *)"hello", 5);
        assert_non_null(job);
        job->done = on_done;
        job->owner = (void *)i;
        if (api_pool_submit(p, job) == 0)
            submitted++;
        else
            api_job_free(job);
    }
    pthread_mutex_lock(&lock);
    while (done_count < submitted)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    api_pool_stop(p);
    assert_int_equal(done_count, submitted);
    for (size_t i = 0; i < 500; i++)
        assert_int_equal(statuses[i], i % 3 ? 410u : 400u);
    api_pool_stop(NULL);
}

static void test_queue_bound(void **state)
{
    api_pool *p = NULL;
    /* One worker, room for two: a burst cannot all fit. */
    assert_int_equal(api_pool_start(&p, &no_bus, 1, 2), 0);
    done_count = 0;
    int accepted = 0, refused = 0;
    for (size_t i = 0; i < 200; i++) {
        api_job *job = api_job_new(API_OP_GET, "x=", NULL, 0);
        job->done = on_done;
        job->owner = (void *)i;
        if (api_pool_submit(p, job) == 0) {
            accepted++;
        } else {
            refused++;
            api_job_free(job);
        }
    }
    api_pool_stop(p); /* answers what is queued (503) or finishes it */
    assert_int_equal(done_count, accepted);
    assert_int_equal(accepted + refused, 200);
    assert_true(accepted >= 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_checks_without_bus),
        cmocka_unit_test(test_every_job_comes_back_once),
        cmocka_unit_test(test_queue_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
