/* Point-in-time restore and bootstrap of a replica's table.
 *
 * A replica's directory:
 *   <replica_dir>/db             the table
 *   <replica_dir>/restore.tmp/   a table being built (a restore, a bootstrap)
 *   <replica_dir>/restore.ready/ a built table waiting to become db
 *   <replica_dir>/db.old/        the table it replaced, being removed
 *
 * A restore builds restore.tmp (a copy of the chosen checkpoint, or an
 * empty table, then the replay), flushes it, renames it restore.ready, and
 * swaps: db -> db.old, restore.ready -> db, rm db.old. Every step is a
 * rename or a removal of something no longer named, so reg_restore_recover
 * finishes or undoes whatever a kill -9 interrupted: restore.tmp is
 * dropped (the old table is whole), restore.ready is swapped in.
 *
 * The restored table carries the hold (m/restored_to): the registry serves
 * the state at T and applies nothing newer until it is resumed. */
#ifndef REG_RESTORE_H
#define REG_RESTORE_H

#include <nats/nats.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "dw/crypto.h"

typedef struct reg_restore_plan {
    int64_t to_ms;
    int has_ckpt; /* start from ckpt, else from an empty table */
    reg_ckpt ckpt;
    char ckpt_path[4096];
    size_t n_ckpts;      /* valid checkpoints seen */
    size_t skipped_keys; /* passed over: a key they need is not configured */
    uint64_t from_seq;   /* first sequence to replay */
    uint64_t until_seq;  /* the stream's last sequence now: replay never goes past it */
    uint64_t stream_first_seq;
    int gap; /* the checkpoint is older than the stream's first event */
    /* Set by the caller before reg_restore_build: the rebuilt table derives
     * lifecycle events (store.h) for what it replays after this floor, so
     * that events still waiting in the replaced table's outbox are not
     * lost (those before the floor are in DW_EVENTS already). */
    int events;
    uint64_t events_floor_seq;
    uint32_t events_floor_idx;
} reg_restore_plan;

typedef struct reg_restore_result {
    uint64_t replayed; /* events applied on top of the starting point */
    uint64_t applied_seq;
    int64_t applied_ts_ms;
    uint64_t connections;
} reg_restore_result;

/* Decide how to restore to to_ms: the checkpoint (under ckpt_dir; none when
 * full_replay) and the replay range. Reads DW_CONN's state. 0, or -1 with
 * *err (malloc'd). */
int reg_restore_plan_make(jsCtx *js, const char *ckpt_dir, const dw_keyring *kr, int64_t to_ms,
                          int full_replay, reg_restore_plan *out, char **err);

/* Build <replica_dir>/restore.ready from the plan (restore.tmp meanwhile),
 * holding at to_ms. Never touches <replica_dir>/db. 0, or -1 with *err. */
int reg_restore_build(jsCtx *js, const char *replica_dir, const reg_restore_plan *p,
                      const dw_keyring *kr, atomic_int *stop, reg_restore_result *res, char **err);

/* Make <replica_dir>/db whole: drop restore.tmp, swap in restore.ready,
 * remove db.old. Call at start (before opening db) and after a build, with
 * db closed. Returns 1 when a built table was swapped in, 0 when there was
 * nothing to do, -1 on a filesystem error (errno). */
int reg_restore_recover(const char *replica_dir);

/* A new replica starts from a copy of another's checkpoint (the directory
 * from_dir, with its DW_CHECKPOINT tag), when <replica_dir>/db does not
 * exist yet: copied into restore.tmp, checked with kr, hold cleared (it
 * catches up from the checkpoint's sequence), swapped in. Returns 1 when
 * done, 0 when db already existed (nothing changed), -1 with *err. */
int reg_bootstrap(const char *replica_dir, const char *from_dir, const dw_keyring *kr,
                  reg_ckpt *ckpt, char **err);

#endif
