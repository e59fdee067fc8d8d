/* The client side of RFC 6455, as small as a load generator needs: the
 * opening handshake (key, request, checking Sec-WebSocket-Accept), masked
 * client frames and parsing of server frames. Pure functions over caller
 * buffers: no sockets, no allocation. */
#ifndef DWBENCH_WSC_H
#define DWBENCH_WSC_H

#include <stddef.h>
#include <stdint.h>

#define WSC_KEY_LEN 24    /* base64 of 16 random bytes */
#define WSC_ACCEPT_LEN 28 /* base64 of a SHA-1 */

enum {
    WSC_OP_CONT = 0x0,
    WSC_OP_TEXT = 0x1,
    WSC_OP_BINARY = 0x2,
    WSC_OP_CLOSE = 0x8,
    WSC_OP_PING = 0x9,
    WSC_OP_PONG = 0xA,
};

/* A fresh Sec-WebSocket-Key from the OpenSSL CSPRNG. 0, or -1 when the
 * CSPRNG fails. key must hold WSC_KEY_LEN + 1 bytes. */
int wsc_key_new(char *key);

/* The Sec-WebSocket-Accept a server must answer to key. out must hold
 * WSC_ACCEPT_LEN + 1 bytes. */
void wsc_accept_for(const char *key, char *out);

/* The GET request of the opening handshake, asking for protocol as the
 * subprotocol unless it is NULL. Returns its length, or 0 when it does not
 * fit in cap. */
size_t wsc_request(char *buf, size_t cap, const char *hostport, const char *path, const char *key,
                   const char *protocol);

/* Check the server's answer in buf[0..len). 1: a complete 101 response with
 * the right accept value, *hdr_len is its length (frames may follow it);
 * 0: incomplete, read more; -1: refused or malformed. */
int wsc_response(const char *buf, size_t len, const char *key, size_t *hdr_len);

/* Bytes a masked client frame with a payload of len bytes takes. */
static inline size_t wsc_masked_size(size_t len)
{
    return (len < 126 ? 2 : len < 65536 ? 4 : 10) + 4 + len;
}

/* Write a complete masked client frame (FIN set) carrying payload into dst,
 * which must hold wsc_masked_size(len) bytes. mask is the masking key (any
 * value; clients draw a new one per frame). Returns the bytes written. */
size_t wsc_frame_masked(unsigned char *dst, unsigned opcode, const void *payload, size_t len,
                        uint32_t mask);

typedef struct wsc_frame {
    unsigned fin;
    unsigned opcode;
    const unsigned char *payload; /* points into the parsed buffer */
    uint64_t len;
} wsc_frame;

/* Parse one server frame at the start of b[0..n). Returns the bytes it
 * takes (> 0), 0 when it is not complete yet, or -1 when it is malformed
 * (reserved bits, a masked server frame, a bad control frame, a payload
 * longer than max). */
long wsc_frame_parse(const unsigned char *b, size_t n, uint64_t max, wsc_frame *f);

#endif
