/* What the dispatcher remembers about a message between its delivery
 * attempts, keyed by its DW_MSG sequence: the edges that already took it
 * (a retry goes only to the others), the edges that did not take it, the
 * reason of the last failure and when each attempt failed (the dead letter
 * carries them).
 *
 * In memory and bounded (max entries, least recently failed evicted first;
 * entries idle past a TTL are swept): after a dispatcher restart, or when a
 * redelivery goes to another dispatcher, a message starts from nothing and
 * is sent to every edge again, which the edges drop as repeats (they
 * remember the sequences they delivered).
 *
 * Threads: one (the fetch loop). Clocks are passed in, so tests drive time. */
#ifndef DISPATCHER_RETRIES_H
#define DISPATCHER_RETRIES_H

#include <stddef.h>
#include <stdint.h>

#define RETRIES_MAX_ATTEMPTS 64 /* attempt times kept per message */
#define RETRIES_REASON_MAX 512

typedef struct retry_entry {
    uint64_t seq;
    char **took; /* edges that took it, over all attempts (owned) */
    size_t n_took;
    char **failed; /* edges that did not take it at the last attempt the
                    * registry answered (owned) */
    size_t n_failed;
    char reason[RETRIES_REASON_MAX];          /* the last failure */
    int64_t attempt_ms[RETRIES_MAX_ATTEMPTS]; /* wall clock, oldest first */
    size_t n_attempts;
    /* internal */
    int64_t touched_mono_ms;
    struct retry_entry *hnext, *prev, *next;
} retry_entry;

typedef struct retries retries;

/* max_entries > 0; ttl_ms: an entry not updated for this long is dropped
 * by retries_sweep. 0 or -1. */
int retries_create(retries **out, size_t max_entries, int64_t ttl_ms);
/* NULL-safe. */
void retries_destroy(retries *t);

/* The entry of seq, or NULL. Valid until the next call that changes t. */
const retry_entry *retries_get(const retries *t, uint64_t seq);

/* Attempt of message seq failed at wall_ms (mono_ms: for TTL and eviction).
 * took: edges that took it in this attempt (added to the earlier ones).
 * When answered (the registry named the room's edges), failed replaces the
 * edges that did not take it; otherwise the earlier list stays. reason is
 * copied (cut to RETRIES_REASON_MAX - 1). 0, or -1 when out of memory
 * (the entry is then dropped: the next attempt starts from nothing). */
int retries_note(retries *t, uint64_t seq, int64_t wall_ms, int64_t mono_ms, const char *reason,
                 char *const *took, size_t n_took, char *const *failed, size_t n_failed,
                 int answered);

/* Message seq is settled (acked, dead-lettered): forget it. */
void retries_forget(retries *t, uint64_t seq);

/* Drop entries not updated since mono_ms - ttl. Returns how many. */
size_t retries_sweep(retries *t, int64_t mono_ms);

size_t retries_count(const retries *t);

#endif
