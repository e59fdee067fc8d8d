#include "node.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apply.h"
#include "dw/bus.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/util.h"
#include "fsutil.h"
#include "query.h"

struct reg_node {
    reg_node_cfg cfg;
    char db_dir[4096];
    natsConnection *nc;
    jsCtx *js;

    pthread_mutex_t amu; /* operations, one at a time; held for their whole run */
    pthread_mutex_t mu;  /* st, q and the fields below; held briefly (and for a swap) */
    pthread_cond_t cv;   /* run loop and checkpoint timer wake-ups (monotonic clock) */
    reg_store *st;
    reg_query *q;                  /* NULL until the replica serves queries */
    _Atomic(reg_query *) q_notify; /* q, for the apply thread's progress calls */
    _Atomic int state;
    _Atomic int caught_up;
    _Atomic uint64_t catchup_target;
    _Atomic int failed;
    int stopping;

    pthread_t apply_thread;
    int apply_running;
    atomic_int apply_pause;

    pthread_t ckpt_thread;
    int ckpt_running;
    reg_emit *emit; /* NULL without events; stopped around a table swap (amu) */
    int has_last_ckpt;
    reg_ckpt last_ckpt;
    int reconcile_pending; /* a resume lifted a hold: reconcile once caught up (mu) */

    struct {
        dw_metric *connections, *applied_seq, *last_ckpt_ts, *ckpts;
    } m;
};

const char *reg_state_name(reg_state s)
{
    switch (s) {
    case REG_STATE_CATCHING_UP: return "catching_up";
    case REG_STATE_LIVE: return "live";
    case REG_STATE_HELD: return "held";
    case REG_STATE_RESTORING: return "restoring";
    }
    return "unknown";
}

static char *errstr(const char *s)
{
    return strdup(s);
}

/* ---- apply thread ----------------------------------------------------- */

static void wake(reg_node *n)
{
    pthread_mutex_lock(&n->mu);
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

static void on_progress(void *arg, uint64_t seq)
{
    reg_node *n = arg;
    reg_query *q = atomic_load(&n->q_notify);
    if (q) reg_query_notify(q, seq);
    reg_emit_kick(n->emit);
    dw_metric_set(n->m.applied_seq, (int64_t)seq);
    dw_metric_set(n->m.connections, (int64_t)reg_store_count(n->st));
    if (!atomic_load(&n->caught_up) && seq >= atomic_load(&n->catchup_target)) {
        atomic_store(&n->caught_up, 1);
        wake(n);
    }
}

/* A fetch came back empty: whatever the stream held is applied. */
static void on_idle(void *arg)
{
    reg_node *n = arg;
    if (!atomic_load(&n->caught_up)) {
        atomic_store(&n->caught_up, 1);
        wake(n);
    }
}

static void *apply_main(void *arg)
{
    reg_node *n = arg;
    reg_apply_opts ao;
    reg_apply_opts_default(&ao);
    ao.replica_id = n->cfg.replica_id;
    ao.on_progress = on_progress;
    ao.on_idle = on_idle;
    ao.progress_arg = n;
    ao.pause = &n->apply_pause;
    if (reg_apply_run(n->nc, n->js, n->st, &ao) < 0) {
        DW_ERROR("apply failed; exiting to resume from the table's applied_seq", "applied_seq=%llu",
                 (unsigned long long)reg_store_applied_seq(n->st));
        atomic_store(&n->failed, 1);
        wake(n);
    }
    return NULL;
}

/* The stream's last sequence now: the point a (re)starting replica must
 * reach before it counts as caught up. Retries until NATS answers. */
static int stream_end(reg_node *n, uint64_t *last, int *empty)
{
    int64_t backoff = 100;
    while (!dw_stop) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        if (js_GetStreamInfo(&si, n->js, DW_STREAM_CONN, NULL, &jerr) == NATS_OK) {
            *last = si->State.LastSeq;
            *empty = si->State.Msgs == 0;
            jsStreamInfo_Destroy(si);
            return 0;
        }
        nats_Sleep(backoff);
        if (backoff < 2000) backoff *= 2;
    }
    return -1;
}

/* Set the catch-up target and start applying. Called with amu held (or
 * before anything else runs). */
static int apply_start(reg_node *n)
{
    uint64_t last = 0;
    int empty = 0;
    if (stream_end(n, &last, &empty)) return -1;
    atomic_store(&n->catchup_target, last);
    atomic_store(&n->caught_up, empty || reg_store_applied_seq(n->st) >= last);
    n->apply_pause = 0;
    if (pthread_create(&n->apply_thread, NULL, apply_main, n)) {
        DW_ERROR("cannot start the apply thread", "err=\"%s\"", strerror(errno));
        return -1;
    }
    n->apply_running = 1;
    DW_INFO("applying DW_CONN", "applied_seq=%llu catch_up_to=%llu",
            (unsigned long long)reg_store_applied_seq(n->st), (unsigned long long)last);
    wake(n);
    return 0;
}

/* Stop applying and wait for the thread (at most one fetch wait). */
static void apply_stop(reg_node *n)
{
    if (!n->apply_running) return;
    n->apply_pause = 1;
    pthread_join(n->apply_thread, NULL);
    n->apply_running = 0;
}

/* ---- checkpoints ------------------------------------------------------ */

static void ckpt_note(reg_node *n, const reg_ckpt *c)
{
    pthread_mutex_lock(&n->mu);
    n->last_ckpt = *c;
    n->has_last_ckpt = 1;
    pthread_mutex_unlock(&n->mu);
    dw_metric_set(n->m.last_ckpt_ts, c->time_ms / 1000);
}

/* Take one and prune, with amu held. */
static int checkpoint_locked(reg_node *n, reg_ckpt *out, char **err)
{
    int64_t now = dw_now_ms();
    if (reg_ckpt_create(n->st, n->cfg.ckpt_dir, now, out, err)) return -1;
    dw_metric_inc(n->m.ckpts);
    ckpt_note(n, out);
    DW_INFO("checkpoint taken", "name=%s applied_seq=%llu connections=%llu", out->name,
            (unsigned long long)out->applied_seq, (unsigned long long)out->connections);
    size_t deleted = 0;
    reg_ckpt_prune(n->cfg.ckpt_dir, now, (size_t)n->cfg.ckpt_keep, n->cfg.ckpt_max_age_s * 1000,
                   &deleted);
    return 0;
}

int reg_node_checkpoint(reg_node *n, reg_ckpt *out, char **err)
{
    pthread_mutex_lock(&n->amu);
    int rc = checkpoint_locked(n, out, err);
    pthread_mutex_unlock(&n->amu);
    if (rc) DW_ERROR("checkpoint failed", "err=\"%s\"", *err ? *err : "?");
    return rc;
}

int reg_node_checkpoints(reg_node *n, reg_ckpt **out, size_t *count, char **err)
{
    *err = NULL;
    if (reg_ckpt_list(n->cfg.ckpt_dir, out, count)) {
        char msg[4200];
        snprintf(msg, sizeof msg, "cannot list %.4000s: %s", n->cfg.ckpt_dir, strerror(errno));
        *err = strdup(msg);
        return -1;
    }
    return 0;
}

static void *ckpt_main(void *arg)
{
    reg_node *n = arg;
    pthread_mutex_lock(&n->mu);
    int64_t next = dw_mono_ns() + n->cfg.ckpt_interval_s * 1000000000LL;
    while (!n->stopping) {
        if (dw_cond_wait_until(&n->cv, &n->mu, next) != ETIMEDOUT)
            continue; /* another wake-up, or spurious: the deadline stands */
        pthread_mutex_unlock(&n->mu);
        reg_ckpt c;
        char *err = NULL;
        reg_node_checkpoint(n, &c, &err);
        free(err);
        pthread_mutex_lock(&n->mu);
        next = dw_mono_ns() + n->cfg.ckpt_interval_s * 1000000000LL;
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

/* ---- queries ---------------------------------------------------------- */

/* Join the queue group. Called by the run loop with mu held. */
static int serve(reg_node *n)
{
    if (reg_query_start(&n->q, n->nc, n->st, n->cfg.query_wait_ms)) return -1;
    atomic_store(&n->q_notify, n->q);
    /* What the apply thread applied before it could see q. */
    reg_query_notify(n->q, reg_store_applied_seq(n->st));
    DW_INFO("serving queries", "replica=%s state=%s applied_seq=%llu connections=%llu",
            n->cfg.replica_id, reg_state_name(atomic_load(&n->state)),
            (unsigned long long)reg_store_applied_seq(n->st),
            (unsigned long long)reg_store_count(n->st));
    return 0;
}

bool reg_node_ready(void *arg)
{
    reg_node *n = arg;
    return atomic_load(&n->q_notify) != NULL && !atomic_load(&n->failed);
}

/* ---- life cycle ------------------------------------------------------- */

int reg_node_create(reg_node **out, const reg_node_cfg *cfg, reg_store *st, natsConnection *nc,
                    jsCtx *js)
{
    reg_node *n = calloc(1, sizeof *n);
    *out = NULL;
    if (!n) {
        reg_store_close(st);
        return -1;
    }
    n->cfg = *cfg;
    n->st = st;
    if (reg_fs_join(n->db_dir, sizeof n->db_dir, cfg->replica_dir, "db")) {
        reg_store_close(st);
        free(n);
        return -1;
    }
    n->nc = nc;
    n->js = js;
    pthread_mutex_init(&n->amu, NULL);
    pthread_mutex_init(&n->mu, NULL);
    dw_cond_init_mono(&n->cv);

    n->m.connections = dw_gauge("dw_registry_connections", NULL, "connections in the table");
    n->m.applied_seq = dw_gauge("dw_registry_applied_seq", NULL, "last DW_CONN sequence applied");
    n->m.last_ckpt_ts = dw_gauge("dw_registry_last_checkpoint_timestamp_seconds", NULL,
                                 "when the newest checkpoint was taken (unix seconds)");
    n->m.ckpts = dw_counter("dw_registry_checkpoints_total", NULL, "checkpoints taken");
    dw_metric_set(n->m.connections, (int64_t)reg_store_count(st));
    dw_metric_set(n->m.applied_seq, (int64_t)reg_store_applied_seq(st));

    reg_ckpt *v = NULL;
    size_t cnt = 0;
    if (reg_ckpt_list(cfg->ckpt_dir, &v, &cnt) == 0 && cnt) ckpt_note(n, &v[0]);
    free(v);

    atomic_store(&n->state, reg_store_hold(st) ? REG_STATE_HELD : REG_STATE_CATCHING_UP);
    *out = n;
    return 0;
}

int reg_node_run(reg_node *n)
{
    int rc = 0;
    pthread_mutex_lock(&n->amu);
    /* Before applying: its first look at DW_EVENTS sets the store's floor. */
    if (n->cfg.events && reg_emit_start(&n->emit, n->nc, n->js, n->st, &n->cfg.emit))
        DW_ERROR("cannot start the lifecycle events emitter", "%s", "");
    if (atomic_load(&n->state) == REG_STATE_HELD) {
        char when[32];
        dw_iso8601_ms(reg_store_hold(n->st), when, sizeof when);
        DW_WARN("the table holds a point-in-time restore: serving it, applying nothing newer "
                "until 'dwctl registry resume'",
                "restored_to=%s applied_seq=%llu", when,
                (unsigned long long)reg_store_applied_seq(n->st));
        atomic_store(&n->caught_up, 1);
    } else if (apply_start(n)) {
        rc = dw_stop ? 0 : -1;
    }
    pthread_mutex_unlock(&n->amu);
    if (rc || dw_stop) return rc;

    if (n->cfg.ckpt_interval_s > 0) {
        if (pthread_create(&n->ckpt_thread, NULL, ckpt_main, n) == 0)
            n->ckpt_running = 1;
        else
            DW_ERROR("cannot start the checkpoint timer", "err=\"%s\"", strerror(errno));
    }

    pthread_mutex_lock(&n->mu);
    while (!dw_stop && !atomic_load(&n->failed)) {
        if (atomic_load(&n->caught_up)) {
            int expected = REG_STATE_CATCHING_UP;
            if (atomic_compare_exchange_strong(&n->state, &expected, REG_STATE_LIVE))
                DW_INFO("caught up", "applied_seq=%llu",
                        (unsigned long long)reg_store_applied_seq(n->st));
            if (!n->q && serve(n)) {
                atomic_store(&n->failed, 1);
                break;
            }
            if (n->reconcile_pending && atomic_load(&n->state) == REG_STATE_LIVE) {
                reg_reconcile_result res;
                char *err = NULL;
                n->reconcile_pending = 0;
                pthread_mutex_unlock(&n->mu);
                DW_INFO("the restored table caught up: reconciling with the live edges", "%s", "");
                reg_node_reconcile(n, 0, &res, &err);
                free(err);
                pthread_mutex_lock(&n->mu);
            }
        }
        /* dw_stop comes from a signal handler, which cannot signal cv. */
        dw_cond_wait_until(&n->cv, &n->mu, dw_mono_ns() + 200000000LL);
    }
    pthread_mutex_unlock(&n->mu);
    return atomic_load(&n->failed) ? -1 : 0;
}

void reg_node_free(reg_node *n)
{
    if (!n) return;
    pthread_mutex_lock(&n->mu);
    n->stopping = 1;
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (n->ckpt_running) pthread_join(n->ckpt_thread, NULL);
    pthread_mutex_lock(&n->amu);
    apply_stop(n);
    reg_emit_stop(n->emit);
    n->emit = NULL;
    pthread_mutex_unlock(&n->amu);
    atomic_store(&n->q_notify, NULL);
    reg_query_stop(n->q);
    reg_query_free(n->q);
    if (n->st)
        DW_INFO("table closed", "applied_seq=%llu connections=%llu",
                (unsigned long long)reg_store_applied_seq(n->st),
                (unsigned long long)reg_store_count(n->st));
    reg_store_close(n->st);
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->mu);
    pthread_mutex_destroy(&n->amu);
    free(n);
}

/* ---- restore, resume, rotate ------------------------------------------ */

/* Close the table, swap the built one in, open it; queries wait meanwhile.
 * A table that does not open after the swap is fatal: the next start opens
 * it again (or reports why). Called with amu held. */
static void swap_in(reg_node *n)
{
    char *err = NULL;
    reg_store_opts o = {.keys = n->cfg.keys, .events = n->cfg.events};
    /* The emitter holds the table: stop it for the swap, start it again on
     * the new one (which learns DW_EVENTS's position before it applies). */
    int emitting = n->emit != NULL;
    reg_emit_stop(n->emit);
    n->emit = NULL;
    pthread_mutex_lock(&n->mu);
    if (n->q) reg_query_lock_store(n->q);
    reg_store_close(n->st);
    n->st = NULL;
    if (reg_restore_recover(n->cfg.replica_dir) < 0 ||
        reg_store_open_opts(&n->st, n->db_dir, &o, &err)) {
        DW_ERROR("cannot open the restored table; exiting (a restart finishes the swap)",
                 "dir=\"%s\" err=\"%s\"", n->db_dir, err ? err : strerror(errno));
        _exit(1);
    }
    if (n->q) reg_query_unlock_store(n->q, n->st);
    atomic_store(&n->caught_up, 1);
    pthread_cond_broadcast(&n->cv);
    pthread_mutex_unlock(&n->mu);
    if (emitting && reg_emit_start(&n->emit, n->nc, n->js, n->st, &n->cfg.emit))
        DW_ERROR("cannot restart the lifecycle events emitter after the swap", "%s", "");
    dw_metric_set(n->m.connections, (int64_t)reg_store_count(n->st));
    dw_metric_set(n->m.applied_seq, (int64_t)reg_store_applied_seq(n->st));
}

int reg_node_restore(reg_node *n, int64_t to_ms, int dry_run, int full_replay,
                     reg_restore_plan *plan, reg_restore_result *res, char **err)
{
    char when[32];
    *err = NULL;
    memset(res, 0, sizeof *res);
    pthread_mutex_lock(&n->amu);
    int rc =
        reg_restore_plan_make(n->js, n->cfg.ckpt_dir, n->cfg.keys, to_ms, full_replay, plan, err);
    if (rc || dry_run) goto done;

    dw_iso8601_ms(to_ms, when, sizeof when);
    reg_state prev = (reg_state)atomic_load(&n->state);
    int was_applying = n->apply_running;
    atomic_store(&n->state, REG_STATE_RESTORING);
    DW_WARN("restoring: applying paused, queries keep the current table until the swap",
            "to=%s checkpoint=%s from_seq=%llu until_seq=%llu", when,
            plan->has_ckpt ? plan->ckpt.name : "none", (unsigned long long)plan->from_seq,
            (unsigned long long)plan->until_seq);
    apply_stop(n);
    plan->events = n->cfg.events;
    reg_store_events_floor_get(n->st, &plan->events_floor_seq, &plan->events_floor_idx);
    rc = reg_restore_build(n->js, n->cfg.replica_dir, plan, n->cfg.keys, &dw_stop, res, err);
    if (rc) {
        DW_ERROR("restore failed; the table is unchanged", "err=\"%s\"", *err ? *err : "?");
        atomic_store(&n->state, prev);
        /* Stopping (the replay saw dw_stop): nothing to restart. */
        if (was_applying && !dw_stop && apply_start(n)) atomic_store(&n->failed, 1);
        goto done;
    }
    swap_in(n);
    atomic_store(&n->state, REG_STATE_HELD);
    DW_WARN("restored: serving the state at the restore time, applying nothing newer until "
            "'dwctl registry resume'",
            "to=%s applied_seq=%llu connections=%llu replayed=%llu", when,
            (unsigned long long)res->applied_seq, (unsigned long long)res->connections,
            (unsigned long long)res->replayed);
done:
    pthread_mutex_unlock(&n->amu);
    return rc;
}

int reg_node_resume(reg_node *n, int *was_held, char **err)
{
    int rc = 0;
    *err = NULL;
    pthread_mutex_lock(&n->amu);
    *was_held = reg_store_hold(n->st) != 0;
    if (*was_held && reg_store_set_hold(n->st, 0)) {
        *err = errstr("cannot clear the hold");
        rc = -1;
        goto done;
    }
    if (!n->apply_running) {
        atomic_store(&n->state, REG_STATE_CATCHING_UP);
        if (apply_start(n)) {
            *err = errstr("cannot start applying");
            rc = -1;
            goto done;
        }
        DW_INFO("resumed: applying DW_CONN up to now", "applied_seq=%llu",
                (unsigned long long)reg_store_applied_seq(n->st));
    }
    if (*was_held && n->cfg.reconcile) {
        pthread_mutex_lock(&n->mu);
        n->reconcile_pending = 1;
        pthread_cond_broadcast(&n->cv);
        pthread_mutex_unlock(&n->mu);
    }
done:
    pthread_mutex_unlock(&n->amu);
    return rc;
}

int reg_node_rotate(reg_node *n, uint64_t *rewritten, reg_ckpt *ckpt, char **err)
{
    *err = NULL;
    pthread_mutex_lock(&n->amu);
    int rc = reg_store_rotate(n->st, rewritten, err);
    if (rc == 0) {
        char hex[16];
        DW_INFO("key rotation done: every value is sealed with the current key",
                "key_id=%s rewritten=%llu",
                dw_key_id_hex(n->cfg.keys ? dw_keyring_current(n->cfg.keys) : 0, hex, sizeof hex),
                (unsigned long long)*rewritten);
        /* Older checkpoints still need the old key; the newest must not. */
        rc = checkpoint_locked(n, ckpt, err);
    }
    pthread_mutex_unlock(&n->amu);
    if (rc) DW_ERROR("key rotation failed", "err=\"%s\"", *err ? *err : "?");
    return rc;
}

int reg_node_reconcile(reg_node *n, int dry_run, reg_reconcile_result *res, char **err)
{
    int rc = -1;
    *err = NULL;
    memset(res, 0, sizeof *res);
    if (!n->cfg.reconcile) {
        *err = errstr("reconciliation is not available");
        return -1;
    }
    pthread_mutex_lock(&n->amu);
    reg_state st = (reg_state)atomic_load(&n->state);
    if (st == REG_STATE_HELD || st == REG_STATE_RESTORING)
        *err = errstr("held at a restore point: 'dwctl registry resume' first (it reconciles "
                      "once the table has caught up)");
    else if (st != REG_STATE_LIVE)
        *err = errstr("catching up: try again once the replica is live");
    else
        rc = reg_reconcile_run(n->cfg.reconcile, n->st, dry_run, &dw_stop, res, err);
    pthread_mutex_unlock(&n->amu);
    if (rc) DW_WARN("reconcile refused or failed", "err=\"%s\"", *err ? *err : "?");
    return rc;
}

void reg_node_status_get(reg_node *n, reg_node_status *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&n->mu);
    out->state = (reg_state)atomic_load(&n->state);
    out->serving = n->q != NULL;
    if (n->st) reg_store_info_get(n->st, &out->info);
    out->current_key = dw_keyring_current(n->cfg.keys);
    out->catchup_target = atomic_load(&n->catchup_target);
    out->has_last_ckpt = n->has_last_ckpt;
    out->last_ckpt = n->last_ckpt;
    pthread_mutex_unlock(&n->mu);
}

const char *reg_node_ckpt_dir(const reg_node *n)
{
    return n->cfg.ckpt_dir;
}
