/* The dispatcher's loop (dispatch.h): events from the other threads,
 * periodic work (edge liveness, in-progress acks, partition floors), and
 * setup and teardown. The rest of the shell is in partitions.c,
 * resolver.c, requests.c and worker.c (dispatch_int.h). */
#include "dispatch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch_int.h"
#include "dw/log.h"
#include "dw/pull.h"

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};

#define COUNTER(field, name, labels, help)                                                         \
    DW_METRIC_COUNTER_ROW(dispatch_metrics, field, name, labels, help)
#define HISTOGRAM(field, name, labels, help)                                                       \
    DW_METRIC_HISTOGRAM_ROW(dispatch_metrics, field, name, labels, help, latency_bounds)

static const dw_metric_def metric_defs[] = {
    COUNTER(delivered, "dw_dispatcher_messages_total", "result=\"delivered\"",
            "Messages settled or retried, by result: delivered (acked), retried (an attempt "
            "failed; retried after a backoff), dead_lettered (written to DW_DLQ, then "
            "terminated)"),
    COUNTER(retried, "dw_dispatcher_messages_total", "result=\"retried\"", NULL),
    COUNTER(dead_lettered, "dw_dispatcher_messages_total", "result=\"dead_lettered\"", NULL),
    COUNTER(redeliveries, "dw_dispatcher_retries_total", NULL,
            "Deliveries JetStream made again (ack wait passed, or a partition read again from "
            "its floor)"),
    COUNTER(dlq_failed, "dw_dispatcher_dead_letter_failures_total", NULL,
            "Dead letters that could not be written at the first try"),
    HISTOGRAM(latency, "dw_dispatcher_delivery_seconds", NULL,
              "From stored in DW_MSG to every edge confirmed, per delivered message"),
    HISTOGRAM(stage_fetched, "dw_dispatcher_stage_seconds", "stage=\"fetched\"",
              "Time a delivered message spent per hop in the dispatcher: fetched (stored in "
              "DW_MSG -> fetched; wall clocks), resolved (fetched -> the registry named its "
              "edges), confirmed (resolved -> every edge took it)"),
    HISTOGRAM(stage_resolved, "dw_dispatcher_stage_seconds", "stage=\"resolved\"", NULL),
    HISTOGRAM(stage_confirmed, "dw_dispatcher_stage_seconds", "stage=\"confirmed\"", NULL),
    DW_METRIC_GAUGE_ROW(dispatch_metrics, held, "dw_dispatcher_held_messages", NULL,
                        "Messages fetched and not yet settled (waiting for the registry, an "
                        "edge, or a retry)"),
    DW_METRIC_GAUGE_ROW(dispatch_metrics, partitions, "dw_dispatcher_partitions", NULL,
                        "DW_MSG partitions this dispatcher holds"),
    COUNTER(resets, "dw_dispatcher_partition_resets_total", NULL,
            "Partitions read again from their floor (a gap in deliveries, a reconnect)"),
};

/* Registered once per process: dispatch_create may run again after a
 * failed setup. */
static dispatch_metrics *metrics_get(void)
{
    static dispatch_metrics m;
    static int registered;
    if (!registered) {
        registered = 1;
        dw_metrics_register(&m, metric_defs, sizeof metric_defs / sizeof metric_defs[0]);
    }
    return &m;
}

static void msg_release(void *h)
{
    natsMsg_Destroy(h);
}

/* The destructor of an event nobody handled (left at shutdown): what it
 * carries goes too; a dead letter's message goes back to the order table. */
static void ev_free(dw_mail *m)
{
    loop_ev *e = (loop_ev *)m;
    if (e->msg) natsMsg_Destroy(e->msg);
    resolver__round_free(e->round);
    if (e->job) {
        if (e->job->msg) order_msg_release(e->d->ord, e->job->msg);
        free(e->job);
    }
    free(e);
}

void dispatch__post(dispatcher *d, loop_ev *e)
{
    dw_mailbox_post(&d->mbox, &e->mail);
}

loop_ev *dispatch__ev_new(dispatcher *d, ev_kind kind)
{
    loop_ev *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->mail.destroy = ev_free;
    e->d = d;
    e->kind = kind;
    return e;
}

void dispatch_reconnected(dispatcher *d)
{
    if (!d) return;
    atomic_store(&d->reconnected, true);
    dw_mailbox_kick(&d->mbox);
}

/* ---- the loop: periodic work ---- */

static void housekeeping(dispatcher *d, int64_t now)
{
    if (now >= d->next_seed_ms) {
        natsConnection_PublishRequest(d->nc, DW_SUBJ_REG_EDGES, d->seed_inbox, NULL, 0);
        d->next_seed_ms = now + SEED_EVERY_MS;
    }
    if (now >= d->next_sweep_ms) {
        d->next_sweep_ms = now + d->sweep_every_ms;
        char **ids = NULL;
        size_t n = 0;
        if (!edges_stale(d->edges, mono_ms(), &ids, &n)) {
            for (size_t i = 0; i < n; i++) {
                int pending = 0;
                for (size_t k = 0; k < d->n_downs_pending && !pending; k++)
                    pending = !strcmp(d->downs_pending[k], ids[i]);
                if (pending) continue;
                char **g = realloc(d->downs_pending, (d->n_downs_pending + 1) * sizeof *g);
                job *j = g ? calloc(1, sizeof *j) : NULL;
                if (g) d->downs_pending = g;
                if (!j) continue;
                if (!(d->downs_pending[d->n_downs_pending] = strdup(ids[i]))) {
                    free(j);
                    continue;
                }
                d->n_downs_pending++;
                j->kind = JOB_EDGE_DOWN;
                snprintf(j->edge, sizeof j->edge, "%s", ids[i]);
                worker__submit(d, j);
            }
            edges_list_free(ids, n);
        }
    }
    if (now >= d->next_progress_ms) {
        /* Held messages tell JetStream we are on them, so the ack wait
         * never hands them out again while we hold them. */
        int64_t every = d->cfg.ack_wait_ms / 3;
        d->next_progress_ms = now + (every < 1000 ? every : 1000);
        void *h[PROGRESS_BATCH];
        size_t n = order_progress_due(d->ord, now, every, h, PROGRESS_BATCH);
        for (size_t i = 0; i < n; i++)
            dw_pull_progress(d->nc, h[i]);
    }
    if (now >= d->next_floor_ms) {
        d->next_floor_ms = now + 1000;
        for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
            part *pt = &d->parts[p];
            if (pt->state != P_READY) continue;
            uint64_t min = order_min_seq(d->ord, p);
            leasekv_floor(d->lk, p, min ? min - 1 : pt->max_seen);
        }
        order_stats st;
        order_get_stats(d->ord, &st);
        dw_metric_set(d->m->held, (double)st.held);
        dw_metric_set(d->m->partitions, (double)leasekv_owned(d->lk));
    }
}

static void handle_event(dispatcher *d, loop_ev *e, int64_t now)
{
    part *pt = e->p < DW_MSG_PARTITIONS ? &d->parts[e->p] : NULL;
    switch (e->kind) {
    case EV_PULL: part__on_msg(d, e, now); break;
    case EV_REPLY: requests__on_reply_ev(d, e, now); break;
    case EV_ROUND: resolver__on_round(d, e->round, now); break;
    case EV_READY:
        if (pt->state == P_DRAINING) break; /* on its way out: set up meanwhile, not read */
        if (pt->state != P_NONE && pt->state != P_RESETTING) part__drop(d, e->p, P_NONE);
        pt->state = P_READY;
        pt->gen = e->gen;
        pt->pulling = 0;
        pt->wait_since = 0;
        pt->last_dseq = 0;
        pt->max_seen = e->floor;
        snprintf(pt->next_subj, sizeof pt->next_subj, "$JS.API.CONSUMER.MSG.NEXT.%s.%s",
                 DW_STREAM_MSG, e->consumer);
        DW_INFO("partition ready", "partition=%u consumer=%s floor=%" PRIu64, e->p, e->consumer,
                e->floor);
        break;
    case EV_LOST: part__drop(d, e->p, P_NONE); break;
    case EV_RELEASE:
        if (pt->state == P_READY || pt->state == P_RESETTING) {
            pt->state = P_DRAINING;
            pt->drain_until = now + 2 * d->cfg.edge_timeout_ms;
        } else {
            leasekv_drained(d->lk, e->p);
        }
        break;
    case EV_JOB: worker__on_job(d, e->job, now); break;
    case EV_INFO: part__on_info_reply(d, e); break;
    }
    e->round = NULL; /* on_round and on_job took them */
    e->job = NULL;
    dw_mail_free(&e->mail);
}

int dispatch_run(dispatcher *d)
{
    int64_t stop_until = 0;
    for (;;) {
        int stopping = dw_stop != 0;
        int64_t now = mono_ms();
        if (stopping && !stop_until) {
            /* Answers can come only while connected; and the stop's other
             * steps (giving the partitions back) need their share of its
             * budget too (dw/util.h). */
            int connected = natsConnection_Status(d->nc) == NATS_CONN_STATUS_CONNECTED;
            stop_until = now + (connected ? dw_stop_left_ms(d->cfg.edge_timeout_ms + 500) : 0);
            DW_INFO("stopping: finishing requests in flight", "requests=%zu connected=%d",
                    d->n_reqs, connected);
        }
        if (stopping && (now >= stop_until || !d->n_reqs)) {
            if (d->n_reqs)
                DW_WARN("stopping with delivery requests unanswered: not acked, their messages "
                        "are delivered again by the partitions' next owner",
                        "requests=%zu", d->n_reqs);
            break;
        }

        /* Wait for news or the next tick. */
        dw_mail *mail;
        if (atomic_load(&d->reconnected)) {
            mail = dw_mailbox_take(&d->mbox);
        } else {
            int64_t wake = now + TICK_MS, w = order_next_wake(d->ord);
            if (w < wake) wake = w > now ? w : now;
            mail = dw_mailbox_wait(&d->mbox, wake * 1000000);
        }
        loop_ev *e = (loop_ev *)mail;
        now = mono_ms();

        if (atomic_exchange(&d->reconnected, false)) {
            /* Heartbeats missed meanwhile say nothing about the edges.
             * Deliveries sent to us while we were away are lost: each
             * partition asks its consumer how far it delivered (and pulls
             * again meanwhile); one that delivered more than we got is
             * read again from its floor (part__check, below). */
            edges_touch_all(d->edges, now);
            for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++)
                part__check(d, p, CHECK_RECONNECT, now);
        }
        while (e) {
            loop_ev *next = (loop_ev *)e->mail.next;
            handle_event(d, e, now);
            e = next;
        }
        requests__timeouts(d, now);
        if (!stopping) {
            housekeeping(d, now);
            resolver__start_round(d, now);
        }
        requests__send(d, now);
        worker__settle(d);
        for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
            part *pt = &d->parts[p];
            if (pt->state == P_DRAINING &&
                (!order_inflight_of(d->ord, p) || now >= pt->drain_until)) {
                part__drop(d, p, P_NONE);
                leasekv_drained(d->lk, p);
                continue;
            }
            if (pt->state != P_READY || stopping) continue;
            part__tick(d, p, now);
        }
    }
    /* What settled is acked; the rest goes back with the partitions. */
    worker__settle(d);
    return 0;
}

/* ---- setup ---- */

static int sub_inbox(dispatcher *d, natsSubscription **sub, char *prefix, size_t len,
                     const char *wild, natsMsgHandler cb)
{
    natsInbox *name = NULL;
    if (natsInbox_Create(&name) != NATS_OK) return -1;
    snprintf(prefix, len, "%s", name);
    natsInbox_Destroy(name);
    char subj[256];
    snprintf(subj, sizeof subj, "%s.%s", prefix, wild);
    natsStatus s = natsConnection_Subscribe(sub, d->nc, subj, cb, d);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(*sub, -1, -1);
    if (s != NATS_OK) {
        DW_ERROR("subscribe failed", "subject=%s status=%s", subj, natsStatus_GetText(s));
        return -1;
    }
    return 0;
}

static int bucket_replicas(dispatcher *d)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    int r = 1;
    if (js_GetStreamInfo(&si, d->js, DW_STREAM_MSG, NULL, &jerr) == NATS_OK && si->Config)
        r = si->Config->Replicas > 0 ? si->Config->Replicas : 1;
    jsStreamInfo_Destroy(si);
    return r;
}

int dispatch_create(dispatcher **out, natsConnection *nc, jsCtx *js, const dispatch_cfg *cfg)
{
    dispatcher *d = calloc(1, sizeof *d);
    if (!d) return -1;
    d->nc = nc;
    d->js = js;
    d->cfg = *cfg;
    d->m = metrics_get();
    if (dw_mailbox_init(&d->mbox, NULL, NULL)) {
        free(d);
        return -1;
    }
    atomic_init(&d->reconnected, false);
    atomic_init(&d->quit, false);
    d->sweep_every_ms = cfg->edge_dead_ms / 4;
    if (d->sweep_every_ms > 1000) d->sweep_every_ms = 1000;
    if (d->sweep_every_ms < 10) d->sweep_every_ms = 10;
    d->per_part_cap = (size_t)(cfg->max_held / DW_MSG_PARTITIONS);
    if (d->per_part_cap < (size_t)cfg->fetch_batch) d->per_part_cap = (size_t)cfg->fetch_batch;

    order_cfg oc = {
        .retry_base_ms = cfg->retry_base_ms,
        .retry_max_ms = cfg->retry_max_ms,
        .absent_retry_ms = cfg->absent_retry_ms,
        .max_attempts = (uint32_t)cfg->max_deliver,
        .max_request_bytes = 0,
        .max_round_rooms = 4096,
        .release = msg_release,
    };
    int max_payload = natsConnection_GetMaxPayload(nc);
    oc.max_request_bytes = max_payload > 4096 ? (size_t)max_payload - 1024 : 1024 * 1024 - 1024;
    if (order_create(&d->ord, &oc)) goto error;
    if (edges_create(&d->edges, cfg->edge_dead_ms, EDGES_FORGET_MS, EDGES_MAX)) goto error;
    if (inbox_create(&d->ib, nc)) goto error;
    if (sub_inbox(d, &d->pull_sub, d->pull_inbox, sizeof d->pull_inbox, "*.*.*", part__on_pull) ||
        sub_inbox(d, &d->reply_sub, d->reply_inbox, sizeof d->reply_inbox, "*",
                  requests__on_reply) ||
        sub_inbox(d, &d->info_sub, d->info_inbox, sizeof d->info_inbox, "*.*", part__on_info))
        goto error;
    natsInbox *name = NULL;
    if (natsInbox_Create(&name) != NATS_OK) goto error;
    snprintf(d->seed_inbox, sizeof d->seed_inbox, "%s", name);
    natsInbox_Destroy(name);
    if (natsConnection_Subscribe(&d->seed_sub, nc, d->seed_inbox, requests__on_seed, d) !=
            NATS_OK ||
        natsConnection_Subscribe(&d->hb_sub, nc, DW_SUBJ_EDGE_HEARTBEAT, requests__on_heartbeat,
                                 d) != NATS_OK)
        goto error;
    if (dw_pool_start(&d->resolver, 1, 0) || dw_pool_start(&d->worker, 1, 0)) goto error;

    leasekv_cfg lc = {
        .instance = cfg->instance,
        .ttl_ms = cfg->lease_ttl_ms,
        .replicas = bucket_replicas(d),
        .ack_wait_ms = cfg->ack_wait_ms,
        .max_ack_pending = (int64_t)d->per_part_cap + cfg->fetch_batch,
        .on_ready = part__lease_ready,
        .on_lost = part__lease_lost,
        .on_release = part__lease_release,
        .arg = d,
    };
    if (leasekv_start(&d->lk, nc, js, &lc)) goto error;
    *out = d;
    return 0;

error:
    dispatch_destroy(d);
    return -1;
}

/* Drain every subscription of ours (a callback still running finishes
 * before the drain completes) with one deadline for all: a drain completes
 * only once the server confirmed the unsubscribe, so with NATS away each
 * would wait out its whole timeout. Then, a short wait is enough: nothing
 * can arrive. */
static void subs_close(dispatcher *d)
{
    natsSubscription *subs[] = {d->hb_sub, d->seed_sub, d->pull_sub, d->reply_sub, d->info_sub};
    dw_subs_drain(d->nc, subs, sizeof subs / sizeof subs[0], 5000, 500);
    d->hb_sub = d->seed_sub = d->pull_sub = d->reply_sub = d->info_sub = NULL;
}

void dispatch_destroy(dispatcher *d)
{
    if (!d) return;
    /* With NATS away there is nothing left to tell it, and every call that
     * still tries waits out its timeout: the lease watcher's unsubscribe
     * alone (nats.c deletes its consumer) took 10 s. Closed, they return
     * at once; the service's skeleton only destroys a closed connection. */
    if (d->nc && natsConnection_Status(d->nc) != NATS_CONN_STATUS_CONNECTED)
        natsConnection_Close(d->nc);
    /* Partitions first: they are given back while NATS is still there. */
    leasekv_stop(d->lk);
    d->lk = NULL;
    atomic_store(&d->quit, true);
    /* A round or job in progress finishes and posts its event; queued ones
     * are cancelled (jobs are posted undone). */
    dw_pool_stop(d->resolver);
    dw_pool_stop(d->worker);
    subs_close(d);
    inbox_destroy(d->ib);
    /* Events left (their jobs and rounds included): every poster is gone. */
    dw_mailbox_destroy(&d->mbox);
    for (size_t i = 0; i < d->n_reqs; i++)
        order_request_done(d->ord, d->reqs[i].r, ORDER_TIMEOUT, mono_ms());
    order_destroy(d->ord);
    edges_destroy(d->edges);
    for (size_t i = 0; i < d->n_downs_pending; i++)
        free(d->downs_pending[i]);
    free(d->downs_pending);
    free(d);
}
