/* The lingering table (linger_keep, linger_service) on socket pairs: how
 * each lingering ends (client closes, byte budget, time), the full table,
 * and stopping. The lws hooks around it are covered by the integration
 * tests (test_ws_violations, test_ws_conformance). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "dw/util.h"
#include "linger.h"

static int64_t value(dw_metric *m)
{
    return atomic_load(&m->value);
}

/* A connected pair: p[0] plays the edge's duplicate, p[1] the client. */
static void pair(int p[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p), 0);
}

static int closed(int fd)
{
    return fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

static void test_ends_when_the_client_closes(void **state)
{
    (void)state;
    edge_linger l;
    assert_int_equal(linger_init(&l, 60000, 1 << 20, 4, true), 0);
    int p[2];
    pair(p);
    assert_int_equal(write(p[1], "late frames", 11), 11);
    linger_keep(&l, p[0]);
    assert_int_equal(l.n, 1); /* read what was there, still open */
    /* The client sees the end of our stream at once. */
    char c;
    assert_int_equal(read(p[1], &c, 1), 0);
    close(p[1]);
    linger_service(&l);
    assert_int_equal(l.n, 0);
    assert_true(closed(p[0]));
    assert_int_equal(value(l.ended_eof), 1);
    linger_free(&l);
}

static void test_byte_budget(void **state)
{
    (void)state;
    edge_linger l;
    assert_int_equal(linger_init(&l, 60000, 1000, 4, true), 0);
    int p[2];
    pair(p);
    char junk[600];
    memset(junk, 'x', sizeof junk);
    linger_keep(&l, p[0]);
    assert_int_equal(l.n, 1);
    assert_int_equal(write(p[1], junk, sizeof junk), (ssize_t)sizeof junk);
    linger_service(&l);
    assert_int_equal(l.n, 1); /* 600 of 1000 */
    assert_int_equal(write(p[1], junk, sizeof junk), (ssize_t)sizeof junk);
    linger_service(&l);
    assert_int_equal(l.n, 0); /* over the budget: closed, client still there */
    assert_int_equal(value(l.ended_bytes), 1);
    close(p[1]);
    linger_free(&l);
}

static void test_time_budget(void **state)
{
    (void)state;
    edge_linger l;
    assert_int_equal(linger_init(&l, 1, 1 << 20, 4, true), 0);
    int p[2];
    pair(p);
    linger_keep(&l, p[0]);
    assert_int_equal(l.n, 1);
    /* The client neither writes nor closes: out of time after 1 ms. */
    int64_t until = dw_mono_ns() + 2000000;
    while (dw_mono_ns() < until)
        ;
    linger_service(&l);
    assert_int_equal(l.n, 0);
    assert_int_equal(value(l.ended_time), 1);
    close(p[1]);
    linger_free(&l);
}

static void test_full_table_and_stop(void **state)
{
    (void)state;
    edge_linger l;
    assert_int_equal(linger_init(&l, 60000, 1 << 20, 2, true), 0);
    int p[3][2];
    for (int i = 0; i < 3; i++) {
        pair(p[i]);
        linger_keep(&l, p[i][0]);
    }
    assert_int_equal(l.n, 2);
    assert_true(closed(p[2][0])); /* no room: closed at once */
    assert_int_equal(value(l.refused_full), 1);
    linger_stop(&l);
    assert_int_equal(l.n, 0);
    assert_true(closed(p[0][0]) && closed(p[1][0]));
    int q[2];
    pair(q);
    linger_keep(&l, q[0]); /* stopped: nothing new lingers */
    assert_true(closed(q[0]));
    for (int i = 0; i < 3; i++)
        close(p[i][1]);
    close(q[1]);
    linger_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ends_when_the_client_closes),
        cmocka_unit_test(test_byte_budget),
        cmocka_unit_test(test_time_budget),
        cmocka_unit_test(test_full_table_and_stop),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dw_metrics_free();
    return rc;
}
