/* Routes to user code: the I/O shell around integ_codec.c (integ.h). */
#include "integ.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/wire.h"
#include "edge.h"
#include "event.h"
#include "integ_codec.h"
#include "proto_v1.h"
#include "routes.h"

/* How a route's last request ended (dw.ops.routes: dwctl status). */
typedef enum {
    OUT_NONE = 0,
    OUT_REPLY,         /* sync: the worker answered {"reply": ...} */
    OUT_ERROR,         /* sync: the worker answered {"error": ...} */
    OUT_BAD_REPLY,     /* sync: the worker's answer was not a reply */
    OUT_NO_RESPONDERS, /* sync: no worker subscribed */
    OUT_TIMEOUT,       /* sync: no answer in time; async: no JetStream ack in time */
    OUT_STORED,        /* async: JetStream acked the frame */
    OUT_NOT_STORED,    /* async: JetStream refused it */
    OUT_UNSENT,        /* the request could not be handed to NATS */
} integ_outcome;

static const char *const outcome_names[] = {"none",      "reply",         "error",
                                            "bad_reply", "no_responders", "timeout",
                                            "stored",    "not_stored",    "unsent"};

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};

typedef struct integ_route {
    integ_route_spec spec;
    char subject[DW_ACTION_MAX + 16];
    char durable[DW_ACTION_MAX + 8];
    char labels[DW_ACTION_MAX + 32]; /* route="<action>",mode="sync" */
    dw_metric *requests, *errors, *timeouts, *latency;
    atomic_int last;           /* integ_outcome */
    _Atomic int64_t last_ms;   /* when (wall clock) */
    atomic_bool consumer_made; /* async: route-<action> exists as configured */
} integ_route;

/* A request awaiting its answer. lws thread only. */
typedef struct integ_pending {
    struct integ_pending *prev, *next; /* the FIFO of its mode (deadline order) */
    struct integ_pending *hnext;       /* its hash bucket */
    uint64_t token;
    integ_route *route;
    int64_t start_ns, deadline_ns;
    bool v1;
    char conn_id[DW_ID_LEN + 1];
    char request_id[DW_ID_LEN + 1];
    char *ref;       /* v1: the request's ref (JSON text), or NULL */
    char *client_id; /* async v1: the client's "id", or NULL */
} integ_pending;

/* What a nats.c thread hands the lws thread (an EDGE_EV_ROUTE event). */
typedef struct integ_answer {
    uint64_t token;
    bool async;
    bool no_responders; /* sync */
    integ_reply reply;  /* sync, unless no_responders */
    bool ok;            /* async: stored */
    bool timeout;       /* async: no ack in time */
    uint64_t seq;       /* async: the DW_ROUTE sequence */
    char error[96];     /* async: why not */
} integ_answer;

#define BUCKETS 1024

struct edge_integ {
    integ_config cfg;
    integ_route *routes;
    size_t n, nasync;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *reply_sub, *ops_sub;
    char inbox[128]; /* replies come to <inbox>.<token> */
    pthread_t setup_thread;
    bool setup_started;
    atomic_bool stopping;
    /* lws thread only */
    uint64_t next_token;
    integ_pending *buckets[BUCKETS];
    integ_pending *head[2], *tail[2]; /* per integ_mode */
};

int integ_create(edge_integ **out, const integ_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    integ_route_spec *specs = NULL;
    size_t n = 0;
    if (integ_routes_parse(cfg->routes, &specs, &n, err, errlen)) return -1;
    edge_integ *ig = calloc(1, sizeof *ig);
    if (!ig || (n && !(ig->routes = calloc(n, sizeof *ig->routes)))) {
        free(ig);
        free(specs);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ig->cfg = *cfg;
    ig->n = n;
    for (size_t i = 0; i < n; i++) {
        integ_route *r = &ig->routes[i];
        r->spec = specs[i];
        const char *a = r->spec.action;
        if (r->spec.mode == INTEG_ASYNC) {
            dw_subj_route(r->subject, sizeof r->subject, a);
            dw_route_durable(r->durable, sizeof r->durable, a);
            ig->nasync++;
        } else {
            dw_subj_rpc(r->subject, sizeof r->subject, a);
        }
        snprintf(r->labels, sizeof r->labels, "route=\"%s\",mode=\"%s\"", a,
                 r->spec.mode == INTEG_ASYNC ? "async" : "sync");
    }
    free(specs);
    *out = ig;
    return 0;
}

size_t integ_count(const edge_integ *ig)
{
    return ig ? ig->n : 0;
}

bool integ_idle(const edge_integ *ig)
{
    return !ig || (!ig->head[INTEG_SYNC] && !ig->head[INTEG_ASYNC]);
}

static integ_route *find_route(edge_integ *ig, const char *action)
{
    for (size_t i = 0; i < ig->n; i++)
        if (!strcmp(ig->routes[i].spec.action, action)) return &ig->routes[i];
    return NULL;
}

/* ---- events from nats.c threads ---------------------------------------- */

static void answer_event_free(dw_mail *m)
{
    edge_event *ev = (edge_event *)m;
    if (ev && ev->route) {
        integ_reply_free(&ev->route->reply);
        free(ev->route);
        ev->route = NULL;
    }
    edge_event_free(m);
}

static void post_answer(edge_integ *ig, integ_answer *a)
{
    edge_event *ev = edge_event_new(EDGE_EV_ROUTE);
    if (!ev) {
        /* The request times out instead: the sender still gets its error. */
        integ_reply_free(&a->reply);
        free(a);
        return;
    }
    ev->mail.destroy = answer_event_free;
    ev->route = a;
    dw_mailbox_post(ig->cfg.mailbox, &ev->mail);
}

/* A worker's answer (or the server's "no responders") on <inbox>.<token>.
 * Decoded here, off the socket thread. */
static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    edge_integ *ig = closure;
    const char *subj = natsMsg_GetSubject(msg);
    const char *dot = subj ? strrchr(subj, '.') : NULL;
    char *end = NULL;
    uint64_t token = dot ? strtoull(dot + 1, &end, 10) : 0;
    integ_answer *a = token && end && !*end ? calloc(1, sizeof *a) : NULL;
    if (!a) {
        natsMsg_Destroy(msg);
        return;
    }
    a->token = token;
    if (natsMsg_IsNoResponders(msg))
        a->no_responders = true;
    else if (integ_reply_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                                &a->reply)) {
        free(a); /* out of memory: the request times out */
        natsMsg_Destroy(msg);
        return;
    }
    natsMsg_Destroy(msg);
    post_answer(ig, a);
}

/* JetStream's answer to an async frame; its token is in Dw-Ref. */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    edge_integ *ig = closure;
    const char *ref = NULL;
    uint64_t token = 0;
    if (natsMsgHeader_Get(msg, DW_HDR_REF, &ref) == NATS_OK && ref) token = strtoull(ref, NULL, 10);
    integ_answer *a = token ? calloc(1, sizeof *a) : NULL;
    if (!a) {
        natsMsg_Destroy(msg);
        return;
    }
    a->token = token;
    a->async = true;
    if (pa) {
        a->ok = true;
        a->seq = pa->Sequence;
    } else {
        a->timeout = pae && pae->Err == NATS_TIMEOUT;
        snprintf(a->error, sizeof a->error, "%s%s%s",
                 pae ? natsStatus_GetText(pae->Err) : "unknown", pae && pae->ErrText ? ": " : "",
                 pae && pae->ErrText ? pae->ErrText : "");
    }
    natsMsg_Destroy(msg);
    post_answer(ig, a);
}

static json_int_t value(dw_metric *m)
{
    return m ? (json_int_t)atomic_load(&m->value) : 0;
}

/* dw.ops.routes: this edge's routes, their counters and how each one's last
 * request ended (dwctl status). On a nats.c thread: atomics only. */
static void on_ops(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    edge_integ *ig = closure;
    const char *reply = natsMsg_GetReply(msg);
    json_t *arr = json_array();
    for (size_t i = 0; reply && arr && i < ig->n; i++) {
        integ_route *r = &ig->routes[i];
        int last = atomic_load(&r->last);
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:s, s:I}", "action", r->spec.action,
                              "mode", r->spec.mode == INTEG_ASYNC ? "async" : "sync", "requests",
                              value(r->requests), "errors", value(r->errors), "timeouts",
                              value(r->timeouts), "last",
                              outcome_names[last >= 0 && last <= OUT_UNSENT ? last : 0], "lastMs",
                              (json_int_t)atomic_load(&r->last_ms));
        if (o && r->spec.mode == INTEG_ASYNC)
            json_object_set_new(o, "consumer", json_boolean(atomic_load(&r->consumer_made)));
        json_array_append_new(arr, o);
    }
    json_t *root = arr ? json_pack("{s:s, s:o}", "edge", ig->cfg.edge_id, "routes", arr) : NULL;
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    if (text) natsConnection_PublishString(nc, reply, text);
    free(text);
    json_decref(root);
    natsMsg_Destroy(msg);
}

/* ---- the route-<action> consumers --------------------------------------- */

/* Exponential backoff for redeliveries: backoff_ms, twice that, ... (at
 * most 10 minutes each), one step fewer than the attempts (JetStream's
 * rule); the first step is also the ack wait. */
#define BACKOFF_CAP_NS (600LL * 1000000000LL)
static int make_consumer(edge_integ *ig, integ_route *r)
{
    int steps = ig->cfg.max_deliver > 1 ? (int)ig->cfg.max_deliver - 1 : 0;
    if (steps > 64) steps = 64;
    int64_t backoff[64];
    int64_t d = ig->cfg.backoff_ms * 1000000LL;
    for (int i = 0; i < steps; i++) {
        backoff[i] = d < BACKOFF_CAP_NS ? d : BACKOFF_CAP_NS;
        d *= 2;
    }
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = r->durable;
    cc.Description = "DynamoWave async route (edge-made; workers fetch and ack)";
    cc.FilterSubject = r->subject;
    cc.DeliverPolicy = js_DeliverAll;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = ig->cfg.backoff_ms * 1000000LL;
    cc.MaxDeliver = ig->cfg.max_deliver;
    cc.BackOff = steps ? backoff : NULL;
    cc.BackOffLen = steps;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 2000;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, ig->js, DW_STREAM_ROUTE, &cc, &jo, &jerr);
    if (s != NATS_OK && jerr != 0 && jerr != JSStreamNotFoundErr) {
        /* It exists, configured otherwise (an older DW_ROUTE_MAX_DELIVER). */
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        jerr = 0;
        s = js_UpdateConsumer(&ci, ig->js, DW_STREAM_ROUTE, &cc, &jo, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        DW_WARN("route consumer not made yet, retrying", "consumer=%s status=%s jserr=%d",
                r->durable, natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    DW_INFO("route consumer ready", "consumer=%s subject=%s max_deliver=%lld backoff_ms=%lld",
            r->durable, r->subject, (long long)ig->cfg.max_deliver, (long long)ig->cfg.backoff_ms);
    atomic_store(&r->consumer_made, true);
    return 0;
}

static void *setup_main(void *arg)
{
    edge_integ *ig = arg;
    size_t left = ig->nasync;
    while (left && !atomic_load(&ig->stopping)) {
        if (natsConnection_Status(ig->nc) == NATS_CONN_STATUS_CONNECTED)
            for (size_t i = 0; i < ig->n && !atomic_load(&ig->stopping); i++) {
                integ_route *r = &ig->routes[i];
                if (r->spec.mode == INTEG_ASYNC && !atomic_load(&r->consumer_made) &&
                    !make_consumer(ig, r))
                    left--;
            }
        /* Retry pacing while DW_ROUTE is not there yet; not a synchronisation. */
        for (int i = 0; left && i < 10 && !atomic_load(&ig->stopping); i++)
            nats_Sleep(50);
    }
    return NULL;
}

int integ_start(edge_integ *ig, natsConnection *nc)
{
    if (!ig->n) return 0;
    ig->nc = nc;
    for (size_t i = 0; i < ig->n; i++) {
        integ_route *r = &ig->routes[i];
        /* One help text per name: the first route's rows carry it. */
        r->requests = dw_counter("dw_edge_route_requests_total", r->labels,
                                 i ? NULL : "frames sent on to a route's workers");
        r->errors =
            dw_counter("dw_edge_route_errors_total", r->labels,
                       i ? NULL
                         : "route requests answered with an error frame (the worker's "
                           "error, no responders, a bad reply, not stored), timeouts aside");
        r->timeouts = dw_counter("dw_edge_route_timeouts_total", r->labels,
                                 i ? NULL : "route requests with no answer in time");
        r->latency = dw_histogram("dw_edge_route_seconds", r->labels,
                                  i ? NULL
                                    : "a route request to its answer (sync: the worker's reply; "
                                      "async: the JetStream ack)",
                                  latency_bounds, sizeof latency_bounds / sizeof latency_bounds[0]);
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 65536;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = ig;
    jo.PublishAsync.StallWait = 1; /* refuse at once rather than stall the loop */
    if (natsConnection_JetStream(&ig->js, nc, &jo) != NATS_OK) return -1;
    char wild[160];
    if (dw_bus_new_inbox(ig->inbox, sizeof ig->inbox)) return -1;
    snprintf(wild, sizeof wild, "%s.*", ig->inbox);
    natsStatus s = natsConnection_Subscribe(&ig->reply_sub, nc, wild, on_reply, ig);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(ig->reply_sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&ig->ops_sub, nc, DW_SUBJ_OPS_ROUTES, on_ops, ig);
    if (s != NATS_OK) {
        DW_ERROR("route subscriptions failed", "status=%s", natsStatus_GetText(s));
        return -1;
    }
    if (ig->nasync) {
        if (pthread_create(&ig->setup_thread, NULL, setup_main, ig)) return -1;
        ig->setup_started = true;
    }
    for (size_t i = 0; i < ig->n; i++)
        DW_INFO("route", "action=%s mode=%s subject=%s", ig->routes[i].spec.action,
                ig->routes[i].spec.mode == INTEG_ASYNC ? "async" : "sync", ig->routes[i].subject);
    return 0;
}

/* ---- the pending table (lws thread) -------------------------------------- */

static void pending_add(edge_integ *ig, integ_pending *p, integ_mode mode)
{
    integ_pending **b = &ig->buckets[p->token % BUCKETS];
    p->hnext = *b;
    *b = p;
    p->prev = ig->tail[mode];
    if (ig->tail[mode])
        ig->tail[mode]->next = p;
    else
        ig->head[mode] = p;
    ig->tail[mode] = p;
}

static void pending_remove(edge_integ *ig, integ_pending *p)
{
    integ_mode mode = p->route->spec.mode;
    for (integ_pending **b = &ig->buckets[p->token % BUCKETS]; *b; b = &(*b)->hnext)
        if (*b == p) {
            *b = p->hnext;
            break;
        }
    if (p->prev)
        p->prev->next = p->next;
    else
        ig->head[mode] = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        ig->tail[mode] = p->prev;
}

static integ_pending *pending_find(edge_integ *ig, uint64_t token)
{
    for (integ_pending *p = ig->buckets[token % BUCKETS]; p; p = p->hnext)
        if (p->token == token) return p;
    return NULL;
}

static void pending_free(integ_pending *p)
{
    if (!p) return;
    free(p->ref);
    free(p->client_id);
    free(p);
}

/* ---- frames to the sender ---------------------------------------------- */

static void send_owned(edge *e, edge_session *s, char *text, size_t len)
{
    if (text) session_send_text(e, s, text, len);
    free(text);
}

/* Never silence: plain gets API Gateway's error body, v1 an error frame
 * with the code integration_failed. */
static void send_error(edge *e, edge_session *s, bool v1, const char *action,
                       const char *request_id, const char *ref, const char *message)
{
    size_t len = 0;
    char *text = v1 ? integ_v1_error(action, request_id, message, ref, &len)
                    : routes_error_reply("Internal server error", s->id, request_id, &len);
    send_owned(e, s, text, len);
}

static void note(integ_route *r, integ_outcome o)
{
    atomic_store(&r->last, (int)o);
    atomic_store(&r->last_ms, dw_now_ms());
    if (o == OUT_TIMEOUT)
        dw_metric_inc(r->timeouts);
    else if (o != OUT_REPLY && o != OUT_STORED)
        dw_metric_inc(r->errors);
}

/* ---- a frame for a route (lws thread) ---------------------------------- */

static char *json_text(json_t *v)
{
    return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
}

int integ_handle(edge *e, edge_session *s, const char *buf, size_t len, bool v1)
{
    edge_integ *ig = e->integ;
    if (!ig || !ig->n) return 0;
    json_t *frame = NULL;
    const char *action = NULL;
    if (integ_frame_parse(buf, len, &frame, &action)) return 0;
    integ_route *r = find_route(ig, action);
    if (!r) {
        json_decref(frame);
        return 0;
    }
    action = r->spec.action; /* the frame is freed before the answer comes */
    char request_id[DW_ID_LEN + 1] = "";
    dw_id_random(request_id);
    char *ref = v1 ? json_text(json_object_get(frame, "ref")) : NULL;
    if (s->routes_inflight >= ig->cfg.max_inflight) {
        size_t tlen = 0;
        char *text = v1 ? v1_error("rate_limited", "too many route requests awaiting their answer",
                                   ref, 100, &tlen)
                        : routes_error_reply("Too Many Requests", s->id, request_id, &tlen);
        send_owned(e, s, text, tlen);
        dw_metric_inc(e->m->rate_limited);
        free(ref);
        json_decref(frame);
        return 1;
    }
    integ_identity id = {s->ip, s->user_agent, s->user, s->authz_context_json};
    size_t blen = 0;
    char *body = integ_request_body(action, s->id, request_id, &id, frame, &blen);
    integ_pending *p = body ? calloc(1, sizeof *p) : NULL;
    /* The client's id of a v1 async frame is its idempotency key. */
    const char *cid = json_string_value(json_object_get(frame, "id"));
    size_t cid_len = cid ? strlen(cid) : 0;
    if (!v1 || r->spec.mode != INTEG_ASYNC || cid_len == 0 || cid_len > V1_CLIENT_ID_MAX)
        cid = NULL;
    if (!p || (cid && !(p->client_id = strdup(cid)))) {
        send_error(e, s, v1, action, request_id, ref, "out of memory");
        free(body);
        free(ref);
        pending_free(p);
        json_decref(frame);
        return 1;
    }
    json_decref(frame); /* from here on: action is the route's, the id is p->client_id */
    p->token = ++ig->next_token;
    p->route = r;
    p->v1 = v1;
    p->ref = ref;
    memcpy(p->conn_id, s->id, sizeof p->conn_id);
    memcpy(p->request_id, request_id, sizeof p->request_id);
    p->start_ns = dw_mono_ns();
    dw_metric_inc(r->requests);

    natsStatus st;
    if (r->spec.mode == INTEG_SYNC) {
        char reply[192];
        snprintf(reply, sizeof reply, "%s.%" PRIu64, ig->inbox, p->token);
        /* Buffered by nats.c: the loop never waits for the network. */
        st = natsConnection_PublishRequest(ig->nc, r->subject, reply, body, (int)blen);
        p->deadline_ns = p->start_ns + ig->cfg.timeout_ms * 1000000LL;
    } else {
        char tok[24], msg_id[DW_MSGID_MAX];
        snprintf(tok, sizeof tok, "%" PRIu64, p->token);
        if (p->client_id)
            dw_msgid_v1(msg_id, sizeof msg_id, s->user_stable, s->user_stable ? s->user : s->id,
                        p->client_id);
        else
            dw_msgid_chat(msg_id, sizeof msg_id, s->id, ++s->msg_counter);
        natsMsg *m = NULL;
        st = natsMsg_Create(&m, r->subject, NULL, body, (int)blen);
        if (st == NATS_OK) st = natsMsgHeader_Set(m, DW_HDR_REF, tok);
        if (st == NATS_OK) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MsgId = msg_id;
            po.MaxWait = ig->cfg.publish_timeout_ms;
            st = js_PublishMsgAsync(ig->js, &m, &po);
        }
        natsMsg_Destroy(m); /* NULL once the library took it */
        /* nats.c reports its own timeout first; this is the backstop. */
        p->deadline_ns = p->start_ns + (ig->cfg.publish_timeout_ms + 2000) * 1000000LL;
    }
    free(body);
    if (st != NATS_OK) {
        DW_WARN("route request not sent", "conn=%s action=%s status=%s", s->id, action,
                natsStatus_GetText(st));
        note(r, OUT_UNSENT);
        send_error(e, s, v1, action, request_id, p->ref,
                   r->spec.mode == INTEG_ASYNC ? "the frame could not be stored; try again"
                                               : "the request could not be sent; try again");
        pending_free(p);
        return 1;
    }
    pending_add(ig, p, r->spec.mode);
    s->routes_inflight++;
    return 1;
}

/* The session a pending request came from, if it is still there. */
static edge_session *sender(edge *e, integ_pending *p)
{
    edge_session *s = connmap_get(&e->conns, p->conn_id, strlen(p->conn_id));
    if (!s || s->state != SESS_READY) return NULL;
    if (s->routes_inflight) s->routes_inflight--;
    return s;
}

static void on_sync_answer(edge *e, integ_pending *p, integ_answer *a)
{
    integ_route *r = p->route;
    const char *action = r->spec.action;
    integ_outcome o = a->no_responders                     ? OUT_NO_RESPONDERS
                      : a->reply.kind == INTEG_REPLY_OK    ? OUT_REPLY
                      : a->reply.kind == INTEG_REPLY_ERROR ? OUT_ERROR
                                                           : OUT_BAD_REPLY;
    note(r, o);
    dw_metric_observe_ns(r->latency, dw_mono_ns() - p->start_ns);
    if (o != OUT_REPLY)
        DW_WARN("route request failed", "conn=%s action=%s request=%s outcome=%s detail=\"%.120s\"",
                p->conn_id, action, p->request_id, outcome_names[o],
                a->reply.text ? a->reply.text : "");
    edge_session *s = sender(e, p);
    if (!s) return; /* the connection closed meanwhile */
    if (o == OUT_REPLY) {
        if (p->v1) {
            size_t len = 0;
            char *text = integ_v1_reply(action, p->ref, a->reply.text, a->reply.text_len,
                                        a->reply.text_json, &len);
            send_owned(e, s, text, len);
        } else {
            session_send_text(e, s, a->reply.text, a->reply.text_len);
        }
        return;
    }
    char msg[200];
    if (o == OUT_NO_RESPONDERS)
        snprintf(msg, sizeof msg, "no worker is serving this route");
    else if (o == OUT_ERROR)
        snprintf(msg, sizeof msg, "the worker failed: %.150s", a->reply.text);
    else
        snprintf(msg, sizeof msg, "the worker's answer was not understood: %.120s", a->reply.text);
    send_error(e, s, p->v1, action, p->request_id, p->ref, msg);
}

static void on_async_answer(edge *e, integ_pending *p, integ_answer *a)
{
    integ_route *r = p->route;
    integ_outcome o = a->ok ? OUT_STORED : a->timeout ? OUT_TIMEOUT : OUT_NOT_STORED;
    note(r, o);
    dw_metric_observe_ns(r->latency, dw_mono_ns() - p->start_ns);
    if (!a->ok)
        DW_WARN("route frame not stored", "conn=%s action=%s request=%s err=\"%s\"", p->conn_id,
                r->spec.action, p->request_id, a->error);
    edge_session *s = sender(e, p);
    if (!s) return;
    if (!a->ok) {
        send_error(e, s, p->v1, r->spec.action, p->request_id, p->ref,
                   "the frame could not be stored; try again");
    } else if (p->v1) {
        size_t len = 0;
        char *text = integ_v1_ack(r->spec.action, a->seq, p->client_id, p->ref, &len);
        send_owned(e, s, text, len);
    }
    /* plain: stored is silent, as API Gateway is for a route without a
     * route response */
}

void integ_on_event(edge *e, edge_event *ev)
{
    edge_integ *ig = e->integ;
    integ_answer *a = ev->route;
    integ_pending *p = ig && a ? pending_find(ig, a->token) : NULL;
    if (!p) return; /* it timed out before */
    pending_remove(ig, p);
    if (a->async)
        on_async_answer(e, p, a);
    else
        on_sync_answer(e, p, a);
    pending_free(p);
}

void integ_tick(edge *e)
{
    edge_integ *ig = e->integ;
    if (!ig || !ig->n) return;
    int64_t now = dw_mono_ns();
    for (int mode = 0; mode < 2; mode++)
        while (ig->head[mode] && ig->head[mode]->deadline_ns <= now) {
            integ_pending *p = ig->head[mode];
            pending_remove(ig, p);
            note(p->route, OUT_TIMEOUT);
            DW_WARN("route request timed out", "conn=%s action=%s request=%s", p->conn_id,
                    p->route->spec.action, p->request_id);
            edge_session *s = sender(e, p);
            if (s)
                send_error(e, s, p->v1, p->route->spec.action, p->request_id, p->ref,
                           mode == INTEG_SYNC ? "the worker did not answer in time"
                                              : "the frame could not be stored; try again");
            pending_free(p);
        }
}

void integ_stop(edge_integ *ig, int64_t timeout_ms)
{
    if (!ig || !ig->n) return;
    atomic_store(&ig->stopping, true);
    if (ig->setup_started) pthread_join(ig->setup_thread, NULL);
    ig->setup_started = false;
    natsSubscription **subs[] = {&ig->reply_sub, &ig->ops_sub};
    for (size_t i = 0; i < 2; i++) {
        if (*subs[i]) natsSubscription_Unsubscribe(*subs[i]);
        natsSubscription_Destroy(*subs[i]);
        *subs[i] = NULL;
    }
    if (ig->js && ig->nasync) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = timeout_ms;
        js_PublishAsyncComplete(ig->js, &po);
    }
    for (int mode = 0; mode < 2; mode++)
        while (ig->head[mode]) {
            integ_pending *p = ig->head[mode];
            pending_remove(ig, p);
            pending_free(p);
        }
}

void integ_destroy(edge_integ *ig)
{
    if (!ig) return;
    if (!atomic_load(&ig->stopping)) integ_stop(ig, 0);
    jsCtx_Destroy(ig->js);
    free(ig->routes);
    free(ig);
}
