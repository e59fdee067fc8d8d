/* The UTF-8 validator the edge runs on every text frame, in the pieces
 * frames arrive in, and the close-frame check built on it. The verdict
 * must not depend on where the text is cut, and must agree with jansson's
 * (which refuses to make a JSON string of anything but valid UTF-8).
 * data[0] picks the cut points; the rest is the text. */
#include <jansson.h>
#include <stdlib.h>

#include "fuzz.h"
#include "utf8.h"
#include "wsclose.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned step = data[0] % 7 + 1;
    const uint8_t *text = data + 1;
    size_t n = size - 1;

    bool whole = utf8_valid(text, n);
    utf8_state st = UTF8_ACCEPT;
    int bad = 0;
    for (size_t off = 0; off < n && !bad; off += step)
        bad = utf8_feed(&st, text + off, n - off < step ? n - off : step);
    if (whole != (!bad && utf8_complete(st))) abort();

    json_t *j = json_stringn((const char *)text, n);
    if (whole != (j != NULL)) abort();
    json_decref(j);

    uint16_t code = wsclose_check(text, n);
    if (code != 0 && code != 1002 && code != 1007) abort();
    if (code == 1007 && utf8_valid(text + 2, n - 2)) abort();
    return 0;
}
