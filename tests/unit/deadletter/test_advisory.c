/* advisory.c: JetStream's max-deliveries advisory is read, anything else
 * is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "advisory.h"

static void test_advisory(void **state)
{
    static const char adv[] =
        "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"id\":\"x\","
        "\"timestamp\":\"2026-11-25T08:54:27.123Z\",\"stream\":\"DW_MSG\","
        "\"consumer\":\"dispatcher\",\"stream_seq\":4711,\"deliveries\":6}";
    dlq_advisory a;
    assert_int_equal(dlq_advisory_parse(adv, strlen(adv), &a), 0);
    assert_string_equal(a.stream, "DW_MSG");
    assert_string_equal(a.consumer, "dispatcher");
    assert_int_equal(a.stream_seq, 4711);
    assert_int_equal(a.deliveries, 6);

    static const char *bad[] = {
        "",
        "not json",
        "[]",
        "{\"type\":\"io.nats.jetstream.advisory.v1.terminated\",\"stream\":\"DW_MSG\","
        "\"consumer\":\"dispatcher\",\"stream_seq\":1}",
        "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"stream\":\"DW_MSG\","
        "\"consumer\":\"dispatcher\"}",
        "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"stream\":\"DW_MSG\","
        "\"consumer\":\"dispatcher\",\"stream_seq\":0}",
        "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"stream\":\"DW_MSG\","
        "\"consumer\":\"dispatcher\",\"stream_seq\":\"5\"}",
        "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"stream\":7,"
        "\"consumer\":\"dispatcher\",\"stream_seq\":5}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(dlq_advisory_parse(bad[i], strlen(bad[i]), &a), -1);
    /* An over-long stream name is refused, not cut. */
    char longname[256];
    snprintf(longname, sizeof longname,
             "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"stream\":\"%0100d\","
             "\"consumer\":\"dispatcher\",\"stream_seq\":5}",
             0);
    assert_int_equal(dlq_advisory_parse(longname, strlen(longname), &a), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_advisory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
