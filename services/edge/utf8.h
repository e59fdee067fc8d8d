/* Incremental UTF-8 validation (RFC 3629), for text that arrives in pieces:
 * WebSocket text messages split into frames and frames split into reads.
 *
 * libwebsockets 4.1 validates UTF-8 itself (LWS_SERVER_OPTION_VALIDATE_UTF8)
 * but fails the connection from inside its parser, which then misreads the
 * bytes that follow and may drop the close frame (docs/security.md); its
 * validator (lws_check_utf8) is not exported by the Debian build. The edge
 * therefore checks text itself and closes with 1007 through its own close
 * path. Pure code: no allocation, any thread. */
#ifndef EDGE_UTF8_H
#define EDGE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where the validator is: between code points (UTF8_ACCEPT), inside one,
 * or past an invalid byte (UTF8_REJECT, sticky). Start a text at
 * UTF8_ACCEPT. */
typedef uint8_t utf8_state;
#define UTF8_ACCEPT 0
#define UTF8_REJECT 8

/* Feed the next len bytes of a text. Returns 0 while the text is valid so
 * far (it may end inside a code point), -1 as soon as it cannot be. */
int utf8_feed(utf8_state *st, const void *buf, size_t len);

/* The text fed so far is valid and does not end inside a code point. */
static inline bool utf8_complete(utf8_state st)
{
    return st == UTF8_ACCEPT;
}

/* Whole-buffer check: valid UTF-8, complete. */
bool utf8_valid(const void *buf, size_t len);

#endif
