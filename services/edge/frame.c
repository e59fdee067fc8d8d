#include "frame.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

size_t frame_header_len(size_t len)
{
    return len < 126 ? 2 : len < 65536 ? 4 : 10;
}

edge_frame *frame_text(const void *payload, size_t len)
{
    size_t hlen = frame_header_len(len);
    /* LWS_PRE headroom lets a large frame be handed to lws_write directly. */
    edge_frame *f = malloc(sizeof *f + LWS_PRE + hlen + len);
    if (!f) return NULL;
    f->refs = 1;
    f->born_ns = 0;
    f->len = (uint32_t)(hlen + len);
    f->bytes = f->data + LWS_PRE;
    unsigned char *h = f->bytes;
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
    return f;
}

void frame_unref(edge_frame *f)
{
    if (f && --f->refs == 0) free(f);
}
