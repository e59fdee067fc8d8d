/* Close frames from clients (RFC 6455 section 7.4): which status codes a
 * peer may send, and what the edge answers to one it may not. Pure code. */
#ifndef EDGE_WSCLOSE_H
#define EDGE_WSCLOSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* May a peer put this code in a close frame? 1000-1003 and 1007-1011 (the
 * codes RFC 6455 defines for endpoints to send), 3000-4999 (registered and
 * private use). Not 1004-1006 and 1015 (reserved, never on the wire), not
 * 1012-1014 (registered after RFC 6455; libwebsockets 4.1 refuses them
 * before the edge sees them, so the edge does the same), not < 1000,
 * 1016-2999 or >= 5000. */
bool wsclose_code_valid(unsigned code);

/* A close frame's payload from the peer: 0 when it is well formed (echo
 * it), else the code to close with instead: 1002 for a 1-byte payload or
 * a code that is not valid, 1007 for a reason that is not UTF-8. */
uint16_t wsclose_check(const uint8_t *payload, size_t len);

#endif
