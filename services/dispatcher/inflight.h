/* The batches a dispatcher has in flight: a FIFO of `depth` slots between
 * the thread that fetches and sends batches and the thread that waits for
 * their replies and settles them (acks, NAKs, dead letters). Bounding it
 * bounds how far fetching runs ahead of the edges' replies; FIFO order
 * makes batches settle in the order they were sent.
 *
 * Slots are indexes 0 .. depth - 1 into the caller's own array. One
 * producer thread (reserve, push, close) and one consumer thread (front,
 * pop). */
#ifndef DISPATCHER_INFLIGHT_H
#define DISPATCHER_INFLIGHT_H

#include <stddef.h>
#include <stdint.h>

typedef struct inflight inflight;

/* depth >= 1. 0 or -1 (out of memory). */
int inflight_create(inflight **out, size_t depth);
/* The consumer must be done with it. NULL-safe. */
void inflight_destroy(inflight *q);

/* Producer: the slot to fill next, once fewer than depth are in flight;
 * waits until deadline_ns (dw_mono_ns clock) for one to free up, so the
 * caller can do periodic work meanwhile. -1 when none was free in time.
 * Until inflight_push it is still free: reserving again gives it again. */
long inflight_reserve(inflight *q, int64_t deadline_ns);
/* Producer: the reserved slot is filled: hand it to the consumer. */
void inflight_push(inflight *q);
/* Producer: nothing more will be pushed; the consumer drains what is in
 * flight, then inflight_front returns -1. */
void inflight_close(inflight *q);

/* Consumer: the oldest slot in flight, waiting for one; -1 once closed and
 * drained. */
long inflight_front(inflight *q);
/* Consumer: done with the oldest slot: it becomes free. */
void inflight_pop(inflight *q);

/* Slots in flight now (for logs and tests). */
size_t inflight_count(inflight *q);

#endif
