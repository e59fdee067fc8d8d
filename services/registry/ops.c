#include "ops.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"

#define N_OPS 7
static const char *const op_names[N_OPS] = {"status", "checkpoint", "checkpoints", "restore",
                                            "resume", "rotate",     "reconcile"};

/* An operation in progress when we stop gets this long to finish, at most
 * (and never past the stop's deadline, dw/util.h: DW_SHUTDOWN_TIMEOUT_MS;
 * a restore in progress stops early on dw_stop). */
#define OPS_DRAIN_MS 30000
/* ... when NATS is away (nothing can arrive; an operation may be running). */
#define OPS_AWAY_MS 500

/* What one subscription's callback needs: the operation it serves. */
typedef struct sub_ctx {
    struct reg_ops *ops;
    const char *op;
} sub_ctx;

struct reg_ops {
    natsConnection *nc;
    reg_node *node;
    const char *replica_id;
    natsSubscription *subs[2 * N_OPS]; /* queue group and per replica, per op */
    sub_ctx ctxs[N_OPS];
    /* Callbacks using node, for a stop whose drain the server could not
     * confirm (NATS away): once closing, a callback leaves node alone. */
    pthread_mutex_t mu;
    pthread_cond_t idle;
    int active, closing;
};

/* ---- JSON helpers ----------------------------------------------------- */

static json_t *time_json(int64_t ms)
{
    char buf[32];
    if (ms <= 0) return json_null();
    dw_iso8601_ms(ms, buf, sizeof buf);
    return json_string(buf);
}

static json_t *key_ids_json(const uint32_t *ids, size_t n)
{
    json_t *a = json_array();
    char hex[16];
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, ids[i] ? json_string(dw_key_id_hex(ids[i], hex, sizeof hex))
                                        : json_string("plaintext"));
    return a;
}

static json_t *ckpt_json(const reg_ckpt *c, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%.4000s/%s", dir, c->name);
    /* clang-format off */
    return json_pack("{s:s, s:o, s:I, s:I, s:o, s:I, s:I, s:o, s:o, s:s}",
                     "name", c->name,
                     "time", time_json(c->time_ms),
                     "time_ms", (json_int_t)c->time_ms,
                     "applied_seq", (json_int_t)c->applied_seq,
                     "applied_ts", time_json(c->applied_ts_ms),
                     "applied_ts_ms", (json_int_t)c->applied_ts_ms,
                     "connections", (json_int_t)c->connections,
                     "restored_to", time_json(c->restored_to_ms),
                     "key_ids", key_ids_json(c->key_ids, c->n_key_ids),
                     "path", path);
    /* clang-format on */
}

static char *reply_error(const char *replica_id, const char *err)
{
    json_t *o = json_pack("{s:b, s:s, s:s}", "ok", 0, "replica", replica_id, "error", err);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

/* Dump o (stolen) with ok and replica added. */
static char *reply_ok(const char *replica_id, json_t *o)
{
    if (!o) return reply_error(replica_id, "internal: out of memory");
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "replica", json_string(replica_id));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* ---- operations ------------------------------------------------------- */

static char *op_status(reg_node *node, const char *rid)
{
    reg_node_status st;
    char hex[16];
    reg_node_status_get(node, &st);
    /* clang-format off */
    json_t *o = json_pack("{s:s, s:b, s:I, s:o, s:I, s:I, s:o, s:I, s:o, s:o, s:b, s:I, s:o, s:s}",
        "state", reg_state_name(st.state),
        "serving", st.serving,
        "applied_seq", (json_int_t)st.info.applied_seq,
        "applied_ts", time_json(st.info.applied_ts_ms),
        "applied_ts_ms", (json_int_t)st.info.applied_ts_ms,
        "connections", (json_int_t)st.info.count,
        "restored_to", time_json(st.info.restored_to_ms),
        "restored_to_ms", (json_int_t)st.info.restored_to_ms,
        "key_id", st.current_key ? json_string(dw_key_id_hex(st.current_key, hex, sizeof hex))
                                 : json_null(),
        "key_ids", key_ids_json(st.info.key_ids, st.info.n_key_ids),
        "encrypted", st.current_key != 0,
        "catch_up_target", (json_int_t)st.catchup_target,
        "last_checkpoint", st.has_last_ckpt ? ckpt_json(&st.last_ckpt, reg_node_ckpt_dir(node))
                                            : json_null(),
        "checkpoint_dir", reg_node_ckpt_dir(node));
    /* clang-format on */
    return reply_ok(rid, o);
}

static char *op_checkpoint(reg_node *node, const char *rid)
{
    reg_ckpt c;
    char *err = NULL;
    if (reg_node_checkpoint(node, &c, &err)) {
        char *r = reply_error(rid, err ? err : "checkpoint failed");
        free(err);
        return r;
    }
    return reply_ok(rid, json_pack("{s:o}", "checkpoint", ckpt_json(&c, reg_node_ckpt_dir(node))));
}

static char *op_checkpoints(reg_node *node, const char *rid)
{
    reg_ckpt *v = NULL;
    size_t n = 0;
    char *err = NULL;
    if (reg_node_checkpoints(node, &v, &n, &err)) {
        char *r = reply_error(rid, err ? err : "cannot list");
        free(err);
        return r;
    }
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, ckpt_json(&v[i], reg_node_ckpt_dir(node)));
    free(v);
    return reply_ok(rid, json_pack("{s:o, s:s}", "checkpoints", a ? a : json_null(), "dir",
                                   reg_node_ckpt_dir(node)));
}

static json_t *plan_json(const reg_restore_plan *p, const char *dir)
{
    /* clang-format off */
    return json_pack("{s:o, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:b}",
        "to", time_json(p->to_ms),
        "to_ms", (json_int_t)p->to_ms,
        "checkpoint", p->has_ckpt ? ckpt_json(&p->ckpt, dir) : json_null(),
        "checkpoints_seen", (json_int_t)p->n_ckpts,
        "skipped_for_keys", (json_int_t)p->skipped_keys,
        "from_seq", (json_int_t)p->from_seq,
        "until_seq", (json_int_t)p->until_seq,
        "stream_first_seq", (json_int_t)p->stream_first_seq,
        "gap", p->gap);
    /* clang-format on */
}

static char *op_restore(reg_node *node, const char *rid, const void *data, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(data, len, 0, &jerr);
    const char *to = NULL;
    int dry = 0, full = 0;
    int64_t to_ms = 0;
    char *r = NULL, *err = NULL;
    if (!req ||
        json_unpack(req, "{s:s, s?b, s?b}", "to", &to, "dry_run", &dry, "full_replay", &full)) {
        r = reply_error(rid, "bad_request: expected {\"to\": RFC 3339 time, \"dry_run\": bool, "
                             "\"full_replay\": bool}");
        goto done;
    }
    if (dw_time_parse(to, DW_TIME_RFC3339, &to_ms, NULL)) {
        r = reply_error(rid, "bad_request: 'to' is not an RFC 3339 time with a zone "
                             "(e.g. 2026-11-25T08:54:27Z)");
        goto done;
    }
    if (to_ms > dw_now_ms() + 1000) {
        r = reply_error(rid, "bad_request: 'to' is in the future");
        goto done;
    }
    reg_restore_plan plan;
    reg_restore_result res;
    if (reg_node_restore(node, to_ms, dry, full, &plan, &res, &err)) {
        r = reply_error(rid, err ? err : "restore failed");
        goto done;
    }
    json_t *o =
        json_pack("{s:b, s:o}", "dry_run", dry, "plan", plan_json(&plan, reg_node_ckpt_dir(node)));
    if (o && !dry) /* clang-format off */
        json_object_set_new(o, "result", json_pack("{s:I, s:I, s:o, s:I, s:o}",
            "replayed", (json_int_t)res.replayed,
            "applied_seq", (json_int_t)res.applied_seq,
            "applied_ts", time_json(res.applied_ts_ms),
            "connections", (json_int_t)res.connections,
            "restored_to", time_json(to_ms)));
    /* clang-format on */
    r = reply_ok(rid, o);
done:
    free(err);
    json_decref(req);
    return r;
}

static char *op_resume(reg_node *node, const char *rid)
{
    int was_held = 0;
    char *err = NULL;
    if (reg_node_resume(node, &was_held, &err)) {
        char *r = reply_error(rid, err ? err : "resume failed");
        free(err);
        return r;
    }
    reg_node_status st;
    reg_node_status_get(node, &st);
    return reply_ok(rid, json_pack("{s:b, s:s, s:I}", "was_held", was_held, "state",
                                   reg_state_name(st.state), "applied_seq",
                                   (json_int_t)st.info.applied_seq));
}

static char *op_rotate(reg_node *node, const char *rid)
{
    uint64_t n = 0;
    reg_ckpt c;
    char *err = NULL, hex[16];
    if (reg_node_rotate(node, &n, &c, &err)) {
        char *r = reply_error(rid, err ? err : "rotation failed");
        free(err);
        return r;
    }
    reg_node_status st;
    reg_node_status_get(node, &st);
    return reply_ok(rid,
                    json_pack("{s:s, s:I, s:o}", "key_id",
                              dw_key_id_hex(st.current_key, hex, sizeof hex), "rewritten",
                              (json_int_t)n, "checkpoint", ckpt_json(&c, reg_node_ckpt_dir(node))));
}

static char *op_reconcile(reg_node *node, const char *rid, const void *data, size_t len)
{
    json_error_t jerr;
    json_t *req = len ? json_loadb(data, len, 0, &jerr) : json_object();
    int dry = 0;
    char *r = NULL, *err = NULL;
    reg_reconcile_result res;
    if (!req || json_unpack(req, "{s?b}", "dry_run", &dry)) {
        r = reply_error(rid, "bad_request: expected {\"dry_run\": bool}");
    } else if (reg_node_reconcile(node, dry, &res, &err)) {
        r = reply_error(rid, err ? err : "reconcile failed");
    } else { /* clang-format off */
        r = reply_ok(rid, json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
            "dry_run", dry,
            "edges", (json_int_t)res.edges,
            "edges_down", (json_int_t)res.edges_down,
            "edges_unreachable", (json_int_t)res.edges_unreachable,
            "held", (json_int_t)res.held,
            "ghosts", (json_int_t)res.ghosts,
            "missing", (json_int_t)res.missing,
            "dropped", (json_int_t)res.dropped,
            "announced", (json_int_t)res.announced));
    } /* clang-format on */
    free(err);
    json_decref(req);
    return r;
}

char *reg_ops_handle(reg_node *node, const char *replica_id, const char *op, const void *data,
                     size_t len)
{
    if (!strcmp(op, "status")) return op_status(node, replica_id);
    if (!strcmp(op, "checkpoint")) return op_checkpoint(node, replica_id);
    if (!strcmp(op, "checkpoints")) return op_checkpoints(node, replica_id);
    if (!strcmp(op, "restore")) return op_restore(node, replica_id, data, len);
    if (!strcmp(op, "resume")) return op_resume(node, replica_id);
    if (!strcmp(op, "rotate")) return op_rotate(node, replica_id);
    if (!strcmp(op, "reconcile")) return op_reconcile(node, replica_id, data, len);
    return reply_error(replica_id, "bad_request: unknown operation");
}

/* ---- NATS ------------------------------------------------------------- */

static void on_op(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    sub_ctx *c = arg;
    reg_ops *o = c->ops;
    pthread_mutex_lock(&o->mu);
    int closing = o->closing;
    if (!closing) o->active++;
    pthread_mutex_unlock(&o->mu);
    if (closing) {
        natsMsg_Destroy(msg);
        return;
    }
    const char *reply = natsMsg_GetReply(msg);
    if (reply && *reply) {
        char *body = reg_ops_handle(c->ops->node, c->ops->replica_id, c->op, natsMsg_GetData(msg),
                                    (size_t)natsMsg_GetDataLength(msg));
        if (body) {
            natsStatus s = natsConnection_PublishString(nc, reply, body);
            if (s != NATS_OK)
                DW_WARN("operation reply failed", "op=%s status=%s", c->op, natsStatus_GetText(s));
            free(body);
        }
    }
    natsMsg_Destroy(msg);
    pthread_mutex_lock(&o->mu);
    if (!--o->active) pthread_cond_broadcast(&o->idle);
    pthread_mutex_unlock(&o->mu);
}

int reg_ops_start(reg_ops **out, natsConnection *nc, reg_node *node, const char *replica_id)
{
    reg_ops *o = calloc(1, sizeof *o);
    *out = NULL;
    if (!o) return -1;
    o->nc = nc;
    o->node = node;
    o->replica_id = replica_id;
    if (pthread_mutex_init(&o->mu, NULL)) {
        free(o);
        return -1;
    }
    if (dw_cond_init_mono(&o->idle)) {
        pthread_mutex_destroy(&o->mu);
        free(o);
        return -1;
    }
    sub_ctx *ctxs = o->ctxs;
    for (int i = 0; i < N_OPS; i++) {
        char subj[160];
        ctxs[i] = (sub_ctx){o, op_names[i]};
        snprintf(subj, sizeof subj, REG_OPS_PREFIX "%s", op_names[i]);
        natsStatus s = natsConnection_QueueSubscribe(&o->subs[2 * i], nc, subj, REG_OPS_QUEUE,
                                                     on_op, &ctxs[i]);
        if (s == NATS_OK) {
            snprintf(subj, sizeof subj, REG_OPS_PREFIX "%s.%s", op_names[i], replica_id);
            s = natsConnection_Subscribe(&o->subs[2 * i + 1], nc, subj, on_op, &ctxs[i]);
        }
        if (s != NATS_OK) {
            DW_ERROR("subscribe failed", "subject=%s status=%s", subj, natsStatus_GetText(s));
            reg_ops_stop(o);
            return -1;
        }
    }
    *out = o;
    return 0;
}

int reg_ops_stop(reg_ops *o)
{
    if (!o) return 0;
    /* While NATS is away only a short wait for an operation still running;
     * if one is, o is left (below). */
    if (!dw_subs_drain(o->nc, o->subs, 2 * N_OPS, OPS_DRAIN_MS, OPS_AWAY_MS)) {
        pthread_cond_destroy(&o->idle);
        pthread_mutex_destroy(&o->mu);
        free(o);
        return 0;
    }
    /* Not confirmed (NATS away, or an operation still running): a callback
     * may yet come and must find o, but from now on it leaves node alone.
     * One running gets what is left of the stop's budget to finish. */
    pthread_mutex_lock(&o->mu);
    o->closing = 1;
    int64_t deadline = dw_mono_ns() + dw_stop_left_ms(OPS_DRAIN_MS) * 1000000;
    while (o->active && dw_cond_wait_until(&o->idle, &o->mu, deadline) != ETIMEDOUT)
        ;
    int busy = o->active;
    pthread_mutex_unlock(&o->mu);
    if (busy) {
        DW_WARN("an operation is still running: it is cut short, the table is left to the exit",
                "%s", "");
        return -1;
    }
    DW_INFO("operation subscriptions not drained (NATS away); none was running", "%s", "");
    return 0; /* o stays allocated: a late callback may still look at it */
}
