/* The DW_CONN consumer: pulls connection events in stream order and applies
 * them to the store. One durable pull consumer per replica, recreated at
 * every start from the store's applied_seq, so a wiped or restored table
 * is rebuilt from the stream and never skips an event. */
#ifndef REG_APPLY_H
#define REG_APPLY_H

#include <nats/nats.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct reg_apply_opts {
    const char *replica_id; /* the durable is "registry-<replica_id>" */
    int batch;              /* messages per fetch (256) */
    int64_t fetch_wait_ms;  /* how long one fetch waits (500): the stop latency */
    /* Called after each run of applied sequences (one fetch, or less),
     * with the last of them, on the apply thread. */
    void (*on_progress)(void *arg, uint64_t seq);
    /* Called when a fetch found nothing to apply (the table is at the end
     * of the stream for now), on the apply thread. May be NULL. */
    void (*on_idle)(void *arg);
    void *progress_arg;
    atomic_int *stop;  /* the loop returns once *stop is set */
    atomic_int *pause; /* ... or *pause (may be NULL) */
} reg_apply_opts;

void reg_apply_opts_default(reg_apply_opts *o);

/* Decode one DW_CONN payload and apply it at seq. An undecodable payload
 * is logged and applied as an empty change, so seq still advances.
 * Returns what reg_store_apply returns: 1 applied, 0 skipped, -1 store error. */
int reg_apply_payload(reg_store *st, uint64_t seq, const void *data, size_t len);
/* The same, recording ts_ms (the event's JetStream time) with it. */
int reg_apply_payload_at(reg_store *st, uint64_t seq, int64_t ts_ms, const void *data, size_t len);

/* Run the consumer on the calling thread until *o->stop. Returns 0 on a
 * clean stop, -1 when the store failed (the process should exit and
 * restart: it resumes from applied_seq). Every message it fetched is
 * applied and acked before it returns. */
int reg_apply_run(natsConnection *nc, jsCtx *js, reg_store *st, const reg_apply_opts *o);

/* Replay for a point-in-time restore: apply DW_CONN events from from_seq
 * (st is normally at from_seq - 1) in order, up to and including the last
 * one stored at or before to_ms (JetStream time), never beyond until_seq
 * (the stream's last sequence when the restore began). Uses an ephemeral
 * consumer that is gone when it returns. *applied counts the events
 * applied. 0, or -1 with *err (malloc'd): NATS or the store failed, or
 * *stop was set. */
int reg_apply_replay(jsCtx *js, reg_store *st, uint64_t from_seq, uint64_t until_seq, int64_t to_ms,
                     atomic_int *stop, uint64_t *applied, char **err);

#endif
