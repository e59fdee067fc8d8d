/* The connect authorizer's pure parts (services/edge/authorizer.c): the
 * request head the gate reads, the request it sends, the reply it decodes,
 * the refusal it writes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "authorizer.h"
#include "session.h"

#define UPGRADE                                                                                    \
    "GET /chat?token=abc%2Bd&name=J%C3%BCrgen+B&name=second&flag&=empty HTTP/1.1\r\n"              \
    "Host: example.com\r\n"                                                                        \
    "Upgrade: WebSocket\r\n"                                                                       \
    "Connection: Upgrade\r\n"                                                                      \
    "authorization:   Bearer t0k3n  \r\n"                                                          \
    "Cookie: session=s1\r\n"                                                                       \
    "User-Agent: test/1.0\r\n"                                                                     \
    "X-Secret: do-not-forward\r\n"                                                                 \
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"                                              \
    "Sec-WebSocket-Version: 13\r\n"                                                                \
    "\r\n"

static void test_head_parse(void **state)
{
    (void)state;
    const char *req = UPGRADE "\x81\x80"
                              "extra";
    authz_head h;
    assert_int_equal(authz_head_parse(req, strlen(req), &h), 0);
    assert_int_equal(h.len, strlen(UPGRADE));
    assert_true(h.websocket);
    assert_int_equal(h.method_len, 3);
    assert_memory_equal(h.path, "/chat", 5);
    assert_int_equal(h.path_len, 5);
    assert_int_equal(h.nheaders, 9);
    const authz_header *a = authz_head_get(&h, "AUTHORIZATION");
    assert_non_null(a);
    assert_int_equal(a->value_len, strlen("Bearer t0k3n"));
    assert_memory_equal(a->value, "Bearer t0k3n", a->value_len);
    assert_null(authz_head_get(&h, "origin"));
    /* Every prefix is incomplete, never an error. */
    for (size_t n = 0; n < strlen(UPGRADE) - 1; n++)
        assert_int_equal(authz_head_parse(UPGRADE, n, &h), 1);
    /* A plain request is no upgrade. */
    const char *plain = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(authz_head_parse(plain, strlen(plain), &h), 0);
    assert_false(h.websocket);
    assert_null(h.query);
}

static void test_head_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GET / HTTP/2.0\r\n\r\n",
        "GET * HTTP/1.1\r\n\r\n",
        "GET /\x01 HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon\r\n\r\n",
        "GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\x01\r\n\r\n",
        "G(T / HTTP/1.1\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello: no HTTP at all */
    };
    authz_head h;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(authz_head_parse(bad[i], strlen(bad[i]), &h), -1);
    /* More than AUTHZ_MAX_HEADERS headers */
    char big[8192] = "GET / HTTP/1.1\r\n";
    for (int i = 0; i <= AUTHZ_MAX_HEADERS; i++)
        strcat(big, "X-A: b\r\n");
    strcat(big, "\r\n");
    assert_int_equal(authz_head_parse(big, strlen(big), &h), -1);
}

static void test_request_build(void **state)
{
    (void)state;
    authz_head h;
    assert_int_equal(authz_head_parse(UPGRADE, strlen(UPGRADE), &h), 0);
    authz_forward f;
    assert_int_equal(authz_forward_parse(" Authorization, cookie ,user-agent", &f), 0);
    assert_int_equal(f.n, 3);
    assert_string_equal(f.names[0], "authorization");
    char *json = NULL;
    size_t len = 0;
    assert_int_equal(authz_request_build(&h, "192.0.2.7", &f, &json, &len), 0);
    json_t *r = json_loadb(json, len, 0, NULL);
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "sourceIp")), "192.0.2.7");
    assert_string_equal(json_string_value(json_object_get(r, "userAgent")), "test/1.0");
    assert_string_equal(json_string_value(json_object_get(r, "path")), "/chat");
    json_t *q = json_object_get(r, "query");
    assert_string_equal(json_string_value(json_object_get(q, "token")), "abc+d");
    assert_string_equal(json_string_value(json_object_get(q, "name")), "J\xc3\xbcrgen B");
    assert_string_equal(json_string_value(json_object_get(q, "flag")), "");
    assert_int_equal(json_object_size(q), 3); /* an empty name is left out */
    json_t *hd = json_object_get(r, "headers");
    assert_string_equal(json_string_value(json_object_get(hd, "authorization")), "Bearer t0k3n");
    assert_string_equal(json_string_value(json_object_get(hd, "cookie")), "session=s1");
    assert_int_equal(json_object_size(hd), 3); /* nothing not listed: no X-Secret, no Host */
    json_decref(r);
    free(json);
    /* No forward list: no headers at all. */
    authz_forward none = {0};
    assert_int_equal(authz_request_build(&h, "::1", &none, &json, &len), 0);
    r = json_loadb(json, len, 0, NULL);
    assert_int_equal(json_object_size(json_object_get(r, "headers")), 0);
    json_decref(r);
    free(json);
    /* %00 makes no NUL in the request: the path goes as it came, the value is left out. */
    const char *nul = "GET /a%00b?x=%00&y=1 HTTP/1.1\r\n\r\n";
    assert_int_equal(authz_head_parse(nul, strlen(nul), &h), 0);
    assert_int_equal(authz_request_build(&h, "::1", &f, &json, &len), 0);
    r = json_loadb(json, len, 0, NULL); /* (no JSON_ALLOW_NUL) */
    assert_non_null(r);
    assert_string_equal(json_string_value(json_object_get(r, "path")), "/a%00b");
    q = json_object_get(r, "query");
    assert_null(json_object_get(q, "x"));
    assert_string_equal(json_string_value(json_object_get(q, "y")), "1");
    json_decref(r);
    free(json);
    authz_forward_free(&f);
    assert_int_equal(authz_forward_parse("a,,b", &f), -1);
    assert_int_equal(authz_forward_parse("a b", &f), -1);
}

static int decode(const char *s, authz_decision *d, const char **why)
{
    return authz_reply_decode(s, strlen(s), d, why);
}

static void test_reply_decode(void **state)
{
    (void)state;
    authz_decision d;
    const char *why = NULL;
    assert_int_equal(decode("{\"allow\":true,\"user\":\"alice\",\"rooms\":[\"general\",\"a.b\"],"
                            "\"context\":{\"plan\":\"pro\",\"n\":[1,2]}}",
                            &d, &why),
                     0);
    assert_true(d.allow);
    assert_string_equal(d.user, "alice");
    assert_true(d.has_rooms);
    assert_int_equal(d.nrooms, 2);
    assert_string_equal(d.rooms[1], "a.b");
    assert_string_equal(d.context_json, "{\"plan\":\"pro\",\"n\":[1,2]}");
    authz_decision_free(&d);
    /* Nothing but allow: no user, any room, no context. */
    assert_int_equal(decode("{\"allow\":true,\"user\":null}", &d, &why), 0);
    assert_true(d.allow);
    assert_null(d.user);
    assert_false(d.has_rooms);
    assert_null(d.context_json);
    /* An empty list: no room at all. */
    assert_int_equal(decode("{\"allow\":true,\"rooms\":[]}", &d, &why), 0);
    assert_true(d.has_rooms);
    assert_int_equal(d.nrooms, 0);
    authz_decision_free(&d);
    /* Refusals: 401 as asked, anything else 403. */
    assert_int_equal(decode("{\"allow\":false,\"status\":401}", &d, &why), 0);
    assert_false(d.allow);
    assert_int_equal(d.status, 401);
    assert_int_equal(decode("{\"allow\":false,\"status\":403}", &d, &why), 0);
    assert_int_equal(d.status, 403);
    assert_int_equal(decode("{\"allow\":false}", &d, &why), 0);
    assert_int_equal(d.status, 403);
    assert_int_equal(decode("{\"allow\":false,\"status\":200}", &d, &why), 0);
    assert_int_equal(d.status, 403);
}

static void test_reply_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "not json",
        "[true]",
        "{}",
        "{\"allow\":1}",
        "{\"allow\":\"true\"}",
        "{\"allow\":true,\"allow\":false}",
        "{\"allow\":true,\"user\":\"\"}",
        "{\"allow\":true,\"user\":\"has space\"}",
        "{\"allow\":true,\"user\":42}",
        "{\"allow\":true,\"rooms\":\"general\"}",
        "{\"allow\":true,\"rooms\":[\"../etc\"]}",
        "{\"allow\":true,\"rooms\":[1]}",
        "{\"allow\":true,\"context\":\"text\"}",
        "{\"allow\":true,\"context\":[1]}",
    };
    authz_decision d;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *why = NULL;
        assert_int_equal(decode(bad[i], &d, &why), -1);
        assert_non_null(why);
        assert_null(d.user);
        assert_null(d.rooms);
    }
    /* Bounds: 129-character user, 129 rooms, a context over 4 KB. */
    char buf[AUTHZ_MAX_CONTEXT + 256];
    const char *why = NULL;
    snprintf(buf, sizeof buf, "{\"allow\":true,\"user\":\"%0129d\"}", 0);
    assert_int_equal(decode(buf, &d, &why), -1);
    strcpy(buf, "{\"allow\":true,\"rooms\":[");
    for (int i = 0; i <= AUTHZ_MAX_ROOMS; i++)
        strcat(buf, i ? ",\"r\"" : "\"r\"");
    strcat(buf, "]}");
    assert_int_equal(decode(buf, &d, &why), -1);
    strcpy(buf, "{\"allow\":true,\"context\":{\"k\":\"");
    size_t at = strlen(buf);
    memset(buf + at, 'x', AUTHZ_MAX_CONTEXT);
    buf[at + AUTHZ_MAX_CONTEXT] = '\0';
    strcat(buf, "\"}}");
    assert_int_equal(decode(buf, &d, &why), -1);
    assert_string_equal(why, "context too large");
}

static void test_refusal(void **state)
{
    (void)state;
    char buf[256];
    size_t n = authz_refusal(401, buf, sizeof buf);
    assert_true(n > 0);
    assert_memory_equal(buf, "HTTP/1.1 401 Unauthorized\r\n", 27);
    assert_non_null(strstr(buf, "Connection: close\r\n\r\n"));
    n = authz_refusal(503, buf, sizeof buf);
    assert_memory_equal(buf, "HTTP/1.1 503 Service Unavailable\r\n", 34);
    assert_int_equal(authz_refusal(403, buf, 10), 0);
}

static char **rooms_of(const char *const *names, size_t n)
{
    char **r = calloc(n + 1, sizeof *r);
    for (size_t i = 0; i < n; i++)
        r[i] = strdup(names[i]);
    return r;
}

static void test_apply(void **state)
{
    (void)state;
    edge_session s;
    memset(&s, 0, sizeof s);
    authz_decision d;
    const char *why = NULL;
    /* No JWT: the authorizer's user, rooms and context. */
    assert_int_equal(decode("{\"allow\":true,\"user\":\"alice\",\"rooms\":[\"a\",\"b\"],"
                            "\"context\":{\"k\":1}}",
                            &d, &why),
                     0);
    assert_int_equal(authz_apply(&s, &d), 0);
    assert_string_equal(s.user, "alice");
    assert_true(s.has_allowed_rooms);
    assert_int_equal(s.n_allowed_rooms, 2);
    assert_string_equal(s.authz_context_json, "{\"k\":1}");
    assert_null(d.rooms); /* moved */
    for (size_t i = 0; i < s.n_allowed_rooms; i++)
        free(s.allowed_rooms[i]);
    free(s.allowed_rooms);
    free(s.authz_context_json);
    /* With a JWT's sub and rooms: the authorizer's user, the rooms both
     * allow; no context: none. */
    memset(&s, 0, sizeof s);
    strcpy(s.user, "jwt-sub");
    static const char *const jwt_rooms[] = {"general", "secret", "random"};
    s.allowed_rooms = rooms_of(jwt_rooms, 3);
    s.n_allowed_rooms = 3;
    s.has_allowed_rooms = true;
    assert_int_equal(decode("{\"allow\":true,\"rooms\":[\"random\",\"general\",\"x\"]}", &d, &why),
                     0);
    assert_int_equal(authz_apply(&s, &d), 0);
    assert_string_equal(s.user, "jwt-sub"); /* no user in the reply: the JWT's */
    assert_int_equal(s.n_allowed_rooms, 2);
    assert_string_equal(s.allowed_rooms[0], "general");
    assert_string_equal(s.allowed_rooms[1], "random");
    assert_null(s.authz_context_json);
    /* An authorizer without rooms leaves the JWT's alone. */
    assert_int_equal(decode("{\"allow\":true,\"user\":\"bob\"}", &d, &why), 0);
    assert_int_equal(authz_apply(&s, &d), 0);
    assert_string_equal(s.user, "bob");
    assert_int_equal(s.n_allowed_rooms, 2);
    for (size_t i = 0; i < s.n_allowed_rooms; i++)
        free(s.allowed_rooms[i]);
    free(s.allowed_rooms);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_parse),    cmocka_unit_test(test_head_refused),
        cmocka_unit_test(test_request_build), cmocka_unit_test(test_reply_decode),
        cmocka_unit_test(test_reply_bad),     cmocka_unit_test(test_refusal),
        cmocka_unit_test(test_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
