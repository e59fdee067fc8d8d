/* Room publish requests (rooms.c): the path, the headers' fields, the HTTP
 * body, the NATS JSON request, the message id and the answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rooms.h"

static void test_route(void **state)
{
    char room[DW_ROOM_MAX + 1];
    assert_int_equal(api_rooms_route_parse("/@rooms/general/messages", room), API_ROOMS_OK);
    assert_string_equal(room, "general");
    assert_int_equal(api_rooms_route_parse("/prod/@rooms/a.b-c_d/messages", room), API_ROOMS_OK);
    assert_string_equal(room, "a.b-c_d");
    assert_int_equal(api_rooms_route_parse("/@rooms/bad..room/messages", room), API_ROOMS_BAD_ROOM);
    assert_int_equal(api_rooms_route_parse("/@rooms/sp ace/messages", room), API_ROOMS_BAD_ROOM);
    assert_int_equal(api_rooms_route_parse("/@rooms/a/b/messages", room), API_ROOMS_BAD_ROOM);
    static const char *const not_found[] = {
        "/@rooms/general",   "/@rooms//messages",      "/@rooms/messages",    "/@room/x/messages",
        "@rooms/x/messages", "/a/b/@rooms/x/messages", "/@rooms/x/messagesX", "",
        "/@connections/x",   "//@rooms/x/messages",
    };
    for (size_t i = 0; i < sizeof not_found / sizeof not_found[0]; i++)
        assert_int_equal(api_rooms_route_parse(not_found[i], room), API_ROOMS_NOT_FOUND);
    assert_int_equal(api_rooms_route_parse(NULL, room), API_ROOMS_NOT_FOUND);
    char longest[128] = "/@rooms/";
    memset(longest + 8, 'r', 65);
    strcpy(longest + 8 + 65, "/messages");
    assert_int_equal(api_rooms_route_parse(longest, room), API_ROOMS_BAD_ROOM);
}

static void test_from_and_key(void **state)
{
    api_publish_req r;
    char err[192];
    memset(&r, 0, sizeof r);
    assert_int_equal(api_publish_set_from(&r, "moderator", 9, err, sizeof err), 0);
    assert_string_equal(r.from, "moderator");
    assert_int_equal(api_publish_set_from(&r, "Zoë", strlen("Zoë"), err, sizeof err), 0);
    assert_int_equal(api_publish_set_from(&r, "", 0, err, sizeof err), 400);
    assert_int_equal(api_publish_set_from(&r, "a\nb", 3, err, sizeof err), 400);
    assert_int_equal(api_publish_set_from(&r, "a\xc2\x85", 3, err, sizeof err), 400); /* NEL */
    assert_int_equal(api_publish_set_from(&r, "\xff", 1, err, sizeof err), 400);
    char big[API_FROM_MAX + 1];
    memset(big, 'x', sizeof big);
    assert_int_equal(api_publish_set_from(&r, big, API_FROM_MAX, err, sizeof err), 0);
    assert_int_equal(api_publish_set_from(&r, big, API_FROM_MAX + 1, err, sizeof err), 400);

    assert_int_equal(api_publish_set_key(&r, "order-17:a.b_c", 14, err, sizeof err), 0);
    assert_string_equal(r.key, "order-17:a.b_c");
    assert_int_equal(api_publish_set_key(&r, "with space", 10, err, sizeof err), 400);
    assert_int_equal(api_publish_set_key(&r, "", 0, err, sizeof err), 400);
    assert_int_equal(api_publish_set_key(&r, big, API_KEY_MAX + 1, err, sizeof err), 400);
}

static void test_body(void **state)
{
    api_publish_req r;
    char err[192];
    memset(&r, 0, sizeof r);
    /* Text: as it is, UTF-8 only. */
    assert_int_equal(api_publish_set_body(&r, "hello, everyone!", 16, false, 100, err, sizeof err),
                     0);
    assert_int_equal(r.len, 16);
    assert_memory_equal(r.data, "hello, everyone!", 16);
    assert_false(r.data_json);
    assert_int_equal(api_publish_set_body(&r, "caf\xc3\xa9", 5, false, 100, err, sizeof err), 0);
    assert_int_equal(api_publish_set_body(&r, "bad\xff", 4, false, 100, err, sizeof err), 400);
    assert_int_equal(api_publish_set_body(&r, "x", 1, false, 0, err, sizeof err), 413);
    assert_int_equal(api_publish_set_body(&r, NULL, 0, false, 10, err, sizeof err), 0);
    assert_int_equal(r.len, 0);
    /* JSON: a string is its text, anything else compact JSON. */
    assert_int_equal(api_publish_set_body(&r, " \"hi\" ", 6, true, 100, err, sizeof err), 0);
    assert_int_equal(r.len, 2);
    assert_memory_equal(r.data, "hi", 2);
    assert_false(r.data_json);
    const char *obj = "{ \"kind\" : \"notice\", \"n\" : [1, 2] }";
    assert_int_equal(api_publish_set_body(&r, obj, strlen(obj), true, 100, err, sizeof err), 0);
    assert_int_equal(r.len, strlen("{\"kind\":\"notice\",\"n\":[1,2]}"));
    assert_memory_equal(r.data, "{\"kind\":\"notice\",\"n\":[1,2]}", r.len);
    assert_true(r.data_json);
    assert_int_equal(api_publish_set_body(&r, "{", 1, true, 100, err, sizeof err), 400);
    assert_int_equal(api_publish_set_body(&r, "{\"a\":1,\"a\":2}", 13, true, 100, err, sizeof err),
                     400);
    assert_int_equal(api_publish_set_body(&r, obj, strlen(obj), true, 10, err, sizeof err), 413);
    api_publish_req_clear(&r);
    assert_null(r.data);
}

static void test_json_request(void **state)
{
    api_publish_req r;
    char err[192];
    memset(&r, 0, sizeof r);
#define PARSE(s, max) api_publish_parse_json(&r, s, strlen(s), max, err, sizeof err)
    assert_int_equal(PARSE("{\"room\":\"general\",\"data\":\"welcome\"}", 100), 0);
    assert_string_equal(r.room, "general");
    assert_string_equal(r.from, API_FROM_DEFAULT);
    assert_string_equal(r.key, "");
    assert_int_equal(r.len, 7);
    assert_false(r.data_json);
    api_publish_req_clear(&r);

    assert_int_equal(PARSE("{\"room\":\"g\",\"data\":{\"x\":true},\"from\":\"bot\","
                           "\"idempotencyKey\":\"greet-1\",\"other\":[1]}",
                           100),
                     0);
    assert_string_equal(r.from, "bot");
    assert_string_equal(r.key, "greet-1");
    assert_true(r.data_json);
    assert_memory_equal(r.data, "{\"x\":true}", r.len);
    api_publish_req_clear(&r);

    static const char *const bad[] = {
        "",
        "[]",
        "\"room\"",
        "{\"data\":\"x\"}",
        "{\"room\":\"\",\"data\":\"x\"}",
        "{\"room\":\"a..b\",\"data\":\"x\"}",
        "{\"room\":7,\"data\":\"x\"}",
        "{\"room\":\"g\"}",
        "{\"room\":\"g\",\"data\":\"x\",\"from\":1}",
        "{\"room\":\"g\",\"data\":\"x\",\"from\":\"\"}",
        "{\"room\":\"g\",\"data\":\"x\",\"idempotencyKey\":\"no spaces\"}",
        "{\"room\":\"g\",\"data\":\"x\",\"idempotencyKey\":3}",
        "{\"room\":\"g\",\"room\":\"h\",\"data\":\"x\"}",
        "{\"room\":\"g\",\"data\":\"x\\u0000\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(PARSE(bad[i], 100), 400);
        assert_null(r.data);
    }
    assert_int_equal(PARSE("{\"room\":\"g\",\"data\":\"0123456789\"}", 9), 413);
    assert_int_equal(PARSE("{\"room\":\"g\",\"data\":null,\"from\":null}", 9), 0);
    assert_memory_equal(r.data, "null", 4);
    assert_true(r.data_json);
    assert_string_equal(r.from, API_FROM_DEFAULT);
    api_publish_req_clear(&r);
#undef PARSE
}

static void test_msg_id_and_answers(void **state)
{
    api_publish_req r;
    char id[API_MSG_ID_MAX], id2[API_MSG_ID_MAX], err[64];
    memset(&r, 0, sizeof r);
    assert_int_equal(api_publish_msg_id(&r, id, sizeof id), 0);
    assert_int_equal(api_publish_msg_id(&r, id2, sizeof id2), 0);
    assert_int_equal(strncmp(id, "api:", 4), 0);
    assert_string_not_equal(id, id2);
    char longest[API_KEY_MAX + 1];
    memset(longest, 'k', API_KEY_MAX);
    assert_int_equal(api_publish_set_key(&r, longest, API_KEY_MAX, err, sizeof err), 0);
    memset(r.room, 'r', DW_ROOM_MAX);
    r.room[DW_ROOM_MAX] = '\0';
    assert_int_equal(api_publish_msg_id(&r, id, sizeof id), 0);
    assert_int_equal(strncmp(id, "api:k:rrrr", 10), 0);
    assert_int_equal(strlen(id), 6 + DW_ROOM_MAX + 1 + API_KEY_MAX);
    assert_non_null(strstr(id, "r:kkkk"));

    size_t len = 0;
    char *j = api_publish_ok_json("general", 58, false, &len);
    assert_string_equal(j, "{\"room\":\"general\",\"seq\":58}");
    assert_int_equal(len, strlen(j));
    free(j);
    j = api_publish_ok_json("g", 7, true, NULL);
    assert_string_equal(j, "{\"room\":\"g\",\"seq\":7,\"duplicate\":true}");
    free(j);
    j = api_publish_error_json(413, "too \"big\"", NULL);
    assert_string_equal(j, "{\"error\":\"too \\\"big\\\"\",\"status\":413}");
    free(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route),
        cmocka_unit_test(test_from_and_key),
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_json_request),
        cmocka_unit_test(test_msg_id_and_answers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
