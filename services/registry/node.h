/* One registry replica at run time: its table, the apply thread, the
 * queries, periodic checkpoints, and the operations that change what the
 * table is (restore, resume, key rotation), one at a time.
 *
 * States:
 *   catching_up  applying DW_CONN; queries are not served yet (a replica
 *                joins the queue group only once it has applied what the
 *                stream held when it started), or, after a resume, served
 *                while the table moves from the restored time to now
 *   live         applying and serving
 *   held         a point-in-time restore: serving the state at T, applying
 *                nothing newer until reg_node_resume (survives restarts:
 *                the hold is in the table)
 *   restoring    building a restored table (queries still see the old one)
 *
 * Crash-only: when the store fails, reg_node_run returns -1 and the
 * process exits; the next start resumes from the table's applied_seq. */
#ifndef REG_NODE_H
#define REG_NODE_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "dw/crypto.h"
#include "emit.h"
#include "reconcile.h"
#include "restore.h"
#include "store.h"

typedef enum {
    REG_STATE_CATCHING_UP = 0,
    REG_STATE_LIVE,
    REG_STATE_HELD,
    REG_STATE_RESTORING,
} reg_state;

const char *reg_state_name(reg_state s);

typedef struct reg_node_cfg {
    const char *replica_id;
    const char *replica_dir; /* holds db/ (and restore.* during a restore) */
    const char *ckpt_dir;
    int64_t query_wait_ms;
    int64_t ckpt_interval_s;  /* 0: no periodic checkpoints */
    int64_t ckpt_keep;        /* 0: no count limit */
    int64_t ckpt_max_age_s;   /* 0: no age limit */
    const dw_keyring *keys;   /* borrowed */
    reg_reconcile *reconcile; /* borrowed; NULL: no reconciliation */
    /* Lifecycle events: the store derives them (opened with events) and the
     * node runs the emitter that publishes them to DW_EVENTS. */
    int events;
    reg_emit_opts emit;
} reg_node_cfg;

typedef struct reg_node reg_node;

/* Take st (owned by the node from now on, also on failure) and borrow nc
 * and js (they outlive the node). Strings in cfg are borrowed too. Reads
 * DW_CONN's end (retrying until NATS answers or dw_stop) to know when this
 * replica has caught up. 0 or -1. */
int reg_node_create(reg_node **out, const reg_node_cfg *cfg, reg_store *st, natsConnection *nc,
                    jsCtx *js);

/* Start the apply thread (unless held), the checkpoint timer, and the
 * queries once caught up; return when dw_stop is set (0) or the store
 * failed (-1). Call from the main thread. */
int reg_node_run(reg_node *n);

/* Stop everything and close the table. Call after reg_node_run returned and
 * after the operations subscriptions are gone. NULL-safe. */
void reg_node_free(reg_node *n);

/* /readyz: the replica serves queries. Any thread (matches dw_status_start). */
bool reg_node_ready(void *arg);

/* ---- operations: any thread, one at a time (each waits for the last) ---- */

/* Take a checkpoint now, then apply retention. 0 or -1 with *err (malloc'd). */
int reg_node_checkpoint(reg_node *n, reg_ckpt *out, char **err);

/* The checkpoints, newest first (*out malloc'd). 0 or -1 with *err. */
int reg_node_checkpoints(reg_node *n, reg_ckpt **out, size_t *count, char **err);

/* Restore to to_ms (see restore.h): plan, and unless dry_run, pause apply,
 * build, swap the table in under the queries, hold. full_replay ignores
 * the checkpoints. 0 or -1 with *err; the old table stays on failure. */
int reg_node_restore(reg_node *n, int64_t to_ms, int dry_run, int full_replay,
                     reg_restore_plan *plan, reg_restore_result *res, char **err);

/* Lift the hold and apply DW_CONN from the restored point to now. *was_held
 * tells whether there was a hold; if there was, the run loop reconciles
 * with the live edges once the table has caught up. 0 or -1 with *err. */
int reg_node_resume(reg_node *n, int *was_held, char **err);

/* Re-seal every value with the current key (store.h), then checkpoint so
 * that the newest checkpoint needs only the current key. 0 or -1 with *err. */
int reg_node_rotate(reg_node *n, uint64_t *rewritten, reg_ckpt *ckpt, char **err);

/* Reconcile the table with the live edges now (reconcile.h). Refused while
 * held or restoring (the corrections are DW_CONN events: a held table
 * would not apply them) and while catching up. 0 or -1 with *err. */
int reg_node_reconcile(reg_node *n, int dry_run, reg_reconcile_result *res, char **err);

typedef struct reg_node_status {
    reg_state state;
    int serving;
    reg_store_info info;
    uint32_t current_key; /* 0: values are written in plaintext */
    uint64_t catchup_target;
    int has_last_ckpt;
    reg_ckpt last_ckpt;
} reg_node_status;
void reg_node_status_get(reg_node *n, reg_node_status *out);

/* The checkpoint directory (for replies). */
const char *reg_node_ckpt_dir(const reg_node *n);

#endif
