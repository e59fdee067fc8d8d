#include "outbox.h"

#include <stdlib.h>
#include <string.h>

int outbox_push(edge_outbox *ob, edge_frame *f)
{
    if (ob->count == ob->cap) {
        uint32_t ncap = ob->cap ? ob->cap * 2 : 8;
        edge_frame **n = malloc(ncap * sizeof *n);
        if (!n) return -1;
        for (uint32_t i = 0; i < ob->count; i++)
            n[i] = ob->ring[(ob->head + i) & (ob->cap - 1)];
        free(ob->ring);
        ob->ring = n;
        ob->cap = ncap;
        ob->head = 0;
    }
    ob->ring[(ob->head + ob->count) & (ob->cap - 1)] = frame_ref(f);
    ob->count++;
    ob->bytes += f->len;
    return 0;
}

void outbox_pop(edge_outbox *ob)
{
    if (!ob->count) return;
    edge_frame *f = ob->ring[ob->head];
    ob->head = (ob->head + 1) & (ob->cap - 1);
    ob->count--;
    ob->bytes -= f->len;
    frame_unref(f);
    if (!ob->count && ob->cap > 4096) {
        /* Give memory back after an unusual burst only: a ring that drains
         * after every batch is reused, not regrown from 8 each time (that
         * was a malloc per connection per batch on the fan-out path). */
        free(ob->ring);
        ob->ring = NULL;
        ob->cap = 0;
        ob->head = 0;
    }
}

size_t outbox_fill(edge_outbox *ob, unsigned char *buf, size_t cap, edge_frame **big)
{
    size_t n = 0;
    *big = NULL;
    /* One frame (often a whole run of messages, frame_texts) is written
     * from its own bytes: copying it first would gain nothing. */
    if (ob->count && (ob->count == 1 || ob->ring[ob->head]->len > cap)) {
        *big = ob->ring[ob->head];
        return 0;
    }
    while (ob->count) {
        edge_frame *f = ob->ring[ob->head];
        if (n + f->len > cap) break;
        memcpy(buf + n, f->bytes, f->len);
        n += f->len;
        outbox_pop(ob);
    }
    return n;
}

void outbox_clear(edge_outbox *ob)
{
    while (ob->count)
        outbox_pop(ob);
    free(ob->ring);
    memset(ob, 0, sizeof *ob);
}
