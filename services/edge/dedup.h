/* Duplicate suppression for deliveries: remembers the last N stream
 * sequences this edge wrote out, so that a redelivered message (the bus is
 * at-least-once) reaches each socket once. Sequences are unique in DW_MSG.
 * Not thread-safe: the lws thread owns it. */
#ifndef EDGE_DEDUP_H
#define EDGE_DEDUP_H

#include <stdint.h>

typedef struct edge_dedup {
    uint64_t *ring;  /* insertion order, for eviction */
    uint64_t *slots; /* open addressing set, 0 = empty */
    uint32_t window; /* how many sequences are remembered */
    uint32_t nslots; /* power of two, >= 2 * window */
    uint32_t head, count;
} edge_dedup;

/* window: how many recent sequences to remember (> 0). 0 or -1. */
int dedup_init(edge_dedup *d, uint32_t window);
void dedup_free(edge_dedup *d);

/* Records seq; returns 1 if it was already there (a repeat), 0 if new.
 * seq 0 is never a repeat (JetStream sequences start at 1). */
int dedup_check_add(edge_dedup *d, uint64_t seq);

#endif
