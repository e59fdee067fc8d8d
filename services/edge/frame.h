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
    uint32_t msgs;        /* WebSocket frames in bytes: 1, or a run's (frame_texts) */
    int64_t born_ns;      /* a delivery's: when it reached the edge (0: not one) */
    unsigned char *bytes; /* points into data, after the lws headroom */
    unsigned char data[];
} edge_frame;

/* A complete text frame (FIN, opcode 1) carrying payload. Returns a frame
 * with one reference owned by the caller, or NULL when out of memory. */
edge_frame *frame_text(const void *payload, size_t len);

/* One payload of frame_texts(). */
typedef struct edge_frame_part {
    const void *data;
    size_t len;
} edge_frame_part;

/* n complete text frames back to back in one buffer (msgs = n): queued to
 * a recipient, they cost one queue entry and one write, not n. The bytes
 * on the wire are those of n frame_text() frames. As frame_text. */
edge_frame *frame_texts(const edge_frame_part *parts, size_t n);

/* Size of the WebSocket header for a payload of len bytes (2, 4 or 10). */
static inline size_t frame_header_len(size_t len)
{
    return len < 126 ? 2 : len < 65536 ? 4 : 10;
}

/* Bytes of the text frame carrying a payload of len bytes. */
static inline size_t frame_text_len(size_t len)
{
    return frame_header_len(len) + len;
}

static inline edge_frame *frame_ref(edge_frame *f)
{
    f->refs++;
    return f;
}

/* Drop one reference; frees on the last. NULL-safe. */
void frame_unref(edge_frame *f);

#endif
