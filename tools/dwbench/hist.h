/* A log-linear latency histogram (HDR-style): every power of two is split
 * into 128 equal buckets, so any recorded value is reported within 0.8%.
 * Fixed size, no allocation: recording is an index computation and an
 * increment, cheap enough for every delivered message. */
#ifndef DWBENCH_HIST_H
#define DWBENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7
#define HIST_BUCKETS ((64 - HIST_SUB_BITS) * (1u << HIST_SUB_BITS) + (1u << HIST_SUB_BITS))

typedef struct bench_hist {
    uint64_t n;
    uint64_t max;
    uint64_t counts[HIST_BUCKETS];
} bench_hist;

/* Bucket of a value (exposed for tests). */
static inline uint32_t hist_index(uint64_t v)
{
    if (v < (2u << HIST_SUB_BITS)) return (uint32_t)v;
    unsigned m = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = m - HIST_SUB_BITS;
    return (uint32_t)(shift << HIST_SUB_BITS) + (uint32_t)(v >> shift);
}

/* Record one value (e.g. nanoseconds). */
static inline void hist_add(bench_hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->n++;
    if (v > h->max) h->max = v;
}

/* The value at quantile q (0..1): the middle of the bucket holding it,
 * never above the largest recorded value. 0 when empty. */
uint64_t hist_quantile(const bench_hist *h, double q);

/* Smallest value that falls into bucket idx. */
uint64_t hist_bucket_low(uint32_t idx);

#endif
