/* The dispatcher's ordering core (services/dispatcher/order.c): per-room
 * order through registry failures and edge failures, give-ups, edges gone,
 * partitions dropped with requests in flight. Time is driven by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/bus.h"
#include "order.h"

static int released;
static void release(void *h)
{
    (void)h;
    released++;
}

static order_cfg cfg(void)
{
    order_cfg c = {
        .retry_base_ms = 100,
        .retry_max_ms = 1000,
        .absent_retry_ms = 50,
        .max_attempts = 3,
        .max_request_bytes = 64 * 1024,
        .max_round_rooms = 100,
        .release = release,
    };
    return c;
}

static order *mk(void)
{
    order_cfg c = cfg();
    order *o = NULL;
    released = 0;
    assert_int_equal(order_create(&o, &c), 0);
    return o;
}

/* Add message seq of room (a packed ChatMessage); handle = (void *)seq. */
static int add(order *o, uint32_t part, uint64_t seq, const char *room, int64_t now)
{
    Dw__ChatMessage m = DW__CHAT_MESSAGE__INIT;
    char id[32];
    snprintf(id, sizeof id, "c:%llu", (unsigned long long)seq);
    m.id = id;
    m.room = (char *)room;
    m.user_id = "u";
    m.conn_id = "c";
    m.data.data = (uint8_t *)"hi";
    m.data.len = 2;
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&m.base, &len);
    int rc = order_add(o, part, seq, (void *)(uintptr_t)seq, buf, len, NULL, 0, 0, now, NULL);
    free(buf);
    return rc;
}

/* Run a round answering every room with edges (NULL: fail every room). */
static size_t round_all(order *o, char *const *edges, size_t n, int64_t now)
{
    order_query *q = NULL;
    size_t nq = 0;
    assert_int_equal(order_round_begin(o, now, &q, &nq), 0);
    for (size_t i = 0; i < nq; i++) {
        if (edges)
            assert_int_equal(order_round_room_edges(o, i, edges, n, now), 0);
        else
            order_round_room_failed(o, i, "registry_unavailable", now);
    }
    order_round_end(o, now);
    return nq;
}

/* The seqs of a request, decoded. */
static size_t req_seqs(const order_request *r, uint64_t *seqs, size_t max, const char *room)
{
    Dw__Delivery *d = dw__delivery__unpack(NULL, r->len, r->buf);
    assert_non_null(d);
    size_t n = 0;
    for (size_t i = 0; i < d->n_items && n < max; i++)
        if (!room || !strcmp(d->items[i]->room, room)) seqs[n++] = d->items[i]->seq;
    dw__delivery__free_unpacked(d, NULL);
    return n;
}

/* Pop every settled message, counting verdicts; releases them. */
static void drain(order *o, size_t *acked, size_t *dead, uint64_t *order_out, size_t *n_out)
{
    order_msg *m;
    while ((m = order_settled_pop(o))) {
        if (m->verdict == ORDER_ACK) (*acked)++;
        if (m->verdict == ORDER_DEAD) (*dead)++;
        if (order_out) order_out[(*n_out)++] = m->seq;
        order_msg_release(o, m);
    }
}

static order_request *next_for(order *o, const char *edge, int64_t now)
{
    /* Take requests until one for edge comes (others are kept in flight). */
    order_request *r;
    while ((r = order_next_request(o, now)))
        if (!strcmp(r->edge, edge)) return r;
    return NULL;
}

static void test_basic_fanout(void **state)
{
    order *o = mk();
    char *edges[] = {"e1", "e2"};
    for (uint64_t s = 1; s <= 3; s++)
        assert_int_equal(add(o, 0, s, "A", 0), ORDER_ADDED);
    assert_int_equal(round_all(o, edges, 2, 0), 1);
    order_request *r1 = order_next_request(o, 0), *r2 = order_next_request(o, 0);
    assert_non_null(r1);
    assert_non_null(r2);
    assert_null(order_next_request(o, 0));
    uint64_t seqs[8];
    assert_int_equal(req_seqs(r1, seqs, 8, NULL), 3);
    assert_true(seqs[0] == 1 && seqs[1] == 2 && seqs[2] == 3);
    size_t acked = 0, dead = 0;
    order_request_done(o, r1, ORDER_OK, 1);
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 0); /* the other edge has not confirmed */
    order_request_done(o, r2, ORDER_OK, 1);
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 3);
    assert_int_equal(order_held_total(o), 0);
    assert_int_equal(released, 3);
    order_destroy(o);
}

static void test_empty_room_acks(void **state)
{
    order *o = mk();
    add(o, 0, 7, "nobody", 0);
    round_all(o, NULL, 0, 0); /* fails once */
    size_t acked = 0, dead = 0;
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked + dead, 0);
    round_all(o, (char *[]){NULL}, 0, 1000);
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 1);
    order_destroy(o);
}

/* A room whose resolution fails holds its later messages behind it; other
 * rooms flow. */
static void test_registry_failure_holds_room(void **state)
{
    order *o = mk();
    char *edges[] = {"e1"};
    add(o, 0, 1, "A", 0);
    add(o, 0, 2, "A", 0);
    add(o, 0, 3, "B", 0);
    order_query *q;
    size_t nq;
    assert_int_equal(order_round_begin(o, 0, &q, &nq), 0);
    assert_int_equal(nq, 2);
    for (size_t i = 0; i < nq; i++) {
        if (!strcmp(q[i].room, "A"))
            order_round_room_failed(o, i, "registry_unavailable", 0);
        else
            order_round_room_edges(o, i, edges, 1, 0);
    }
    order_round_end(o, 0);
    /* B flows. */
    order_request *r = order_next_request(o, 0);
    assert_non_null(r);
    uint64_t seqs[8];
    assert_int_equal(req_seqs(r, seqs, 8, NULL), 1);
    assert_int_equal(seqs[0], 3);
    order_request_done(o, r, ORDER_OK, 0);
    /* A newer message of A joins the wait: no round before the backoff. */
    add(o, 0, 4, "A", 10);
    assert_int_equal(round_all(o, edges, 1, 50), 0);
    assert_int_equal(order_next_wake(o), 100);
    assert_int_equal(round_all(o, edges, 1, 100), 1);
    r = order_next_request(o, 100);
    assert_int_equal(req_seqs(r, seqs, 8, NULL), 3);
    assert_true(seqs[0] == 1 && seqs[1] == 2 && seqs[2] == 4);
    order_request_done(o, r, ORDER_OK, 100);
    size_t acked = 0, dead = 0;
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 4);
    order_destroy(o);
}

static void test_registry_give_up(void **state)
{
    order *o = mk();
    add(o, 0, 1, "A", 0);
    int64_t t = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(round_all(o, NULL, 0, t), 1);
        t += 2000;
    }
    order_msg *m = order_settled_pop(o);
    assert_non_null(m);
    assert_int_equal(m->verdict, ORDER_DEAD);
    assert_string_equal(m->reason, "registry_unavailable");
    assert_int_equal(m->attempts, 3);
    assert_int_equal(m->n_attempt_ms, 3);
    order_msg_release(o, m);
    assert_int_equal(round_all(o, NULL, 0, t), 0);
    order_destroy(o);
}

/* An edge request that fails puts its items back first: a later message of
 * the room never overtakes them on their way to that edge; the other edge
 * is not held up. */
static void test_edge_failure_keeps_order(void **state)
{
    order *o = mk();
    char *edges[] = {"e1", "e2"};
    add(o, 0, 1, "A", 0);
    add(o, 0, 2, "A", 0);
    round_all(o, edges, 2, 0);
    order_request *a = order_next_request(o, 0), *b = order_next_request(o, 0);
    order_request *r1 = !strcmp(a->edge, "e1") ? a : b, *r2 = r1 == a ? b : a;
    order_request_done(o, r1, ORDER_TIMEOUT, 10);
    order_request_done(o, r2, ORDER_OK, 10);
    add(o, 0, 3, "A", 20);
    round_all(o, edges, 2, 20);
    /* e2 gets 3 at once; e1 waits out its backoff (10 + 100). */
    order_request *r = order_next_request(o, 20);
    assert_non_null(r);
    assert_string_equal(r->edge, "e2");
    uint64_t seqs[8];
    assert_int_equal(req_seqs(r, seqs, 8, NULL), 1);
    assert_int_equal(seqs[0], 3);
    order_request_done(o, r, ORDER_OK, 20);
    assert_null(order_next_request(o, 100));
    assert_int_equal(order_next_wake(o), 110);
    r = order_next_request(o, 110);
    assert_string_equal(r->edge, "e1");
    assert_int_equal(req_seqs(r, seqs, 8, NULL), 3);
    assert_true(seqs[0] == 1 && seqs[1] == 2 && seqs[2] == 3);
    order_request_done(o, r, ORDER_OK, 110);
    size_t acked = 0, dead = 0, n = 0;
    uint64_t settled[8];
    drain(o, &acked, &dead, settled, &n);
    assert_int_equal(acked, 3);
    order_destroy(o);
}

static void test_edge_give_up_dead_letters(void **state)
{
    order *o = mk();
    char *edges[] = {"e1", "e2"};
    add(o, 0, 1, "A", 0);
    round_all(o, edges, 2, 0);
    int64_t t = 0;
    order_request *r;
    for (int i = 0; i < 3; i++) {
        r = next_for(o, "e1", t);
        assert_non_null(r);
        order_request_done(o, r, ORDER_TIMEOUT, t);
        t += 2000;
    }
    /* e2's request is still in flight: not settled yet. */
    size_t acked = 0, dead = 0;
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(dead, 0);
    order_request *olds[4];
    assert_int_equal(order_requests_older(o, t, olds, 4), 1);
    assert_string_equal(olds[0]->edge, "e2");
    order_request_done(o, olds[0], ORDER_OK, t);
    order_msg *m = order_settled_pop(o);
    assert_non_null(m);
    assert_int_equal(m->verdict, ORDER_DEAD);
    assert_string_equal(m->reason, "edge_timeout:e1");
    assert_int_equal(m->n_failed_edges, 1);
    assert_string_equal(m->failed_edges[0], "e1");
    order_msg_release(o, m);
    order_destroy(o);
}

/* No responders is "not there now": retried quickly, never an attempt;
 * the edge gone settles what was bound for it. */
static void test_no_responders_then_gone(void **state)
{
    order *o = mk();
    char *edges[] = {"e1"};
    add(o, 0, 1, "A", 0);
    round_all(o, edges, 1, 0);
    int64_t t = 0;
    for (int i = 0; i < 10; i++) {
        order_request *r = order_next_request(o, t);
        assert_non_null(r);
        order_request_done(o, r, ORDER_NO_RESPONDERS, t);
        assert_true(order_next_wake(o) <= t + 50); /* absent_retry_ms caps it */
        t += 50;
    }
    size_t acked = 0, dead = 0;
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked + dead, 0);
    /* One in flight when the edge is declared gone. */
    order_request *r = order_next_request(o, t);
    assert_non_null(r);
    order_edge_gone(o, "e1", t);
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 1);
    order_request_done(o, r, ORDER_TIMEOUT, t); /* late outcome: ignored */
    assert_null(order_next_request(o, t + 10000));
    order_destroy(o);
}

/* An edge declared gone while a round is out: that round's answer was
 * asked before (the registry may not have applied the EDGE_DOWN yet) and
 * binds nothing to it; the next round's answer does (it came back). */
static void test_edge_gone_during_round(void **state)
{
    order *o = mk();
    char *e01[] = {"e0", "e1"}, *e1[] = {"e1"};
    add(o, 0, 1, "A", 0);
    add(o, 0, 2, "B", 0);
    order_query *q;
    size_t nq;
    assert_int_equal(order_round_begin(o, 0, &q, &nq), 0);
    assert_int_equal(nq, 2);
    order_edge_gone(o, "e1", 0);
    for (size_t i = 0; i < nq; i++)
        assert_int_equal(order_round_room_edges(o, i, !strcmp(q[i].room, "A") ? e01 : e1,
                                                !strcmp(q[i].room, "A") ? 2 : 1, 0),
                         0);
    order_round_end(o, 0);
    /* B had only e1: settled at once; A waits for e0 alone. */
    size_t acked = 0, dead = 0;
    uint64_t seqs[8];
    size_t n = 0;
    drain(o, &acked, &dead, seqs, &n);
    assert_int_equal(acked, 1);
    assert_int_equal(seqs[0], 2);
    order_request *r = order_next_request(o, 0);
    assert_non_null(r);
    assert_string_equal(r->edge, "e0");
    assert_null(order_next_request(o, 0));
    order_request_done(o, r, ORDER_OK, 0);
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 2);
    /* A later round names e1 again: bound to it as usual. */
    add(o, 0, 3, "A", 1);
    assert_int_equal(round_all(o, e1, 1, 1), 1);
    r = order_next_request(o, 1);
    assert_non_null(r);
    assert_string_equal(r->edge, "e1");
    order_request_done(o, r, ORDER_OK, 1);
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 3);
    assert_int_equal(dead, 0);
    order_destroy(o);
}

static void test_poison_and_duplicate(void **state)
{
    order *o = mk();
    void *old = NULL;
    assert_int_equal(order_add(o, 0, 5, (void *)5, "\xff\xff\xff", 3, NULL, 0, 0, 0, &old),
                     ORDER_ADDED);
    order_msg *m = order_settled_pop(o);
    assert_non_null(m);
    assert_int_equal(m->verdict, ORDER_DEAD);
    assert_string_equal(m->reason, "poison");
    order_msg_release(o, m);

    add(o, 0, 6, "A", 0);
    Dw__ChatMessage c = DW__CHAT_MESSAGE__INIT;
    c.id = "x";
    c.room = "A";
    size_t len;
    uint8_t *buf = dw_pb_pack(&c.base, &len);
    assert_int_equal(order_add(o, 0, 6, (void *)66, buf, len, NULL, 0, 0, 0, &old),
                     ORDER_DUPLICATE);
    assert_ptr_equal(old, (void *)6);
    free(buf);
    assert_int_equal(order_held_total(o), 1);
    order_destroy(o);
}

static void test_replay_only(void **state)
{
    order *o = mk();
    Dw__ChatMessage c = DW__CHAT_MESSAGE__INIT;
    c.id = "x";
    c.room = "A";
    size_t len;
    uint8_t *buf = dw_pb_pack(&c.base, &len);
    char *only[] = {"e2"};
    assert_int_equal(order_add(o, 0, 1, (void *)1, buf, len, only, 1, 1, 0, NULL), ORDER_ADDED);
    free(buf);
    char *edges[] = {"e1", "e2", "e3"};
    round_all(o, edges, 3, 0);
    order_request *r = order_next_request(o, 0);
    assert_non_null(r);
    assert_string_equal(r->edge, "e2");
    assert_null(order_next_request(o, 0));
    order_request_done(o, r, ORDER_OK, 0);
    size_t acked = 0, dead = 0;
    drain(o, &acked, &dead, NULL, NULL);
    assert_int_equal(acked, 1);
    order_destroy(o);
}

/* A message that arrives while its room is being resolved waits for the
 * next round: it may not take an answer asked before it was fetched. */
static void test_message_during_round(void **state)
{
    order *o = mk();
    char *e1[] = {"e1"}, *e12[] = {"e1", "e2"};
    add(o, 0, 1, "A", 0);
    order_query *q;
    size_t nq;
    order_round_begin(o, 0, &q, &nq);
    assert_int_equal(nq, 1);
    add(o, 0, 2, "A", 0);
    /* No clock to wait for while the round is open: no new round can
     * begin before it ends (a loop polling for one would spin). */
    assert_true(order_next_wake(o) == INT64_MAX);
    order_round_room_edges(o, 0, e1, 1, 0);
    order_round_end(o, 0);
    assert_int_equal(order_next_wake(o), 0);
    assert_int_equal(round_all(o, e12, 2, 0), 1);
    uint64_t seqs[8];
    order_request *a = order_next_request(o, 0), *b = order_next_request(o, 0);
    order_request *r1 = !strcmp(a->edge, "e1") ? a : b, *r2 = r1 == a ? b : a;
    assert_int_equal(req_seqs(r1, seqs, 8, NULL), 2);
    assert_int_equal(req_seqs(r2, seqs, 8, NULL), 1);
    assert_int_equal(seqs[0], 2);
    order_request_done(o, r1, ORDER_OK, 0);
    order_request_done(o, r2, ORDER_OK, 0);
    order_destroy(o);
}

/* One request per edge at a time; what does not fit waits for the reply. */
static void test_one_request_per_edge_and_size_cap(void **state)
{
    order_cfg c = cfg();
    c.max_request_bytes = 40; /* about one item */
    order *o = NULL;
    assert_int_equal(order_create(&o, &c), 0);
    char *edges[] = {"e1"};
    for (uint64_t s = 1; s <= 3; s++)
        add(o, 0, s, "A", 0);
    round_all(o, edges, 1, 0);
    uint64_t seqs[8], got[8];
    size_t ng = 0;
    for (int i = 0; i < 3; i++) {
        order_request *r = order_next_request(o, 0);
        assert_non_null(r);
        assert_null(order_next_request(o, 0));
        size_t n = req_seqs(r, seqs, 8, NULL);
        for (size_t k = 0; k < n; k++)
            got[ng++] = seqs[k];
        order_request_done(o, r, ORDER_OK, 0);
    }
    assert_int_equal(ng, 3);
    assert_true(got[0] == 1 && got[1] == 2 && got[2] == 3);
    order_destroy(o);
}

/* Dropping a partition with a request in flight: its messages are gone
 * (handles released once the request is done), others stay. */
static void test_drop_partition_inflight(void **state)
{
    order *o = mk();
    char *edges[] = {"e1"};
    add(o, 1, 1, "A", 0);
    add(o, 2, 2, "B", 0);
    round_all(o, edges, 1, 0);
    order_request *r = order_next_request(o, 0);
    assert_non_null(r);
    assert_int_equal(order_inflight_of(o, 1), 1);
    assert_int_equal(order_drop_partition(o, 1), 1);
    assert_int_equal(order_held(o, 1), 0);
    assert_int_equal(order_held(o, 2), 1);
    assert_int_equal(released, 0); /* still in the request */
    order_request_done(o, r, ORDER_OK, 1);
    assert_int_equal(released, 1);
    size_t acked = 0, dead = 0, n = 0;
    uint64_t s[4];
    drain(o, &acked, &dead, s, &n);
    assert_int_equal(acked, 1);
    assert_int_equal(s[0], 2);
    /* Dropped while queued (not in flight), and a popped one stays the caller's. */
    add(o, 3, 3, "C", 2);
    add(o, 3, 4, "D", 2);
    round_all(o, (char *[]){NULL}, 0, 2); /* D and C: nobody: settled */
    order_msg *m = order_settled_pop(o);
    assert_non_null(m);
    order_drop_partition(o, 3);
    assert_int_equal(m->dropped, 1);
    order_msg_release(o, m);
    assert_null(order_settled_pop(o));
    assert_int_equal(order_held_total(o), 0);
    order_destroy(o);
}

static void test_progress_and_backoff(void **state)
{
    order_cfg c = cfg();
    assert_int_equal(order_backoff(&c, 1), 100);
    assert_int_equal(order_backoff(&c, 2), 200);
    assert_int_equal(order_backoff(&c, 4), 800);
    assert_int_equal(order_backoff(&c, 5), 1000);
    assert_int_equal(order_backoff(&c, 60), 1000);
    order *o = mk();
    add(o, 0, 1, "A", 0);
    void *h[4];
    assert_int_equal(order_progress_due(o, 500, 1000, h, 4), 0);
    assert_int_equal(order_progress_due(o, 1000, 1000, h, 4), 1);
    assert_ptr_equal(h[0], (void *)1);
    assert_int_equal(order_progress_due(o, 1500, 1000, h, 4), 0);
    order_destroy(o);
    assert_int_equal(released, 1);
}

/* Rooms interleaved on one edge: a failed request puts every room's items
 * back in their order. */
static void test_interleaved_rooms_retry(void **state)
{
    order *o = mk();
    char *edges[] = {"e1"};
    add(o, 0, 1, "A", 0);
    add(o, 1, 2, "B", 0);
    add(o, 0, 3, "A", 0);
    round_all(o, edges, 1, 0);
    order_request *r = order_next_request(o, 0);
    order_request_done(o, r, ORDER_FAILED, 0);
    add(o, 1, 4, "B", 1);
    add(o, 0, 5, "A", 1);
    round_all(o, edges, 1, 1);
    r = order_next_request(o, 200);
    uint64_t a[8], b[8];
    assert_int_equal(req_seqs(r, a, 8, "A"), 3);
    assert_true(a[0] == 1 && a[1] == 3 && a[2] == 5);
    assert_int_equal(req_seqs(r, b, 8, "B"), 2);
    assert_true(b[0] == 2 && b[1] == 4);
    order_request_done(o, r, ORDER_OK, 200);
    order_destroy(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic_fanout),
        cmocka_unit_test(test_empty_room_acks),
        cmocka_unit_test(test_registry_failure_holds_room),
        cmocka_unit_test(test_registry_give_up),
        cmocka_unit_test(test_edge_failure_keeps_order),
        cmocka_unit_test(test_edge_give_up_dead_letters),
        cmocka_unit_test(test_no_responders_then_gone),
        cmocka_unit_test(test_edge_gone_during_round),
        cmocka_unit_test(test_poison_and_duplicate),
        cmocka_unit_test(test_replay_only),
        cmocka_unit_test(test_message_during_round),
        cmocka_unit_test(test_one_request_per_edge_and_size_cap),
        cmocka_unit_test(test_drop_partition_inflight),
        cmocka_unit_test(test_progress_and_backoff),
        cmocka_unit_test(test_interleaved_rooms_retry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
