/* Subject and room rules and protobuf packing (no NATS needed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/bus.h"

static int room_ok(const char *room)
{
    return dw_room_valid(room, strlen(room));
}

static void test_room_valid_accepts(void **state)
{
    assert_true(room_ok("lobby"));
    assert_true(room_ok(DW_ROOM_LOBBY));
    assert_true(room_ok("a"));
    assert_true(room_ok("Room-1_x"));
    assert_true(room_ok("team.dev"));
    assert_true(room_ok("a.b.c"));
    assert_true(room_ok("0"));
    char max[DW_ROOM_MAX + 1];
    memset(max, 'r', DW_ROOM_MAX);
    max[DW_ROOM_MAX] = '\0';
    assert_true(room_ok(max));
}

static void test_room_valid_rejects(void **state)
{
    assert_false(room_ok(""));
    assert_false(dw_room_valid(NULL, 3));
    char big[DW_ROOM_MAX + 2];
    memset(big, 'r', DW_ROOM_MAX + 1);
    big[DW_ROOM_MAX + 1] = '\0';
    assert_false(room_ok(big));
    /* '.' separates subject tokens: no empty token anywhere */
    assert_false(room_ok(".a"));
    assert_false(room_ok("a."));
    assert_false(room_ok("a..b"));
    assert_false(room_ok("."));
    /* NATS wildcards and separators must never reach a subject */
    assert_false(room_ok("*"));
    assert_false(room_ok(">"));
    assert_false(room_ok("a*b"));
    assert_false(room_ok("a>"));
    assert_false(room_ok("a b"));
    assert_false(room_ok("a\tb"));
    assert_false(room_ok("a/b"));
    assert_false(room_ok("caf\xc3\xa9"));
    assert_false(dw_room_valid("ab\0cd", 5)); /* embedded NUL */
}

static void test_room_valid_uses_len(void **state)
{
    /* The length is authoritative (rooms come from JSON, not C strings). */
    assert_true(dw_room_valid("lobby!!!", 5));
    assert_false(dw_room_valid("lobby.", 6));
    assert_true(dw_room_valid("lobby.", 5));
}

static void test_subj_edge_deliver(void **state)
{
    char buf[64];
    dw_subj_edge_deliver(buf, sizeof buf, "AbCd-_0123456789");
    assert_string_equal(buf, "dw.edge.AbCd-_0123456789.deliver");
    char small[12];
    dw_subj_edge_deliver(small, sizeof small, "AbCd-_0123456789");
    assert_string_equal(small, "dw.edge.AbC"); /* truncated, still terminated */
}

static void test_subj_conn_event(void **state)
{
    assert_string_equal(dw_subj_conn_event(DW__CONN_EVENT__KIND__CONNECT), "dw.conn.connect");
    assert_string_equal(dw_subj_conn_event(DW__CONN_EVENT__KIND__DISCONNECT), "dw.conn.disconnect");
    assert_string_equal(dw_subj_conn_event(DW__CONN_EVENT__KIND__JOIN), "dw.conn.join");
    assert_string_equal(dw_subj_conn_event(DW__CONN_EVENT__KIND__LEAVE), "dw.conn.leave");
    assert_string_equal(dw_subj_conn_event(DW__CONN_EVENT__KIND__EDGE_DOWN), "dw.conn.edge_down");
    /* every event subject is captured by the DW_CONN stream's dw.conn.> */
    assert_int_equal(strncmp(dw_subj_conn_event(DW__CONN_EVENT__KIND__UNKNOWN), DW_SUBJ_CONN_PREFIX,
                             strlen(DW_SUBJ_CONN_PREFIX)),
                     0);
}

static void test_pb_pack_round_trip(void **state)
{
    Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
    char *rooms[] = {"lobby", "team.dev"};
    ev.kind = DW__CONN_EVENT__KIND__CONNECT;
    ev.conn_id = "AbCd-_0123456789";
    ev.edge_id = "EdgeEdgeEdge0001";
    ev.n_rooms = 2;
    ev.rooms = rooms;
    ev.user_id = "alice";
    ev.source_ip = "203.0.113.7";
    ev.user_agent = "wscat/5";
    ev.has_user_agent = 1;
    ev.ts_ms = 1700000000123LL;
    ev.reason = "";

    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&ev.base, &len);
    assert_non_null(buf);
    assert_int_equal(len, protobuf_c_message_get_packed_size(&ev.base));
    assert_true(len > 0);

    Dw__ConnEvent *out = dw__conn_event__unpack(NULL, len, buf);
    assert_non_null(out);
    assert_int_equal(out->kind, DW__CONN_EVENT__KIND__CONNECT);
    assert_string_equal(out->conn_id, ev.conn_id);
    assert_string_equal(out->edge_id, ev.edge_id);
    assert_int_equal(out->n_rooms, 2);
    assert_string_equal(out->rooms[0], "lobby");
    assert_string_equal(out->rooms[1], "team.dev");
    assert_string_equal(out->user_id, "alice");
    assert_string_equal(out->source_ip, "203.0.113.7");
    assert_string_equal(out->user_agent, "wscat/5");
    assert_true(out->has_user_agent);
    assert_int_equal(out->ts_ms, 1700000000123LL);
    assert_string_equal(out->reason, "");
    dw__conn_event__free_unpacked(out, NULL);
    free(buf);
}

static void test_pb_pack_empty_message(void **state)
{
    /* All defaults pack to zero bytes; the buffer must still be freeable and
     * unpack back to defaults (a null user agent stays null). */
    Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
    size_t len = 123;
    uint8_t *buf = dw_pb_pack(&ev.base, &len);
    assert_non_null(buf);
    assert_int_equal(len, 0);
    Dw__ConnEvent *out = dw__conn_event__unpack(NULL, len, buf);
    assert_non_null(out);
    assert_int_equal(out->kind, DW__CONN_EVENT__KIND__UNKNOWN);
    assert_false(out->has_user_agent);
    assert_int_equal(out->n_rooms, 0);
    dw__conn_event__free_unpacked(out, NULL);
    free(buf);
}

static void test_pb_unpack_rejects_garbage(void **state)
{
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_null(dw__conn_event__unpack(NULL, sizeof junk, junk));
}

static void test_stream_opts_default(void **state)
{
    dw_stream_opts o;
    memset(&o, 0xab, sizeof o);
    dw_stream_opts_default(&o);
    assert_int_equal(o.conn_max_age_s, 35LL * 24 * 3600);
    assert_int_equal(o.msg_max_age_s, 24LL * 3600);
    assert_int_equal(o.dedup_window_s, 120);
    assert_int_equal(o.replicas, 1);
}

static natsStatus servers(const char *list)
{
    natsOptions *o = NULL;
    assert_int_equal(natsOptions_Create(&o), NATS_OK);
    natsStatus s = dw_bus_set_servers(o, list);
    natsOptions_Destroy(o);
    return s;
}

static void test_set_servers_lists(void **state)
{
    assert_int_equal(servers("nats://127.0.0.1:4222"), NATS_OK);
    assert_int_equal(servers("nats://a:1,nats://b:2,nats://c:3"), NATS_OK);
    assert_int_equal(servers(" nats://a:1 , nats://b:2 "), NATS_OK);
    assert_int_equal(servers("tls://user:pw@a:1,nats://b:2"), NATS_OK);
}

static void test_set_servers_rejects(void **state)
{
    assert_int_equal(servers(""), NATS_INVALID_ARG);
    assert_int_equal(servers(NULL), NATS_INVALID_ARG);
    assert_int_equal(servers(" "), NATS_INVALID_ARG);
    assert_int_equal(servers("nats://a:1,,nats://b:2"), NATS_INVALID_ARG);
    assert_int_equal(servers("nats://a:1,"), NATS_INVALID_ARG);
    char many[DW_BUS_MAX_SERVERS * 16 + 16] = "";
    for (int i = 0; i <= DW_BUS_MAX_SERVERS; i++)
        strcat(many, i ? ",nats://h:1" : "nats://h:1");
    assert_int_equal(servers(many), NATS_INVALID_ARG);
}

static void test_room_partition(void **state)
{
    /* The hash is a wire contract: these values must never change. */
    assert_int_equal(DW_MSG_PARTITIONS, 16);
    assert_int_equal(dw_room_partition("lobby"), 475664083u % 16);
    assert_int_equal(dw_room_partition(""), 2166136261u % 16);
    uint32_t seen[DW_MSG_PARTITIONS] = {0};
    char room[16];
    for (int i = 0; i < 1600; i++) {
        snprintf(room, sizeof room, "r%d", i);
        uint32_t p = dw_room_partition(room);
        assert_true(p < DW_MSG_PARTITIONS);
        assert_int_equal(p, dw_room_partition(room));
        seen[p]++;
    }
    /* Spread: every partition gets some of 1,600 rooms. */
    for (int p = 0; p < DW_MSG_PARTITIONS; p++)
        assert_true(seen[p] > 1600 / DW_MSG_PARTITIONS / 3);
}

static void test_subj_msg_round_trip(void **state)
{
    const char *rooms[] = {"lobby", "a", "team.dev", "0", "42", "3.x", "Room-1_x"};
    for (size_t i = 0; i < sizeof rooms / sizeof rooms[0]; i++) {
        char subj[128];
        assert_int_equal(dw_subj_msg(subj, sizeof subj, rooms[i]), 0);
        uint32_t part = 99;
        const char *room = dw_subj_msg_room(subj, &part);
        assert_non_null(room);
        assert_string_equal(room, rooms[i]);
        assert_int_equal(part, dw_room_partition(rooms[i]));
    }
    char small[8];
    assert_int_equal(dw_subj_msg(small, sizeof small, "lobby"), -1);
    /* Exactly "dw.msg.<partition>.<room>", and -1 (with "") one byte short. */
    char want[64], got[64];
    int n = snprintf(want, sizeof want, "dw.msg.%u.lobby", dw_room_partition("lobby"));
    assert_int_equal(dw_subj_msg(got, (size_t)n + 1, "lobby"), 0);
    assert_string_equal(got, want);
    assert_int_equal(dw_subj_msg(got, (size_t)n, "lobby"), -1);
    assert_string_equal(got, "");
}

static void test_subj_msg_room_old_and_bad(void **state)
{
    uint32_t part = 0;
    assert_string_equal(dw_subj_msg_room("dw.msg.lobby", &part), "lobby");
    assert_int_equal(part, UINT32_MAX);
    assert_string_equal(dw_subj_msg_room("dw.msg.42", &part), "42");
    assert_int_equal(part, UINT32_MAX);
    assert_null(dw_subj_msg_room("dw.msg.", NULL));
    assert_null(dw_subj_msg_room("dw.conn.connect", NULL));
    assert_null(dw_subj_msg_room(NULL, NULL));
    /* A number past the partitions is a room name, not a partition. */
    char subj[64];
    snprintf(subj, sizeof subj, "dw.msg.%d.x", DW_MSG_PARTITIONS);
    assert_non_null(dw_subj_msg_room(subj, &part));
    assert_int_equal(part, UINT32_MAX);
    char filter[64];
    dw_subj_msg_partition(filter, sizeof filter, 7);
    assert_string_equal(filter, "dw.msg.7.>");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_room_valid_accepts),
        cmocka_unit_test(test_room_valid_rejects),
        cmocka_unit_test(test_room_valid_uses_len),
        cmocka_unit_test(test_subj_edge_deliver),
        cmocka_unit_test(test_subj_conn_event),
        cmocka_unit_test(test_pb_pack_round_trip),
        cmocka_unit_test(test_pb_pack_empty_message),
        cmocka_unit_test(test_pb_unpack_rejects_garbage),
        cmocka_unit_test(test_stream_opts_default),
        cmocka_unit_test(test_set_servers_lists),
        cmocka_unit_test(test_room_partition),
        cmocka_unit_test(test_subj_msg_round_trip),
        cmocka_unit_test(test_subj_msg_room_old_and_bad),
        cmocka_unit_test(test_set_servers_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
