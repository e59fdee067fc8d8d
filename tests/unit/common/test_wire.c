/* dw/wire.h: every Nats-Msg-Id form as the services make it, round trips
 * through its parser, the error codes and the protobuf helper. The
 * literal strings here are the contract: a change to one is a change of
 * the wire format (deduplication across services and versions). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/wire.h"

#define CONN "AbCdEfGhIjKlMn_-"
#define EDGE "EdGe0123456789ab"

static void test_chat_ids(void **state)
{
    char id[DW_MSGID_MAX], conn[DW_ID_LEN + 1];
    uint64_t n = 0;
    assert_int_equal(dw_msgid_chat(id, sizeof id, CONN, 42), 0);
    assert_string_equal(id, CONN ":42");
    assert_int_equal(dw_msgid_chat_parse(id, conn, &n), 0);
    assert_string_equal(conn, CONN);
    assert_int_equal(n, 42);
    assert_int_equal(dw_msgid_chat(id, sizeof id, CONN, UINT64_MAX), 0);
    assert_int_equal(dw_msgid_chat_parse(id, conn, &n), 0);
    assert_true(n == UINT64_MAX);
    /* not a chat id */
    assert_int_equal(dw_msgid_chat_parse("connect." CONN, conn, &n), -1);
    assert_int_equal(dw_msgid_chat_parse("short:1", conn, &n), -1);
    assert_int_equal(dw_msgid_chat_parse(NULL, conn, &n), -1);
    /* too small a buffer: no partial id */
    assert_int_equal(dw_msgid_chat(id, 10, CONN, 1), -1);
    assert_string_equal(id, "");
    assert_int_equal(dw_msgid_chat(id, sizeof CONN + 2, CONN, 10), -1);
    assert_int_equal(dw_msgid_chat(id, sizeof CONN + 2, CONN, 9), 0);
    assert_string_equal(id, CONN ":9");
    assert_int_equal(dw_msgid_chat(id, sizeof id, CONN, 0), 0);
    assert_string_equal(id, CONN ":0");
    assert_int_equal(dw_msgid_chat(id, sizeof id, NULL, 7), 0);
    assert_string_equal(id, ":7");
    assert_int_equal(dw_msgid_chat(id, sizeof id, CONN, UINT64_MAX), 0);
    assert_string_equal(id, CONN ":18446744073709551615");
}

static void test_v1_keys(void **state)
{
    char id[DW_MSGID_MAX];
    assert_int_equal(dw_msgid_v1(id, sizeof id, true, "alice", "m-1"), 0);
    assert_string_equal(id, "v1:u:alice:m-1");
    assert_int_equal(dw_msgid_v1(id, sizeof id, false, CONN, "m-1"), 0);
    assert_string_equal(id, "v1:c:" CONN ":m-1");
    /* the longest user and client id fit */
    char user[129], cid[65];
    memset(user, 'u', 128);
    user[128] = '\0';
    memset(cid, 'c', 64);
    cid[64] = '\0';
    assert_int_equal(dw_msgid_v1(id, sizeof id, true, user, cid), 0);
    assert_int_equal(strlen(id), 5 + 128 + 1 + 64);
}

static void test_conn_event_ids(void **state)
{
    char id[DW_MSGID_MAX], conn[DW_ID_LEN + 1];
    /* the edge's own ids, and the api's DISCONNECT of a stale row: equal */
    assert_int_equal(dw_msgid_conn(id, sizeof id, DW__CONN_EVENT__KIND__CONNECT, CONN), 0);
    assert_string_equal(id, "connect." CONN);
    assert_int_equal(dw_msgid_conn_of(id, conn), 0);
    assert_string_equal(conn, CONN);
    assert_int_equal(dw_msgid_conn(id, sizeof id, DW__CONN_EVENT__KIND__DISCONNECT, CONN), 0);
    assert_string_equal(id, "disconnect." CONN);
    assert_int_equal(dw_msgid_conn_of(id, conn), 0);
    assert_string_equal(conn, CONN);
    assert_int_equal(dw_msgid_conn(id, sizeof id, DW__CONN_EVENT__KIND__JOIN, CONN), -1);

    assert_int_equal(dw_msgid_reannounce(id, sizeof id, 7, CONN), 0);
    assert_string_equal(id, "reannounce.7." CONN);
    assert_int_equal(dw_msgid_conn_of(id, conn), 0);
    assert_string_equal(conn, CONN);
    assert_int_equal(dw_msgid_drop(id, sizeof id, 8, CONN), 0);
    assert_string_equal(id, "drop.8." CONN);
    assert_int_equal(dw_msgid_conn_of(id, conn), 0);
    assert_string_equal(conn, CONN);
    assert_int_equal(dw_msgid_conn_of("short", conn), -1);
    assert_int_equal(dw_msgid_conn_of(NULL, conn), -1);

    assert_int_equal(dw_msgid_membership(id, sizeof id, DW__CONN_EVENT__KIND__JOIN, CONN, "a.b", 3),
                     0);
    assert_string_equal(id, "join." CONN ".a.b.3");
    assert_int_equal(
        dw_msgid_membership(id, sizeof id, DW__CONN_EVENT__KIND__LEAVE, CONN, "lobby", 4), 0);
    assert_string_equal(id, "leave." CONN ".lobby.4");
    assert_int_equal(
        dw_msgid_membership(id, sizeof id, DW__CONN_EVENT__KIND__CONNECT, CONN, "x", 1), -1);

    assert_int_equal(dw_msgid_edge_down(id, sizeof id, EDGE), 0);
    assert_string_equal(id, "edge_down." EDGE);
    assert_int_equal(dw_msgid_edge_down_stop(id, sizeof id, EDGE, "nonce"), 0);
    assert_string_equal(id, "edge_down." EDGE ".stop.nonce");
    assert_int_equal(dw_msgid_edge_down_reconcile(id, sizeof id, EDGE, 1700000000123LL), 0);
    assert_string_equal(id, "reconcile.edge_down." EDGE ".1700000000123");
    assert_int_equal(dw_msgid_gone(id, sizeof id, CONN), 0);
    assert_string_equal(id, "gone." CONN);
}

static void test_dlq_ids(void **state)
{
    char id[DW_MSGID_MAX];
    assert_int_equal(dw_msgid_dlq(id, sizeof id, 12345), 0);
    assert_string_equal(id, "dlq.12345");
    /* An async route's frame: its own form, so DW_ROUTE and DW_MSG
     * sequences never collide in DW_DLQ's duplicate window. */
    assert_int_equal(dw_msgid_dlq_route(id, sizeof id, 12345), 0);
    assert_string_equal(id, "dlq.route.12345");
    assert_int_equal(dw_msgid_dlq_route(id, 8, 12345), -1);
    assert_int_equal(dw_msgid_replay(id, sizeof id, CONN ":9", 12345, 77), 0);
    assert_string_equal(id, CONN ":9.r77");
    assert_int_equal(dw_msgid_replay(id, sizeof id, "", 12345, 77), 0);
    assert_string_equal(id, "dlq.12345.r77");
    assert_int_equal(dw_msgid_replay(id, sizeof id, NULL, 1, 2), 0);
    assert_string_equal(id, "dlq.1.r2");
    assert_int_equal(dw_msgid_replay(id, 5, NULL, 1, 2), -1);
}

static void test_room_publish_and_event_ids(void **state)
{
    char id[DW_MSGID_MAX], id2[DW_MSGID_MAX];
    /* a backend's room message: the key is its identity within the room */
    assert_int_equal(dw_msgid_room_publish(id, sizeof id, "general", "k-1"), 0);
    assert_string_equal(id, "api:k:general:k-1");
    assert_int_equal(dw_msgid_room_publish(id, sizeof id, "general", NULL), 0);
    assert_int_equal(dw_msgid_room_publish(id2, sizeof id2, "general", ""), 0);
    assert_int_equal(strncmp(id, "api:", 4), 0);
    assert_int_equal(strlen(id), 4 + DW_ID_LEN);
    assert_string_not_equal(id, id2);

    /* a lifecycle event's position, and back */
    uint64_t seq = 0;
    uint32_t idx = 0;
    assert_int_equal(dw_msgid_event(id, sizeof id, UINT64_MAX, UINT32_MAX), 0);
    assert_string_equal(id, "ev.18446744073709551615.4294967295");
    assert_int_equal(dw_msgid_event_parse(id, strlen(id), &seq, &idx), 0);
    assert_true(seq == UINT64_MAX && idx == UINT32_MAX);
    assert_int_equal(dw_msgid_event(id, sizeof id, 17, 0), 0);
    assert_string_equal(id, "ev.17.0");
    assert_int_equal(dw_msgid_event_parse(id, strlen(id), &seq, &idx), 0);
    assert_true(seq == 17 && idx == 0);
    static const char *const bad[] = {"",        "ev.",     "ev.1",    "ev.01.2",
                                      "ev.1.02", "ev.-1.2", "ev.1.2x", "ev.1.4294967296"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(dw_msgid_event_parse(bad[i], strlen(bad[i]), &seq, &idx), -1);
}

static void test_conn_event_make(void **state)
{
    Dw__ConnEvent ev;
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__EDGE_DOWN, NULL, EDGE, "why");
    assert_int_equal(ev.kind, DW__CONN_EVENT__KIND__EDGE_DOWN);
    assert_string_equal(ev.conn_id, "");
    assert_string_equal(ev.edge_id, EDGE);
    assert_string_equal(ev.reason, "why");
    assert_true(ev.ts_ms > 1700000000000LL);
    /* it packs and unpacks as the registry reads it */
    size_t len = protobuf_c_message_get_packed_size(&ev.base);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    protobuf_c_message_pack(&ev.base, buf);
    Dw__ConnEvent *back = dw__conn_event__unpack(NULL, len, buf);
    assert_non_null(back);
    assert_string_equal(back->edge_id, EDGE);
    assert_int_equal(back->kind, DW__CONN_EVENT__KIND__EDGE_DOWN);
    dw__conn_event__free_unpacked(back, NULL);
    free(buf);
}

static void test_errors(void **state)
{
    char t[64];
    const dw_err all[] = {DW_ERR_BAD_REQUEST, DW_ERR_INTERNAL, DW_ERR_TOO_LARGE,
                          DW_ERR_OUT_OF_MEMORY, DW_ERR_TOO_MANY_IDS};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        assert_int_equal(dw_err_text(t, sizeof t, all[i], NULL), 0);
        assert_int_equal(dw_err_of(t), all[i]);
        assert_int_equal(dw_err_text(t, sizeof t, all[i], "detail"), 0);
        assert_int_equal(dw_err_of(t), all[i]);
    }
    assert_int_equal(dw_err_text(t, sizeof t, DW_ERR_BAD_REQUEST, "room"), 0);
    assert_string_equal(t, "bad_request: room");
    assert_string_equal(dw_err_name(DW_ERR_TOO_LARGE), "too_large");
    assert_string_equal(dw_err_name(DW_ERR_OUT_OF_MEMORY), "out_of_memory");
    assert_string_equal(dw_err_name(DW_ERR_TOO_MANY_IDS), "too_many_ids");
    assert_string_equal(dw_err_name(DW_ERR_INTERNAL), "internal");
    assert_int_equal(dw_err_of(NULL), DW_ERR_NONE);
    assert_int_equal(dw_err_of(""), DW_ERR_NONE);
    assert_int_equal(dw_err_of("bad_requestX"), DW_ERR_OTHER);
    assert_int_equal(dw_err_of("something else"), DW_ERR_OTHER);
    assert_int_equal(dw_err_text(t, 4, DW_ERR_INTERNAL, NULL), -1);
}

static void test_pb_unpack(void **state)
{
    Dw__EdgeHeartbeat hb = DW__EDGE_HEARTBEAT__INIT;
    hb.edge_id = EDGE;
    hb.connections = 9;
    uint8_t buf[128];
    size_t len = protobuf_c_message_pack(&hb.base, buf);
    natsMsg *m = NULL;
    assert_int_equal(nats_Open(-1), NATS_OK); /* natsMsg_Destroy needs the library */
    assert_int_equal(natsMsg_Create(&m, "dw.edge.heartbeat", NULL, (const char *)buf, (int)len),
                     NATS_OK);
    Dw__EdgeHeartbeat *back = dw_pb_unpack(&dw__edge_heartbeat__descriptor, m);
    assert_non_null(back);
    assert_string_equal(back->edge_id, EDGE);
    assert_int_equal(back->connections, 9);
    dw__edge_heartbeat__free_unpacked(back, NULL);
    natsMsg_Destroy(m);
    /* an empty message is a message with every field at its default */
    assert_int_equal(natsMsg_Create(&m, "x", NULL, NULL, 0), NATS_OK);
    back = dw_pb_unpack(&dw__edge_heartbeat__descriptor, m);
    assert_non_null(back);
    dw__edge_heartbeat__free_unpacked(back, NULL);
    natsMsg_Destroy(m);
    /* garbage */
    assert_int_equal(natsMsg_Create(&m, "x", NULL, "\xff\xff\xff", 3), NATS_OK);
    assert_null(dw_pb_unpack(&dw__edge_heartbeat__descriptor, m));
    natsMsg_Destroy(m);
    assert_null(dw_pb_unpack(&dw__edge_heartbeat__descriptor, NULL));
    nats_Close();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_ids),
        cmocka_unit_test(test_v1_keys),
        cmocka_unit_test(test_conn_event_ids),
        cmocka_unit_test(test_dlq_ids),
        cmocka_unit_test(test_room_publish_and_event_ids),
        cmocka_unit_test(test_conn_event_make),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_pb_unpack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
