#include "frame.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

/* Writes the frame carrying payload at h; returns the byte after it. */
static unsigned char *put_text(unsigned char *h, const void *payload, size_t len)
{
    size_t hlen = frame_header_len(len);
    h[0] = 0x81; /* FIN + text */
    if (len < 126) {
        h[1] = (unsigned char)len;
    } else if (len < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(len >> 8);
        h[3] = (unsigned char)len;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    if (len) memcpy(h + hlen, payload, len);
    return h + hlen + len;
}

edge_frame *frame_texts(const edge_frame_part *parts, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += frame_text_len(parts[i].len);
    if (total > UINT32_MAX) return NULL;
    /* LWS_PRE headroom lets the frame be handed to lws_write directly. */
    edge_frame *f = malloc(sizeof *f + LWS_PRE + total);
    if (!f) return NULL;
    f->refs = 1;
    f->born_ns = 0;
    f->len = (uint32_t)total;
    f->msgs = (uint32_t)n;
    f->bytes = f->data + LWS_PRE;
    unsigned char *h = f->bytes;
    for (size_t i = 0; i < n; i++)
        h = put_text(h, parts[i].data, parts[i].len);
    return f;
}

edge_frame *frame_text(const void *payload, size_t len)
{
    edge_frame_part p = {payload, len};
    return frame_texts(&p, 1);
}

void frame_unref(edge_frame *f)
{
    if (f && --f->refs == 0) free(f);
}
