/* integ_codec.c: DW_ROUTES, a frame's action, the request a worker gets, a
 * worker's reply, the frames for the sender. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "integ_codec.h"

static void test_routes_parse_good(void **state)
{
    integ_route_spec *v = NULL;
    size_t n = 9;
    char err[256] = "";
    assert_int_equal(
        integ_routes_parse(" echo:sync , audit:async,A-b_9:sync,", &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(v[0].action, "echo");
    assert_int_equal(v[0].mode, INTEG_SYNC);
    assert_string_equal(v[1].action, "audit");
    assert_int_equal(v[1].mode, INTEG_ASYNC);
    assert_string_equal(v[2].action, "A-b_9");
    free(v);

    assert_int_equal(integ_routes_parse("", &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    assert_null(v);
    assert_int_equal(integ_routes_parse(NULL, &v, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
}

static void test_routes_parse_refusals(void **state)
{
    static const struct {
        const char *spec, *why;
    } bad[] = {
        {"sendmessage:sync", "built-in"},
        {"join:async", "built-in"},
        {"leave:sync", "built-in"},
        {"history:sync", "built-in"},
        {"presence:async", "built-in"},
        {"$default:sync", "letters"},
        {"echo:sync,echo:async", "twice"},
        {"echo", "no mode"},
        {"echo:", "sync or async"},
        {"echo:SYNC", "sync or async"},
        {":sync", "letters"},
        {"a.b:sync", "letters"},
        {"a b:sync", "letters"},
        {"echo:sync,,audit:async", "empty"},
        {"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx:sync", "letters"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        integ_route_spec *v = (integ_route_spec *)1;
        size_t n = 7;
        char err[256] = "";
        assert_int_equal(integ_routes_parse(bad[i].spec, &v, &n, err, sizeof err), -1);
        assert_null(v);
        assert_int_equal(n, 0);
        assert_non_null(strstr(err, "DW_ROUTES"));
        if (!strstr(err, bad[i].why)) fail_msg("%s: '%s' lacks '%s'", bad[i].spec, err, bad[i].why);
    }
    /* 64 routes pass, 65 do not. */
    char spec[65 * 16] = "";
    for (int i = 0; i < 65; i++) {
        char one[16];
        snprintf(one, sizeof one, "%sr%d:sync", i ? "," : "", i);
        strcat(spec, one);
        integ_route_spec *v = NULL;
        size_t n = 0;
        char err[256];
        int rc = integ_routes_parse(spec, &v, &n, err, sizeof err);
        assert_int_equal(rc, i < INTEG_ROUTES_MAX ? 0 : -1);
        free(v);
    }
}

static void test_frame_parse(void **state)
{
    json_t *f = NULL;
    const char *a = NULL;
    const char *ok = "{\"action\":\"echo\",\"data\":1}";
    assert_int_equal(integ_frame_parse(ok, strlen(ok), &f, &a), 0);
    assert_string_equal(a, "echo");
    json_decref(f);
    const char *bad[] = {"",
                         "[]",
                         "\"echo\"",
                         "{\"action\":1}",
                         "{\"data\":1}",
                         "{",
                         "{\"action\":\"a\",\"action\":\"b\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(integ_frame_parse(bad[i], strlen(bad[i]), &f, &a), -1);
        assert_null(f);
        assert_null(a);
    }
}

static void test_request_body(void **state)
{
    const char *frame_text = "{\"action\":\"echo\",\"data\":\"hi\",\"ref\":3}";
    json_t *frame = json_loads(frame_text, 0, NULL);
    integ_identity id = {"10.0.0.1", "wscat/5", "alice", "{\"tenant\":\"t1\",\"n\":[1]}"};
    size_t len = 0;
    char *body =
        integ_request_body("echo", "ConnAAAAAAAAAAAA", "ReqBBBBBBBBBBBBB", &id, frame, &len);
    assert_non_null(body);
    assert_int_equal(strlen(body), len);
    assert_string_equal(body, "{\"action\":\"echo\",\"connectionId\":\"ConnAAAAAAAAAAAA\","
                              "\"requestId\":\"ReqBBBBBBBBBBBBB\",\"identity\":{\"sourceIp\":"
                              "\"10.0.0.1\",\"userAgent\":\"wscat/5\",\"user\":\"alice\","
                              "\"context\":{\"tenant\":\"t1\",\"n\":[1]}},\"body\":{\"action\":"
                              "\"echo\",\"data\":\"hi\",\"ref\":3}}");
    free(body);
    /* No user agent, no user, no context: nulls; a user agent that is no
     * UTF-8 cannot be a JSON string: null too. */
    integ_identity none = {"::1", "\xff\xfe", "", NULL};
    body = integ_request_body("echo", "c", "r", &none, frame, &len);
    assert_non_null(strstr(body, "\"identity\":{\"sourceIp\":\"::1\",\"userAgent\":null,"
                                 "\"user\":null,\"context\":null}"));
    free(body);
    /* The frame is borrowed: still ours. */
    assert_int_equal(frame->refcount, 1);
    json_decref(frame);
}

static void decode(const char *in, integ_reply *r)
{
    assert_int_equal(integ_reply_decode(in, in ? strlen(in) : 0, r), 0);
}

static void test_reply_decode(void **state)
{
    integ_reply r;
    decode("{\"reply\":\"hello\"}", &r);
    assert_int_equal(r.kind, INTEG_REPLY_OK);
    assert_string_equal(r.text, "hello");
    assert_false(r.text_json);
    integ_reply_free(&r);

    decode("{\"reply\":{\"a\":[1,true,null]}}", &r);
    assert_int_equal(r.kind, INTEG_REPLY_OK);
    assert_string_equal(r.text, "{\"a\":[1,true,null]}");
    assert_true(r.text_json);
    integ_reply_free(&r);

    decode("{\"reply\":null}", &r);
    assert_int_equal(r.kind, INTEG_REPLY_OK);
    assert_string_equal(r.text, "null");
    integ_reply_free(&r);

    /* A string with a NUL inside keeps its length. */
    decode("{\"reply\":\"a\\u0000b\"}", &r);
    assert_int_equal(r.kind, INTEG_REPLY_OK);
    assert_int_equal(r.text_len, 3);
    assert_memory_equal(r.text, "a\0b", 3);
    integ_reply_free(&r);

    decode("{\"error\":\"db down\"}", &r);
    assert_int_equal(r.kind, INTEG_REPLY_ERROR);
    assert_string_equal(r.text, "db down");
    integ_reply_free(&r);

    decode("{\"error\":42}", &r);
    assert_int_equal(r.kind, INTEG_REPLY_ERROR);
    integ_reply_free(&r);

    const char *bad[] = {NULL,
                         "",
                         "hello",
                         "[1]",
                         "{}",
                         "{\"reply\":1,\"error\":\"x\"}",
                         "{\"reply\":1,\"reply\":2}",
                         "{\"other\":1}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        decode(bad[i], &r);
        assert_int_equal(r.kind, INTEG_REPLY_BAD);
        assert_non_null(r.text);
        integ_reply_free(&r);
        assert_null(r.text);
    }
}

static void test_v1_frames(void **state)
{
    size_t len = 0;
    char *f = integ_v1_reply("echo", "7", "hi", 2, false, &len);
    assert_string_equal(f, "{\"type\":\"reply\",\"action\":\"echo\",\"data\":\"hi\",\"ref\":7}");
    assert_int_equal(strlen(f), len);
    free(f);
    f = integ_v1_reply("echo", NULL, "{\"a\":1}", 7, true, &len);
    assert_string_equal(f, "{\"type\":\"reply\",\"action\":\"echo\",\"data\":{\"a\":1}}");
    free(f);
    f = integ_v1_reply("echo", NULL, "\xff", 1, false, &len);
    assert_string_equal(f, "{\"type\":\"reply\",\"action\":\"echo\",\"data\":null}");
    free(f);
    f = integ_v1_ack("audit", 42, "c-1", "\"r\"", &len);
    assert_string_equal(
        f, "{\"type\":\"ack\",\"action\":\"audit\",\"seq\":42,\"id\":\"c-1\",\"ref\":\"r\"}");
    free(f);
    f = integ_v1_ack("audit", 1, NULL, NULL, &len);
    assert_string_equal(f, "{\"type\":\"ack\",\"action\":\"audit\",\"seq\":1}");
    free(f);
    f = integ_v1_error("echo", "R", "no worker", "[1]", &len);
    assert_string_equal(f, "{\"type\":\"error\",\"code\":\"integration_failed\",\"message\":\"no "
                           "worker\",\"action\":\"echo\",\"requestId\":\"R\",\"ref\":[1]}");
    free(f);
}

static void test_builtins(void **state)
{
    assert_true(integ_action_builtin("sendmessage"));
    assert_true(integ_action_builtin("$connect"));
    assert_false(integ_action_builtin("echo"));
    assert_false(integ_action_builtin("Join"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes_parse_good), cmocka_unit_test(test_routes_parse_refusals),
        cmocka_unit_test(test_frame_parse),       cmocka_unit_test(test_request_body),
        cmocka_unit_test(test_reply_decode),      cmocka_unit_test(test_v1_frames),
        cmocka_unit_test(test_builtins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
