/* fanout: batch -> rooms -> per-edge requests -> one verdict per message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/bus.h"
#include "fanout.h"

static const fanout_retry policy = {.base_ms = 250, .max_ms = 30000, .max_deliver = 6};

/* Pack a chat message the way the edge publishes it. Caller frees. */
static uint8_t *chat(const char *id, const char *room, const char *text, uint64_t conn_seq,
                     size_t *len)
{
    Dw__ChatMessage m;
    dw__chat_message__init(&m);
    m.id = (char *)id;
    m.room = (char *)room;
    m.conn_id = "conn-of-sender";
    m.user_id = "user-1";
    m.data.data = (uint8_t *)text;
    m.data.len = strlen(text);
    m.ts_ms = 1700000000123;
    m.conn_seq = conn_seq;
    return dw_pb_pack(&m.base, len);
}

/* Add one message; handle is a small integer so tests can tell them apart. */
static long add(fanout_batch *b, const char *id, const char *room, uint64_t seq, uint64_t conn_seq,
                uint64_t attempt)
{
    size_t len = 0;
    char text[64];
    snprintf(text, sizeof text, "text of %s", id);
    uint8_t *buf = chat(id, room, text, conn_seq, &len);
    assert_non_null(buf);
    long i = fanout_add(b, (void *)(uintptr_t)(seq + 1000), buf, len, seq, attempt);
    free(buf);
    return i;
}

static long room_index(const fanout_batch *b, const char *name)
{
    for (size_t i = 0; i < b->n_rooms; i++)
        if (!strcmp(b->rooms[i].name, name)) return (long)i;
    return -1;
}

static long edge_index(const fanout_batch *b, const char *id)
{
    for (size_t i = 0; i < b->n_edges; i++)
        if (!strcmp(b->edges[i].id, id)) return (long)i;
    return -1;
}

static void set_edges(fanout_batch *b, const char *room, const char *e1, const char *e2)
{
    char *ids[2];
    size_t n = 0;
    if (e1) ids[n++] = (char *)e1;
    if (e2) ids[n++] = (char *)e2;
    long r = room_index(b, room);
    assert_true(r >= 0);
    assert_int_equal(fanout_room_edges(b, (size_t)r, ids, n), 0);
}

/* The request of edge `edge` (the only one, when not split). */
static long delivery_of(const fanout_batch *b, const char *edge)
{
    long e = edge_index(b, edge);
    assert_true(e >= 0);
    for (size_t d = 0; d < b->n_deliveries; d++)
        if (b->deliveries[d].edge == (size_t)e) return (long)d;
    return -1;
}

static Dw__Delivery *unpack_delivery(const fanout_batch *b, size_t d)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(fanout_pack(b, d, &buf, &len), 0);
    Dw__Delivery *del = dw__delivery__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(del);
    return del;
}

static void test_retry_delay(void **state)
{
    /* The default schedule: 250 ms doubling, 6 attempts. */
    assert_int_equal(fanout_retry_delay(&policy, 1), 250);
    assert_int_equal(fanout_retry_delay(&policy, 2), 500);
    assert_int_equal(fanout_retry_delay(&policy, 3), 1000);
    assert_int_equal(fanout_retry_delay(&policy, 4), 2000);
    assert_int_equal(fanout_retry_delay(&policy, 5), 4000);
    assert_int_equal(fanout_retry_delay(&policy, 6), -1); /* the last attempt failed */
    assert_int_equal(fanout_retry_delay(&policy, 7), -1);
    assert_int_equal(fanout_retry_total_ms(&policy), 250 + 500 + 1000 + 2000 + 4000);
    /* attempt 0 (no metadata) is treated as the first */
    assert_int_equal(fanout_retry_delay(&policy, 0), 250);
}

static void test_retry_delay_cap(void **state)
{
    const fanout_retry capped = {.base_ms = 250, .max_ms = 1500, .max_deliver = 10};
    assert_int_equal(fanout_retry_delay(&capped, 3), 1000);
    assert_int_equal(fanout_retry_delay(&capped, 4), 1500);
    assert_int_equal(fanout_retry_delay(&capped, 9), 1500);
    assert_int_equal(fanout_retry_delay(&capped, 10), -1);
    assert_int_equal(fanout_retry_total_ms(&capped), 250 + 500 + 1000 + 6 * 1500);

    /* Without an attempt limit: capped forever, never overflowing. */
    const fanout_retry forever = {.base_ms = 10, .max_ms = 30000, .max_deliver = 0};
    assert_int_equal(fanout_retry_delay(&forever, 1), 10);
    assert_int_equal(fanout_retry_delay(&forever, 64), 30000);
    assert_int_equal(fanout_retry_delay(&forever, UINT64_MAX), 30000);
    assert_int_equal(fanout_retry_total_ms(&forever), 0);

    /* A huge base never overflows past the cap either. */
    const fanout_retry huge = {.base_ms = INT64_MAX / 2 + 1, .max_ms = INT64_MAX, .max_deliver = 0};
    assert_true(fanout_retry_delay(&huge, 5) > 0);

    /* 0 base: immediate retries (a test setting). */
    const fanout_retry zero = {.base_ms = 0, .max_ms = 100, .max_deliver = 3};
    assert_int_equal(fanout_retry_delay(&zero, 1), 0);
    assert_int_equal(fanout_retry_delay(&zero, 2), 0);
    assert_int_equal(fanout_retry_delay(&zero, 3), -1);
}

static void test_group_by_room(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    assert_int_equal(add(&b, "m1", "lobby", 10, 5, 1), 0);
    assert_int_equal(add(&b, "m2", "games", 11, 9, 1), 1);
    assert_int_equal(add(&b, "m3", "lobby", 12, 7, 1), 2);
    assert_int_equal(add(&b, "m4", "lobby", 13, 6, 2), 3);

    assert_int_equal(b.n_msgs, 4);
    assert_int_equal(b.n_rooms, 2);
    long lobby = room_index(&b, "lobby"), games = room_index(&b, "games");
    assert_true(lobby >= 0 && games >= 0);
    /* min_seq: the highest conn_seq any message of the room was sent at. */
    assert_int_equal(b.rooms[lobby].min_seq, 7);
    assert_int_equal(b.rooms[games].min_seq, 9);
    assert_int_equal(b.rooms[lobby].n_msgs, 3);
    assert_int_equal(b.rooms[lobby].msgs[0], 0);
    assert_int_equal(b.rooms[lobby].msgs[1], 2);
    assert_int_equal(b.rooms[lobby].msgs[2], 3);
    assert_int_equal(b.rooms[games].n_msgs, 1);
    assert_int_equal(b.msgs[1].room, (size_t)games);
    assert_int_equal(b.msgs[3].attempt, 2);
    assert_int_equal(b.msgs[3].seq, 13);
    assert_ptr_equal(b.msgs[3].handle, (void *)(uintptr_t)1013);
    fanout_batch_clear(&b);
    assert_int_equal(b.n_msgs, 0);
    fanout_batch_clear(&b); /* twice is fine */
    fanout_batch_clear(NULL);
}

static void test_many_rooms(void **state)
{
    /* Past the index's first growth: every room found again by name. */
    fanout_batch b;
    fanout_batch_init(&b);
    char room[32], id[32];
    for (int i = 0; i < 300; i++) {
        snprintf(room, sizeof room, "room-%d", i % 150);
        snprintf(id, sizeof id, "m%d", i);
        assert_int_equal(add(&b, id, room, (uint64_t)i + 1, (uint64_t)i, 1), i);
    }
    assert_int_equal(b.n_rooms, 150);
    for (size_t r = 0; r < b.n_rooms; r++) {
        assert_int_equal(b.rooms[r].n_msgs, 2);
        assert_int_equal(b.rooms[r].min_seq, b.rooms[r].msgs[1]);
    }
    fanout_batch_clear(&b);
}

static void test_bad_messages_are_retried_until_max_deliver(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    assert_int_equal(fanout_add(&b, NULL, junk, sizeof junk, 1, 1), 0);
    assert_int_equal(add(&b, "m2", "bad room!", 2, 0, 1), 1); /* not a valid room */
    assert_int_equal(add(&b, "", "lobby", 3, 0, 1), 2);       /* no id */
    assert_int_equal(add(&b, "m4", "lobby", 4, 0, 1), 3);
    assert_null(b.msgs[0].chat);
    assert_null(b.msgs[1].chat);
    assert_null(b.msgs[2].chat);
    assert_non_null(b.msgs[3].chat);
    assert_int_equal(b.n_rooms, 1);

    set_edges(&b, "lobby", "edge-a", NULL);
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    assert_int_equal(b.n_deliveries, 1);
    fanout_delivery_done(&b, 0, FANOUT_OK);
    fanout_decide(&b, &policy);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b.msgs[i].verdict, FANOUT_NAK);
        assert_int_equal(b.msgs[i].delay_ms, 250);
        assert_string_equal(b.msgs[i].reason, "undecodable");
    }
    assert_int_equal(b.msgs[3].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);

    /* On its last attempt it is NAK'd again, never given up here: the
     * consumer's MaxDeliver and the advisory take it to the DLQ. */
    fanout_batch_init(&b);
    assert_int_equal(fanout_add(&b, NULL, junk, sizeof junk, 1, 6), 0);
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_NAK);
    assert_int_equal(b.msgs[0].delay_ms, 0);
    fanout_batch_clear(&b);
}

static void test_per_edge_deliveries(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 20, 0, 1);
    add(&b, "m2", "games", 21, 0, 1);
    add(&b, "m3", "lobby", 22, 0, 1);
    add(&b, "m4", "empty", 23, 0, 1);
    set_edges(&b, "lobby", "edge-a", "edge-b");
    set_edges(&b, "games", "edge-b", NULL);
    set_edges(&b, "empty", NULL, NULL);
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);

    /* One request per edge; nothing for the room nobody is in. */
    assert_int_equal(b.n_edges, 2);
    assert_int_equal(b.n_deliveries, 2);
    long da = delivery_of(&b, "edge-a"), db = delivery_of(&b, "edge-b");
    assert_true(da >= 0 && db >= 0);

    Dw__Delivery *a = unpack_delivery(&b, (size_t)da);
    assert_int_equal(a->n_items, 2);
    assert_string_equal(a->items[0]->id, "m1");
    assert_string_equal(a->items[1]->id, "m3");
    Dw__DeliveryItem *it = a->items[1];
    assert_string_equal(it->room, "lobby");
    assert_int_equal(it->seq, 22);
    assert_int_equal(it->data.len, strlen("text of m3"));
    assert_memory_equal(it->data.data, "text of m3", it->data.len);
    assert_string_equal(it->from_user, "user-1");
    assert_string_equal(it->from_conn, "conn-of-sender");
    assert_int_equal(it->ts_ms, 1700000000123);
    assert_int_equal(it->n_conn_ids, 0);
    dw__delivery__free_unpacked(a, NULL);

    Dw__Delivery *bb = unpack_delivery(&b, (size_t)db);
    assert_int_equal(bb->n_items, 3);
    assert_string_equal(bb->items[0]->id, "m1");
    assert_string_equal(bb->items[1]->id, "m2");
    assert_string_equal(bb->items[2]->id, "m3");
    dw__delivery__free_unpacked(bb, NULL);
    fanout_batch_clear(&b);
}

static void test_items_in_seq_order(void **state)
{
    /* A redelivery (lower seq) fetched after newer messages still goes
     * first: each edge sees each room in stream order. */
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m31", "lobby", 31, 0, 1);
    add(&b, "m32", "lobby", 32, 0, 1);
    add(&b, "m30", "lobby", 30, 0, 3);
    set_edges(&b, "lobby", "edge-a", NULL);
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    Dw__Delivery *d = unpack_delivery(&b, 0);
    assert_int_equal(d->n_items, 3);
    assert_int_equal(d->items[0]->seq, 30);
    assert_int_equal(d->items[1]->seq, 31);
    assert_int_equal(d->items[2]->seq, 32);
    dw__delivery__free_unpacked(d, NULL);
    fanout_batch_clear(&b);
}

static void test_registry_edges_dedup_and_invalid(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 1, 0, 1);
    char *ids[] = {"edge-a", "edge-a", "bad.edge", "", "edge>", "edge-b"};
    assert_int_equal(fanout_room_edges(&b, 0, ids, 6), 0);
    assert_int_equal(b.rooms[0].n_edges, 2);
    assert_int_equal(b.n_edges, 2);
    assert_true(edge_index(&b, "edge-a") >= 0);
    assert_true(edge_index(&b, "edge-b") >= 0);
    assert_int_equal(edge_index(&b, "bad.edge"), -1);
    fanout_batch_clear(&b);
}

static void test_split_by_size(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "m%d", i);
        add(&b, id, "lobby", (uint64_t)i + 1, 0, 1);
    }
    set_edges(&b, "lobby", "edge-a", "edge-b");

    /* Find one item's size, then allow three per request. */
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    uint8_t *buf = NULL;
    size_t whole = 0;
    assert_int_equal(fanout_pack(&b, 0, &buf, &whole), 0);
    free(buf);
    size_t per_item = whole / 10;
    assert_int_equal(fanout_plan(&b, per_item * 3 + per_item / 2), 0);
    assert_int_equal(b.n_deliveries, 8); /* 4 + 4: 3 + 3 + 3 + 1 per edge */

    for (size_t e = 0; e < b.n_edges; e++) {
        uint64_t next_seq = 1;
        for (size_t d = 0; d < b.n_deliveries; d++) {
            if (b.deliveries[d].edge != e) continue;
            size_t len = 0;
            assert_int_equal(fanout_pack(&b, d, &buf, &len), 0);
            assert_true(len <= per_item * 3 + per_item / 2);
            Dw__Delivery *del = dw__delivery__unpack(NULL, len, buf);
            free(buf);
            assert_non_null(del);
            for (size_t k = 0; k < del->n_items; k++)
                assert_int_equal(del->items[k]->seq, next_seq++);
            dw__delivery__free_unpacked(del, NULL);
        }
        assert_int_equal(next_seq, 11); /* every message exactly once per edge */
    }

    /* A limit below one item: each item alone, never dropped. */
    assert_int_equal(fanout_plan(&b, 1), 0);
    assert_int_equal(b.n_deliveries, 20);
    fanout_batch_clear(&b);
}

/* lobby -> edge-a, edge-b; games -> edge-b; solo -> edge-c. */
static void plan_three_rooms(fanout_batch *b, uint64_t attempt)
{
    fanout_batch_init(b);
    add(b, "m1", "lobby", 1, 0, attempt);
    add(b, "m2", "games", 2, 0, attempt);
    add(b, "m3", "solo", 3, 0, attempt);
    set_edges(b, "lobby", "edge-a", "edge-b");
    set_edges(b, "games", "edge-b", NULL);
    set_edges(b, "solo", "edge-c", NULL);
    assert_int_equal(fanout_plan(b, 1 << 20), 0);
    assert_int_equal(b->n_deliveries, 3);
}

static void done(fanout_batch *b, const char *edge, fanout_outcome o)
{
    long d = delivery_of(b, edge);
    assert_true(d >= 0);
    fanout_delivery_done(b, (size_t)d, o);
}

static void test_decide_all_ok(void **state)
{
    fanout_batch b;
    plan_three_rooms(&b, 1);
    done(&b, "edge-a", FANOUT_OK);
    done(&b, "edge-b", FANOUT_OK);
    done(&b, "edge-c", FANOUT_OK);
    fanout_decide(&b, &policy);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(b.msgs[i].verdict, FANOUT_ACK);
        assert_int_equal(b.msgs[i].n_failed, 0);
    }
    fanout_batch_clear(&b);
}

static void test_decide_timeout_naks_only_its_messages(void **state)
{
    fanout_batch b;
    plan_three_rooms(&b, 1);
    done(&b, "edge-a", FANOUT_OK);
    done(&b, "edge-b", FANOUT_FAILED); /* timed out */
    done(&b, "edge-c", FANOUT_OK);
    fanout_decide(&b, &policy);

    long eb = edge_index(&b, "edge-b");
    /* m1 reached edge-a but not edge-b: retried, and we know where it failed. */
    assert_int_equal(b.msgs[0].verdict, FANOUT_NAK);
    assert_int_equal(b.msgs[0].delay_ms, 250);
    assert_string_equal(b.msgs[0].reason, "edge_failed");
    assert_int_equal(b.msgs[0].n_failed, 1);
    assert_int_equal(b.msgs[0].failed[0], (size_t)eb);
    assert_int_equal(b.msgs[1].verdict, FANOUT_NAK);
    assert_int_equal(b.msgs[1].n_failed, 1);
    assert_int_equal(b.msgs[2].verdict, FANOUT_ACK);

    /* Deciding again gives the same answer (no duplicated failed entries). */
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].n_failed, 1);
    fanout_batch_clear(&b);
}

static void test_decide_gone_counts_as_done(void **state)
{
    fanout_batch b;
    plan_three_rooms(&b, 1);
    done(&b, "edge-a", FANOUT_GONE);
    done(&b, "edge-b", FANOUT_OK);
    done(&b, "edge-c", FANOUT_GONE);
    fanout_decide(&b, &policy);
    for (int i = 0; i < 3; i++)
        assert_int_equal(b.msgs[i].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);
}

static void test_decide_unanswered_request_is_a_failure(void **state)
{
    /* PENDING (never sent, or the I/O gave up) must never turn into an ack. */
    fanout_batch b;
    plan_three_rooms(&b, 1);
    done(&b, "edge-a", FANOUT_OK);
    done(&b, "edge-b", FANOUT_OK);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_ACK);
    assert_int_equal(b.msgs[1].verdict, FANOUT_ACK);
    assert_int_equal(b.msgs[2].verdict, FANOUT_NAK);
    fanout_batch_clear(&b);
}

static void test_decide_split_request_failure(void **state)
{
    /* Only the messages of the failed part of a split request are retried. */
    fanout_batch b;
    fanout_batch_init(&b);
    char id[16];
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof id, "m%d", i);
        add(&b, id, "lobby", (uint64_t)i + 1, 0, 1);
    }
    set_edges(&b, "lobby", "edge-a", NULL);
    assert_int_equal(fanout_plan(&b, 1), 0);
    assert_int_equal(b.n_deliveries, 4);
    for (size_t d = 0; d < 4; d++)
        fanout_delivery_done(&b, d, d == 2 ? FANOUT_FAILED : FANOUT_OK);
    fanout_decide(&b, &policy);
    size_t failed_msg = b.edges[0].msgs[b.deliveries[2].first];
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(b.msgs[i].verdict, i == failed_msg ? FANOUT_NAK : FANOUT_ACK);
    fanout_batch_clear(&b);
}

static void test_decide_registry_failure(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 1, 0, 1);
    add(&b, "m2", "games", 2, 0, 1);
    add(&b, "m3", "quiet", 3, 0, 1);
    add(&b, "m4", "never", 4, 0, 1);
    fanout_room_failed(&b, (size_t)room_index(&b, "lobby"), "registry_timeout");
    set_edges(&b, "games", "edge-a", NULL);
    set_edges(&b, "quiet", NULL, NULL);
    /* "never": the I/O never reported an answer for it */
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    assert_int_equal(b.n_deliveries, 1);
    fanout_delivery_done(&b, 0, FANOUT_OK);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_NAK);
    assert_string_equal(b.msgs[0].reason, "registry_timeout");
    assert_int_equal(b.msgs[1].verdict, FANOUT_ACK);
    assert_int_equal(b.msgs[2].verdict, FANOUT_ACK); /* nobody in the room: done */
    assert_int_equal(b.msgs[3].verdict, FANOUT_NAK);
    fanout_batch_clear(&b);
}

static void test_decide_last_attempt_gives_up(void **state)
{
    fanout_batch b;
    plan_three_rooms(&b, 6);
    done(&b, "edge-a", FANOUT_FAILED);
    done(&b, "edge-b", FANOUT_OK);
    done(&b, "edge-c", FANOUT_OK);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_GIVE_UP);
    assert_string_equal(b.msgs[0].reason, "edge_failed");
    assert_int_equal(b.msgs[0].n_failed, 1);
    assert_int_equal(b.msgs[1].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);
}

static void test_decide_without_plan_never_acks_work(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 1, 0, 1);
    add(&b, "m2", "quiet", 2, 0, 1);
    set_edges(&b, "lobby", "edge-a", NULL);
    set_edges(&b, "quiet", NULL, NULL);
    fanout_decide(&b, &policy); /* fanout_plan failed / was skipped */
    assert_int_equal(b.msgs[0].verdict, FANOUT_NAK);
    assert_int_equal(b.msgs[1].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);
}

static void test_batch_reuse(void **state)
{
    fanout_batch b;
    plan_three_rooms(&b, 1);
    fanout_batch_clear(&b);
    add(&b, "n1", "other", 9, 0, 1);
    assert_int_equal(b.n_msgs, 1);
    assert_int_equal(b.n_rooms, 1);
    assert_int_equal(b.n_edges, 0);
    set_edges(&b, "other", "edge-z", NULL);
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    assert_int_equal(b.n_deliveries, 1);
    fanout_batch_clear(&b);
}

static void test_retry_skips_edges_that_took_it(void **state)
{
    /* Attempt 2 of m1 (lobby: edge-a took it last time, edge-b did not). */
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 1, 0, 2);
    add(&b, "m2", "lobby", 2, 0, 1);
    char *took[] = {"edge-a"};
    assert_int_equal(fanout_msg_skip(&b, 0, took, 1), 0);
    set_edges(&b, "lobby", "edge-a", "edge-b");
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    long ea = edge_index(&b, "edge-a"), eb = edge_index(&b, "edge-b");
    assert_true(fanout_msg_skips(&b, 0, (size_t)ea));
    assert_false(fanout_msg_skips(&b, 0, (size_t)eb));
    assert_false(fanout_msg_skips(&b, 1, (size_t)ea));

    /* edge-a gets only m2; edge-b gets both. */
    Dw__Delivery *a = unpack_delivery(&b, (size_t)delivery_of(&b, "edge-a"));
    assert_int_equal(a->n_items, 1);
    assert_string_equal(a->items[0]->id, "m2");
    dw__delivery__free_unpacked(a, NULL);
    Dw__Delivery *bb = unpack_delivery(&b, (size_t)delivery_of(&b, "edge-b"));
    assert_int_equal(bb->n_items, 2);
    dw__delivery__free_unpacked(bb, NULL);

    /* edge-b fails again: only it is listed as failed for m1. */
    done(&b, "edge-a", FANOUT_OK);
    done(&b, "edge-b", FANOUT_TIMEOUT);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_NAK);
    assert_int_equal(b.msgs[0].delay_ms, 500); /* attempt 2 failed: doubled */
    assert_int_equal(b.msgs[0].n_failed, 1);
    assert_int_equal(b.msgs[0].failed[0], (size_t)eb);
    fanout_batch_clear(&b);

    /* Every edge took it already: nothing is sent, it is acked. */
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 1, 0, 3);
    char *both[] = {"edge-a", "edge-b"};
    assert_int_equal(fanout_msg_skip(&b, 0, both, 2), 0);
    set_edges(&b, "lobby", "edge-a", "edge-b");
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    assert_int_equal(b.n_deliveries, 0);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);
}

static void test_replay_only_to_named_edges(void **state)
{
    fanout_batch b;
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 7, 0, 1);
    char *only[] = {"edge-b", "edge-gone"};
    assert_int_equal(fanout_msg_only(&b, 0, only, 2), 0);
    set_edges(&b, "lobby", "edge-a", "edge-b");
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    assert_int_equal(b.n_deliveries, 1);
    assert_int_equal(delivery_of(&b, "edge-a"), -1);
    assert_true(delivery_of(&b, "edge-b") >= 0);
    done(&b, "edge-b", FANOUT_OK);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);

    /* None of the named edges holds the room any more: acked, not sent. */
    fanout_batch_init(&b);
    add(&b, "m1", "lobby", 7, 0, 1);
    char *gone[] = {"edge-gone"};
    assert_int_equal(fanout_msg_only(&b, 0, gone, 1), 0);
    set_edges(&b, "lobby", "edge-a", NULL);
    assert_int_equal(fanout_plan(&b, 1 << 20), 0);
    assert_int_equal(b.n_deliveries, 0);
    fanout_decide(&b, &policy);
    assert_int_equal(b.msgs[0].verdict, FANOUT_ACK);
    fanout_batch_clear(&b);
}

static void test_timeout_is_told_apart(void **state)
{
    fanout_batch b;
    plan_three_rooms(&b, 1);
    done(&b, "edge-a", FANOUT_TIMEOUT);
    done(&b, "edge-b", FANOUT_FAILED);
    /* edge-c: never answered (PENDING) */
    fanout_decide(&b, &policy);
    long ea = edge_index(&b, "edge-a"), eb = edge_index(&b, "edge-b");
    /* m1 (lobby) went to edge-a and edge-b */
    assert_int_equal(b.msgs[0].n_failed, 2);
    for (size_t k = 0; k < 2; k++) {
        if (b.msgs[0].failed[k] == (size_t)ea)
            assert_int_equal(b.msgs[0].failed_how[k], FANOUT_TIMEOUT);
        else if (b.msgs[0].failed[k] == (size_t)eb)
            assert_int_equal(b.msgs[0].failed_how[k], FANOUT_FAILED);
        else
            fail();
    }
    assert_int_equal(b.msgs[2].n_failed, 1);
    assert_int_equal(b.msgs[2].failed_how[0], FANOUT_PENDING);
    fanout_batch_clear(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_delay),
        cmocka_unit_test(test_group_by_room),
        cmocka_unit_test(test_many_rooms),
        cmocka_unit_test(test_retry_delay_cap),
        cmocka_unit_test(test_bad_messages_are_retried_until_max_deliver),
        cmocka_unit_test(test_retry_skips_edges_that_took_it),
        cmocka_unit_test(test_replay_only_to_named_edges),
        cmocka_unit_test(test_timeout_is_told_apart),
        cmocka_unit_test(test_per_edge_deliveries),
        cmocka_unit_test(test_items_in_seq_order),
        cmocka_unit_test(test_registry_edges_dedup_and_invalid),
        cmocka_unit_test(test_split_by_size),
        cmocka_unit_test(test_decide_all_ok),
        cmocka_unit_test(test_decide_timeout_naks_only_its_messages),
        cmocka_unit_test(test_decide_gone_counts_as_done),
        cmocka_unit_test(test_decide_unanswered_request_is_a_failure),
        cmocka_unit_test(test_decide_split_request_failure),
        cmocka_unit_test(test_decide_registry_failure),
        cmocka_unit_test(test_decide_last_attempt_gives_up),
        cmocka_unit_test(test_decide_without_plan_never_acks_work),
        cmocka_unit_test(test_batch_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
