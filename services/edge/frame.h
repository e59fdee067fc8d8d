/* Shared outbound WebSocket frames.
 *
 * A message is framed once per edge and the same bytes go to every
 * recipient: server-to-client frames are unmasked, so they are identical.
 * Frames are reference counted and only ever touched on the lws thread, so
 * the count is a plain integer. */
#ifndef EDGE_FRAME_H
#define EDGE_FRAME_H

#include <stddef.h>
#include <stdint.h>

typedef struct edge_frame {
    uint32_t refs;
    uint32_t len;         /* header + payload */
    int64_t born_ns;      /* a delivery's: when it reached the edge (0: not one) */
    unsigned char *bytes; /* points into data, after the lws headroom */
    unsigned char data[];
} edge_frame;

/* A complete text frame (FIN, opcode 1) carrying payload. Returns a frame
 * with one reference owned by the caller, or NULL when out of memory. */
edge_frame *frame_text(const void *payload, size_t len);

static inline edge_frame *frame_ref(edge_frame *f)
{
    f->refs++;
    return f;
}

/* Drop one reference; frees on the last. NULL-safe. */
void frame_unref(edge_frame *f);

/* Size of the WebSocket header for a payload of len bytes (2, 4 or 10). */
size_t frame_header_len(size_t len);

#endif
