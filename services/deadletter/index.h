/* The deadletter service's view of DW_DLQ: one summary per entry (the
 * record without its payload), ordered by id (the DW_DLQ sequence), and a
 * count per original DW_MSG sequence so that "is this message already
 * dead-lettered?" is one lookup. Fed by an ordered consumer on DW_DLQ (so
 * it holds what the dispatcher wrote too) and by the service's own writes
 * and deletions; dlq_index_reconcile drops what someone else deleted.
 *
 * Not thread-safe: the service holds its lock around every call. */
#ifndef DEADLETTER_INDEX_H
#define DEADLETTER_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "dw/dw.pb-c.h"

typedef struct dlq_index_entry {
    uint64_t id;       /* DW_DLQ sequence */
    int64_t stored_ms; /* when DW_DLQ stored it */
    size_t payload_bytes;
    Dw__DeadLetter *dl; /* owned, payload dropped; NULL: not a valid record */
    char *dlq_subject;  /* owned: the DW_DLQ subject it was stored under */
} dlq_index_entry;

/* What dwctl dlq list asks for; empty / 0 fields do not filter. */
typedef struct dlq_filter {
    const char *room;
    const char *reason; /* dlq_reason_matches */
    int64_t since_ms;   /* stored at or after */
} dlq_filter;

typedef struct dlq_index dlq_index;

int dlq_index_create(dlq_index **out);
/* NULL-safe. */
void dlq_index_destroy(dlq_index *ix);

/* Add entry id (dl may be NULL for bytes that are not a record; the index
 * takes dl, and copies dlq_subject). 1 when it was new, 0 when id was
 * already there (dl is freed), -1 when out of memory (dl is freed). */
int dlq_index_add(dlq_index *ix, uint64_t id, int64_t stored_ms, const char *dlq_subject,
                  Dw__DeadLetter *dl, size_t payload_bytes);

/* 1 when id was there and is gone now, 0 when it was not there. */
int dlq_index_remove(dlq_index *ix, uint64_t id);

/* Entry id, or NULL. Valid until the next add/remove/reconcile. */
const dlq_index_entry *dlq_index_get(const dlq_index *ix, uint64_t id);

/* How many entries hold a dead letter of DW_MSG sequence stream_seq. */
size_t dlq_index_count_stream_seq(const dlq_index *ix, uint64_t stream_seq);

size_t dlq_index_count(const dlq_index *ix);

/* Entries with id > after_id that match f, in id order, at most limit
 * (0 = no limit): *out points into the index (valid until the next change),
 * *more is set when further matches exist. */
void dlq_index_query(const dlq_index *ix, const dlq_filter *f, uint64_t after_id, size_t limit,
                     const dlq_index_entry **out, size_t *n, int *more);
/* True when e matches f. */
int dlq_index_matches(const dlq_index_entry *e, const dlq_filter *f);

/* Bring the index in line with DW_DLQ's state as stream info reported it:
 * entries below first_seq or listed in deleted[] (any order) are gone.
 * Entries above the reported last sequence are left alone (they may have
 * arrived since). Returns how many were dropped. */
size_t dlq_index_reconcile(dlq_index *ix, uint64_t first_seq, const uint64_t *deleted,
                           size_t n_deleted);

#endif
