#include "dispatch.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/pull.h"
#include "dw/util.h"
#include "edges.h"
#include "inbox.h"
#include "leasekv.h"
#include "order.h"
#include "record.h"

/* A down edge is remembered this long, so it is reported once; past the
 * JetStream dedup window (2 min), a registry that still names it gets a
 * fresh EDGE_DOWN. */
#define EDGES_FORGET_MS (5 * 60 * 1000)
#define EDGES_MAX 65536
#define SEED_EVERY_MS 5000
#define PUBLISH_WAIT_MS 2000
#define DLQ_PUBLISH_WAIT_MS 5000
/* How often the loop looks at its clocks when nothing arrives. */
#define TICK_MS 50
/* A pull request is over this long after its expiry, answered or not: the
 * server does not always say so (no 408 when it dropped the request), and
 * waiting long stalls the partition. A new request while the old one is
 * still served does no harm: deliveries are taken whichever request they
 * answer. */
#define PULL_GRACE_MS 200
/* After a reconnect, a partition whose consumer does not answer its info
 * request within this long is read again from its floor. */
#define CHECK_WAIT_MS 2000
#define MAX_REQUESTS 4096
#define PROGRESS_BATCH 4096
#define ERROR_LOG_EVERY_MS 5000
/* DW_CONN's stream info answers in milliseconds; past this it has no
 * leader (or is overloaded): go on with the last barrier known. */
#define BARRIER_WAIT_MS 500
#define BARRIER_RETRY_MS 1000

static struct {
    dw_metric *delivered, *retried, *dead_lettered, *dlq_failed, *redeliveries, *latency, *held,
        *partitions, *resets, *stage_fetched, *stage_resolved, *stage_confirmed;
} M;

static void metrics_register(void)
{
    static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10,   30};
    if (M.delivered) return;
    M.delivered = dw_counter("dw_dispatcher_messages_total", "result=\"delivered\"",
                             "Messages settled or retried, by result: delivered (acked), retried "
                             "(an attempt failed; retried after a backoff), dead_lettered "
                             "(written to DW_DLQ, then terminated)");
    M.retried = dw_counter("dw_dispatcher_messages_total", "result=\"retried\"", NULL);
    M.dead_lettered = dw_counter("dw_dispatcher_messages_total", "result=\"dead_lettered\"", NULL);
    M.redeliveries = dw_counter("dw_dispatcher_retries_total", NULL,
                                "Deliveries JetStream made again (ack wait passed, or a "
                                "partition read again from its floor)");
    M.dlq_failed = dw_counter("dw_dispatcher_dead_letter_failures_total", NULL,
                              "Dead letters that could not be written at the first try");
    M.latency = dw_histogram("dw_dispatcher_delivery_seconds", NULL,
                             "From stored in DW_MSG to every edge confirmed, per delivered message",
                             bounds, sizeof bounds / sizeof bounds[0]);
    M.stage_fetched = dw_histogram(
        "dw_dispatcher_stage_seconds", "stage=\"fetched\"",
        "Time a delivered message spent per hop in the dispatcher: fetched (stored in DW_MSG -> "
        "fetched; wall clocks), resolved (fetched -> the registry named its edges), confirmed "
        "(resolved -> every edge took it)",
        bounds, sizeof bounds / sizeof bounds[0]);
    M.stage_resolved = dw_histogram("dw_dispatcher_stage_seconds", "stage=\"resolved\"", NULL,
                                    bounds, sizeof bounds / sizeof bounds[0]);
    M.stage_confirmed = dw_histogram("dw_dispatcher_stage_seconds", "stage=\"confirmed\"", NULL,
                                     bounds, sizeof bounds / sizeof bounds[0]);
    M.held = dw_gauge("dw_dispatcher_held_messages", NULL,
                      "Messages fetched and not yet settled (waiting for the registry, an "
                      "edge, or a retry)");
    M.partitions =
        dw_gauge("dw_dispatcher_partitions", NULL, "DW_MSG partitions this dispatcher holds");
    M.resets = dw_counter("dw_dispatcher_partition_resets_total", NULL,
                          "Partitions read again from their floor (a gap in deliveries, a "
                          "reconnect)");
}

static void msg_release(void *h)
{
    natsMsg_Destroy(h);
}

static int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

/* ---- events from other threads to the loop ---- */

typedef enum {
    EV_PULL,    /* a delivery or status for a partition's pull request */
    EV_REPLY,   /* an edge's reply (or no responders) */
    EV_ROUND,   /* the resolver finished a round */
    EV_READY,   /* the lease thread set up a partition */
    EV_LOST,    /* a partition is not ours any more */
    EV_RELEASE, /* a partition should go: drain it */
    EV_JOB,     /* the worker finished a job */
    EV_INFO,    /* a partition consumer's info, asked for after a reconnect */
} ev_kind;

typedef struct round_answer {
    int ok;
    const char *reason; /* static, when !ok */
    char **edges;       /* owned */
    size_t n_edges;
} round_answer;

typedef struct round_work {
    char **rooms; /* owned copies */
    uint64_t *min_seq;
    round_answer *answers;
    size_t n;
} round_work;

typedef enum { JOB_EDGE_DOWN, JOB_CONN_GONE, JOB_DEAD_LETTER } job_kind;

typedef struct job {
    struct job *next;
    job_kind kind;
    char edge[EDGES_ID_MAX + 1];
    char conn[EDGES_ID_MAX + 1];
    order_msg *msg; /* JOB_DEAD_LETTER: popped, the loop's until the job is back */
    int ok;
} job;

typedef struct loop_ev {
    struct loop_ev *next;
    ev_kind kind;
    uint32_t p, gen;
    uint64_t req;
    natsMsg *msg;
    char consumer[96];
    uint64_t floor;
    round_work *round;
    job *job;
} loop_ev;

/* ---- the loop's view of a partition ---- */

enum { P_NONE = 0, P_READY, P_RESETTING, P_DRAINING };

typedef struct part {
    int state;
    uint32_t gen;
    char next_subj[192];
    int pulling;        /* a pull request is out */
    uint64_t pull_id;   /* its id */
    int pull_left;      /* deliveries it may still bring */
    int64_t pull_until; /* over by then, heard or not */
    uint64_t last_dseq; /* consumer sequence of the last delivery */
    uint64_t max_seen;  /* highest stream sequence fetched */
    int64_t drain_until;
    int checking;        /* after a reconnect: its consumer info is asked for */
    int64_t check_until; /* read again from the floor if not answered by then */
} part;

typedef struct inflight_req {
    uint64_t id;
    order_request *r;
} inflight_req;

struct dispatcher {
    natsConnection *nc;
    jsCtx *js;
    dispatch_cfg cfg;
    order *ord;
    edges_table *edges;
    leasekv *lk;

    /* events */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    loop_ev *head, *tail;
    atomic_bool reconnected;

    part parts[DW_MSG_PARTITIONS];
    natsSubscription *pull_sub;
    char pull_inbox[160];
    natsSubscription *reply_sub;
    char reply_inbox[160];
    natsSubscription *info_sub;
    char info_inbox[160];
    inflight_req reqs[MAX_REQUESTS];
    size_t n_reqs;
    uint64_t next_pull_id;

    /* resolver */
    pthread_t resolver;
    int resolver_started;
    pthread_mutex_t rmu;
    pthread_cond_t rcv;
    round_work *round_todo;
    int round_out;            /* a round is with the resolver */
    uint64_t barrier_last;    /* resolver: DW_CONN's last sequence, last known */
    int64_t barrier_retry_ms; /* resolver: ask for it again from then on */
    inbox *ib;

    /* worker */
    pthread_t worker;
    int worker_started;
    pthread_mutex_t wmu;
    pthread_cond_t wcv;
    job *jobs_head, *jobs_tail;
    char **downs_pending; /* edges with an EDGE_DOWN job out */
    size_t n_downs_pending;

    atomic_bool quit; /* threads stop */

    natsSubscription *hb_sub, *seed_sub;
    char seed_inbox[128];
    int64_t next_seed_ms, next_sweep_ms, next_progress_ms, next_floor_ms;
    int64_t sweep_every_ms;
    size_t per_part_cap;
};

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* Wait on cv until deadline_ms (dw_mono_ns clock, ms). mu is held. */
static void cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ms)
{
    struct timespec ts = {.tv_sec = deadline_ms / 1000, .tv_nsec = (deadline_ms % 1000) * 1000000};
    pthread_cond_timedwait(cv, mu, &ts);
}

static void post(dispatcher *d, loop_ev *e)
{
    pthread_mutex_lock(&d->mu);
    if (d->tail)
        d->tail->next = e;
    else
        d->head = e;
    d->tail = e;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static loop_ev *ev_new(ev_kind kind)
{
    loop_ev *e = calloc(1, sizeof *e);
    if (e) e->kind = kind;
    return e;
}

/* ---- nats.c callbacks ---- */

/* The consumer token of a JetStream ack subject: "$JS.ACK.<stream>.<consumer>.
 * <delivered>.<sseq>.<dseq>.<ts>.<pending>", or with a domain and account
 * hash after "$JS.ACK." (12 tokens, nats-server 2.10 and later). */
static int ack_consumer(const char *reply, const char **start, size_t *len)
{
    const char *tok[16];
    size_t n = 0;
    const char *p = reply;
    if (strncmp(p, "$JS.ACK.", 8)) return -1;
    for (const char *q = p; n < 16; q++) {
        tok[n++] = q;
        q = strchr(q, '.');
        if (!q) break;
    }
    size_t ci = n == 9 ? 3 : n >= 11 ? 5 : 0;
    if (!ci) return -1;
    *start = tok[ci];
    *len = (size_t)(tok[ci + 1] - tok[ci] - 1);
    return 0;
}

/* A delivery names its consumer (dwp-<p>-<instance>-<gen>) in its ack
 * subject; a status comes to the request's own subject "<inbox>.<p>.<gen>.<id>"
 * (a delivery's subject is the message's own). */
static void on_pull(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    const char *subj = natsMsg_GetSubject(msg), *reply = natsMsg_GetReply(msg);
    size_t plen = strlen(d->pull_inbox);
    unsigned long p = 0, gen = 0;
    unsigned long long id = 0;
    const char *cons = NULL;
    size_t clen = 0;
    int ok = 0;
    if (reply && !ack_consumer(reply, &cons, &clen)) {
        const char *dash = clen > 4 ? memrchr(cons, '-', clen) : NULL;
        ok = sscanf(cons, "dwp-%lu-", &p) == 1 && dash && sscanf(dash + 1, "%lu", &gen) == 1;
    } else if (subj && !strncmp(subj, d->pull_inbox, plen) && subj[plen] == '.') {
        ok = sscanf(subj + plen + 1, "%lu.%lu.%llu", &p, &gen, &id) == 3;
    }
    loop_ev *e = ok && p < DW_MSG_PARTITIONS ? ev_new(EV_PULL) : NULL;
    if (e) {
        e->p = (uint32_t)p;
        e->gen = (uint32_t)gen;
        e->req = id; /* 0 for a delivery */
        e->msg = msg;
        post(d, e);
        return;
    }
    DW_DEBUG("pull delivery not ours", "subject=%s reply=%s", subj ? subj : "", reply ? reply : "");
    natsMsg_Destroy(msg);
}

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(d->reply_inbox);
    loop_ev *e = NULL;
    if (subj && !strncmp(subj, d->reply_inbox, plen) && subj[plen] == '.' &&
        (e = ev_new(EV_REPLY))) {
        e->req = strtoull(subj + plen + 1, NULL, 10);
        e->msg = msg;
        post(d, e);
        return;
    }
    natsMsg_Destroy(msg);
}

static void on_heartbeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    Dw__EdgeHeartbeat *hb = dw__edge_heartbeat__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                       (const uint8_t *)natsMsg_GetData(msg));
    if (hb) {
        if (edges_seen(d->edges, hb->edge_id, mono_ms()) == 1)
            DW_INFO("edge back", "edge=%s", hb->edge_id);
        dw__edge_heartbeat__free_unpacked(hb, NULL);
    }
    natsMsg_Destroy(msg);
}

static void on_seed(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    if (!natsMsg_IsNoResponders(msg)) {
        Dw__EdgesReply *r = dw__edges_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                    (const uint8_t *)natsMsg_GetData(msg));
        if (r) {
            int64_t now = mono_ms();
            for (size_t i = 0; i < r->n_edge_ids; i++)
                edges_known(d->edges, r->edge_ids[i], now);
            dw__edges_reply__free_unpacked(r, NULL);
        }
    }
    natsMsg_Destroy(msg);
}

/* ---- lease thread callbacks ---- */

static void lease_ready(void *arg, uint32_t p, uint32_t gen, const char *consumer, uint64_t floor)
{
    loop_ev *e = ev_new(EV_READY);
    if (!e) return;
    e->p = p;
    e->gen = gen;
    e->floor = floor;
    snprintf(e->consumer, sizeof e->consumer, "%s", consumer);
    post(arg, e);
}

static void lease_lost(void *arg, uint32_t p)
{
    loop_ev *e = ev_new(EV_LOST);
    if (!e) return;
    e->p = p;
    post(arg, e);
}

static void lease_release(void *arg, uint32_t p)
{
    loop_ev *e = ev_new(EV_RELEASE);
    if (!e) return;
    e->p = p;
    post(arg, e);
}

/* A consumer info reply, on <info_inbox>.<partition>.<gen>. */
static void on_info(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(d->info_inbox);
    unsigned long p = 0, gen = 0;
    loop_ev *e = NULL;
    if (subj && !strncmp(subj, d->info_inbox, plen) && subj[plen] == '.' &&
        sscanf(subj + plen + 1, "%lu.%lu", &p, &gen) == 2 && p < DW_MSG_PARTITIONS &&
        (e = ev_new(EV_INFO))) {
        e->p = (uint32_t)p;
        e->gen = (uint32_t)gen;
        e->msg = msg;
        post(d, e);
        return;
    }
    natsMsg_Destroy(msg);
}

void dispatch_reconnected(dispatcher *d)
{
    if (!d) return;
    atomic_store(&d->reconnected, true);
    pthread_mutex_lock(&d->mu);
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

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
            Dw__RoomEdges *re = dw__room_edges__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                       (const uint8_t *)natsMsg_GetData(m));
            if (!re || !re->ok) {
                if (re) DW_WARN("registry error", "room=%s error=\"%s\"", w->rooms[i], re->error);
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

static void *resolver_main(void *arg)
{
    dispatcher *d = arg;
    pthread_mutex_lock(&d->rmu);
    while (!atomic_load(&d->quit)) {
        if (!d->round_todo) {
            cond_wait_until(&d->rcv, &d->rmu, mono_ms() + 500);
            continue;
        }
        round_work *w = d->round_todo;
        d->round_todo = NULL;
        pthread_mutex_unlock(&d->rmu);
        resolve(d, w);
        loop_ev *e = ev_new(EV_ROUND);
        if (e) {
            e->round = w;
            post(d, e);
        }
        pthread_mutex_lock(&d->rmu);
    }
    pthread_mutex_unlock(&d->rmu);
    return NULL;
}

static void round_free(round_work *w)
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

/* ---- the worker thread ---- */

static int publish_conn_event(dispatcher *d, Dw__ConnEvent__Kind kind, const char *conn_id,
                              const char *edge_id, const char *reason, const char *msg_id)
{
    Dw__ConnEvent ev;
    dw__conn_event__init(&ev);
    ev.kind = kind;
    ev.conn_id = (char *)(conn_id ? conn_id : "");
    ev.edge_id = (char *)(edge_id ? edge_id : "");
    ev.reason = (char *)reason;
    ev.ts_ms = dw_now_ms();
    jsErrCode jerr = 0;
    natsStatus s = dw_js_publish_pb(d->js, dw_subj_conn_event(kind), &ev.base, msg_id,
                                    PUBLISH_WAIT_MS, NULL, &jerr);
    if (s != NATS_OK) {
        DW_ERROR("conn event publish failed", "kind=%s edge=%s conn=%s status=%s jserr=%d",
                 dw_subj_conn_event(kind), edge_id ? edge_id : "", conn_id ? conn_id : "",
                 natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    return 0;
}

/* Write message m's dead letter to DW_DLQ and wait for JetStream's ack.
 * Its Nats-Msg-Id "dlq.<seq>" keeps one entry per message whoever writes
 * it. 0 when durable. */
static int dead_letter(dispatcher *d, order_msg *m)
{
    natsMsg *nm = m->handle;
    const char *subject = natsMsg_GetSubject(nm);
    const char *room = dlq_room_of_subject(subject);
    const char *orig_id = NULL;
    char dlq_subj[256], msg_id[48];
    if (natsMsgHeader_Get(nm, "Nats-Msg-Id", &orig_id) != NATS_OK)
        orig_id = m->chat ? m->chat->id : "";
    if (!room || dlq_subject(dlq_subj, sizeof dlq_subj, room)) {
        /* Not a chat subject: keep it under a room of its own name. */
        room = "unknown";
        snprintf(dlq_subj, sizeof dlq_subj, DW_SUBJ_DLQ_PREFIX "unknown");
    }
    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = (char *)subject;
    dl.stream_seq = m->seq;
    dl.msg_id = (char *)(orig_id ? orig_id : "");
    dl.payload.data = (uint8_t *)natsMsg_GetData(nm);
    dl.payload.len = (size_t)natsMsg_GetDataLength(nm);
    dl.reason = m->reason;
    dl.attempts = m->attempts;
    dl.first_failure_ms = m->n_attempt_ms ? m->attempt_ms[0] : dw_now_ms();
    dl.last_failure_ms = m->n_attempt_ms ? m->attempt_ms[m->n_attempt_ms - 1] : dw_now_ms();
    dl.failed_edges = m->failed_edges;
    dl.n_failed_edges = m->n_failed_edges;
    dl.room = (char *)room;
    dl.source = DLQ_SOURCE_DISPATCHER;
    dl.attempt_ms = m->attempt_ms;
    dl.n_attempt_ms = m->n_attempt_ms;
    size_t len = 0;
    uint8_t *buf = dlq_record_pack(&dl, &len);
    if (!buf) return -1;
    dlq_msg_id(msg_id, sizeof msg_id, m->seq);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = DLQ_PUBLISH_WAIT_MS;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_Publish(&pa, d->js, dlq_subj, buf, (int)len, &po, &jerr);
    free(buf);
    if (s == NATS_OK)
        DW_WARN("dead-lettered",
                "room=%s seq=%" PRIu64 " attempts=%u reason=%s dlq_seq=%" PRIu64 "%s", room, m->seq,
                m->attempts, m->reason, pa->Sequence, pa->Duplicate ? " duplicate=true" : "");
    else
        DW_ERROR("dead letter not written; retrying", "room=%s seq=%" PRIu64 " status=%s jserr=%d",
                 room, m->seq, natsStatus_GetText(s), (int)jerr);
    jsPubAck_Destroy(pa);
    return s == NATS_OK ? 0 : -1;
}

static void run_job(dispatcher *d, job *j)
{
    char msg_id[EDGES_ID_MAX + 16];
    switch (j->kind) {
    case JOB_EDGE_DOWN:
        snprintf(msg_id, sizeof msg_id, "edge_down.%s", j->edge);
        j->ok = !publish_conn_event(d, DW__CONN_EVENT__KIND__EDGE_DOWN, NULL, j->edge,
                                    "heartbeat_timeout", msg_id);
        break;
    case JOB_CONN_GONE:
        snprintf(msg_id, sizeof msg_id, "gone.%s", j->conn);
        j->ok = !publish_conn_event(d, DW__CONN_EVENT__KIND__DISCONNECT, j->conn, j->edge, "gone",
                                    msg_id);
        if (j->ok) DW_INFO("connection gone", "conn=%s edge=%s", j->conn, j->edge);
        break;
    case JOB_DEAD_LETTER: {
        /* Until it is durable the message may not be terminated: keep
         * trying (JetStream is what is down when this fails). */
        int64_t wait = 100;
        while (!(j->ok = !dead_letter(d, j->msg)) && !atomic_load(&d->quit)) {
            dw_metric_inc(M.dlq_failed);
            nats_Sleep(wait);
            if (wait < 2000) wait *= 2;
        }
        break;
    }
    }
}

static void *worker_main(void *arg)
{
    dispatcher *d = arg;
    pthread_mutex_lock(&d->wmu);
    for (;;) {
        while (!d->jobs_head && !atomic_load(&d->quit))
            cond_wait_until(&d->wcv, &d->wmu, mono_ms() + 500);
        job *j = d->jobs_head;
        if (!j) break; /* quit, nothing left */
        d->jobs_head = j->next;
        if (!d->jobs_head) d->jobs_tail = NULL;
        pthread_mutex_unlock(&d->wmu);
        if (atomic_load(&d->quit))
            j->ok = 0; /* stopping: report it undone */
        else
            run_job(d, j);
        loop_ev *e = ev_new(EV_JOB);
        if (e) {
            e->job = j;
            post(d, e);
        } else {
            free(j); /* its message stays with the loop's order table */
        }
        pthread_mutex_lock(&d->wmu);
    }
    pthread_mutex_unlock(&d->wmu);
    return NULL;
}

static void submit(dispatcher *d, job *j)
{
    pthread_mutex_lock(&d->wmu);
    if (d->jobs_tail)
        d->jobs_tail->next = j;
    else
        d->jobs_head = j;
    d->jobs_tail = j;
    pthread_cond_signal(&d->wcv);
    pthread_mutex_unlock(&d->wmu);
}

/* ---- the loop: partitions and pulls ---- */

static void part_drop(dispatcher *d, uint32_t p, int new_state)
{
    part *pt = &d->parts[p];
    size_t n = order_drop_partition(d->ord, p);
    if (n) DW_INFO("partition dropped", "partition=%u messages=%zu", p, n);
    pt->state = new_state;
    pt->pulling = 0;
    pt->checking = 0;
}

/* Read partition p again from its floor (gap, reconnect, consumer gone). */
static void part_reset(dispatcher *d, uint32_t p, const char *why)
{
    if (d->parts[p].state != P_READY) return;
    DW_WARN("partition read again from its floor", "partition=%u why=%s", p, why);
    dw_metric_inc(M.resets);
    part_drop(d, p, P_RESETTING);
    leasekv_reset(d->lk, p);
}

/* After a reconnect: ask partition p's consumer how far it delivered
 * ($JS.API.CONSUMER.INFO, answered on <info_inbox>.<p>.<gen>). Reading it
 * again from its floor under a new consumer would always be right, but a
 * consumer setup takes 0.3-6.5 s on a cluster with a node down, and the
 * reconnect is usually that node's death. */
static void part_check(dispatcher *d, uint32_t p, int64_t now)
{
    part *pt = &d->parts[p];
    if (pt->state != P_READY) return;
    const char *consumer =
        pt->next_subj + strlen("$JS.API.CONSUMER.MSG.NEXT.") + strlen(DW_STREAM_MSG) + 1;
    char subj[256], reply[224];
    snprintf(subj, sizeof subj, "$JS.API.CONSUMER.INFO.%s.%s", DW_STREAM_MSG, consumer);
    snprintf(reply, sizeof reply, "%s.%u.%u", d->info_inbox, p, pt->gen);
    pt->pulling = 0; /* the request out may be lost: ask again now */
    if (natsConnection_PublishRequest(d->nc, subj, reply, NULL, 0) != NATS_OK) {
        part_reset(d, p, "reconnected");
        return;
    }
    pt->checking = 1;
    pt->check_until = now + CHECK_WAIT_MS;
}

/* The consumer's info after a reconnect: it delivered no more than we
 * got (nothing was lost), or the partition is read again from its floor
 * (something was lost, the consumer is gone or has no leader). */
static void on_info_reply(dispatcher *d, loop_ev *e)
{
    part *pt = &d->parts[e->p];
    if (pt->state != P_READY || e->gen != pt->gen || !pt->checking) return;
    pt->checking = 0;
    json_t *root =
        json_loadb(natsMsg_GetData(e->msg), (size_t)natsMsg_GetDataLength(e->msg), 0, NULL);
    json_t *dseq = json_object_get(json_object_get(root, "delivered"), "consumer_seq");
    if (!json_is_integer(dseq)) {
        part_reset(d, e->p, "reconnected:no_consumer_info");
    } else if ((uint64_t)json_integer_value(dseq) > pt->last_dseq) {
        char why[80];
        snprintf(why, sizeof why, "reconnected:delivered_%" PRIu64 "_got_%" PRIu64,
                 (uint64_t)json_integer_value(dseq), pt->last_dseq);
        part_reset(d, e->p, why);
    }
    json_decref(root);
}

static void pull_request(dispatcher *d, uint32_t p, int64_t now)
{
    part *pt = &d->parts[p];
    size_t held = order_held(d->ord, p);
    if (held >= d->per_part_cap || order_held_total(d->ord) >= (size_t)d->cfg.max_held) return;
    size_t room = d->per_part_cap - held;
    int batch = (int)(room < (size_t)d->cfg.fetch_batch ? room : (size_t)d->cfg.fetch_batch);
    char reply[224], body[96];
    uint64_t id = ++d->next_pull_id;
    snprintf(reply, sizeof reply, "%s.%u.%u.%" PRIu64, d->pull_inbox, p, pt->gen, id);
    int n = snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%" PRId64 "}", batch,
                     d->cfg.fetch_wait_ms * 1000000);
    if (natsConnection_PublishRequest(d->nc, pt->next_subj, reply, body, n) != NATS_OK) return;
    pt->pulling = 1;
    pt->pull_id = id;
    pt->pull_left = batch;
    pt->pull_until = now + d->cfg.fetch_wait_ms + PULL_GRACE_MS;
}

static char **replay_edges(natsMsg *nm, size_t *n, int *has)
{
    const char *only = NULL;
    char **ids = NULL;
    *n = 0;
    *has = 0;
    if (natsMsgHeader_Get(nm, DW_HDR_REPLAY_EDGES, &only) == NATS_OK && only && *only) {
        *has = 1;
        if (dlq_edges_parse(only, &ids, n)) *n = 0;
    }
    return ids;
}

static void on_pull_msg(dispatcher *d, loop_ev *e, int64_t now)
{
    part *pt = &d->parts[e->p];
    natsMsg *nm = e->msg;

    e->msg = NULL;
    if (pt->state != P_READY || e->gen != pt->gen) {
        natsMsg_Destroy(nm); /* an earlier consumer's: its messages come again */
        return;
    }
    const char *r = natsMsg_GetReply(nm);
    if (!r || strncmp(r, "$JS.ACK.", 8)) {
        /* A status: 404/408 end the request; 409 says why it was refused. */
        const char *code = NULL, *desc = NULL;
        natsMsgHeader_Get(nm, "Status", &code);
        natsMsgHeader_Get(nm, "Description", &desc);
        if (code && strcmp(code, "100") && e->req == pt->pull_id) {
            pt->pulling = 0;
            if (strcmp(code, "404") && strcmp(code, "408")) {
                DW_WARN("pull request refused", "partition=%u status=%s description=\"%s\"", e->p,
                        code, desc ? desc : "");
                if (desc && strstr(desc, "Deleted")) part_reset(d, e->p, "consumer_deleted");
            }
        } else if (natsMsg_IsNoResponders(nm) && e->req == pt->pull_id) {
            pt->pulling = 0;
            part_reset(d, e->p, "consumer_missing");
        }
        natsMsg_Destroy(nm);
        return;
    }
    jsMsgMetaData *meta = NULL;
    if (natsMsg_GetMetaData(&meta, nm) != NATS_OK) {
        natsMsg_Destroy(nm);
        return;
    }
    uint64_t dseq = meta->Sequence.Consumer, sseq = meta->Sequence.Stream;
    uint64_t delivered = meta->NumDelivered;
    int64_t stored_ns = meta->Timestamp;
    jsMsgMetaData_Destroy(meta);
    /* Deliveries answer the request out (one at a time per partition). */
    if (pt->pulling && --pt->pull_left <= 0) pt->pulling = 0;
    if (dseq != pt->last_dseq + 1) {
        /* A delivery went missing on the way (a reconnect, a request that
         * timed out as it was answered): what it carried would wait for
         * the ack wait and then come after later messages of its room. */
        natsMsg_Destroy(nm);
        char why[64];
        snprintf(why, sizeof why, "gap:%" PRIu64 "->%" PRIu64, pt->last_dseq, dseq);
        part_reset(d, e->p, why);
        return;
    }
    if (delivered == 1 && sseq <= pt->max_seen) {
        /* A first delivery of a message older than one we already got:
         * not the order one consumer delivers in. Seen on nats-server
         * 2.9 after a stopped node resumes believing it still leads the
         * consumer: two leaders answer the same pull request. Whatever
         * the cause, reading on could let a later message of a room reach
         * an edge before an earlier one (the edge then drops the earlier
         * as a repeat): read the partition again from its floor. */
        natsMsg_Destroy(nm);
        char why[80];
        snprintf(why, sizeof why, "order:%" PRIu64 "_after_%" PRIu64, sseq, pt->max_seen);
        part_reset(d, e->p, why);
        return;
    }
    pt->last_dseq = dseq;
    if (sseq > pt->max_seen) pt->max_seen = sseq;
    if (delivered > 1) {
        dw_metric_inc(M.redeliveries);
    } else {
        int64_t age = dw_now_ms() * 1000000 - stored_ns;
        dw_metric_observe_ns(M.stage_fetched, age > 0 ? age : 0);
    }
    size_t n_only = 0;
    int has_only = 0;
    char **only = replay_edges(nm, &n_only, &has_only);
    void *old = NULL;
    int rc = order_add(d->ord, e->p, sseq, nm, natsMsg_GetData(nm),
                       (size_t)natsMsg_GetDataLength(nm), only, n_only, has_only, now, &old);
    dlq_edges_free(only, n_only);
    if (rc == ORDER_DUPLICATE) {
        natsMsg_Destroy(old);
    } else if (rc < 0) {
        DW_ERROR("out of memory: message left to its redelivery", "seq=%" PRIu64, sseq);
        natsMsg_Destroy(nm);
        part_reset(d, e->p, "out_of_memory");
    }
}

/* ---- the loop: edge requests ---- */

static void send_requests(dispatcher *d, int64_t now)
{
    order_request *r;
    while (d->n_reqs < MAX_REQUESTS && (r = order_next_request(d->ord, now))) {
        char subj[EDGES_ID_MAX + 32], reply[192];
        dw_subj_edge_deliver(subj, sizeof subj, r->edge);
        snprintf(reply, sizeof reply, "%s.%" PRIu64, d->reply_inbox, r->id);
        natsStatus s = natsConnection_PublishRequest(d->nc, subj, reply, r->buf, (int)r->len);
        if (s != NATS_OK) {
            DW_WARN("delivery publish failed", "edge=%s items=%zu status=%s", r->edge, r->n_items,
                    natsStatus_GetText(s));
            dw_metric_add(M.retried, (int64_t)r->n_items);
            order_request_done(d->ord, r, ORDER_FAILED, now);
            continue;
        }
        d->reqs[d->n_reqs++] = (inflight_req){r->id, r};
    }
}

static order_request *req_take(dispatcher *d, uint64_t id)
{
    for (size_t i = 0; i < d->n_reqs; i++)
        if (d->reqs[i].id == id) {
            order_request *r = d->reqs[i].r;
            d->reqs[i] = d->reqs[--d->n_reqs];
            return r;
        }
    return NULL;
}

static void on_edge_reply(dispatcher *d, loop_ev *e, int64_t now)
{
    order_request *r = req_take(d, e->req);
    natsMsg *m = e->msg;
    if (!r) return; /* timed out already */
    if (natsMsg_IsNoResponders(m)) {
        /* Not there now; maybe reconnecting. Only silence past
         * EDGE_DEAD_MS makes an edge gone (the sweep). */
        DW_DEBUG("edge has no responders", "edge=%s items=%zu", r->edge, r->n_items);
        order_request_done(d->ord, r, ORDER_NO_RESPONDERS, now);
        return;
    }
    Dw__DeliveryReply *rep = dw__delivery_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                        (const uint8_t *)natsMsg_GetData(m));
    if (!rep) {
        DW_WARN("bad delivery reply", "edge=%s bytes=%d", r->edge, natsMsg_GetDataLength(m));
        dw_metric_add(M.retried, (int64_t)r->n_items);
        order_request_done(d->ord, r, ORDER_FAILED, now);
        return;
    }
    for (size_t k = 0; k < rep->n_gone_conn_ids; k++) {
        const char *c = rep->gone_conn_ids[k];
        job *j = c && edges_id_valid(c, strlen(c)) ? calloc(1, sizeof *j) : NULL;
        if (!j) continue;
        j->kind = JOB_CONN_GONE;
        snprintf(j->conn, sizeof j->conn, "%s", c);
        snprintf(j->edge, sizeof j->edge, "%s", r->edge);
        submit(d, j);
    }
    dw__delivery_reply__free_unpacked(rep, NULL);
    order_request_done(d->ord, r, ORDER_OK, now);
}

static void request_timeouts(dispatcher *d, int64_t now)
{
    for (size_t i = 0; i < d->n_reqs;) {
        order_request *r = d->reqs[i].r;
        if (now - r->sent_ms < d->cfg.edge_timeout_ms) {
            i++;
            continue;
        }
        DW_WARN("edge timeout", "edge=%s items=%zu timeout_ms=%" PRId64, r->edge, r->n_items,
                d->cfg.edge_timeout_ms);
        d->reqs[i] = d->reqs[--d->n_reqs];
        dw_metric_add(M.retried, (int64_t)r->n_items);
        order_request_done(d->ord, r, ORDER_TIMEOUT, now);
    }
}

/* ---- the loop: resolution rounds ---- */

static void start_round(dispatcher *d, int64_t now)
{
    if (d->round_out) return;
    order_query *q = NULL;
    size_t n = 0;
    if (order_round_begin(d->ord, now, &q, &n) || !n) return;
    round_work *w = calloc(1, sizeof *w);
    if (w) {
        w->rooms = calloc(n, sizeof *w->rooms);
        w->min_seq = calloc(n, sizeof *w->min_seq);
        w->answers = calloc(n, sizeof *w->answers);
    }
    if (!w || !w->rooms || !w->min_seq || !w->answers) {
        round_free(w);
        order_round_end(d->ord, now); /* every room counts a failed attempt */
        return;
    }
    w->n = n;
    for (size_t i = 0; i < n; i++) {
        w->rooms[i] = strdup(q[i].room);
        w->min_seq[i] = q[i].min_seq;
        if (!w->rooms[i]) {
            w->n = i;
            round_free(w);
            order_round_end(d->ord, now);
            return;
        }
    }
    d->round_out = 1;
    pthread_mutex_lock(&d->rmu);
    d->round_todo = w;
    pthread_cond_signal(&d->rcv);
    pthread_mutex_unlock(&d->rmu);
}

static void on_round(dispatcher *d, round_work *w, int64_t now)
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
            dw_metric_add(M.retried, (int64_t)n);
        }
    }
    dw_metric_add(M.retried, (int64_t)order_round_end(d->ord, now));
    round_free(w);
    d->round_out = 0;
}

/* ---- the loop: settling ---- */

static void settle(dispatcher *d)
{
    order_msg *m;
    int64_t wall_ms = dw_now_ms();
    while ((m = order_settled_pop(d->ord))) {
        if (m->dropped) {
            order_msg_release(d->ord, m);
            continue;
        }
        if (m->verdict == ORDER_ACK) {
            natsMsg *nm = m->handle;
            dw_pull_ack(d->nc, nm);
            dw_metric_inc(M.delivered);
            jsMsgMetaData *meta = NULL;
            if (natsMsg_GetMetaData(&meta, nm) == NATS_OK) {
                int64_t ns = wall_ms * 1000000 - meta->Timestamp;
                dw_metric_observe_ns(M.latency, ns > 0 ? ns : 0);
                jsMsgMetaData_Destroy(meta);
            }
            if (m->resolved_ms) {
                int64_t mono = mono_ms();
                dw_metric_observe_ns(M.stage_resolved, (m->resolved_ms - m->fetched_ms) * 1000000);
                dw_metric_observe_ns(M.stage_confirmed, (mono - m->resolved_ms) * 1000000);
            }
            order_msg_release(d->ord, m);
            continue;
        }
        job *j = calloc(1, sizeof *j);
        if (!j) {
            order_settled_push_back(d->ord, m);
            break;
        }
        j->kind = JOB_DEAD_LETTER;
        j->msg = m;
        submit(d, j);
    }
}

static void on_job(dispatcher *d, job *j, int64_t now)
{
    switch (j->kind) {
    case JOB_EDGE_DOWN:
        for (size_t i = 0; i < d->n_downs_pending; i++)
            if (!strcmp(d->downs_pending[i], j->edge)) {
                free(d->downs_pending[i]);
                d->downs_pending[i] = d->downs_pending[--d->n_downs_pending];
                break;
            }
        if (j->ok) {
            edges_mark_down(d->edges, j->edge, mono_ms());
            order_edge_gone(d->ord, j->edge, now);
            DW_WARN("edge down", "edge=%s reason=heartbeat_timeout", j->edge);
        }
        break;
    case JOB_CONN_GONE: break;
    case JOB_DEAD_LETTER: {
        order_msg *m = j->msg;
        if (j->ok && !m->dropped) {
            dw_pull_term(d->nc, m->handle);
            dw_metric_inc(M.dead_lettered);
        }
        /* Not written (stopping), or dropped: its next owner deals with it. */
        order_msg_release(d->ord, m);
        break;
    }
    }
    free(j);
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
                submit(d, j);
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
        dw_metric_set(M.held, (double)st.held);
        dw_metric_set(M.partitions, (double)leasekv_owned(d->lk));
    }
}

static void handle_event(dispatcher *d, loop_ev *e, int64_t now)
{
    part *pt = e->p < DW_MSG_PARTITIONS ? &d->parts[e->p] : NULL;
    switch (e->kind) {
    case EV_PULL: on_pull_msg(d, e, now); break;
    case EV_REPLY: on_edge_reply(d, e, now); break;
    case EV_ROUND: on_round(d, e->round, now); break;
    case EV_READY:
        if (pt->state == P_DRAINING) break; /* on its way out: set up meanwhile, not read */
        if (pt->state != P_NONE && pt->state != P_RESETTING) part_drop(d, e->p, P_NONE);
        pt->state = P_READY;
        pt->gen = e->gen;
        pt->pulling = 0;
        pt->last_dseq = 0;
        pt->max_seen = e->floor;
        snprintf(pt->next_subj, sizeof pt->next_subj, "$JS.API.CONSUMER.MSG.NEXT.%s.%s",
                 DW_STREAM_MSG, e->consumer);
        DW_INFO("partition ready", "partition=%u consumer=%s floor=%" PRIu64, e->p, e->consumer,
                e->floor);
        break;
    case EV_LOST: part_drop(d, e->p, P_NONE); break;
    case EV_RELEASE:
        if (pt->state == P_READY || pt->state == P_RESETTING) {
            pt->state = P_DRAINING;
            pt->drain_until = now + 2 * d->cfg.edge_timeout_ms;
        } else {
            leasekv_drained(d->lk, e->p);
        }
        break;
    case EV_JOB: on_job(d, e->job, now); break;
    case EV_INFO: on_info_reply(d, e); break;
    }
    if (e->msg) natsMsg_Destroy(e->msg);
    free(e);
}

int dispatch_run(dispatcher *d)
{
    int64_t stop_until = 0;
    for (;;) {
        int stopping = dw_stop != 0;
        int64_t now = mono_ms();
        if (stopping && !stop_until) {
            stop_until = now + d->cfg.edge_timeout_ms + 500;
            DW_INFO("stopping: finishing requests in flight", "requests=%zu", d->n_reqs);
        }
        if (stopping && (now >= stop_until || !d->n_reqs)) break;

        /* Wait for news or the next tick. */
        pthread_mutex_lock(&d->mu);
        if (!d->head && !atomic_load(&d->reconnected)) {
            int64_t wake = now + TICK_MS, w = order_next_wake(d->ord);
            if (w < wake) wake = w > now ? w : now;
            cond_wait_until(&d->cv, &d->mu, wake);
        }
        loop_ev *e = d->head;
        d->head = d->tail = NULL;
        pthread_mutex_unlock(&d->mu);
        now = mono_ms();

        if (atomic_exchange(&d->reconnected, false)) {
            /* Heartbeats missed meanwhile say nothing about the edges.
             * Deliveries sent to us while we were away are lost: each
             * partition asks its consumer how far it delivered (and pulls
             * again meanwhile); one that delivered more than we got is
             * read again from its floor (check_partitions). */
            edges_touch_all(d->edges, now);
            for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++)
                part_check(d, p, now);
        }
        while (e) {
            loop_ev *next = e->next;
            handle_event(d, e, now);
            e = next;
        }
        request_timeouts(d, now);
        if (!stopping) {
            housekeeping(d, now);
            start_round(d, now);
        }
        send_requests(d, now);
        settle(d);
        for (uint32_t p = 0; p < DW_MSG_PARTITIONS; p++) {
            part *pt = &d->parts[p];
            if (pt->state == P_DRAINING &&
                (!order_inflight_of(d->ord, p) || now >= pt->drain_until)) {
                part_drop(d, p, P_NONE);
                leasekv_drained(d->lk, p);
                continue;
            }
            if (pt->state != P_READY || stopping) continue;
            if (pt->checking && now >= pt->check_until) {
                pt->checking = 0;
                part_reset(d, p, "reconnected:consumer_info_timeout");
                continue;
            }
            if (pt->pulling && now >= pt->pull_until) pt->pulling = 0;
            if (!pt->pulling) pull_request(d, p, now);
        }
    }
    /* What settled is acked; the rest goes back with the partitions. */
    settle(d);
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
    metrics_register();
    pthread_mutex_init(&d->mu, NULL);
    cond_init_mono(&d->cv);
    pthread_mutex_init(&d->rmu, NULL);
    cond_init_mono(&d->rcv);
    pthread_mutex_init(&d->wmu, NULL);
    cond_init_mono(&d->wcv);
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
    if (sub_inbox(d, &d->pull_sub, d->pull_inbox, sizeof d->pull_inbox, "*.*.*", on_pull) ||
        sub_inbox(d, &d->reply_sub, d->reply_inbox, sizeof d->reply_inbox, "*", on_reply) ||
        sub_inbox(d, &d->info_sub, d->info_inbox, sizeof d->info_inbox, "*.*", on_info))
        goto error;
    natsInbox *name = NULL;
    if (natsInbox_Create(&name) != NATS_OK) goto error;
    snprintf(d->seed_inbox, sizeof d->seed_inbox, "%s", name);
    natsInbox_Destroy(name);
    if (natsConnection_Subscribe(&d->seed_sub, nc, d->seed_inbox, on_seed, d) != NATS_OK ||
        natsConnection_Subscribe(&d->hb_sub, nc, DW_SUBJ_EDGE_HEARTBEAT, on_heartbeat, d) !=
            NATS_OK)
        goto error;
    if (pthread_create(&d->resolver, NULL, resolver_main, d)) goto error;
    d->resolver_started = 1;
    if (pthread_create(&d->worker, NULL, worker_main, d)) goto error;
    d->worker_started = 1;

    leasekv_cfg lc = {
        .instance = cfg->instance,
        .ttl_ms = cfg->lease_ttl_ms,
        .replicas = bucket_replicas(d),
        .ack_wait_ms = cfg->ack_wait_ms,
        .max_ack_pending = (int64_t)d->per_part_cap + cfg->fetch_batch,
        .on_ready = lease_ready,
        .on_lost = lease_lost,
        .on_release = lease_release,
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
    size_t n = sizeof subs / sizeof subs[0];
    int away = !d->nc || natsConnection_Status(d->nc) != NATS_CONN_STATUS_CONNECTED;
    int64_t deadline = mono_ms() + (away ? 500 : 5000);
    for (size_t i = 0; i < n; i++)
        if (subs[i] && natsSubscription_Drain(subs[i]) != NATS_OK)
            natsSubscription_Unsubscribe(subs[i]);
    for (size_t i = 0; i < n; i++) {
        if (!subs[i]) continue;
        int64_t left = deadline - mono_ms();
        natsSubscription_WaitForDrainCompletion(subs[i], left > 1 ? left : 1);
        natsSubscription_Destroy(subs[i]);
    }
    d->hb_sub = d->seed_sub = d->pull_sub = d->reply_sub = d->info_sub = NULL;
}

void dispatch_destroy(dispatcher *d)
{
    if (!d) return;
    /* Partitions first: they are given back while NATS is still there. */
    leasekv_stop(d->lk);
    d->lk = NULL;
    atomic_store(&d->quit, true);
    pthread_mutex_lock(&d->rmu);
    pthread_cond_broadcast(&d->rcv);
    pthread_mutex_unlock(&d->rmu);
    pthread_mutex_lock(&d->wmu);
    pthread_cond_broadcast(&d->wcv);
    pthread_mutex_unlock(&d->wmu);
    if (d->resolver_started) pthread_join(d->resolver, NULL);
    if (d->worker_started) pthread_join(d->worker, NULL);
    subs_close(d);
    inbox_destroy(d->ib);
    /* Events left (their jobs and rounds included). */
    loop_ev *e = d->head;
    while (e) {
        loop_ev *next = e->next;
        if (e->msg) natsMsg_Destroy(e->msg);
        round_free(e->round);
        if (e->job) {
            if (e->job->msg) order_msg_release(d->ord, e->job->msg);
            free(e->job);
        }
        free(e);
        e = next;
    }
    job *j = d->jobs_head;
    while (j) {
        job *next = j->next;
        if (j->msg) order_msg_release(d->ord, j->msg);
        free(j);
        j = next;
    }
    round_free(d->round_todo);
    for (size_t i = 0; i < d->n_reqs; i++)
        order_request_done(d->ord, d->reqs[i].r, ORDER_TIMEOUT, mono_ms());
    order_destroy(d->ord);
    edges_destroy(d->edges);
    for (size_t i = 0; i < d->n_downs_pending; i++)
        free(d->downs_pending[i]);
    free(d->downs_pending);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
    pthread_mutex_destroy(&d->rmu);
    pthread_cond_destroy(&d->rcv);
    pthread_mutex_destroy(&d->wmu);
    pthread_cond_destroy(&d->wcv);
    free(d);
}
