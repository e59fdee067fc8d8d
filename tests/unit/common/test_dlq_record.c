/* record: the dead-letter record codec, subjects, reasons, the edges header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/dlq_record.h"

static void sample(Dw__DeadLetter *dl, char **edges, int64_t *times)
{
    static uint8_t payload[] = {0x0a, 0x02, 'i', 'd', 0x00, 0xff};
    dw__dead_letter__init(dl);
    dl->subject = "dw.msg.lobby";
    dl->stream_seq = 42;
    dl->msg_id = "conn1.7";
    dl->payload.data = payload;
    dl->payload.len = sizeof payload;
    dl->reason = "edge_timeout:edge-b";
    dl->attempts = 6;
    dl->first_failure_ms = 1700000000000;
    dl->last_failure_ms = 1700000007750;
    dl->failed_edges = edges;
    dl->n_failed_edges = 1;
    dl->room = "lobby";
    dl->source = DLQ_SOURCE_DISPATCHER;
    dl->attempt_ms = times;
    dl->n_attempt_ms = 6;
}

static void test_roundtrip(void **state)
{
    char *edges[] = {"edge-b"};
    int64_t times[] = {1700000000000, 1700000000250, 1700000000750,
                       1700000001750, 1700000003750, 1700000007750};
    Dw__DeadLetter dl;
    sample(&dl, edges, times);
    size_t len = 0;
    uint8_t *buf = dlq_record_pack(&dl, &len);
    assert_non_null(buf);
    Dw__DeadLetter *back = dlq_record_unpack(buf, len);
    free(buf);
    assert_non_null(back);
    assert_string_equal(back->subject, "dw.msg.lobby");
    assert_int_equal(back->stream_seq, 42);
    assert_string_equal(back->msg_id, "conn1.7");
    assert_int_equal(back->payload.len, 6);
    assert_memory_equal(back->payload.data, dl.payload.data, 6);
    assert_string_equal(back->reason, "edge_timeout:edge-b");
    assert_int_equal(back->attempts, 6);
    assert_int_equal(back->first_failure_ms, 1700000000000);
    assert_int_equal(back->last_failure_ms, 1700000007750);
    assert_int_equal(back->n_failed_edges, 1);
    assert_string_equal(back->failed_edges[0], "edge-b");
    assert_string_equal(back->room, "lobby");
    assert_string_equal(back->source, "dispatcher");
    assert_int_equal(back->n_attempt_ms, 6);
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(back->attempt_ms[i], times[i]);
    dw__dead_letter__free_unpacked(back, NULL);
}

static void expect_invalid(Dw__DeadLetter *dl)
{
    size_t len = 0;
    assert_false(dlq_record_valid(dl));
    assert_null(dlq_record_pack(dl, &len));
    /* The same bytes packed raw are refused when read back, too. */
    uint8_t *raw = dw_pb_pack(&dl->base, &len);
    assert_non_null(raw);
    assert_null(dlq_record_unpack(raw, len));
    free(raw);
}

static void test_invalid_records(void **state)
{
    char *edges[] = {"edge-b"};
    int64_t times[6] = {0};
    Dw__DeadLetter dl;

    sample(&dl, edges, times);
    dl.subject = "dw.other.lobby";
    expect_invalid(&dl);
    sample(&dl, edges, times);
    dl.room = "games"; /* does not match the subject */
    expect_invalid(&dl);
    sample(&dl, edges, times);
    dl.stream_seq = 0;
    expect_invalid(&dl);
    sample(&dl, edges, times);
    dl.reason = "";
    expect_invalid(&dl);
    sample(&dl, edges, times);
    dl.source = "";
    expect_invalid(&dl);
    sample(&dl, edges, times);
    dl.n_attempt_ms = DLQ_ATTEMPTS_MAX + 1;
    int64_t many[DLQ_ATTEMPTS_MAX + 1] = {0};
    dl.attempt_ms = many;
    expect_invalid(&dl);
    sample(&dl, edges, times);
    dl.subject = ""; /* lost original: only without payload and room */
    expect_invalid(&dl);
    dl.payload.len = 0;
    dl.payload.data = NULL;
    expect_invalid(&dl);
    dl.room = "";
    assert_true(dlq_record_valid(&dl));

    /* Junk bytes are not a record. */
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    assert_null(dlq_record_unpack(junk, sizeof junk));
    assert_null(dlq_record_unpack(NULL, 0)); /* empty: no subject, no seq */
}

static void test_ids_and_subjects(void **state)
{
    char buf[64];
    /* The dead letter and replay ids are dw/wire.h's (test_wire.c). */
    assert_string_equal(dlq_room_of_subject("dw.msg.lobby"), "lobby");
    assert_string_equal(dlq_room_of_subject("dw.msg.a.b"), "a.b");
    assert_string_equal(dlq_room_of_subject("dw.msg.3.lobby"), "lobby");
    assert_string_equal(dlq_room_of_subject("dw.msg.15.a.b"), "a.b");
    assert_null(dlq_room_of_subject("dw.msg."));
    assert_null(dlq_room_of_subject("dw.msg.a..b"));
    assert_null(dlq_room_of_subject("dw.msg.a."));
    assert_null(dlq_room_of_subject("dw.msg.*"));
    assert_null(dlq_room_of_subject("dw.dlq.lobby"));
    assert_null(dlq_room_of_subject(NULL));

    assert_int_equal(dlq_subject(buf, sizeof buf, "lobby"), 0);
    assert_string_equal(buf, "dw.dlq.lobby");
    assert_int_equal(dlq_subject(buf, sizeof buf, "a.b"), 0);
    assert_string_equal(buf, "dw.dlq.a.b");
    assert_int_equal(dlq_subject(buf, sizeof buf, ">"), -1);
    assert_int_equal(dlq_subject(buf, sizeof buf, ""), -1);
    assert_int_equal(dlq_subject(buf, 10, "lobby"), -1);
}

/* An async route's frame (DW_ROUTE, dw.route.<action>): no room. */
static void test_route_records(void **state)
{
    char buf[64];
    assert_string_equal(dlq_route_of_subject("dw.route.audit"), "audit");
    assert_null(dlq_route_of_subject("dw.route."));
    assert_null(dlq_route_of_subject("dw.route.a.b"));
    assert_null(dlq_route_of_subject("dw.msg.audit"));
    assert_null(dlq_route_of_subject(NULL));
    assert_null(dlq_room_of_subject("dw.route.audit"));
    assert_int_equal(dlq_route_subject(buf, sizeof buf, "audit"), 0);
    assert_string_equal(buf, "dw.dlq.$route.audit");
    assert_int_equal(dlq_route_subject(buf, sizeof buf, "a.b"), -1);
    assert_int_equal(dlq_route_subject(buf, 12, "audit"), -1);

    uint8_t payload[] = "{\"action\":\"audit\"}";
    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = "dw.route.audit";
    dl.stream_seq = 9;
    dl.payload.data = payload;
    dl.payload.len = sizeof payload - 1;
    dl.reason = DLQ_REASON_ROUTE ":route-audit";
    dl.room = "";
    dl.source = DLQ_SOURCE_ADVISORY;
    size_t len = 0;
    uint8_t *b = dlq_record_pack(&dl, &len);
    assert_non_null(b);
    Dw__DeadLetter *back = dlq_record_unpack(b, len);
    free(b);
    assert_non_null(back);
    assert_string_equal(back->subject, "dw.route.audit");
    assert_string_equal(back->room, "");
    assert_true(dlq_reason_matches(back->reason, DLQ_REASON_ROUTE));
    dw__dead_letter__free_unpacked(back, NULL);
    /* A route frame with a room is not a record. */
    dl.room = "audit";
    assert_null(dlq_record_pack(&dl, &len));
}

static void test_reasons(void **state)
{
    char buf[64];
    const char *edges[] = {"e1", "e2", "e3"};
    assert_int_equal(dlq_reason_edges(buf, sizeof buf, "edge_timeout", edges, 3), 0);
    assert_string_equal(buf, "edge_timeout:e1,e2,e3");
    /* Cut, and says so: "edge_timeout:e1" + ",..." fits in 20 + 1. */
    assert_int_equal(dlq_reason_edges(buf, 21, "edge_timeout", edges, 3), 0);
    assert_string_equal(buf, "edge_timeout:e1,...");
    assert_int_equal(dlq_reason_edges(buf, 5, "edge_timeout", edges, 3), -1);
    assert_int_equal(dlq_reason_edges(buf, sizeof buf, "edge_error", edges, 1), 0);
    assert_string_equal(buf, "edge_error:e1");

    assert_true(dlq_reason_matches("edge_timeout:e1", "edge_timeout"));
    assert_true(dlq_reason_matches("edge_timeout:e1", "edge_timeout:e1"));
    assert_false(dlq_reason_matches("edge_timeout:e1", "edge_timeout:e"));
    assert_false(dlq_reason_matches("edge_timeouts", "edge_timeout"));
    assert_true(dlq_reason_matches("poison", "poison"));
    assert_true(dlq_reason_matches("poison", ""));
    assert_true(dlq_reason_matches("poison", NULL));
    assert_false(dlq_reason_matches(NULL, "poison"));
}

static void test_edges_header(void **state)
{
    char **v = NULL;
    size_t n = 0;
    assert_int_equal(dlq_edges_parse("e1,,e2,", &v, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0], "e1");
    assert_string_equal(v[1], "e2");
    char *joined = dlq_edges_join(v, n);
    assert_string_equal(joined, "e1,e2");
    free(joined);
    dlq_edges_free(v, n);
    assert_int_equal(dlq_edges_parse("", &v, &n), 0);
    assert_int_equal(n, 0);
    dlq_edges_free(v, n);
    joined = dlq_edges_join(NULL, 0);
    assert_string_equal(joined, "");
    free(joined);
    dlq_edges_free(NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),        cmocka_unit_test(test_invalid_records),
        cmocka_unit_test(test_ids_and_subjects), cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_edges_header),     cmocka_unit_test(test_route_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
