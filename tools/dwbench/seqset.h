/* The set of sequence numbers one receiver has seen from one sender, for
 * counting lost and duplicate deliveries exactly.
 *
 * Deliveries from one sender nearly always arrive in order, so the set is
 * kept as "every seq below low" plus a bitmap of the seqs seen above low.
 * An in-order delivery only increments low and touches no bitmap; the
 * bitmap is allocated when something arrives out of order, grows to the
 * sender's count geometrically, and is emptied as low catches up. */
#ifndef DWBENCH_SEQSET_H
#define DWBENCH_SEQSET_H

#include <stdint.h>

typedef struct seqset {
    uint64_t low;   /* every seq < low has been seen */
    uint64_t *w;    /* bit seq: seen, for seq > low; NULL until needed */
    uint32_t nw;    /* words in w */
    uint32_t above; /* bits set in w */
} seqset;

/* Distinct seqs seen. */
static inline uint64_t seqset_count(const seqset *s)
{
    return s->low + s->above;
}

int seqset_add_slow(seqset *s, uint64_t seq, uint64_t hint);

/* Record seq. hint: how many seqs are likely to exist (the sender's count so
 * far), used to size a growth. 1 when new, 0 when a duplicate, -1 when out
 * of memory. */
static inline int seqset_add(seqset *s, uint64_t seq, uint64_t hint)
{
    if (seq == s->low && !s->above) {
        s->low++;
        return 1;
    }
    return seqset_add_slow(s, seq, hint);
}

/* Release the bitmap. NULL-safe. */
void seqset_free(seqset *s);

#endif
