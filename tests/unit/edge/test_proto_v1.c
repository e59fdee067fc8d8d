/* dynamowave.v1 frames: v1_message writes the all-ASCII message frame
 * itself; its bytes must be jansson's (v1_message_json) for every input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "proto_v1.h"

static void same(const v1_msg *m)
{
    size_t n1 = 0, n2 = 0;
    char *a = v1_message(m, &n1), *b = v1_message_json(m, &n2);
    if (!b) {
        assert_null(a);
    } else {
        assert_non_null(a);
        assert_int_equal(n1, n2);
        assert_int_equal(n1, strlen(a));
        if (memcmp(a, b, n1)) fail_msg("v1_message: %s\njansson:    %s", a, b);
    }
    free(a);
    free(b);
}

static void test_message_frame_is_janssons(void **state)
{
    static const char all_ascii[] = "\x01\x02\x03\x04\x05\x06\x07\b\t\n\x0b\f\r\x0e\x0f\x10\x11"
                                    "\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"
                                    " !\"#$%&'()*+,-./0123456789:;<=>?@AZ[\\]^_`az{|}~\x7f";
    const char *texts[] = {"",        "hi",          "say \"hi\"",     "back\\slash",  "a/b",
                           all_ascii, "caf\xc3\xa9", "bad \xff utf-8", "\xe2\x82\xac", NULL};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *t = texts[i];
        size_t tl = t ? strlen(t) : 0;
        v1_msg m = {"lobby", 42, t, t, t, tl, false, 1700000000123LL};
        same(&m);
        m.room = "r-1.x_Y";
        m.id = "AbCdEfGhIjKlMnOp:7";
        same(&m);
        m.from = NULL;
        m.seq = UINT64_MAX >> 1;
        m.ts_ms = -5;
        same(&m);
        m.seq = 0;
        m.ts_ms = 0;
        m.data_json = true; /* jansson's path either way */
        same(&m);
    }
    /* Data with a NUL inside: \u0000, as jansson writes it. */
    v1_msg m = {"lobby", 1, "id", "u", "a\0b", 3, false, 1};
    same(&m);
    size_t n;
    char *s = v1_message(&m, &n);
    assert_non_null(strstr(s, "\"data\":\"a\\u0000b\""));
    free(s);
    /* JSON data: re-written by jansson, as before. */
    v1_msg j = {"lobby", 1, "id", "u", "{\"x\": [1, 2]}", 13, true, 1};
    s = v1_message(&j, &n);
    assert_non_null(strstr(s, "\"data\":{\"x\":[1,2]}"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_message_frame_is_janssons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
