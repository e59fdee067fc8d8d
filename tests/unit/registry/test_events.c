/* Lifecycle events' wire formats (events.c) and the emitter's reading of
 * JetStream's publish answers (emit.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "emit.h"
#include "events.h"

static void test_msg_id_round_trip(void **state)
{
    char buf[REG_EV_ID_MAX];
    reg_ev_pos p = {UINT64_MAX, UINT32_MAX}, q;
    assert_int_equal(reg_ev_msg_id(buf, sizeof buf, p), 0);
    assert_string_equal(buf, "ev.18446744073709551615.4294967295");
    assert_int_equal(reg_ev_msg_id_parse(buf, strlen(buf), &q), 0);
    assert_int_equal(reg_ev_pos_cmp(p, q), 0);
    assert_int_equal(reg_ev_msg_id(buf, 8, p), -1);

    assert_int_equal(reg_ev_msg_id_parse("ev.17.0", 7, &q), 0);
    assert_int_equal(q.seq, 17);
    assert_int_equal(q.idx, 0);
    static const char *const bad[] = {
        "",
        "ev.",
        "ev.1",
        "ev.1.",
        "ev.01.2",
        "ev.1.02",
        "ev.-1.2",
        "ev.1.2.3",
        "ev.1.2x",
        "EV.1.2",
        "x.1.2",
        "ev.1..2",
        "ev..1",
        "ev.1 .2",
        "ev.1.+2",
        "ev.1.4294967296",
        "ev.18446744073709551616.0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(reg_ev_msg_id_parse(bad[i], strlen(bad[i]), &q), -1);
}

static void test_pos_order(void **state)
{
    reg_ev_pos a = {1, 5}, b = {2, 0}, c = {2, 1};
    assert_true(reg_ev_pos_cmp(a, b) < 0);
    assert_true(reg_ev_pos_cmp(b, c) < 0);
    assert_true(reg_ev_pos_cmp(c, a) > 0);
    assert_int_equal(reg_ev_pos_cmp(b, b), 0);
}

static void test_subject(void **state)
{
    char buf[64];
    assert_int_equal(reg_ev_subject(buf, sizeof buf, "connect"), 0);
    assert_string_equal(buf, "dw.events.connect");
    assert_int_equal(reg_ev_subject(buf, sizeof buf, "leave"), 0);
    assert_string_equal(buf, "dw.events.leave");
    assert_int_equal(reg_ev_subject(buf, sizeof buf, "message"), -1);
    assert_int_equal(reg_ev_subject(buf, sizeof buf, NULL), -1);
    assert_int_equal(reg_ev_subject(buf, 12, "disconnect"), -1);
}

static void test_json(void **state)
{
    Dw__LifecycleEvent e = DW__LIFECYCLE_EVENT__INIT;
    e.type = "join";
    e.conn_id = "AbCdEfGhIjKlMnOp";
    e.user_id = "al\"ice";
    e.room = "general";
    e.edge_id = "edge-0123456789a";
    e.ts_ms = 1764064947123;
    size_t len = 0;
    char *j = reg_ev_json(&e, &len);
    assert_string_equal(j, "{\"type\":\"join\",\"connectionId\":\"AbCdEfGhIjKlMnOp\","
                           "\"user\":\"al\\\"ice\",\"room\":\"general\","
                           "\"edge\":\"edge-0123456789a\",\"ts\":1764064947123,\"reason\":null}");
    assert_int_equal(len, strlen(j));
    free(j);

    /* Not UTF-8: still JSON, as printable ASCII. */
    e.type = "leave";
    e.user_id = "b\xff\xfe";
    e.room = "";
    e.reason = "left";
    j = reg_ev_json(&e, NULL);
    assert_non_null(strstr(j, "\"user\":\"b??\""));
    assert_non_null(strstr(j, "\"room\":null"));
    assert_non_null(strstr(j, "\"reason\":\"left\""));
    free(j);

    e.type = "message";
    assert_null(reg_ev_json(&e, NULL));
    assert_null(reg_ev_json(NULL, NULL));
}

static void test_parse_ack(void **state)
{
    uint64_t seq;
    int jerr;
#define ACK(s) reg_emit_parse_ack(s, strlen(s), &seq, &jerr)
    assert_int_equal(ACK("{\"stream\":\"DW_EVENTS\", \"seq\":42}"), 1);
    assert_int_equal(seq, 42);
    assert_int_equal(ACK("{\"stream\":\"DW_EVENTS\", \"seq\":7,\"duplicate\": true}"), 2);
    assert_int_equal(seq, 7);
    assert_int_equal(ACK("{\"error\":{\"code\":400,\"err_code\":10071,\"description\":\"wrong "
                         "last sequence: 7\"},\"stream\":\"DW_EVENTS\",\"seq\":0}"),
                     0);
    assert_int_equal(jerr, 10071);
    assert_int_equal(ACK("{\"error\":{\"code\":503}}"), 0);
    assert_int_equal(jerr, 0);
    assert_int_equal(ACK(""), -1);
    assert_int_equal(ACK("[]"), -1);
    assert_int_equal(ACK("{\"seq\":0}"), -1);
    assert_int_equal(ACK("{\"seq\":\"3\"}"), -1);
    assert_int_equal(ACK("{\"error\":1}"), -1);
    assert_int_equal(reg_emit_parse_ack(NULL, 0, &seq, &jerr), -1);
#undef ACK
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_id_round_trip), cmocka_unit_test(test_pos_order),
        cmocka_unit_test(test_subject),           cmocka_unit_test(test_json),
        cmocka_unit_test(test_parse_ack),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
