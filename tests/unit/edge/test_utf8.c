#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "utf8.h"
#include "wsclose.h"

/* A decoder written the obvious way (decode, then check the value against
 * its length and the surrogate and Unicode ranges), as the reference the
 * state machine must agree with. 1 valid and complete, 0 invalid, -1 valid
 * so far but cut inside a code point. */
static int reference(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        size_t j;
        for (j = 1; j <= n; j++) {
            if (i + j == len) {
                /* Cut: valid so far only if no completion could be wrong
                 * yet; the exhaustive test below feeds complete inputs. */
                return -1;
            }
            if ((p[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (p[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += n + 1;
    }
    return 1;
}

static void check(const char *bytes, size_t len, int want_valid)
{
    assert_int_equal(utf8_valid(bytes, len), want_valid);
    /* Any split gives the same verdict (text arrives in pieces). */
    for (size_t cut = 0; cut <= len; cut++) {
        utf8_state st = UTF8_ACCEPT;
        int bad = utf8_feed(&st, bytes, cut);
        if (!bad) bad = utf8_feed(&st, bytes + cut, len - cut);
        assert_int_equal(!bad && utf8_complete(st), want_valid);
    }
}

#define VALID(s) check(s, sizeof s - 1, 1)
#define INVALID(s) check(s, sizeof s - 1, 0)

static void test_vectors(void **state)
{
    (void)state;
    VALID("");
    VALID("plain ascii, longer than eight bytes at a time");
    VALID("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"); /* κόσμε */
    VALID("\xc2\x80");                                     /* U+0080 */
    VALID("\xdf\xbf");                                     /* U+07FF */
    VALID("\xe0\xa0\x80");                                 /* U+0800 */
    VALID("\xed\x9f\xbf");                                 /* U+D7FF */
    VALID("\xee\x80\x80");                                 /* U+E000 */
    VALID("\xef\xbf\xbf");                                 /* U+FFFF */
    VALID("\xf0\x90\x80\x80");                             /* U+10000 */
    VALID("\xf4\x8f\xbf\xbf");                             /* U+10FFFF */
    VALID("NUL \0 is a character");
    INVALID("\x80");
    INVALID("\xbf");
    INVALID("\xc0\xaf");         /* overlong '/' */
    INVALID("\xc1\xbf");         /* overlong */
    INVALID("\xe0\x80\xaf");     /* overlong */
    INVALID("\xe0\x9f\xbf");     /* overlong */
    INVALID("\xed\xa0\x80");     /* U+D800 */
    INVALID("\xed\xbf\xbf");     /* U+DFFF */
    INVALID("\xf0\x80\x80\xaf"); /* overlong */
    INVALID("\xf0\x8f\xbf\xbf"); /* overlong */
    INVALID("\xf4\x90\x80\x80"); /* U+110000 */
    INVALID("\xf5\x80\x80\x80");
    INVALID("\xfe");
    INVALID("\xff");
    INVALID("\xc2");         /* cut */
    INVALID("\xe0\xa0");     /* cut */
    INVALID("\xf0\x90\x80"); /* cut */
    INVALID("ascii then \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
            "edited");
}

static void test_cut_is_not_rejected_early(void **state)
{
    (void)state;
    utf8_state st = UTF8_ACCEPT;
    assert_int_equal(utf8_feed(&st, "\xf0\x90", 2), 0);
    assert_false(utf8_complete(st));
    assert_int_equal(utf8_feed(&st, "\x80\x80", 2), 0);
    assert_true(utf8_complete(st));
    /* Rejection is sticky: nothing after it makes the text valid. */
    assert_int_equal(utf8_feed(&st, "\xff", 1), -1);
    assert_int_equal(utf8_feed(&st, "a", 1), -1);
    assert_false(utf8_complete(st));
}

static void test_every_short_sequence_against_reference(void **state)
{
    (void)state;
    uint8_t b[4];
    /* All one-, two- and three-byte inputs, and four-byte ones with every
     * lead byte from F0 up and a grid of continuation values. */
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        assert_int_equal(utf8_valid(b, 1), reference(b, 1) == 1);
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (uint8_t)y;
            assert_int_equal(utf8_valid(b, 2), reference(b, 2) == 1);
            for (unsigned z = 0; z < 256; z++) {
                b[2] = (uint8_t)z;
                assert_int_equal(utf8_valid(b, 3), reference(b, 3) == 1);
            }
        }
    }
    static const uint8_t grid[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (unsigned x = 0xe0; x < 256; x++)
        for (size_t i = 0; i < sizeof grid; i++)
            for (size_t j = 0; j < sizeof grid; j++)
                for (size_t k = 0; k < sizeof grid; k++) {
                    b[0] = (uint8_t)x, b[1] = grid[i], b[2] = grid[j], b[3] = grid[k];
                    assert_int_equal(utf8_valid(b, 4), reference(b, 4) == 1);
                }
}

static void test_close_frames(void **state)
{
    (void)state;
    assert_int_equal(wsclose_check(NULL, 0), 0);
    assert_int_equal(wsclose_check((const uint8_t *)"\x03", 1), 1002);
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009,
                                  1010, 1011, 3000, 3999, 4000, 4999};
    static const unsigned bad[] = {0,    999,  1004, 1005, 1006, 1012, 1013, 1014,
                                   1015, 1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint8_t p[2] = {(uint8_t)(ok[i] >> 8), (uint8_t)ok[i]};
        assert_int_equal(wsclose_check(p, 2), 0);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t p[2] = {(uint8_t)(bad[i] >> 8), (uint8_t)bad[i]};
        assert_int_equal(wsclose_check(p, 2), 1002);
    }
    assert_int_equal(wsclose_check((const uint8_t *)"\x03\xe8"
                                                    "bye \xce\xba",
                                   8),
                     0);
    assert_int_equal(wsclose_check((const uint8_t *)"\x03\xe8"
                                                    "bye \xed\xa0\x80",
                                   9),
                     1007);
    /* A code that is not valid wins over a bad reason. */
    assert_int_equal(wsclose_check((const uint8_t *)"\x13\x88\xff", 3), 1002);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_cut_is_not_rejected_early),
        cmocka_unit_test(test_every_short_sequence_against_reference),
        cmocka_unit_test(test_close_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
