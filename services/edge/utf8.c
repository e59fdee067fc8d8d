#include "utf8.h"

#include <string.h>

/* States between UTF8_ACCEPT and UTF8_REJECT say what the next byte must be
 * (RFC 3629, section 4: the second byte of E0, ED, F0 and F4 sequences has
 * a narrower range, which rules out overlong forms, UTF-16 surrogates and
 * code points above U+10FFFF):
 *   1, 2, 3  that many continuation bytes (80-BF) to go
 *   4        after E0: A0-BF, then one more
 *   5        after ED: 80-9F, then one more
 *   6        after F0: 90-BF, then two more
 *   7        after F4: 80-8F, then two more */
enum { S_TAIL1 = 1, S_TAIL2, S_TAIL3, S_E0, S_ED, S_F0, S_F4 };

static utf8_state lead(uint8_t c)
{
    if (c < 0x80) return UTF8_ACCEPT;
    if (c < 0xC2) return UTF8_REJECT; /* continuation byte, or overlong C0/C1 */
    if (c < 0xE0) return S_TAIL1;
    if (c == 0xE0) return S_E0;
    if (c == 0xED) return S_ED;
    if (c < 0xF0) return S_TAIL2;
    if (c == 0xF0) return S_F0;
    if (c < 0xF4) return S_TAIL3;
    if (c == 0xF4) return S_F4;
    return UTF8_REJECT; /* F5-FF: beyond U+10FFFF or not UTF-8 at all */
}

static utf8_state step(utf8_state st, uint8_t c)
{
    switch (st) {
    case UTF8_ACCEPT: return lead(c);
    case S_TAIL1: return c >= 0x80 && c <= 0xBF ? UTF8_ACCEPT : UTF8_REJECT;
    case S_TAIL2: return c >= 0x80 && c <= 0xBF ? S_TAIL1 : UTF8_REJECT;
    case S_TAIL3: return c >= 0x80 && c <= 0xBF ? S_TAIL2 : UTF8_REJECT;
    case S_E0: return c >= 0xA0 && c <= 0xBF ? S_TAIL1 : UTF8_REJECT;
    case S_ED: return c >= 0x80 && c <= 0x9F ? S_TAIL1 : UTF8_REJECT;
    case S_F0: return c >= 0x90 && c <= 0xBF ? S_TAIL2 : UTF8_REJECT;
    case S_F4: return c >= 0x80 && c <= 0x8F ? S_TAIL2 : UTF8_REJECT;
    default: return UTF8_REJECT;
    }
}

int utf8_feed(utf8_state *st, const void *buf, size_t len)
{
    const uint8_t *p = buf, *end = p + len;
    utf8_state s = *st;
    while (p < end && s != UTF8_REJECT) {
        if (s == UTF8_ACCEPT) {
            /* Chat text is mostly ASCII: skip it eight bytes at a time. */
            while (end - p >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                if (w & 0x8080808080808080ull) break;
                p += 8;
            }
            if (p == end) break;
        }
        s = step(s, *p++);
    }
    *st = s;
    return s == UTF8_REJECT ? -1 : 0;
}

bool utf8_valid(const void *buf, size_t len)
{
    utf8_state st = UTF8_ACCEPT;
    return utf8_feed(&st, buf, len) == 0 && utf8_complete(st);
}
