#include "seqset.h"

#include <stdlib.h>
#include <string.h>

static int seqset_grow(seqset *s, uint64_t need_words, uint64_t hint)
{
    uint64_t nw = s->nw ? (uint64_t)s->nw * 2 : 4;
    uint64_t want = (hint >> 6) + 16;
    if (nw < want) nw = want;
    if (nw < need_words) nw = need_words;
    if (nw > UINT32_MAX) return -1;
    uint64_t *w = realloc(s->w, nw * sizeof *w);
    if (!w) return -1;
    memset(w + s->nw, 0, (nw - s->nw) * sizeof *w);
    s->w = w;
    s->nw = (uint32_t)nw;
    return 0;
}

static inline int bit_test(const seqset *s, uint64_t seq)
{
    uint64_t i = seq >> 6;
    return i < s->nw && (s->w[i] >> (seq & 63) & 1);
}

int seqset_add_slow(seqset *s, uint64_t seq, uint64_t hint)
{
    if (seq < s->low) return 0;
    if (seq == s->low) {
        s->low++;
        /* Absorb what arrived early and is now contiguous. */
        while (s->above && bit_test(s, s->low)) {
            s->w[s->low >> 6] &= ~(1ull << (s->low & 63));
            s->above--;
            s->low++;
        }
        return 1;
    }
    uint64_t i = seq >> 6;
    if (i >= s->nw && seqset_grow(s, i + 1, hint)) return -1;
    uint64_t bit = 1ull << (seq & 63);
    if (s->w[i] & bit) return 0;
    s->w[i] |= bit;
    s->above++;
    return 1;
}

void seqset_free(seqset *s)
{
    if (!s) return;
    free(s->w);
    memset(s, 0, sizeof *s);
}
