/* A connection's queue of frames waiting to be written.
 *
 * Holds references to shared frames; an idle connection holds no memory
 * here. outbox_fill() copies as many whole queued frames as fit into the
 * caller's buffer so that one write carries everything pending for the
 * socket (coalescing: one syscall per socket per loop pass, not per frame). */
#ifndef EDGE_OUTBOX_H
#define EDGE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"

typedef struct edge_outbox {
    edge_frame **ring;
    uint32_t cap, head, count;
    size_t bytes; /* queued frame bytes not yet written */
} edge_outbox;

/* Queue a new reference to f (the outbox takes it). 0, or -1 out of memory. */
int outbox_push(edge_outbox *ob, edge_frame *f);

/* Copy whole frames into buf (at most cap bytes) and drop them from the
 * queue. If the first frame alone is larger than cap, or is the only one
 * queued, nothing is copied and *big is set to it (still queued): write it
 * from its own bytes, then call outbox_pop(). Returns the number of bytes
 * copied. */
size_t outbox_fill(edge_outbox *ob, unsigned char *buf, size_t cap, edge_frame **big);

/* Drop the frame at the head of the queue. */
void outbox_pop(edge_outbox *ob);

/* Drop everything and free the ring. */
void outbox_clear(edge_outbox *ob);

#endif
