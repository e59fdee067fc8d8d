/* aws.c: ids in paths, the GET body, error bodies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "aws.h"

static void test_route(void **state)
{
    char id[API_CONN_ID_MAX + 1];
    assert_int_equal(api_route_parse("/@connections/abc", id), API_ROUTE_OK);
    assert_string_equal(id, "abc");
    /* lws hands over the path decoded: '=' stays, nothing is decoded again */
    assert_int_equal(api_route_parse("/@connections/R0oXAdfD0kwCH6w=", id), API_ROUTE_OK);
    assert_string_equal(id, "R0oXAdfD0kwCH6w=");
    assert_int_equal(api_route_parse("/@connections/a%41", id), API_ROUTE_OK);
    assert_string_equal(id, "a%41");
    assert_int_equal(api_route_parse("/production/@connections/xyz", id), API_ROUTE_OK);
    assert_string_equal(id, "xyz");

    assert_int_equal(api_route_parse("/@connections/", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("/@connections", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("/", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse(NULL, id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("//@connections/x", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("/a/b/@connections/x", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("/@connectionsx/x", id), API_ROUTE_NOT_FOUND);
    assert_int_equal(api_route_parse("@connections/x", id), API_ROUTE_NOT_FOUND);

    char path[300];
    memset(path, 0, sizeof path);
    strcpy(path, "/@connections/");
    memset(path + strlen(path), 'a', API_CONN_ID_MAX);
    assert_int_equal(api_route_parse(path, id), API_ROUTE_OK);
    assert_int_equal(strlen(id), API_CONN_ID_MAX);
    strcat(path, "a");
    assert_int_equal(api_route_parse(path, id), API_ROUTE_TOO_LONG);
}

static void test_info_json(void **state)
{
    Dw__ConnReply r = DW__CONN_REPLY__INIT;
    r.found = 1;
    r.source_ip = "203.0.113.7";
    r.user_agent = "curl/7.88";
    r.has_user_agent = 1;
    r.connected_at_ms = 1764060867123; /* 2025-11-25T08:54:27.123Z */
    r.last_active_ms = 1764060868000;
    size_t len = 0;
    char *text = api_info_json(&r, &len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    assert_string_equal(text, "{\"ConnectedAt\":\"2025-11-25T08:54:27.123Z\","
                              "\"Identity\":{\"SourceIp\":\"203.0.113.7\","
                              "\"UserAgent\":\"curl/7.88\"},"
                              "\"LastActiveAt\":\"2025-11-25T08:54:28.000Z\"}");
    free(text);

    /* no user agent: null; never active: LastActiveAt is ConnectedAt */
    r.has_user_agent = 0;
    r.last_active_ms = 0;
    text = api_info_json(&r, &len);
    assert_string_equal(text, "{\"ConnectedAt\":\"2025-11-25T08:54:27.123Z\","
                              "\"Identity\":{\"SourceIp\":\"203.0.113.7\",\"UserAgent\":null},"
                              "\"LastActiveAt\":\"2025-11-25T08:54:27.123Z\"}");
    free(text);

    /* bytes that are not UTF-8 still make valid JSON */
    r.has_user_agent = 1;
    r.user_agent = "bad\xff\xfe agent";
    text = api_info_json(&r, &len);
    assert_non_null(text);
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    assert_non_null(j);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "Identity"), "UserAgent")),
        "bad?? agent");
    json_decref(j);
    free(text);
}

static void test_error_json(void **state)
{
    size_t len = 0;
    char *text = api_error_json("Gone", "R0oXAdfD0kwCH6w=", &len);
    assert_string_equal(text, "{\"message\":\"Gone\",\"connectionId\":\"R0oXAdfD0kwCH6w=\"}");
    free(text);
    text = api_error_json("Forbidden", NULL, &len);
    assert_string_equal(text, "{\"message\":\"Forbidden\"}");
    free(text);
    text = api_error_json("x", "a\"b\n\xc3", &len);
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "connectionId")), "a\"b??");
    json_decref(j);
    free(text);
}

static void test_error_types(void **state)
{
    assert_string_equal(api_error_type(410), "GoneException");
    assert_string_equal(api_error_type(413), "PayloadTooLargeException");
    assert_string_equal(api_error_type(403), "ForbiddenException");
    assert_null(api_error_type(200));
    assert_null(api_error_type(500));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_info_json),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_error_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
