/* The lifecycle events emitter: publishes what this replica's outbox holds
 * (store.h, o/...) to DW_EVENTS, in order, exactly once across replicas,
 * restarts, replays and restores (docs/integrations.md, "Exactly once").
 *
 * One thread, in rounds:
 *   1. Where DW_EVENTS is: its last sequence L and the position (DW_CONN
 *      sequence, index) of the event stored there, read from that
 *      message's Nats-Msg-Id ("ev.<seq>.<idx>", events.h).
 *   2. Outbox entries at or before that position are already there: they
 *      are deleted, and the store stops writing them (its floor).
 *   3. The next entries are published pipelined, entry i with
 *      Nats-Msg-Id = its position and Nats-Expected-Last-Sequence = L + i:
 *      the stream takes entry i only right after entry i - 1. A repeat
 *      within the duplicate window (another replica published the same
 *      event a moment earlier, or this one before a crash) is answered as
 *      a duplicate; beyond the window the expected sequence refuses it.
 *   4. Entries the stream took (stored or duplicate) are deleted. At the
 *      first refusal the round ends and the next one reads the position
 *      again.
 * Every replica runs one; they may race, and the stream keeps one copy of
 * each event, in order. */
#ifndef REG_EMIT_H
#define REG_EMIT_H

#include <nats/nats.h>
#include <stdint.h>

#include "store.h"

typedef struct reg_emit_opts {
    int batch;             /* entries published per round (256) */
    int64_t ack_wait_ms;   /* how long a round waits for the stream's answers (5000) */
    int64_t idle_check_ms; /* with nothing to do, look again this often (1000) */
    /* When set (borrowed for reg_emit_start only), the emitter publishes
     * on a connection of its own to these URLs, made with
     * dw_bus_connect_batched, instead of the nc and js it is given: a
     * round's publishes then leave in a few writes, not one send() each,
     * and the registry's query replies keep their connection that sends
     * at once. NULL: use nc and js. */
    const char *nats_url;
} reg_emit_opts;

void reg_emit_opts_default(reg_emit_opts *o);

typedef struct reg_emit reg_emit;

/* Start the thread for st. nc, js and st are borrowed and must outlive the
 * emitter (stop it before closing or swapping st). Before returning it
 * tries once, briefly, to learn DW_EVENTS's position, so that a replica
 * rebuilding its table writes no event that is long published. 0 or -1. */
int reg_emit_start(reg_emit **out, natsConnection *nc, jsCtx *js, reg_store *st,
                   const reg_emit_opts *o);

/* New entries may be in the outbox (the apply thread calls it after each
 * sequence). Any thread. NULL-safe. */
void reg_emit_kick(reg_emit *e);

/* Stop the thread (a round in progress finishes or times out) and free.
 * NULL-safe. */
void reg_emit_stop(reg_emit *e);

/* Tell from a JetStream publish answer (the JSON body) whether the stream
 * took the message: 1 stored, 2 duplicate (*seq: the stream sequence in
 * both), 0 refused (*jerr: JetStream's error code, e.g. 10071 "wrong last
 * sequence"), -1 not an answer. Pure; unit-tested. */
int reg_emit_parse_ack(const char *data, size_t len, uint64_t *seq, int *jerr);

#endif
