/* dw/mailbox.h: mail comes out in the order it was posted, whole, across
 * threads; wait ends on a post, a kick or its deadline; mail nobody took is
 * freed by its own destructor. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "dw/mailbox.h"
#include "dw/util.h"

typedef struct note {
    dw_mail mail;
    int from, n;
} note;

static atomic_int freed;

static void note_free(dw_mail *m)
{
    atomic_fetch_add(&freed, 1);
    free(m);
}

static note *note_new(int from, int n)
{
    note *x = calloc(1, sizeof *x);
    assert_non_null(x);
    x->mail.destroy = note_free;
    x->from = from;
    x->n = n;
    return x;
}

static atomic_int wakes;

static void count_wake(void *arg)
{
    atomic_fetch_add(&wakes, 1);
}

typedef struct poster {
    dw_mailbox *mb;
    int id;
} poster;

#define PER_THREAD 5000

static void *post_main(void *arg)
{
    poster *p = arg;
    for (int i = 0; i < PER_THREAD; i++)
        dw_mailbox_post(p->mb, &note_new(p->id, i)->mail);
    return NULL;
}

/* Four threads post; one takes: each thread's mail arrives in its order,
 * none lost, and wake ran at least once and at most once per post. */
static void test_order_across_threads(void **state)
{
    dw_mailbox mb;
    atomic_store(&wakes, 0);
    atomic_store(&freed, 0);
    assert_int_equal(dw_mailbox_init(&mb, count_wake, NULL), 0);
    pthread_t th[4];
    poster ps[4];
    for (int i = 0; i < 4; i++) {
        ps[i] = (poster){&mb, i};
        assert_int_equal(pthread_create(&th[i], NULL, post_main, &ps[i]), 0);
    }
    int next[4] = {0}, got = 0;
    int64_t deadline = dw_mono_ns() + 20000000000LL;
    while (got < 4 * PER_THREAD && dw_mono_ns() < deadline) {
        dw_mail *m = dw_mailbox_wait(&mb, dw_mono_ns() + 100000000);
        while (m) {
            dw_mail *n = m->next;
            note *x = (note *)m;
            assert_int_equal(x->n, next[x->from]);
            next[x->from]++;
            got++;
            dw_mail_free(m);
            m = n;
        }
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(got, 4 * PER_THREAD);
    assert_true(atomic_load(&wakes) >= 1);
    assert_true(atomic_load(&wakes) <= 4 * PER_THREAD);
    assert_int_equal(atomic_load(&freed), 4 * PER_THREAD);
    dw_mailbox_destroy(&mb);
}

/* Only a post into an empty mailbox wakes: mail posted behind waiting mail
 * is taken with it, so no wake is lost and none is spent twice. */
static void test_wake_once_per_empty(void **state)
{
    dw_mailbox mb;
    atomic_store(&wakes, 0);
    atomic_store(&freed, 0);
    assert_int_equal(dw_mailbox_init(&mb, count_wake, NULL), 0);
    dw_mailbox_post(&mb, &note_new(0, 0)->mail);
    assert_int_equal(atomic_load(&wakes), 1);
    dw_mailbox_post(&mb, &note_new(0, 1)->mail);
    dw_mailbox_post(&mb, &note_new(0, 2)->mail);
    assert_int_equal(atomic_load(&wakes), 1);
    dw_mail *m = dw_mailbox_take(&mb);
    int n = 0;
    for (dw_mail *x = m; x; x = x->next)
        assert_int_equal(((note *)x)->n, n++);
    assert_int_equal(n, 3);
    dw_mail_free_list(m);
    dw_mailbox_post(&mb, &note_new(0, 3)->mail);
    assert_int_equal(atomic_load(&wakes), 2);
    dw_mailbox_destroy(&mb);
    assert_int_equal(atomic_load(&freed), 4);
}

static void test_wait_deadline_and_kick(void **state)
{
    dw_mailbox mb;
    assert_int_equal(dw_mailbox_init(&mb, NULL, NULL), 0);
    int64_t t0 = dw_mono_ns();
    assert_null(dw_mailbox_wait(&mb, t0 + 20000000));
    assert_true(dw_mono_ns() - t0 >= 20000000);
    /* A kick before the wait is not lost: the wait returns at once. */
    dw_mailbox_kick(&mb);
    t0 = dw_mono_ns();
    assert_null(dw_mailbox_wait(&mb, t0 + 5000000000LL));
    assert_true(dw_mono_ns() - t0 < 4000000000LL);
    /* The kick was used up. */
    assert_null(dw_mailbox_take(&mb));
    dw_mailbox_destroy(&mb);
}

/* Mail left at destroy goes through its own destructor; mail without one
 * is left alone. */
static void test_destroy_frees_what_is_left(void **state)
{
    dw_mailbox mb;
    static dw_mail fixed = {NULL, NULL};
    atomic_store(&freed, 0);
    assert_int_equal(dw_mailbox_init(&mb, NULL, NULL), 0);
    dw_mailbox_post(&mb, &note_new(0, 1)->mail);
    dw_mailbox_post(&mb, &fixed);
    dw_mailbox_post(&mb, &note_new(0, 2)->mail);
    dw_mailbox_post(&mb, NULL);
    dw_mailbox_destroy(&mb);
    assert_int_equal(atomic_load(&freed), 2);
    dw_mail_free(NULL);
    dw_mail_free_list(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_across_threads),
        cmocka_unit_test(test_wake_once_per_empty),
        cmocka_unit_test(test_wait_deadline_and_kick),
        cmocka_unit_test(test_destroy_frees_what_is_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
