#include "emit.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/util.h"
#include "dw/wire.h"
#include "events.h"

/* How long the first look at DW_EVENTS may take before the thread starts. */
#define START_LOOK_MS 1000

struct reg_emit {
    natsConnection *nc;
    jsCtx *js;
    /* Our own connection (reg_emit_opts.nats_url), else NULL: nc and js
     * are then the caller's. */
    natsConnection *own_nc;
    jsCtx *own_js;
    reg_store *st;
    reg_emit_opts o;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* monotonic clock */
    bool kicked, stopping;
    bool finished; /* the thread is about to return (reg_emit_stop) */

    natsSubscription *sub; /* replies: <inbox>.<round>.<i> */
    char inbox[128];
    uint64_t round;

    /* What this emitter last saw stored: stream sequence -> position. It
     * tells where DW_EVENTS is when the message at its last sequence is
     * gone (aged out, deleted). */
    bool have_last;
    uint64_t last_stream_seq;
    reg_ev_pos last_pos;
    bool warned_unknown;
    /* The last round stored all it published: DW_EVENTS most likely still
     * ends with our last event, and the next round publishes after it
     * without asking (two JetStream API requests a round, on a connect
     * storm several per connect). Nats-Expected-Last-Sequence makes a
     * wrong guess a refusal, never a duplicate or a gap; a refusal clears
     * this and the next round asks. */
    bool trust_last;
};

static struct {
    dw_metric *stored, *duplicate, *refused, *pending, *position;
} m;

static void metrics_init(void)
{
    m.stored = dw_counter("dw_registry_events_total", "outcome=\"stored\"",
                          "lifecycle events published to DW_EVENTS by this replica");
    m.duplicate = dw_counter("dw_registry_events_total", "outcome=\"duplicate\"",
                             "lifecycle events published to DW_EVENTS by this replica");
    m.refused = dw_counter("dw_registry_events_total", "outcome=\"refused\"",
                           "lifecycle events published to DW_EVENTS by this replica");
    m.pending = dw_gauge("dw_registry_events_pending", NULL,
                         "lifecycle events waiting in this replica's outbox (at most one batch "
                         "counted)");
    m.position = dw_gauge("dw_registry_events_position", NULL,
                          "DW_CONN sequence of the newest lifecycle event known to be in "
                          "DW_EVENTS");
}

void reg_emit_opts_default(reg_emit_opts *o)
{
    o->batch = 256;
    o->ack_wait_ms = 5000;
    o->idle_check_ms = 1000;
    o->nats_url = NULL;
}

int reg_emit_parse_ack(const char *data, size_t len, uint64_t *seq, int *jerr)
{
    json_t *j = data ? json_loadb(data, len, 0, NULL) : NULL;
    int rc = -1;
    *seq = 0;
    *jerr = 0;
    if (!j || !json_is_object(j)) goto done;
    json_t *err = json_object_get(j, "error");
    if (err) {
        if (!json_is_object(err)) goto done;
        json_t *code = json_object_get(err, "err_code");
        *jerr = json_is_integer(code) ? (int)json_integer_value(code) : 0;
        rc = 0;
        goto done;
    }
    json_t *s = json_object_get(j, "seq");
    if (!json_is_integer(s) || json_integer_value(s) <= 0) goto done;
    *seq = (uint64_t)json_integer_value(s);
    rc = json_is_true(json_object_get(j, "duplicate")) ? 2 : 1;
done:
    json_decref(j);
    return rc;
}

/* Where DW_EVENTS is: its last sequence, and the position of the event
 * stored there (*known = false when that message is gone). 0, or -1 when
 * NATS does not answer or the stream is missing. */
static int position(reg_emit *e, int64_t wait_ms, uint64_t *last, reg_ev_pos *pos, bool *known)
{
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = wait_ms;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, e->js, DW_STREAM_EVENTS, &jo, &jerr);
    if (s != NATS_OK) return -1;
    *last = si->State.LastSeq;
    uint64_t msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    *known = false;
    memset(pos, 0, sizeof *pos);
    if (*last == 0) {
        /* Nothing was ever stored: every event is still to come. */
        *known = true;
        return 0;
    }
    if (msgs == 0) return 0;
    natsMsg *msg = NULL;
    s = js_GetMsg(&msg, e->js, DW_STREAM_EVENTS, *last, &jo, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) return 0;
    if (s != NATS_OK) return -1;
    const char *id = NULL;
    if (natsMsgHeader_Get(msg, DW_HDR_MSG_ID, &id) == NATS_OK && id &&
        reg_ev_msg_id_parse(id, strlen(id), pos) == 0)
        *known = true;
    else
        DW_WARN("the last message of DW_EVENTS has no event id: was something else published "
                "there?",
                "seq=%" PRIu64, *last);
    natsMsg_Destroy(msg);
    return 0;
}

static bool stopping(reg_emit *e);
/* Waiting for the stream's answers is cut in slices this long (a stop). */
#define ACK_SLICE_MS 100

/* Publish entries v[0..n) pipelined after stream sequence last; returns
 * how many the stream took, in order (stored or duplicate). */
static size_t publish_round(reg_emit *e, const reg_outbox_entry *v, size_t n, uint64_t last)
{
    char subj[64], reply[192], id[REG_EV_ID_MAX], expect[24];
    size_t sent = 0;
    e->round++;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        char *json = reg_ev_json(v[i].ev, &len);
        reg_ev_pos p = {v[i].seq, v[i].idx};
        natsMsg *msg = NULL;
        snprintf(reply, sizeof reply, "%s.%" PRIu64 ".%zu", e->inbox, e->round, i);
        snprintf(expect, sizeof expect, "%" PRIu64, last + i);
        natsStatus s = NATS_NO_MEMORY;
        if (json && !reg_ev_subject(subj, sizeof subj, v[i].ev->type) &&
            !reg_ev_msg_id(id, sizeof id, p))
            s = natsMsg_Create(&msg, subj, reply, json, (int)len);
        if (s == NATS_OK) s = natsMsgHeader_Set(msg, DW_HDR_MSG_ID, id);
        if (s == NATS_OK) s = natsMsgHeader_Set(msg, "Nats-Expected-Last-Sequence", expect);
        if (s == NATS_OK) s = natsConnection_PublishMsg(e->nc, msg);
        natsMsg_Destroy(msg);
        free(json);
        if (s != NATS_OK) break;
        sent++;
    }
    if (!sent) return 0;

    /* Answers come in order; collect them until one is missing. */
    int *outcome = calloc(sent, sizeof *outcome); /* 0 unknown, 1 stored, 2 dup, -1 refused */
    if (!outcome) return 0;
    size_t answered = 0;
    int64_t deadline = dw_mono_ns() / 1000000 + e->o.ack_wait_ms;
    while (answered < sent) {
        int64_t left = deadline - dw_mono_ns() / 1000000;
        natsMsg *r = NULL;
        /* In slices, so that a stop does not wait for answers (that NATS,
         * away, may never give): what was not answered stays in the outbox
         * and goes out again at the next start, under the same ids. */
        if (left <= 0 || stopping(e)) break;
        natsStatus ns =
            natsSubscription_NextMsg(&r, e->sub, left < ACK_SLICE_MS ? left : ACK_SLICE_MS);
        if (ns == NATS_TIMEOUT) continue;
        if (ns != NATS_OK) break;
        uint64_t round = 0;
        size_t i = 0;
        const char *rs = natsMsg_GetSubject(r) + strlen(e->inbox);
        if (sscanf(rs, ".%" SCNu64 ".%zu", &round, &i) == 2 && round == e->round && i < sent &&
            !outcome[i]) {
            uint64_t seq = 0;
            int jerr = 0,
                a = natsMsg_IsNoResponders(r)
                        ? 0
                        : reg_emit_parse_ack(natsMsg_GetData(r), (size_t)natsMsg_GetDataLength(r),
                                             &seq, &jerr);
            outcome[i] = a > 0 ? a : -1;
            answered++;
            if (a > 0) {
                e->have_last = true;
                e->last_stream_seq = seq;
                e->last_pos = (reg_ev_pos){v[i].seq, v[i].idx};
            } else if (jerr != JSStreamWrongLastSequenceErr) {
                /* (A wrong last sequence is no failure: another replica
                 * went first, or this one is behind; the next round reads
                 * the position again.) */
                DW_WARN("DW_EVENTS refused a lifecycle event", "seq=%" PRIu64 " idx=%u jserr=%d %s",
                        v[i].seq, v[i].idx, jerr,
                        natsMsg_IsNoResponders(r) ? "(no such stream)" : "");
            }
        }
        natsMsg_Destroy(r);
    }
    size_t took = 0;
    while (took < sent && outcome[took] > 0) {
        dw_metric_inc(outcome[took] == 2 ? m.duplicate : m.stored);
        took++;
    }
    if (took < sent) dw_metric_inc(m.refused);
    free(outcome);
    return took;
}

static void wait_kick(reg_emit *e, int64_t ms)
{
    int64_t deadline = dw_mono_ns() + ms * 1000000;
    pthread_mutex_lock(&e->mu);
    while (!e->kicked && !e->stopping)
        if (dw_cond_wait_until(&e->cv, &e->mu, deadline) == ETIMEDOUT) break;
    e->kicked = false;
    pthread_mutex_unlock(&e->mu);
}

static bool stopping(reg_emit *e)
{
    pthread_mutex_lock(&e->mu);
    bool s = e->stopping;
    pthread_mutex_unlock(&e->mu);
    return s;
}

/* One round. Returns 1 when it made progress or there is more to do at
 * once, 0 when idle, -1 on a failure (back off). */
static int round_once(reg_emit *e)
{
    reg_outbox ob;
    if (reg_store_outbox_read(e->st, (size_t)e->o.batch, &ob)) return -1;
    dw_metric_set(m.pending, (int64_t)ob.n);
    if (!ob.n) return 0;

    uint64_t last = 0;
    reg_ev_pos pos;
    bool known = false;
    if (e->trust_last && e->have_last) {
        last = e->last_stream_seq;
        pos = e->last_pos;
        known = true;
    } else if (position(e, e->o.ack_wait_ms, &last, &pos, &known)) {
        reg_outbox_free(&ob);
        return -1;
    }
    e->trust_last = false;
    if (!known) {
        if (e->have_last && e->last_stream_seq == last) {
            pos = e->last_pos;
        } else {
            /* Every message of DW_EVENTS is gone and this replica did not
             * publish the last one: nothing says which of ours are in. */
            if (!e->warned_unknown)
                DW_WARN("DW_EVENTS holds no message to tell which lifecycle events it has; "
                        "publishing what is waiting (a repeat is possible)",
                        "last_seq=%" PRIu64 " first_waiting_seq=%" PRIu64, last, ob.v[0].seq);
            e->warned_unknown = true;
            pos = (reg_ev_pos){0, 0};
        }
    }
    if (known || pos.seq) {
        dw_metric_set(m.position, (int64_t)pos.seq);
        reg_store_events_floor(e->st, pos.seq, pos.idx);
    }
    size_t skip = 0;
    while (skip < ob.n && reg_ev_pos_cmp((reg_ev_pos){ob.v[skip].seq, ob.v[skip].idx}, pos) <= 0)
        skip++;
    int rc = 1;
    if (skip && reg_store_outbox_delete_through(e->st, ob.v[skip - 1].seq, ob.v[skip - 1].idx))
        rc = -1;
    if (rc > 0 && skip < ob.n) {
        size_t took = publish_round(e, ob.v + skip, ob.n - skip, last);
        e->trust_last = took == ob.n - skip;
        if (took) {
            const reg_outbox_entry *t = &ob.v[skip + took - 1];
            reg_store_events_floor(e->st, t->seq, t->idx);
            dw_metric_set(m.position, (int64_t)t->seq);
            if (reg_store_outbox_delete_through(e->st, t->seq, t->idx)) rc = -1;
        } else {
            rc = -1;
        }
    }
    reg_outbox_free(&ob);
    return rc;
}

static void *emit_main(void *arg)
{
    reg_emit *e = arg;
    int64_t backoff = 50;
    while (!stopping(e)) {
        int rc = round_once(e);
        if (rc > 0) {
            backoff = 50;
            continue;
        }
        if (rc == 0) {
            backoff = 50;
            wait_kick(e, e->o.idle_check_ms);
            continue;
        }
        /* NATS away, DW_EVENTS missing, or another replica racing us:
         * look again soon, a little later each time. */
        wait_kick(e, backoff);
        if (backoff < 2000) backoff *= 2;
    }
    pthread_mutex_lock(&e->mu);
    e->finished = true;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

int reg_emit_start(reg_emit **out, natsConnection *nc, jsCtx *js, reg_store *st,
                   const reg_emit_opts *o)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, metrics_init);
    *out = NULL;
    reg_emit *e = calloc(1, sizeof *e);
    if (!e) return -1;
    e->nc = nc;
    e->js = js;
    e->st = st;
    if (o)
        e->o = *o;
    else
        reg_emit_opts_default(&e->o);
    e->o.nats_url = NULL; /* (borrowed for this call only) */
    pthread_mutex_init(&e->mu, NULL);
    dw_cond_init_mono(&e->cv);

    if (o && o->nats_url && *o->nats_url) {
        jsOptions jo;
        jsOptions_Init(&jo);
        if (dw_bus_connect_batched(&e->own_nc, o->nats_url, "registry-events") != NATS_OK ||
            natsConnection_JetStream(&e->own_js, e->own_nc, &jo) != NATS_OK) {
            DW_ERROR("cannot connect the lifecycle events emitter", "%s", "");
            goto error;
        }
        e->nc = e->own_nc;
        e->js = e->own_js;
    }
    char wild[160];
    if (dw_bus_new_inbox(e->inbox, sizeof e->inbox)) goto error;
    snprintf(wild, sizeof wild, "%s.>", e->inbox);
    if (natsConnection_SubscribeSync(&e->sub, nc, wild) != NATS_OK) {
        DW_ERROR("cannot subscribe for DW_EVENTS answers", "subject=%s", wild);
        goto error;
    }
    /* Best effort: a replica rebuilding its table from an old sequence
     * then skips what DW_EVENTS already has instead of writing it. */
    uint64_t last = 0;
    reg_ev_pos pos;
    bool known = false;
    if (position(e, START_LOOK_MS, &last, &pos, &known) == 0 && known) {
        reg_store_events_floor(st, pos.seq, pos.idx);
        dw_metric_set(m.position, (int64_t)pos.seq);
        DW_INFO("lifecycle events: DW_EVENTS position",
                "last_seq=%" PRIu64 " conn_seq=%" PRIu64 " idx=%u", last, pos.seq, pos.idx);
    }
    if (pthread_create(&e->thread, NULL, emit_main, e)) goto error;
    *out = e;
    return 0;
error:
    if (e->sub) {
        natsSubscription_Unsubscribe(e->sub);
        natsSubscription_Destroy(e->sub);
    }
    jsCtx_Destroy(e->own_js);
    natsConnection_Destroy(e->own_nc);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return -1;
}

void reg_emit_kick(reg_emit *e)
{
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->kicked = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* How long a stop waits for a round in progress before it closes our own
 * connection under it (within the stop's budget, dw/util.h). */
#define STOP_WAIT_MS 2000

void reg_emit_stop(reg_emit *e)
{
    if (!e) return;
    /* A round waiting for answers ends at its next slice; one inside a
     * JetStream call waits out that call's timeout (5 s while NATS is
     * away): past the stop's budget for it, our own connection is closed,
     * which ends the call at once. What the round did not finish stays in
     * the outbox for the next start. */
    int64_t deadline = dw_mono_ns() + dw_stop_left_ms(STOP_WAIT_MS) * 1000000;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_broadcast(&e->cv);
    while (!e->finished && dw_cond_wait_until(&e->cv, &e->mu, deadline) != ETIMEDOUT)
        ;
    bool finished = e->finished;
    pthread_mutex_unlock(&e->mu);
    if (!finished && e->own_nc) {
        DW_WARN("lifecycle events emitter still waiting for NATS: its connection is closed", "%s",
                "");
        natsConnection_Close(e->own_nc);
    }
    pthread_join(e->thread, NULL);
    natsSubscription_Unsubscribe(e->sub);
    natsSubscription_Destroy(e->sub);
    jsCtx_Destroy(e->own_js);
    natsConnection_Destroy(e->own_nc);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
