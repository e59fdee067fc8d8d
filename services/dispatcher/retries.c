#include "retries.h"

#include <stdlib.h>
#include <string.h>

struct retries {
    retry_entry **buckets;        /* chained by hnext */
    size_t nbuckets;              /* power of two */
    retry_entry *oldest, *newest; /* by last update: prev/next */
    size_t count, max;
    int64_t ttl_ms;
};

static size_t bucket_of(const retries *t, uint64_t seq)
{
    /* Sequences are consecutive: a multiplicative hash spreads them. */
    return (size_t)((seq * 0x9E3779B97F4A7C15ULL) >> 17) & (t->nbuckets - 1);
}

static void list_unlink(retries *t, retry_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        t->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        t->newest = e->prev;
    e->prev = e->next = NULL;
}

static void list_append(retries *t, retry_entry *e)
{
    e->prev = t->newest;
    e->next = NULL;
    if (t->newest)
        t->newest->next = e;
    else
        t->oldest = e;
    t->newest = e;
}

static void names_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void entry_free(retry_entry *e)
{
    names_free(e->took, e->n_took);
    names_free(e->failed, e->n_failed);
    free(e);
}

int retries_create(retries **out, size_t max_entries, int64_t ttl_ms)
{
    if (!max_entries) return -1;
    retries *t = calloc(1, sizeof *t);
    if (!t) return -1;
    t->nbuckets = 64;
    while (t->nbuckets < max_entries && t->nbuckets < ((size_t)1 << 30))
        t->nbuckets *= 2;
    if (!(t->buckets = calloc(t->nbuckets, sizeof *t->buckets))) {
        free(t);
        return -1;
    }
    t->max = max_entries;
    t->ttl_ms = ttl_ms;
    *out = t;
    return 0;
}

void retries_destroy(retries *t)
{
    if (!t) return;
    for (retry_entry *e = t->oldest, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    free(t->buckets);
    free(t);
}

static retry_entry **slot_of(const retries *t, uint64_t seq)
{
    retry_entry **p = &t->buckets[bucket_of(t, seq)];
    while (*p && (*p)->seq != seq)
        p = &(*p)->hnext;
    return p;
}

const retry_entry *retries_get(const retries *t, uint64_t seq)
{
    return *slot_of(t, seq);
}

static void drop(retries *t, retry_entry **slot)
{
    retry_entry *e = *slot;
    *slot = e->hnext;
    list_unlink(t, e);
    t->count--;
    entry_free(e);
}

void retries_forget(retries *t, uint64_t seq)
{
    retry_entry **slot = slot_of(t, seq);
    if (*slot) drop(t, slot);
}

static int has_name(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v[i], s)) return 1;
    return 0;
}

/* Add the names of add[] not yet in *v. 0 or -1. */
static int names_union(char ***v, size_t *n, char *const *add, size_t n_add)
{
    for (size_t i = 0; i < n_add; i++) {
        if (has_name(*v, *n, add[i])) continue;
        char **g = realloc(*v, (*n + 1) * sizeof *g);
        if (!g) return -1;
        *v = g;
        if (!(g[*n] = strdup(add[i]))) return -1;
        (*n)++;
    }
    return 0;
}

int retries_note(retries *t, uint64_t seq, int64_t wall_ms, int64_t mono_ms, const char *reason,
                 char *const *took, size_t n_took, char *const *failed, size_t n_failed,
                 int answered)
{
    retry_entry **slot = slot_of(t, seq);
    retry_entry *e = *slot;
    if (!e) {
        if (t->count >= t->max) {
            /* Full: the least recently failed message loses its memory. */
            uint64_t victim = t->oldest->seq;
            drop(t, slot_of(t, victim));
            slot = slot_of(t, seq);
        }
        if (!(e = calloc(1, sizeof *e))) return -1;
        e->seq = seq;
        *slot = e;
        list_append(t, e);
        t->count++;
    } else {
        list_unlink(t, e);
        list_append(t, e);
    }
    e->touched_mono_ms = mono_ms;
    if (e->n_attempts < RETRIES_MAX_ATTEMPTS) {
        e->attempt_ms[e->n_attempts++] = wall_ms;
    } else {
        /* Keep the first and the most recent ones. */
        memmove(&e->attempt_ms[1], &e->attempt_ms[2],
                (RETRIES_MAX_ATTEMPTS - 2) * sizeof e->attempt_ms[0]);
        e->attempt_ms[RETRIES_MAX_ATTEMPTS - 1] = wall_ms;
    }
    size_t rl = reason ? strlen(reason) : 0;
    if (rl >= sizeof e->reason) rl = sizeof e->reason - 1;
    memcpy(e->reason, reason ? reason : "", rl);
    e->reason[rl] = '\0';

    if (names_union(&e->took, &e->n_took, took, n_took)) goto error;
    if (answered) {
        names_free(e->failed, e->n_failed);
        e->failed = NULL;
        e->n_failed = 0;
        if (names_union(&e->failed, &e->n_failed, failed, n_failed)) goto error;
    }
    return 0;

error:
    retries_forget(t, seq);
    return -1;
}

size_t retries_sweep(retries *t, int64_t mono_ms)
{
    size_t n = 0;
    while (t->oldest && mono_ms - t->oldest->touched_mono_ms >= t->ttl_ms) {
        drop(t, slot_of(t, t->oldest->seq));
        n++;
    }
    return n;
}

size_t retries_count(const retries *t)
{
    return t->count;
}
