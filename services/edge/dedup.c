#include "dedup.h"

#include <stdlib.h>

static uint32_t slot_of(const edge_dedup *d, uint64_t seq)
{
    uint64_t h = seq * 0x9E3779B97F4A7C15ull; /* Fibonacci hashing */
    return (uint32_t)(h >> 32) & (d->nslots - 1);
}

int dedup_init(edge_dedup *d, uint32_t window)
{
    if (!window) return -1;
    uint32_t n = 2;
    while (n < 2 * window)
        n <<= 1;
    d->ring = calloc(window, sizeof *d->ring);
    d->slots = calloc(n, sizeof *d->slots);
    if (!d->ring || !d->slots) {
        free(d->ring);
        free(d->slots);
        return -1;
    }
    d->window = window;
    d->nslots = n;
    d->head = d->count = 0;
    return 0;
}

void dedup_free(edge_dedup *d)
{
    free(d->ring);
    free(d->slots);
    d->ring = d->slots = NULL;
}

static int set_has(const edge_dedup *d, uint64_t seq)
{
    for (uint32_t i = slot_of(d, seq);; i = (i + 1) & (d->nslots - 1)) {
        if (d->slots[i] == seq) return 1;
        if (!d->slots[i]) return 0;
    }
}

static void set_add(edge_dedup *d, uint64_t seq)
{
    uint32_t i = slot_of(d, seq);
    while (d->slots[i])
        i = (i + 1) & (d->nslots - 1);
    d->slots[i] = seq;
}

/* Backward-shift deletion keeps linear probing correct without tombstones. */
static void set_del(edge_dedup *d, uint64_t seq)
{
    uint32_t mask = d->nslots - 1, i = slot_of(d, seq);
    while (d->slots[i] != seq) {
        if (!d->slots[i]) return;
        i = (i + 1) & mask;
    }
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!d->slots[j]) break;
        uint32_t k = slot_of(d, d->slots[j]);
        /* Move slots[j] into the hole at i unless its home k lies cyclically in (i, j]. */
        if ((i <= j) ? (i < k && k <= j) : (i < k || k <= j)) continue;
        d->slots[i] = d->slots[j];
        i = j;
    }
    d->slots[i] = 0;
}

int dedup_check_add(edge_dedup *d, uint64_t seq)
{
    if (!seq) return 0;
    if (set_has(d, seq)) return 1;
    if (d->count == d->window) {
        set_del(d, d->ring[d->head]);
        d->ring[d->head] = seq;
        d->head = (d->head + 1) % d->window;
    } else {
        d->ring[(d->head + d->count) % d->window] = seq;
        d->count++;
    }
    set_add(d, seq);
    return 0;
}
