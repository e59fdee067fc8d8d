#include "hist.h"

uint64_t hist_bucket_low(uint32_t idx)
{
    if (idx < (2u << HIST_SUB_BITS)) return idx;
    uint32_t shift = (idx >> HIST_SUB_BITS) - 1;
    uint64_t q = (idx & ((1u << HIST_SUB_BITS) - 1)) | (1u << HIST_SUB_BITS);
    return q << shift;
}

uint64_t hist_quantile(const bench_hist *h, double q)
{
    if (!h->n) return 0;
    if (q < 0) q = 0;
    if (q > 1) q = 1;
    /* Rank of the wanted value, 1-based, rounded up as HdrHistogram does. */
    uint64_t rank = (uint64_t)(q * (double)h->n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank >= h->n) return h->max;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo = hist_bucket_low(i);
            uint64_t hi = i + 1 < HIST_BUCKETS ? hist_bucket_low(i + 1) : lo;
            uint64_t mid = lo + (hi - lo) / 2;
            return mid < h->max ? mid : h->max;
        }
    }
    return h->max;
}
