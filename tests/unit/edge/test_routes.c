#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "routes.h"

static edge_request parse(const char *s)
{
    edge_request r;
    assert_int_equal(routes_parse(s, strlen(s), &r), 0);
    return r;
}

static void test_sendmessage_message_and_data(void **state)
{
    edge_request r = parse("{\"action\": \"sendmessage\", \"message\": \"hello, everyone!\"}");
    assert_int_equal(r.route, ROUTE_SENDMESSAGE);
    assert_string_equal(r.data, "hello, everyone!");
    assert_int_equal(r.data_len, 16);
    routes_request_free(&r);

    r = parse("{\"action\":\"sendmessage\",\"data\":\"hi\",\"message\":\"ignored\"}");
    assert_int_equal(r.route, ROUTE_SENDMESSAGE);
    assert_string_equal(r.data, "hi");
    routes_request_free(&r);
}

static void test_sendmessage_non_string_data_is_json_text(void **state)
{
    edge_request r = parse("{\"action\":\"sendmessage\",\"data\":{\"a\":[1,2]}}");
    assert_int_equal(r.route, ROUTE_SENDMESSAGE);
    assert_string_equal(r.data, "{\"a\":[1,2]}");
    routes_request_free(&r);
}

static void test_sendmessage_without_data_is_bad_request(void **state)
{
    edge_request r = parse("{\"action\":\"sendmessage\"}");
    assert_int_equal(r.route, ROUTE_BAD_REQUEST);
    assert_non_null(r.error);
    assert_null(r.data);
    routes_request_free(&r);
}

static void test_everything_else_is_default(void **state)
{
    const char *inputs[] = {"test",
                            "",
                            "{",
                            "[]",
                            "42",
                            "{\"action\":\"nope\"}",
                            "{\"action\":5}",
                            "{\"action\":\"$connect\"}",
                            "{\"action\":\"SENDMESSAGE\",\"data\":\"x\"}",
                            "{\"action\":\"sendmessage\",\"action\":\"x\",\"data\":\"d\"}"};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        edge_request r = parse(inputs[i]);
        assert_int_equal(r.route, ROUTE_DEFAULT);
        routes_request_free(&r);
    }
    /* Not NUL-terminated, with embedded NUL: still just bytes. */
    edge_request r;
    assert_int_equal(routes_parse("{\"a\0\":1}", 8, &r), 0);
    assert_int_equal(r.route, ROUTE_DEFAULT);
}

static void test_default_reply_is_aws_shape(void **state)
{
    edge_conn_info ci = {"AbCdEfGhIjKlMnOp", "127.0.0.1", NULL, 1700000000123LL, 1700000001000LL};
    size_t len;
    char *s = routes_default_reply(&ci, &len);
    assert_non_null(s);
    assert_string_equal(s, "Use the sendmessage route to send a message. Your info: "
                           "{\"ConnectedAt\":\"2023-11-14T22:13:20.123Z\",\"Identity\":"
                           "{\"SourceIp\":\"127.0.0.1\",\"UserAgent\":null},\"LastActiveAt\":"
                           "\"2023-11-14T22:13:21.000Z\",\"connectionID\":\"AbCdEfGhIjKlMnOp\"}");
    assert_int_equal(len, strlen(s));
    free(s);

    ci.user_agent = "wscat \"1.0\"";
    s = routes_default_reply(&ci, &len);
    assert_non_null(strstr(s, "\"UserAgent\":\"wscat \\\"1.0\\\"\""));
    free(s);

    ci.user_agent = "\xff\xfe bad utf-8";
    s = routes_default_reply(&ci, &len);
    assert_non_null(strstr(s, "\"UserAgent\":null"));
    free(s);
}

static void test_error_reply(void **state)
{
    size_t len;
    char *s = routes_error_reply("Internal server error", "AbCdEfGhIjKlMnOp", "rid", &len);
    assert_string_equal(s, "{\"message\":\"Internal server error\",\"connectionId\":"
                           "\"AbCdEfGhIjKlMnOp\",\"requestId\":\"rid\"}");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sendmessage_message_and_data),
        cmocka_unit_test(test_sendmessage_non_string_data_is_json_text),
        cmocka_unit_test(test_sendmessage_without_data_is_bad_request),
        cmocka_unit_test(test_everything_else_is_default),
        cmocka_unit_test(test_default_reply_is_aws_shape),
        cmocka_unit_test(test_error_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
