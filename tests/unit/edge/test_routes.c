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

/* routes_parse reads the common form itself; whatever the input, its
 * result must be jansson's (routes_parse_json). */
static void test_fast_path_agrees_with_jansson(void **state)
{
    const char *inputs[] = {
        "{\"action\":\"sendmessage\",\"data\":\"hi\"}",
        " \t\r\n{ \"action\" :\t\"sendmessage\" ,\n\"data\": \"hi there\" } \r\n",
        "{\"action\":\"sendmessage\",\"data\":\"\"}",
        "{\"data\":\"x\",\"action\":\"sendmessage\"}",
        "{\"action\":\"sendmessage\",\"message\":\"m\"}",
        "{\"action\":\"sendmessage\",\"message\":\"m\",\"data\":\"d\"}",
        "{\"action\":\"sendmessage\",\"data\":null,\"message\":\"m\"}",
        "{\"action\":\"sendmessage\"}",
        "{\"action\":\"sendmessage\",\"other\":\"o\"}",
        "{\"action\":\"sendmessages\",\"data\":\"d\"}",
        "{\"action\":\"sendmessag\",\"data\":\"d\"}",
        "{\"action\":\"\",\"data\":\"d\"}",
        "{\"action\":\"sendmessage\",\"data\":\"a\\\"b\"}",
        "{\"action\":\"sendmessage\",\"data\":\"a\\u0041b\"}",
        "{\"act\\u0069on\":\"sendmessage\",\"data\":\"d\"}",
        "{\"action\":\"sendmessage\",\"data\":\"caf\xc3\xa9\"}",
        "{\"action\":\"sendmessage\",\"data\":\"bad \xff\"}",
        "{\"action\":\"sendmessage\",\"data\":\"tab\there\"}",
        "{\"action\":\"sendmessage\",\"data\":\"del\x7f\"}",
        "{\"action\":\"sendmessage\",\"data\":\"d\"} x",
        "{\"action\":\"sendmessage\",\"data\":\"d\"}}",
        "{\"action\":\"sendmessage\",\"data\":\"d\",}",
        "{\"action\":\"sendmessage\",\"data\":\"d\"",
        "{\"action\":\"sendmessage\",\"data\":\"d",
        "{\"action\":\"sendmessage\" \"data\":\"d\"}",
        "{\"action\" \"sendmessage\",\"data\":\"d\"}",
        "{\"action\":\"sendmessage\",\"data\":\"d\",\"data\":\"e\"}",
        "{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":\"4\",\"e\":\"5\",\"f\":\"6\",\"g\":\"7\","
        "\"action\":\"sendmessage\",\"data\":\"nine keys\"}",
        "{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\",\"d\":\"4\",\"e\":\"5\",\"f\":\"6\","
        "\"action\":\"sendmessage\",\"data\":\"eight keys\"}",
        "{}",
        "{ }",
        "{\"\":\"\"}",
        "{\"action\":\"sendmessage\",\"data\":5}",
        "{'action':'sendmessage','data':'d'}",
        "\xef\xbb\xbf{\"action\":\"sendmessage\",\"data\":\"bom\"}",
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        edge_request r, ref;
        size_t len = strlen(inputs[i]);
        assert_int_equal(routes_parse(inputs[i], len, &r), 0);
        assert_int_equal(routes_parse_json(inputs[i], len, &ref), 0);
        if (r.route != ref.route)
            fail_msg("input %zu: route %d, jansson's %d", i, r.route, ref.route);
        assert_int_equal(r.data_len, ref.data_len);
        if (ref.data)
            assert_memory_equal(r.data, ref.data, ref.data_len);
        else
            assert_null(r.data);
        if (ref.error)
            assert_string_equal(r.error, ref.error);
        else
            assert_null(r.error);
        routes_request_free(&r);
        routes_request_free(&ref);
    }
    /* With a NUL inside, and not NUL-terminated. */
    edge_request r;
    assert_int_equal(routes_parse("{\"action\":\"sendmessage\",\"data\":\"a\0b\"}", 37, &r), 0);
    assert_int_equal(r.route, ROUTE_DEFAULT);
    assert_int_equal(routes_parse("{\"action\":\"sendmessage\",\"data\":\"hi\"}XYZ", 36, &r), 0);
    assert_int_equal(r.route, ROUTE_SENDMESSAGE);
    assert_string_equal(r.data, "hi");
    routes_request_free(&r);
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
        cmocka_unit_test(test_fast_path_agrees_with_jansson),
        cmocka_unit_test(test_default_reply_is_aws_shape),
        cmocka_unit_test(test_error_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
