/* hold.c: when the edge holds deliveries, the order it keeps them in, and
 * how long it waits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <cmocka.h>

#include "hold.h"

#define MS 1000000LL
#define HB 2000 /* DW_HEARTBEAT_MS */

static hold_inputs base(void)
{
    /* The tick took the mailbox 100 ms ago; NATS is fine; 10 ready. */
    hold_inputs in = {
        .now_ns = 100000 * MS,
        .last_drain_ns = 100000 * MS - 100 * MS,
        .lost_ns = 0,
        .connected = true,
        .heartbeat_ms = HB,
        .nready = 10,
    };
    return in;
}

static void test_normal_loop_holds_nothing(void **state)
{
    hold_inputs in = base();
    hold_judgement j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_NONE);
    assert_false(j.clear_lost);
    /* A slow pass is lag, not a stall, as long as it stays under a
     * heartbeat interval. */
    in.last_drain_ns = in.now_ns - (HB - 1) * MS;
    assert_int_equal(hold_judge(&in).cause, HOLD_NONE);
    /* The first take of all has nothing to compare with. */
    in.last_drain_ns = 0;
    assert_int_equal(hold_judge(&in).cause, HOLD_NONE);
}

static void test_stall_of_a_heartbeat_interval_holds(void **state)
{
    hold_inputs in = base();
    in.last_drain_ns = in.now_ns - 5000 * MS; /* SIGSTOP 5 s */
    hold_judgement j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_STALL);
    assert_int_equal(j.gap_ms, 5000);
    in.last_drain_ns = in.now_ns - HB * MS; /* exactly one interval */
    assert_int_equal(hold_judge(&in).cause, HOLD_STALL);
}

static void test_nothing_held_without_ready_connections(void **state)
{
    hold_inputs in = base();
    in.nready = 0;
    in.last_drain_ns = in.now_ns - 60000 * MS;
    in.lost_ns = in.now_ns - 60000 * MS;
    hold_judgement j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_NONE);
    /* ...but the loss is dealt with: it must not begin a hold later, when
     * a connection is ready and the loss long over. */
    assert_true(j.clear_lost);
}

static void test_short_outage_is_forgotten_once_back(void **state)
{
    hold_inputs in = base();
    in.lost_ns = in.now_ns - 300 * MS; /* a restart of nats-server: back after 0.3 s */
    hold_judgement j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_NONE);
    assert_true(j.clear_lost);
    /* Still away: kept, it may yet be long. */
    in.connected = false;
    j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_NONE);
    assert_false(j.clear_lost);
}

static void test_long_outage_holds_back_or_not(void **state)
{
    hold_inputs in = base();
    in.lost_ns = in.now_ns - 4000 * MS;
    hold_judgement j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_OUTAGE);
    assert_int_equal(j.gap_ms, 4000);
    assert_true(j.clear_lost);
    /* Not reported back yet, but a delivery may already have come on the
     * new connection: hold now as well. */
    in.connected = false;
    j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_OUTAGE);
    assert_true(j.clear_lost);
}

static void test_stall_wins_over_outage(void **state)
{
    /* SIGSTOP, nats-server restarted meanwhile: the loss is seen only
     * after the wake (short), the stall is what matters. */
    hold_inputs in = base();
    in.last_drain_ns = in.now_ns - 4000 * MS;
    in.lost_ns = in.now_ns - 5 * MS;
    in.connected = false;
    hold_judgement j = hold_judge(&in);
    assert_int_equal(j.cause, HOLD_STALL);
    assert_int_equal(j.gap_ms, 4000);
    assert_false(j.clear_lost);
}

typedef struct {
    dw_mail mail;
    int n;
} item;

static int freed;

static void item_free(dw_mail *m)
{
    freed++;
    free(m);
}

static item *item_new(int n)
{
    item *it = calloc(1, sizeof *it);
    assert_non_null(it);
    it->mail.destroy = item_free;
    it->n = n;
    return it;
}

static void test_held_in_order_and_released_once(void **state)
{
    edge_hold h;
    hold_init(&h);
    assert_false(h.on);
    assert_null(hold_end(&h)); /* nothing on: nothing */
    uint64_t g1 = hold_begin(&h, HOLD_STALL, 3000, 10 * MS);
    assert_true(h.on);
    for (int i = 0; i < 5; i++)
        hold_push(&h, &item_new(i)->mail, 100);
    assert_int_equal(h.n, 5);
    assert_int_equal(h.bytes, 500);
    /* A second stall during the hold: a new generation, the first
     * answer no longer counts; the longer gap is kept. */
    uint64_t g2 = hold_begin(&h, HOLD_OUTAGE, 2500, 20 * MS);
    assert_true(g2 > g1);
    assert_int_equal(h.cause, HOLD_STALL);
    assert_int_equal(h.gap_ms, 3000);
    assert_int_equal(h.since_ns, 10 * MS);
    assert_true(hold_next_gen(&h) > g2);
    hold_push(&h, &item_new(5)->mail, 100);
    assert_int_equal(h.held_total, 6);

    dw_mail *m = hold_end(&h);
    assert_false(h.on);
    assert_int_equal(h.n, 0);
    assert_int_equal(h.bytes, 0);
    int expect = 0;
    while (m) {
        dw_mail *next = m->next;
        assert_int_equal(((item *)m)->n, expect++);
        dw_mail_free(m);
        m = next;
    }
    assert_int_equal(expect, 6);

    /* The next hold starts empty and counts afresh. */
    hold_begin(&h, HOLD_OUTAGE, 2100, 30 * MS);
    assert_int_equal(h.cause, HOLD_OUTAGE);
    assert_int_equal(h.held_total, 0);
    assert_null(h.head);
    hold_push(&h, &item_new(9)->mail, 1);
    freed = 0;
    hold_free(&h);
    assert_int_equal(freed, 1);
    assert_false(h.on);
}

static void test_wait_counts_only_while_connected(void **state)
{
    edge_hold h;
    hold_init(&h);
    assert_false(hold_expired(&h, 999999 * MS, true, 5000)); /* off */
    hold_begin(&h, HOLD_OUTAGE, 4000, 1000 * MS);
    assert_false(hold_expired(&h, 5999 * MS, true, 5000));
    assert_true(hold_expired(&h, 6000 * MS, true, 5000));
    /* Disconnected at 5.5 s: the wait starts again from there. */
    hold_init(&h);
    hold_begin(&h, HOLD_OUTAGE, 4000, 1000 * MS);
    assert_false(hold_expired(&h, 5500 * MS, false, 5000));
    assert_false(hold_expired(&h, 60000 * MS, false, 5000));
    assert_false(hold_expired(&h, 64999 * MS, true, 5000));
    assert_true(hold_expired(&h, 65000 * MS, true, 5000));
}

static void test_cause_names(void **state)
{
    assert_string_equal(hold_cause_name(HOLD_STALL), "stall");
    assert_string_equal(hold_cause_name(HOLD_OUTAGE), "outage");
    assert_string_equal(hold_cause_name(HOLD_NONE), "none");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normal_loop_holds_nothing),
        cmocka_unit_test(test_stall_of_a_heartbeat_interval_holds),
        cmocka_unit_test(test_nothing_held_without_ready_connections),
        cmocka_unit_test(test_short_outage_is_forgotten_once_back),
        cmocka_unit_test(test_long_outage_holds_back_or_not),
        cmocka_unit_test(test_stall_wins_over_outage),
        cmocka_unit_test(test_held_in_order_and_released_once),
        cmocka_unit_test(test_wait_counts_only_while_connected),
        cmocka_unit_test(test_cause_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
