/* The dispatcher's resolver (dispatch_int.h): a round of registry
 * questions (which edges hold each waiting room's members?) runs on a
 * thread of its own after DW_CONN's barrier; the loop starts rounds and
 * hands the answers to the ordering core. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch_int.h"
#include "dw/log.h"
#include "dw/dlq_record.h"
#include "dw/wire.h"

/* ---- the resolver thread ---- */

/* DW_CONN's last sequence now: every connect acked before this call, on
 * any edge, is at or below it. When JetStream does not answer (DW_CONN has
 * no leader: an election takes 4-7 s on a cluster, and no connect is acked
 * meanwhile), the last one it gave, and it is not asked again for
 * BARRIER_RETRY_MS: one round after another would each wait for it. */
static uint64_t conn_barrier(dispatcher *d)
{
    static int64_t last_warn;
    int64_t now = mono_ms();
    if (now < d->barrier_retry_ms) return d->barrier_last;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait =
        d->cfg.registry_timeout_ms < BARRIER_WAIT_MS ? d->cfg.registry_timeout_ms : BARRIER_WAIT_MS;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, d->js, DW_STREAM_CONN, &jo, &jerr);
    if (s == NATS_OK && si->State.LastSeq > d->barrier_last) d->barrier_last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) {
        d->barrier_retry_ms = mono_ms() + BARRIER_RETRY_MS;
        if (mono_ms() - last_warn >= ERROR_LOG_EVERY_MS) {
            last_warn = mono_ms();
            DW_WARN("DW_CONN's end unknown: a connect on another edge may not be applied yet",
                    "status=%s jserr=%d using=%" PRIu64, natsStatus_GetText(s), (int)jerr,
                    d->barrier_last);
        }
    }
    return d->barrier_last;
}

static void resolve(dispatcher *d, round_work *w)
{
    uint64_t barrier = d->cfg.conn_barrier ? conn_barrier(d) : 0;
    unsigned char *unsent = calloc(w->n ? w->n : 1, 1);
    if (!unsent || inbox_begin(d->ib, w->n)) {
        free(unsent);
        for (size_t i = 0; i < w->n; i++)
            w->answers[i] = (round_answer){0, DLQ_REASON_DISPATCHER, NULL, 0};
        return;
    }
    for (size_t i = 0; i < w->n; i++) {
        Dw__RoomQuery q;
        dw__room_query__init(&q);
        q.room = w->rooms[i];
        q.min_seq = w->min_seq[i] > barrier ? w->min_seq[i] : barrier;
        size_t len = 0;
        uint8_t *buf = dw_pb_pack(&q.base, &len);
        char reply[192];
        inbox_reply_subject(d->ib, i, reply, sizeof reply);
        natsStatus s =
            buf ? natsConnection_PublishRequest(d->nc, DW_SUBJ_REG_ROOM, reply, buf, (int)len)
                : NATS_NO_MEMORY;
        free(buf);
        if (s != NATS_OK) {
            inbox_skip(d->ib, i);
            unsent[i] = 1;
        }
    }
    inbox_wait(d->ib, dw_mono_ns() + d->cfg.registry_timeout_ms * 1000000);
    size_t failed = 0;
    const char *why = NULL;
    for (size_t i = 0; i < w->n; i++) {
        natsMsg *m = inbox_take(d->ib, i);
        round_answer *a = &w->answers[i];
        if (unsent[i] || !m) {
            *a = (round_answer){0, DLQ_REASON_REGISTRY, NULL, 0};
        } else if (natsMsg_IsNoResponders(m)) {
            *a = (round_answer){0, DLQ_REASON_REGISTRY, NULL, 0};
        } else {
            Dw__RoomEdges *re = dw_pb_unpack(&dw__room_edges__descriptor, m);
            if (!re || !re->ok) {
                if (re)
                    DW_WARN("registry error", "room=%s code=%s error=\"%s\"", w->rooms[i],
                            dw_err_name(dw_err_of(re->error)), re->error);
                *a = (round_answer){0, DLQ_REASON_REGISTRY_ERROR, NULL, 0};
            } else {
                a->ok = 1;
                a->edges = calloc(re->n_edge_ids ? re->n_edge_ids : 1, sizeof *a->edges);
                for (size_t k = 0; a->edges && k < re->n_edge_ids; k++)
                    if ((a->edges[a->n_edges] = strdup(re->edge_ids[k]))) a->n_edges++;
                if (!a->edges) *a = (round_answer){0, DLQ_REASON_DISPATCHER, NULL, 0};
            }
            if (re) dw__room_edges__free_unpacked(re, NULL);
        }
        natsMsg_Destroy(m);
        if (!a->ok) {
            failed++;
            why = a->reason;
        }
    }
    inbox_end(d->ib);
    free(unsent);
    if (failed) DW_WARN("registry failed", "rooms=%zu of=%zu reason=%s", failed, w->n, why);
}

/* On the resolver's thread: ask, then hand the answers to the loop. */
static void round_run(dw_task *t)
{
    round_work *w = (round_work *)t;
    dispatcher *d = w->d;
    resolve(d, w);
    loop_ev *e = dispatch__ev_new(d, EV_ROUND);
    if (e) {
        e->round = w;
        dispatch__post(d, e);
    } else {
        resolver__round_free(w); /* its rooms stay in the round until the loop ends it */
    }
}

/* Stopping before the round was asked: nobody waits for it. */
static void round_cancel(dw_task *t)
{
    resolver__round_free((round_work *)t);
}

void resolver__round_free(round_work *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->rooms[i]);
        for (size_t k = 0; k < w->answers[i].n_edges; k++)
            free(w->answers[i].edges[k]);
        free(w->answers[i].edges);
    }
    free(w->rooms);
    free(w->min_seq);
    free(w->answers);
    free(w);
}

/* ---- the loop: resolution rounds ---- */

void resolver__start_round(dispatcher *d, int64_t now)
{
    if (d->round_out) return;
    order_query *q = NULL;
    size_t n = 0;
    if (order_round_begin(d->ord, now, &q, &n) || !n) return;
    round_work *w = calloc(1, sizeof *w);
    if (w) {
        w->d = d;
        w->task.run = round_run;
        w->task.cancel = round_cancel;
        w->rooms = calloc(n, sizeof *w->rooms);
        w->min_seq = calloc(n, sizeof *w->min_seq);
        w->answers = calloc(n, sizeof *w->answers);
    }
    if (!w || !w->rooms || !w->min_seq || !w->answers) {
        resolver__round_free(w);
        order_round_end(d->ord, now); /* every room counts a failed attempt */
        return;
    }
    w->n = n;
    for (size_t i = 0; i < n; i++) {
        w->rooms[i] = strdup(q[i].room);
        w->min_seq[i] = q[i].min_seq;
        if (!w->rooms[i]) {
            w->n = i;
            resolver__round_free(w);
            order_round_end(d->ord, now);
            return;
        }
    }
    if (dw_pool_submit(d->resolver, &w->task)) {
        resolver__round_free(w);
        order_round_end(d->ord, now);
        return;
    }
    d->round_out = 1;
}

void resolver__on_round(dispatcher *d, round_work *w, int64_t now)
{
    for (size_t i = 0; i < w->n; i++) {
        round_answer *a = &w->answers[i];
        if (a->ok) {
            for (size_t k = 0; k < a->n_edges; k++)
                if (edges_id_valid(a->edges[k], strlen(a->edges[k])))
                    edges_known(d->edges, a->edges[k], mono_ms());
            order_round_room_edges(d->ord, i, a->edges, a->n_edges, now);
        } else {
            size_t n = order_round_room_failed(d->ord, i,
                                               a->reason ? a->reason : DLQ_REASON_REGISTRY, now);
            dw_metric_add(d->m->retried, (int64_t)n);
        }
    }
    dw_metric_add(d->m->retried, (int64_t)order_round_end(d->ord, now));
    resolver__round_free(w);
    d->round_out = 0;
}
