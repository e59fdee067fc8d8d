#include "dispatch.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/pull.h"
#include "dw/util.h"
#include "edges.h"
#include "fanout.h"
#include "inbox.h"
#include "inflight.h"
#include "record.h"
#include "retries.h"

/* A down edge is remembered this long, so it is reported once; past the
 * JetStream dedup window (2 min), a registry that still names it gets a
 * fresh EDGE_DOWN. */
#define EDGES_FORGET_MS (5 * 60 * 1000)
/* Heartbeats come from a permissioned subject, but bound the table anyway. */
#define EDGES_MAX 65536
#define SEED_RETRY_MS 5000
#define PUBLISH_WAIT_MS 2000
/* A fetch that fails at once (NATS closed, consumer gone) is retried after
 * this pause, doubling up to FETCH_BACKOFF_MAX_MS: never a busy loop. */
#define FETCH_BACKOFF_MS 100
#define FETCH_BACKOFF_MAX_MS 2000
#define ERROR_LOG_EVERY_MS 5000
/* A dead letter must be durable before the original is terminated. */
#define DLQ_PUBLISH_WAIT_MS 5000

/* Process-wide, registered once (dispatch_create may run several times
 * while NATS is coming up). */
static struct {
    dw_metric *delivered, *retried, *dead_lettered, *dlq_failed, *redeliveries, *latency;
} M;

static void metrics_register(void)
{
    static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,     10,   30};
    if (M.delivered) return;
    M.delivered = dw_counter("dw_dispatcher_messages_total", "result=\"delivered\"",
                             "Messages settled, by result: delivered (acked), retried (NAK'd "
                             "with a backoff), dead_lettered (written to DW_DLQ, then terminated)");
    M.retried = dw_counter("dw_dispatcher_messages_total", "result=\"retried\"", NULL);
    M.dead_lettered = dw_counter("dw_dispatcher_messages_total", "result=\"dead_lettered\"", NULL);
    M.redeliveries = dw_counter("dw_dispatcher_retries_total", NULL,
                                "Redeliveries processed (delivery attempts after the first)");
    M.dlq_failed = dw_counter("dw_dispatcher_dead_letter_failures_total", NULL,
                              "Dead letters the dispatcher could not write (left to the "
                              "max-deliveries advisory)");
    M.latency = dw_histogram("dw_dispatcher_delivery_seconds", NULL,
                             "From stored in DW_MSG to every edge confirmed, per delivered message",
                             bounds, sizeof bounds / sizeof bounds[0]);
}

/* One fetched batch from its fetch to its settling. Filled by the fetch
 * thread (fetch, registry, requests sent), then handed over whole to the
 * settle thread (replies, acks): never used by both at once. */
typedef struct flight {
    fanout_batch batch;
    natsMsg **msgs;     /* owns the messages the batch's handles point to */
    int n_msgs;         /* fetched into msgs (capacity: fetch_batch) */
    int64_t *stored_ns; /* per message of the batch: DW_MSG store time */
    size_t stored_cap;
    inbox *ib;                               /* this batch's edge replies */
    int asked;                               /* a round of edge requests is open on ib */
    int64_t deadline_ns;                     /* for the edge replies */
    int64_t waited_us, registry_us, sent_ns; /* for the "batch timing" log */
} flight;

struct dispatcher {
    natsConnection *nc;
    jsCtx *js;
    dispatch_cfg cfg;
    fanout_retry retry;
    /* Read by the fetch thread (a retry skips the edges that took it),
     * written by the settle thread: rt_mu guards every use. */
    retries *rt;
    pthread_mutex_t rt_mu;
    int rt_mu_ok;

    dw_pull *pull; /* the durable (dw/pull.h) */
    natsSubscription *hb_sub;
    natsSubscription *seed_sub;
    char seed_inbox[128];
    inbox *ib; /* registry answers (fetch thread only) */
    edges_table *edges;

    atomic_int seeded;
    int64_t next_seed_ms, next_sweep_ms, sweep_every_ms;
    /* Batches between fetch and settle: cfg.max_inflight slots. */
    flight *flights;
    size_t n_flights;
    inflight *q;
};

static int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

/* --- conn events (EDGE_DOWN, DISCONNECT) --- */

/* Publish one connection event to DW_CONN and wait for its ack. msg_id
 * makes repeats (other dispatchers, retries) collapse within the dedup
 * window. 0 when durable, -1 (logged) otherwise. */
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

/* Declare edge_id down (its connections are gone). 0 when the EDGE_DOWN
 * event is durable. */
static int edge_down(dispatcher *d, const char *edge_id, const char *reason)
{
    char msg_id[EDGES_ID_MAX + 16];
    snprintf(msg_id, sizeof msg_id, "edge_down.%s", edge_id);
    if (publish_conn_event(d, DW__CONN_EVENT__KIND__EDGE_DOWN, NULL, edge_id, reason, msg_id))
        return -1;
    edges_mark_down(d->edges, edge_id, mono_ms());
    DW_WARN("edge down", "edge=%s reason=%s", edge_id, reason);
    return 0;
}

/* The edge says it no longer holds conn_id: remove the target connection
 * (not the sender's, as the AWS sample does). Best effort: a failure only
 * leaves a stale row the next delivery reports again. */
static void conn_gone(dispatcher *d, const char *conn_id, const char *edge_id)
{
    if (!conn_id || !edges_id_valid(conn_id, strlen(conn_id))) {
        DW_WARN("bad gone conn id from edge", "edge=%s", edge_id);
        return;
    }
    char msg_id[EDGES_ID_MAX + 16];
    snprintf(msg_id, sizeof msg_id, "gone.%s", conn_id);
    if (!publish_conn_event(d, DW__CONN_EVENT__KIND__DISCONNECT, conn_id, edge_id, "gone", msg_id))
        DW_INFO("connection gone", "conn=%s edge=%s", conn_id, edge_id);
}

/* --- heartbeats and the startup seed (nats.c threads) --- */

static void on_heartbeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    Dw__EdgeHeartbeat *hb = dw__edge_heartbeat__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                       (const uint8_t *)natsMsg_GetData(msg));
    if (!hb) {
        DW_DEBUG("bad heartbeat", "bytes=%d", natsMsg_GetDataLength(msg));
    } else {
        int rc = edges_seen(d->edges, hb->edge_id, mono_ms());
        if (rc == 1)
            DW_INFO("edge back", "edge=%s", hb->edge_id);
        else if (rc < 0)
            DW_DEBUG("heartbeat ignored", "edge_len=%zu", strlen(hb->edge_id));
        dw__edge_heartbeat__free_unpacked(hb, NULL);
    }
    natsMsg_Destroy(msg);
}

static void on_seed(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    if (natsMsg_IsNoResponders(msg)) {
        DW_DEBUG("edge seed: registry not up yet", "%s", "");
        natsMsg_Destroy(msg);
        return;
    }
    Dw__EdgesReply *r = dw__edges_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                (const uint8_t *)natsMsg_GetData(msg));
    if (r) {
        int64_t now = mono_ms();
        for (size_t i = 0; i < r->n_edge_ids; i++)
            edges_known(d->edges, r->edge_ids[i], now);
        if (!atomic_exchange(&d->seeded, 1)) DW_INFO("edges seeded", "edges=%zu", r->n_edge_ids);
        dw__edges_reply__free_unpacked(r, NULL);
    }
    natsMsg_Destroy(msg);
}

/* Periodic work between fetches: ask for the seed until it came, and
 * declare silent edges down. */
static void housekeeping(dispatcher *d)
{
    int64_t now = mono_ms();
    if (now >= d->next_seed_ms) {
        /* Asynchronous: the answer lands in on_seed, the loop never waits.
         * Asked again from time to time, not only at start: an edge that
         * holds connections but never got a heartbeat through to us (it
         * died or stopped right after starting) is then tracked too, and
         * declared down once it stays silent. */
        natsConnection_PublishRequest(d->nc, DW_SUBJ_REG_EDGES, d->seed_inbox, NULL, 0);
        d->next_seed_ms = now + SEED_RETRY_MS;
    }
    if (now < d->next_sweep_ms) return;
    d->next_sweep_ms = now + d->sweep_every_ms;
    pthread_mutex_lock(&d->rt_mu);
    size_t forgotten = retries_sweep(d->rt, now), left = retries_count(d->rt);
    pthread_mutex_unlock(&d->rt_mu);
    if (forgotten) DW_DEBUG("retry state swept", "entries=%zu left=%zu", forgotten, left);

    char **ids = NULL;
    size_t n = 0;
    if (edges_stale(d->edges, now, &ids, &n)) {
        DW_ERROR("edge sweep: out of memory", "%s", "");
        return;
    }
    /* A failed publish leaves the edge stale: the next sweep tries again. */
    for (size_t i = 0; i < n && !dw_stop; i++)
        edge_down(d, ids[i], "heartbeat_timeout");
    edges_list_free(ids, n);
}

/* --- one batch --- */

/* No flush after a round of requests: dw_bus_connect sets SendAsap, so
 * every publish is on the wire when it returns. A flush would only add a
 * PING round trip the fetch thread waits for before its next fetch. */

/* Ask the registry, once per room and all rooms at once, which edges hold
 * the room's members. */
/* DW_CONN's last sequence now: every connect acked before this call, on
 * any edge, is at or below it. 0 when JetStream does not answer (then only
 * the senders' own connects are waited for; logged now and then). */
static uint64_t conn_barrier(dispatcher *d)
{
    static int64_t last_warn;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = d->cfg.registry_timeout_ms;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, d->js, DW_STREAM_CONN, &jo, &jerr);
    uint64_t last = s == NATS_OK ? si->State.LastSeq : 0;
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK && mono_ms() - last_warn >= ERROR_LOG_EVERY_MS) {
        last_warn = mono_ms();
        DW_WARN("DW_CONN's end unknown: a connect on another edge may not be applied yet",
                "status=%s jserr=%d", natsStatus_GetText(s), (int)jerr);
    }
    return last;
}

static void ask_registry(dispatcher *d, fanout_batch *b)
{
    size_t n = b->n_rooms, failed = 0;
    const char *why = NULL;
    /* A sender's edge passes the highest DW_CONN sequence it had acked, so
     * its own connects are covered; the barrier covers every other edge's. */
    uint64_t barrier = d->cfg.conn_barrier ? conn_barrier(d) : 0;

    if (inbox_begin(d->ib, n)) {
        for (size_t r = 0; r < n; r++)
            fanout_room_failed(b, r, "out_of_memory");
        return;
    }
    for (size_t r = 0; r < n; r++) {
        Dw__RoomQuery q;
        dw__room_query__init(&q);
        q.room = (char *)b->rooms[r].name;
        q.min_seq = b->rooms[r].min_seq > barrier ? b->rooms[r].min_seq : barrier;
        size_t len = 0;
        uint8_t *buf = dw_pb_pack(&q.base, &len);
        char reply[192];
        inbox_reply_subject(d->ib, r, reply, sizeof reply);
        natsStatus s =
            buf ? natsConnection_PublishRequest(d->nc, DW_SUBJ_REG_ROOM, reply, buf, (int)len)
                : NATS_NO_MEMORY;
        free(buf);
        if (s != NATS_OK) {
            inbox_skip(d->ib, r);
            fanout_room_failed(b, r, "registry_publish_failed");
        }
    }
    int64_t deadline = dw_mono_ns() + d->cfg.registry_timeout_ms * 1000000;
    inbox_wait(d->ib, deadline);

    int64_t now = mono_ms();
    for (size_t r = 0; r < n; r++) {
        natsMsg *m = inbox_take(d->ib, r);
        if (b->rooms[r].answered) {
            natsMsg_Destroy(m);
            continue;
        }
        if (!m) {
            fanout_room_failed(b, r, "registry_timeout");
        } else if (natsMsg_IsNoResponders(m)) {
            fanout_room_failed(b, r, "registry_unavailable");
        } else {
            Dw__RoomEdges *re = dw__room_edges__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                       (const uint8_t *)natsMsg_GetData(m));
            if (!re) {
                fanout_room_failed(b, r, "registry_bad_reply");
            } else if (!re->ok) {
                DW_WARN("registry error", "room=%s error=\"%s\"", b->rooms[r].name, re->error);
                fanout_room_failed(b, r, "registry_error");
            } else {
                for (size_t i = 0; i < re->n_edge_ids; i++) {
                    const char *id = re->edge_ids[i];
                    if (edges_id_valid(id, strlen(id)))
                        edges_known(d->edges, id, now);
                    else
                        DW_WARN("registry names an invalid edge id", "room=%s edge_len=%zu",
                                b->rooms[r].name, strlen(id));
                }
                fanout_room_edges(b, r, re->edge_ids, re->n_edge_ids);
            }
            if (re) dw__room_edges__free_unpacked(re, NULL);
        }
        natsMsg_Destroy(m);
        if (b->rooms[r].error) {
            failed++;
            why = b->rooms[r].error;
        }
    }
    inbox_end(d->ib);
    if (failed) DW_WARN("registry failed", "rooms=%zu of=%zu reason=%s", failed, n, why);
}

/* Send every planned request of the batch at once, without waiting for
 * the replies: the settle thread collects them (collect_replies), and the
 * fetch thread goes on with the next batch meanwhile. Requests to one edge
 * leave on one connection in the order they are published, and the edge
 * handles them in that order, so a later batch never overtakes an earlier
 * one on the way to an edge. */
static void send_deliveries(dispatcher *d, flight *f)
{
    fanout_batch *b = &f->batch;
    size_t n = b->n_deliveries;

    f->asked = 0;
    if (inbox_begin(f->ib, n)) {
        DW_ERROR("deliver: out of memory", "requests=%zu", n);
        return; /* every request stays PENDING: its messages are retried */
    }
    f->asked = 1;
    for (size_t i = 0; i < n; i++) {
        const fanout_delivery *dl = &b->deliveries[i];
        uint8_t *buf = NULL;
        size_t len = 0;
        char subj[EDGES_ID_MAX + 32], reply[192];
        natsStatus s = NATS_NO_MEMORY;
        if (!fanout_pack(b, i, &buf, &len)) {
            dw_subj_edge_deliver(subj, sizeof subj, b->edges[dl->edge].id);
            inbox_reply_subject(f->ib, i, reply, sizeof reply);
            s = natsConnection_PublishRequest(d->nc, subj, reply, buf, (int)len);
        }
        free(buf);
        if (s != NATS_OK) {
            DW_WARN("delivery publish failed", "edge=%s items=%zu bytes=%zu status=%s",
                    b->edges[dl->edge].id, dl->count, len, natsStatus_GetText(s));
            inbox_skip(f->ib, i);
            fanout_delivery_done(b, i, FANOUT_FAILED);
        }
    }
    f->sent_ns = dw_mono_ns();
    f->deadline_ns = f->sent_ns + d->cfg.edge_timeout_ms * 1000000;
}

/* Wait for the replies to the batch's requests (or its deadline) and
 * record each request's outcome. Settle thread. */
static void collect_replies(dispatcher *d, flight *f)
{
    fanout_batch *b = &f->batch;
    size_t n = b->n_deliveries;
    if (!f->asked) return;
    /* Per edge in this batch: 0 not asked, 1 gone (EDGE_DOWN durable), -1 publish failed. */
    signed char *gone = calloc(b->n_edges ? b->n_edges : 1, 1);

    inbox_wait(f->ib, f->deadline_ns);
    for (size_t i = 0; i < n; i++) {
        const fanout_delivery *dl = &b->deliveries[i];
        const char *edge_id = b->edges[dl->edge].id;
        natsMsg *m = inbox_take(f->ib, i);
        if (dl->outcome == FANOUT_FAILED) {
            natsMsg_Destroy(m);
            continue;
        }
        if (!m) {
            DW_WARN("edge timeout", "edge=%s items=%zu timeout_ms=%" PRId64, edge_id, dl->count,
                    d->cfg.edge_timeout_ms);
            fanout_delivery_done(b, i, FANOUT_TIMEOUT);
        } else if (natsMsg_IsNoResponders(m)) {
            /* Nobody listens on the edge's subject: the edge is gone, and so
             * are its clients. Done for this edge once the registry will
             * know it; until then the messages are retried. */
            if (!gone)
                fanout_delivery_done(b, i, FANOUT_FAILED);
            else {
                if (!gone[dl->edge])
                    gone[dl->edge] = edge_down(d, edge_id, "no_responders") ? -1 : 1;
                fanout_delivery_done(b, i, gone[dl->edge] > 0 ? FANOUT_GONE : FANOUT_FAILED);
            }
        } else {
            Dw__DeliveryReply *r = dw__delivery_reply__unpack(
                NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
            if (!r) {
                DW_WARN("bad delivery reply", "edge=%s bytes=%d", edge_id,
                        natsMsg_GetDataLength(m));
                fanout_delivery_done(b, i, FANOUT_FAILED);
            } else {
                fanout_delivery_done(b, i, FANOUT_OK);
                for (size_t k = 0; k < r->n_gone_conn_ids; k++)
                    conn_gone(d, r->gone_conn_ids[k], edge_id);
                dw__delivery_reply__free_unpacked(r, NULL);
            }
        }
        natsMsg_Destroy(m);
    }
    inbox_end(f->ib);
    f->asked = 0;
    free(gone);
}

/* --- retries and dead letters --- */

/* The dead-letter reason of a failure that fanout described as `why`. */
static const char *registry_reason(const char *why)
{
    if (!why) return DLQ_REASON_DISPATCHER;
    if (!strcmp(why, "registry_timeout") || !strcmp(why, "registry_unavailable") ||
        !strcmp(why, "registry_publish_failed"))
        return DLQ_REASON_REGISTRY;
    if (!strcmp(why, "registry_error") || !strcmp(why, "registry_bad_reply"))
        return DLQ_REASON_REGISTRY_ERROR;
    return DLQ_REASON_DISPATCHER; /* out of memory, unanswered, not planned */
}

/* Record failed attempt of message mi in the retry table: which edges took
 * it now, which did not, and why. */
static void note_failure(dispatcher *d, flight *f, size_t mi, int64_t wall_ms)
{
    fanout_batch *b = &f->batch;
    fanout_msg *m = &b->msgs[mi];
    const fanout_room *r = &b->rooms[m->room];
    int answered = r->answered && !r->error && b->planned;
    const char **took = NULL, **failed = NULL, **timed_out = NULL;
    size_t n_took = 0, n_failed = 0, n_timed_out = 0;
    char reason[DLQ_REASON_MAX];

    if (answered && r->n_edges) {
        took = malloc(r->n_edges * sizeof *took);
        failed = malloc(r->n_edges * sizeof *failed);
        timed_out = malloc(r->n_edges * sizeof *timed_out);
        if (!took || !failed || !timed_out) answered = 0;
    }
    if (answered) {
        for (size_t j = 0; j < r->n_edges; j++) {
            size_t e = r->edges[j];
            if (fanout_msg_skips(b, mi, e)) continue; /* took it earlier, or not a replay target */
            size_t k = 0;
            while (k < m->n_failed && m->failed[k] != e)
                k++;
            if (k == m->n_failed) {
                took[n_took++] = b->edges[e].id;
                continue;
            }
            failed[n_failed++] = b->edges[e].id;
            if (m->failed_how[k] != FANOUT_FAILED) timed_out[n_timed_out++] = b->edges[e].id;
        }
    }
    if (!r->answered || r->error || !b->planned)
        snprintf(reason, sizeof reason, "%s", registry_reason(r->error ? r->error : m->reason));
    else if (n_timed_out)
        dlq_reason_edges(reason, sizeof reason, DLQ_REASON_EDGE_TIMEOUT, timed_out, n_timed_out);
    else if (n_failed)
        dlq_reason_edges(reason, sizeof reason, DLQ_REASON_EDGE_ERROR, failed, n_failed);
    else
        snprintf(reason, sizeof reason, "%s", DLQ_REASON_DISPATCHER);

    pthread_mutex_lock(&d->rt_mu);
    int nrc = retries_note(d->rt, m->seq, wall_ms, mono_ms(), reason, (char *const *)took, n_took,
                           (char *const *)failed, n_failed, answered);
    pthread_mutex_unlock(&d->rt_mu);
    if (nrc) DW_WARN("retry state: out of memory", "seq=%" PRIu64, m->seq);
    free(took);
    free(failed);
    free(timed_out);
}

/* Write message mi's dead letter to DW_DLQ and wait for JetStream's ack.
 * Its Nats-Msg-Id "dlq.<seq>" is the one the advisory path uses too, so
 * the two never make two entries. 0 when durable. */
static int dead_letter(dispatcher *d, flight *f, size_t mi, int64_t wall_ms)
{
    fanout_batch *b = &f->batch;
    fanout_msg *m = &b->msgs[mi];
    natsMsg *nm = m->handle;
    const retry_entry *re = NULL;
    const char *subject = natsMsg_GetSubject(nm);
    const char *room = dlq_room_of_subject(subject);
    const char *orig_id = NULL;
    char dlq_subj[256], msg_id[48], reason[RETRIES_REASON_MAX];
    int rc = -1;

    if (natsMsgHeader_Get(nm, "Nats-Msg-Id", &orig_id) != NATS_OK) orig_id = m->chat->id;
    if (!room || dlq_subject(dlq_subj, sizeof dlq_subj, room)) {
        DW_ERROR("dead letter: odd subject", "subject=%s seq=%" PRIu64, subject, m->seq);
        return -1;
    }

    /* The entry is only read while the record is packed: the publish
     * below may wait seconds, and the fetch thread needs the table. */
    pthread_mutex_lock(&d->rt_mu);
    re = retries_get(d->rt, m->seq);
    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = (char *)subject;
    dl.stream_seq = m->seq;
    dl.msg_id = (char *)orig_id;
    dl.payload.data = (uint8_t *)natsMsg_GetData(nm);
    dl.payload.len = (size_t)natsMsg_GetDataLength(nm);
    dl.reason = (char *)(re && re->reason[0] ? re->reason : registry_reason(m->reason));
    dl.attempts = (uint32_t)m->attempt;
    dl.first_failure_ms = re && re->n_attempts ? re->attempt_ms[0] : wall_ms;
    dl.last_failure_ms = wall_ms;
    dl.failed_edges = re ? re->failed : NULL;
    dl.n_failed_edges = re ? re->n_failed : 0;
    dl.room = (char *)room;
    dl.source = DLQ_SOURCE_DISPATCHER;
    dl.attempt_ms = re ? (int64_t *)re->attempt_ms : NULL;
    dl.n_attempt_ms = re ? re->n_attempts : 0;

    size_t len = 0;
    uint8_t *buf = dlq_record_pack(&dl, &len);
    snprintf(reason, sizeof reason, "%s", dl.reason);
    pthread_mutex_unlock(&d->rt_mu);
    if (!buf) {
        DW_ERROR("dead letter: cannot encode", "seq=%" PRIu64, m->seq);
        return -1;
    }
    dlq_msg_id(msg_id, sizeof msg_id, m->seq);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = DLQ_PUBLISH_WAIT_MS;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_Publish(&pa, d->js, dlq_subj, buf, (int)len, &po, &jerr);
    if (s == NATS_OK) {
        DW_WARN("dead-lettered",
                "id=%s room=%s seq=%" PRIu64 " attempts=%" PRIu64 " reason=%s dlq_seq=%" PRIu64
                "%s",
                m->chat->id, room, m->seq, m->attempt, reason, pa->Sequence,
                pa->Duplicate ? " duplicate=true" : "");
        rc = 0;
    } else {
        DW_ERROR("dead letter not written: left to the max-deliveries advisory",
                 "id=%s room=%s seq=%" PRIu64 " reason=%s status=%s jserr=%d", m->chat->id, room,
                 m->seq, reason, natsStatus_GetText(s), (int)jerr);
    }
    jsPubAck_Destroy(pa);
    free(buf);
    return rc;
}

/* Tell JetStream what became of each message. */
static void settle(dispatcher *d, flight *f)
{
    fanout_batch *b = &f->batch;
    size_t acked = 0, naked = 0, dead = 0, ack_failed = 0;
    natsStatus ack_status = NATS_OK;
    int64_t wall_ms = dw_now_ms();

    for (size_t i = 0; i < b->n_msgs; i++) {
        fanout_msg *m = &b->msgs[i];
        natsMsg *nm = m->handle;
        natsStatus s = NATS_OK;
        switch (m->verdict) {
        case FANOUT_ACK:
            s = dw_pull_ack(d->nc, nm);
            if (m->attempt > 1) {
                /* A first attempt that succeeded has no entry to forget. */
                pthread_mutex_lock(&d->rt_mu);
                retries_forget(d->rt, m->seq);
                pthread_mutex_unlock(&d->rt_mu);
            }
            dw_metric_inc(M.delivered);
            if (f->stored_ns[i] > 0) {
                int64_t ns = wall_ms * 1000000 - f->stored_ns[i];
                dw_metric_observe_ns(M.latency, ns > 0 ? ns : 0);
            }
            acked++;
            break;
        case FANOUT_NAK:
            if (m->chat) {
                note_failure(d, f, i, wall_ms);
                DW_DEBUG("message retried",
                         "id=%s room=%s seq=%" PRIu64 " attempt=%" PRIu64
                         " reason=%s delay_ms=%" PRId64,
                         m->chat->id, m->chat->room, m->seq, m->attempt, m->reason, m->delay_ms);
            } else {
                /* Poison: its last NAK ends at MaxDeliver, where JetStream's
                 * advisory hands it to the deadletter service. */
                DW_WARN("undecodable message",
                        "subject=%s seq=%" PRIu64 " attempt=%" PRIu64 " bytes=%d delay_ms=%" PRId64,
                        natsMsg_GetSubject(nm), m->seq, m->attempt, natsMsg_GetDataLength(nm),
                        m->delay_ms);
            }
            s = dw_pull_nak(d->nc, nm, m->delay_ms);
            dw_metric_inc(M.retried);
            naked++;
            break;
        case FANOUT_GIVE_UP:
            note_failure(d, f, i, wall_ms);
            if (dead_letter(d, f, i, wall_ms) == 0) {
                /* Durable in DW_DLQ: only now may JetStream let it go. */
                s = dw_pull_term(d->nc, nm);
                dw_metric_inc(M.dead_lettered);
                dead++;
            } else {
                /* MaxDeliver is reached: this NAK makes JetStream raise the
                 * max-deliveries advisory, and the deadletter service
                 * writes the dead letter (source "advisory"). */
                s = dw_pull_nak(d->nc, nm, 0);
                dw_metric_inc(M.dlq_failed);
                naked++;
            }
            pthread_mutex_lock(&d->rt_mu);
            retries_forget(d->rt, m->seq);
            pthread_mutex_unlock(&d->rt_mu);
            break;
        }
        if (s != NATS_OK) {
            ack_failed++;
            ack_status = s;
        }
    }
    /* Messages whose ack was lost come back after AckWait; edges drop the repeats. */
    if (ack_failed)
        DW_WARN("ack failed", "msgs=%zu of=%zu status=%s", ack_failed, b->n_msgs,
                natsStatus_GetText(ack_status));
    if (naked || dead)
        DW_INFO("batch settled", "msgs=%zu acked=%zu retried=%zu dead_lettered=%zu", b->n_msgs,
                acked, naked, dead);
    else
        DW_DEBUG("batch settled", "msgs=%zu acked=%zu", b->n_msgs, acked);
}

/* Before planning: a redelivered message skips the edges that took it
 * earlier; a replay of a partial failure goes only to the edges named in
 * its Dw-Replay-Edges header. */
static void restrict_edges(dispatcher *d, fanout_batch *b, size_t mi)
{
    fanout_msg *m = &b->msgs[mi];
    natsMsg *nm = m->handle;
    const char *only = NULL;

    if (m->attempt > 1) {
        /* The earlier attempt was settled (its entry written) before its
         * NAK went out, so a redelivery always finds it here. */
        pthread_mutex_lock(&d->rt_mu);
        const retry_entry *re = retries_get(d->rt, m->seq);
        int rc = re && re->n_took ? fanout_msg_skip(b, mi, re->took, re->n_took) : 0;
        pthread_mutex_unlock(&d->rt_mu);
        if (rc) DW_WARN("retry: out of memory, resending to every edge", "seq=%" PRIu64, m->seq);
    }
    if (natsMsgHeader_Get(nm, DW_HDR_REPLAY_EDGES, &only) == NATS_OK && only && *only) {
        char **ids = NULL;
        size_t n = 0;
        if (dlq_edges_parse(only, &ids, &n) || fanout_msg_only(b, mi, ids, n)) {
            /* Sending it everywhere would repeat it to edges that had it. */
            DW_ERROR("replay: out of memory", "seq=%" PRIu64, m->seq);
            fanout_room_failed(b, m->room, "out_of_memory");
        }
        dlq_edges_free(ids, n);
    }
}

/* Destroy the batch's messages (after their acks were published). */
static void flight_release(flight *f)
{
    for (int i = 0; i < f->n_msgs; i++)
        natsMsg_Destroy(f->msgs[i]);
    f->n_msgs = 0;
}

/* Fetch thread: decode the fetched batch, ask the registry, plan and send
 * the edge requests. The replies are the settle thread's (finish). */
static void prepare(dispatcher *d, flight *f)
{
    fanout_batch *b = &f->batch;
    int64_t oldest_ns = 0; /* stream store time of the oldest message */

    f->asked = 0;
    if ((size_t)f->n_msgs > f->stored_cap) {
        int64_t *g = realloc(f->stored_ns, (size_t)f->n_msgs * sizeof *g);
        if (g) {
            f->stored_ns = g;
            f->stored_cap = (size_t)f->n_msgs;
        }
    }
    for (int i = 0; i < f->n_msgs; i++) {
        natsMsg *nm = f->msgs[i];
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, nm) != NATS_OK) {
            /* Not a JetStream delivery: nothing to ack it with. */
            DW_ERROR("message without metadata", "subject=%s", natsMsg_GetSubject(nm));
            continue;
        }
        if (!oldest_ns || meta->Timestamp < oldest_ns) oldest_ns = meta->Timestamp;
        if (meta->NumDelivered > 1) dw_metric_inc(M.redeliveries);
        long mi = (size_t)i < f->stored_cap
                      ? fanout_add(b, nm, natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm),
                                   meta->Sequence.Stream, meta->NumDelivered)
                      : -1;
        if (mi < 0) {
            int64_t delay = fanout_retry_delay(&d->retry, meta->NumDelivered);
            DW_ERROR("batch: out of memory", "seq=%" PRIu64, meta->Sequence.Stream);
            dw_pull_nak(d->nc, nm, delay < 0 ? 0 : delay);
        } else {
            f->stored_ns[mi] = meta->Timestamp;
        }
        jsMsgMetaData_Destroy(meta);
    }
    /* Wall clocks: meaningful when NATS runs on this host (benchmarks). */
    struct timespec now_ts;
    clock_gettime(CLOCK_REALTIME, &now_ts);
    int64_t now_ns = (int64_t)now_ts.tv_sec * 1000000000 + now_ts.tv_nsec;
    f->waited_us = oldest_ns ? (now_ns - oldest_ns) / 1000 : 0;
    int64_t t0 = dw_mono_ns();
    if (b->n_rooms) ask_registry(d, b);
    for (size_t i = 0; i < b->n_msgs; i++)
        if (b->msgs[i].chat) restrict_edges(d, b, i);
    f->registry_us = (dw_mono_ns() - t0) / 1000;
    f->sent_ns = dw_mono_ns();
    int max_payload = natsConnection_GetMaxPayload(d->nc);
    size_t max_bytes = max_payload > 4096 ? (size_t)max_payload - 1024 : 1024 * 1024 - 1024;
    if (fanout_plan(b, max_bytes))
        DW_ERROR("plan: out of memory", "msgs=%zu", b->n_msgs);
    else if (b->n_deliveries)
        send_deliveries(d, f);
}

/* Settle thread: wait for the batch's replies, then ack / NAK / dead-letter
 * each message, and free the batch. */
static void finish(dispatcher *d, flight *f)
{
    fanout_batch *b = &f->batch;
    collect_replies(d, f);
    int64_t t2 = dw_mono_ns();
    fanout_decide(b, &d->retry);
    settle(d, f);
    DW_DEBUG("batch timing",
             "msgs=%zu rooms=%zu requests=%zu stored_ago_us=%" PRId64 " registry_us=%" PRId64
             " deliver_us=%" PRId64 " settle_us=%" PRId64,
             b->n_msgs, b->n_rooms, b->n_deliveries, f->waited_us, f->registry_us,
             (t2 - f->sent_ns) / 1000, (dw_mono_ns() - t2) / 1000);
    fanout_batch_clear(b);
    flight_release(f);
}

static void *settle_main(void *arg)
{
    dispatcher *d = arg;
    long slot;
    while ((slot = inflight_front(d->q)) >= 0) {
        finish(d, &d->flights[slot]);
        inflight_pop(d->q);
    }
    return NULL;
}

int dispatch_run(dispatcher *d)
{
    int64_t backoff = 0, last_err_log = 0;
    pthread_t settler;

    /* Two threads, so the next batch is fetched and sent while the edges
     * still work on the earlier ones: an edge replies only after its
     * write pass, and waiting for that before fetching again left both
     * the edge and the stream idle (head-of-line blocking). */
    if (pthread_create(&settler, NULL, settle_main, d)) {
        DW_ERROR("cannot start the settle thread", "%s", "");
        return -1;
    }
    while (!dw_stop) {
        housekeeping(d);

        /* Waits while max_inflight batches await their replies; wakes up
         * for housekeeping meanwhile. */
        long slot = inflight_reserve(d->q, dw_mono_ns() + d->sweep_every_ms * 1000000);
        if (slot < 0) continue;
        flight *f = &d->flights[slot];

        /* Returns as soon as at least one message is there, with whatever
         * else is pending (up to the batch), instead of waiting to fill the
         * batch; idle, after fetch_wait_ms, which paces housekeeping and
         * dw_stop. */
        int64_t t0 = mono_ms();
        natsStatus s = dw_pull_fetch(d->pull, f->msgs, (int)d->cfg.fetch_batch,
                                     d->cfg.fetch_wait_ms, &f->n_msgs);
        if (s == NATS_OK) {
            backoff = 0;
            prepare(d, f);
            inflight_push(d->q);
            continue;
        }
        int64_t took = mono_ms() - t0;
        if (s == NATS_TIMEOUT || s == NATS_NOT_FOUND) {
            /* The server may answer "nothing" early (another dispatcher's
             * pull is first in line): pause so that is not a spin. */
            if (took < d->cfg.fetch_wait_ms / 2) nats_Sleep(took < 5 ? 5 : took);
            backoff = 0;
            continue;
        }
        backoff = backoff ? backoff * 2 : FETCH_BACKOFF_MS;
        if (backoff > FETCH_BACKOFF_MAX_MS) backoff = FETCH_BACKOFF_MAX_MS;
        int64_t now = mono_ms();
        if (now - last_err_log >= ERROR_LOG_EVERY_MS) {
            DW_WARN("fetch failed", "status=%s last=\"%s\" retry_ms=%" PRId64,
                    natsStatus_GetText(s), nats_GetLastError(NULL), backoff);
            last_err_log = now;
        }
        if (took < backoff) nats_Sleep(backoff - took);
    }
    /* Every batch in flight is settled before we return. */
    inflight_close(d->q);
    pthread_join(settler, NULL);
    return 0;
}

/* --- setup --- */

/* Create the durable pull consumer, or bring an existing one to this
 * configuration (several dispatchers share it; the last one started wins),
 * then bind to it. */
static int consumer_bind(dispatcher *d)
{
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = DW_DISPATCHER_DURABLE;
    cc.FilterSubject = DW_SUBJ_MSG_PREFIX ">";
    cc.DeliverPolicy = js_DeliverAll;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = d->cfg.ack_wait_ms * 1000000;
    cc.MaxDeliver = d->cfg.max_deliver;
    cc.MaxAckPending = d->cfg.max_ack_pending;

    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, d->js, DW_STREAM_MSG, &cc, NULL, &jerr);
    if (s != NATS_OK && jerr != 0) {
        /* It exists with another configuration (an older deploy). */
        jsErrCode add_err = jerr;
        jerr = 0;
        s = js_UpdateConsumer(&ci, d->js, DW_STREAM_MSG, &cc, NULL, &jerr);
        if (s != NATS_OK)
            DW_ERROR("consumer setup failed",
                     "consumer=%s add_jserr=%d update_jserr=%d status=%s "
                     "last=\"%s\"",
                     DW_DISPATCHER_DURABLE, (int)add_err, (int)jerr, natsStatus_GetText(s),
                     nats_GetLastError(NULL));
    } else if (s != NATS_OK) {
        DW_ERROR("consumer setup failed", "consumer=%s status=%s last=\"%s\"",
                 DW_DISPATCHER_DURABLE, natsStatus_GetText(s), nats_GetLastError(NULL));
    }
    if (s == NATS_OK && ci && ci->Config)
        DW_INFO("consumer ready",
                "consumer=%s ack_wait_ms=%" PRId64 " max_deliver=%" PRId64
                " max_ack_pending=%" PRId64 " pending=%" PRIu64,
                DW_DISPATCHER_DURABLE, ci->Config->AckWait / 1000000, ci->Config->MaxDeliver,
                ci->Config->MaxAckPending, ci->NumPending);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) return -1;

    /* By hand, not js_PullSubscribe + natsSubscription_FetchRequest (dw/pull.h). */
    s = dw_pull_open(&d->pull, d->nc, DW_STREAM_MSG, DW_DISPATCHER_DURABLE, d->cfg.fetch_wait_ms);
    if (s != NATS_OK) {
        DW_ERROR("pull subscribe failed", "consumer=%s status=%s last=\"%s\"",
                 DW_DISPATCHER_DURABLE, natsStatus_GetText(s), nats_GetLastError(NULL));
        return -1;
    }
    return 0;
}

int dispatch_create(dispatcher **out, natsConnection *nc, jsCtx *js, const dispatch_cfg *cfg)
{
    dispatcher *d = calloc(1, sizeof *d);
    if (!d) return -1;
    d->nc = nc;
    d->js = js;
    d->cfg = *cfg;
    d->retry.base_ms = cfg->retry_base_ms;
    d->retry.max_ms = cfg->retry_max_ms;
    d->retry.max_deliver = (uint64_t)cfg->max_deliver;
    metrics_register();
    atomic_init(&d->seeded, 0);
    if (pthread_mutex_init(&d->rt_mu, NULL)) {
        free(d);
        return -1;
    }
    d->rt_mu_ok = 1;
    d->sweep_every_ms = cfg->edge_dead_ms / 4;
    if (d->sweep_every_ms > 1000) d->sweep_every_ms = 1000;
    if (d->sweep_every_ms < 10) d->sweep_every_ms = 10;

    if (edges_create(&d->edges, cfg->edge_dead_ms, EDGES_FORGET_MS, EDGES_MAX)) goto error;
    /* Keep a message's progress for as long as its redeliveries can come
     * back: the whole schedule, each attempt's waits, and an AckWait. */
    int64_t ttl = fanout_retry_total_ms(&d->retry) + d->cfg.ack_wait_ms +
                  d->cfg.max_deliver * (d->cfg.registry_timeout_ms + d->cfg.edge_timeout_ms) +
                  60000;
    if (retries_create(&d->rt, (size_t)cfg->retry_state_max, ttl)) goto error;
    if (inbox_create(&d->ib, nc)) goto error;
    d->n_flights = cfg->max_inflight > 0 ? (size_t)cfg->max_inflight : 1;
    if (!(d->flights = calloc(d->n_flights, sizeof *d->flights)) ||
        inflight_create(&d->q, d->n_flights))
        goto error;
    for (size_t i = 0; i < d->n_flights; i++)
        if (inbox_create(&d->flights[i].ib, nc) ||
            !(d->flights[i].msgs = calloc((size_t)cfg->fetch_batch, sizeof(natsMsg *))))
            goto error;

    natsInbox *name = NULL;
    if (natsInbox_Create(&name) != NATS_OK) goto error;
    snprintf(d->seed_inbox, sizeof d->seed_inbox, "%s", name);
    natsInbox_Destroy(name);
    natsStatus s = natsConnection_Subscribe(&d->seed_sub, nc, d->seed_inbox, on_seed, d);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&d->hb_sub, nc, DW_SUBJ_EDGE_HEARTBEAT, on_heartbeat, d);
    if (s != NATS_OK) {
        DW_ERROR("subscribe failed", "status=%s", natsStatus_GetText(s));
        goto error;
    }
    if (consumer_bind(d)) goto error;
    *out = d;
    return 0;

error:
    dispatch_destroy(d);
    return -1;
}

void dispatch_destroy(dispatcher *d)
{
    if (!d) return;
    inbox_sub_close(d->hb_sub);
    inbox_sub_close(d->seed_sub);
    dw_pull_close(d->pull); /* the durable consumer stays */
    inbox_destroy(d->ib);
    for (size_t i = 0; d->flights && i < d->n_flights; i++) {
        flight *f = &d->flights[i];
        inbox_destroy(f->ib);
        fanout_batch_clear(&f->batch);
        flight_release(f);
        free(f->msgs);
        free(f->stored_ns);
    }
    free(d->flights);
    inflight_destroy(d->q);
    edges_destroy(d->edges);
    retries_destroy(d->rt);
    if (d->rt_mu_ok) pthread_mutex_destroy(&d->rt_mu);
    free(d);
}
