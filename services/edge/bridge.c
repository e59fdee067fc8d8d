#include "bridge.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dw/log.h"
#include "dw/wire.h"

struct edge_bridge {
    edge_bridge_config cfg;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *deliver_sub;
    natsSubscription *conn_sub;
    natsSubscription *down_sub;
    natsSubscription *presence_sub;
    pthread_t setup_thread;
    bool setup_started;
    atomic_bool setup_done;
    atomic_bool stopping;

    atomic_bool leaving; /* our own EDGE_DOWN is out (bridge_publish_edge_down) */

    /* Deliveries answered on arrival and not yet handled by the loop. */
    atomic_size_t answered_bytes;

    /* the self-check (bridge_note_held) */
    pthread_t check_thread;
    bool check_started;
    pthread_mutex_t check_mu;
    pthread_cond_t check_cv;
    bool check_now; /* a reconnect: look at once */
    atomic_uint_fast32_t held_ready;
    char probe_id[DW_ID_LEN + 1]; /* under check_mu; "" for none */
    uint64_t probe_seq;           /* under check_mu */
};

/* A delivery of room messages only is answered as it arrives, not once the
 * loop has queued it: the dispatcher sends a room's next request after the
 * answer, and the loop reads its mailbox only between write passes, so
 * answering from the loop made each message wait for one more pass (~7 ms
 * for 1,000 members). Nothing is weaker for it: a delivery in the mailbox
 * and one queued on its sockets are both lost if the edge dies, and both
 * reach their sockets in the order they came. While this many bytes of
 * answered deliveries wait for the loop, the loop answers (the dispatcher
 * then waits for it: back pressure). A delivery naming connections is
 * always answered by the loop: its answer lists the ones gone. */
#define ANSWER_AHEAD_BYTES (4u << 20)

/* How often the self-check asks the registry. */
#define SELFCHECK_EVERY_MS 5000
#define SELFCHECK_TIMEOUT_MS 2000

static void enqueue(edge_bridge *b, edge_event *ev)
{
    dw_mailbox_post(b->cfg.mailbox, &ev->mail);
}

jsCtx *bridge_js(edge_bridge *b)
{
    return b->js;
}

natsConnection *bridge_nc(edge_bridge *b)
{
    return b->nc;
}

/* Ids of our publishes (dw/wire.h): "connect.<id>", "disconnect.<id>",
 * "reannounce.<round>.<id>", "drop.<round>.<id>" and "<id>:<n>" for chat
 * messages; the connection id is recovered from them here. */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    edge_bridge *b = closure;
    const char *subj = natsMsg_GetSubject(msg);
    const char *msg_id = NULL;
    /* A chat message whose Nats-Msg-Id is the client's key names the
     * edge's own "<conn>:<n>" in Dw-Ref. */
    if (natsMsgHeader_Get(msg, DW_HDR_REF, &msg_id) != NATS_OK || !msg_id)
        natsMsgHeader_Get(msg, DW_HDR_MSG_ID, &msg_id);
    edge_event *ev = edge_event_new(EDGE_EV_MSG_ACK);
    if (!ev || !msg_id) {
        DW_ERROR("publish ack lost", "subject=%s", subj ? subj : "?");
        edge_event_free(&ev->mail);
        natsMsg_Destroy(msg);
        return;
    }
    size_t idlen = strnlen(msg_id, sizeof ev->msg_id - 1); /* (snprintf: ~650 instructions) */
    memcpy(ev->msg_id, msg_id, idlen);
    ev->msg_id[idlen] = '\0';
    if (!strcmp(subj, "dw.conn.connect")) {
        ev->kind = EDGE_EV_CONNECT_ACK;
        dw_msgid_conn_of(msg_id, ev->conn_id);
    } else if (!strncmp(subj, "dw.conn.", 8) && strcmp(subj, "dw.conn.disconnect")) {
        /* leave (join is published synchronously by a job): only log failures */
        if (!pa) DW_WARN("membership event not durable", "subject=%s id=%s", subj, msg_id);
        edge_event_free(&ev->mail);
        natsMsg_Destroy(msg);
        return;
    } else if (!strcmp(subj, "dw.conn.disconnect")) {
        ev->kind = EDGE_EV_DISCONNECT_ACK;
        dw_msgid_conn_of(msg_id, ev->conn_id);
    } else {
        uint64_t n;
        dw_msgid_chat_parse(msg_id, ev->conn_id, &n);
    }
    if (pa) {
        ev->ok = true;
        ev->seq = pa->Sequence;
    } else {
        ev->ok = false;
        snprintf(ev->error, sizeof ev->error, "%s%s%s",
                 pae ? natsStatus_GetText(pae->Err) : "unknown", pae && pae->ErrText ? ": " : "",
                 pae && pae->ErrText ? pae->ErrText : "");
    }
    natsMsg_Destroy(msg);
    enqueue(b, ev);
}

static int publish_pb(edge_bridge *b, const char *subj, const ProtobufCMessage *pb);

/* Answer ev's delivery now (ANSWER_AHEAD_BYTES) if it only carries room
 * messages and the budget allows; ev->reply is then gone. */
static void answer_ahead(edge_bridge *b, edge_event *ev, size_t len)
{
    const Dw__Delivery *d = ev->delivery;
    if (!ev->reply) return;
    for (size_t i = 0; i < d->n_items; i++)
        if (d->items[i]->n_conn_ids) return;
    if (!len) len = 1;
    if (atomic_fetch_add(&b->answered_bytes, len) + len > ANSWER_AHEAD_BYTES) {
        atomic_fetch_sub(&b->answered_bytes, len);
        return;
    }
    Dw__DeliveryReply r = DW__DELIVERY_REPLY__INIT;
    r.accepted = (uint32_t)d->n_items;
    if (publish_pb(b, ev->reply, &r.base)) {
        atomic_fetch_sub(&b->answered_bytes, len);
        return;
    }
    free(ev->reply);
    ev->reply = NULL;
    ev->answered_bytes = len;
}

static void on_delivery(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    edge_bridge *b = closure;
    const char *reply = natsMsg_GetReply(msg);
    /* Decoding here keeps protobuf work off the socket thread. */
    Dw__Delivery *d = dw_pb_unpack(&dw__delivery__descriptor, msg);
    if (!d) {
        DW_WARN("undecodable delivery dropped", "bytes=%d", natsMsg_GetDataLength(msg));
        natsMsg_Destroy(msg);
        return;
    }
    edge_event *ev = edge_event_new(EDGE_EV_DELIVERY);
    if (!ev || (reply && !(ev->reply = strdup(reply)))) {
        /* No reply: the dispatcher times out and retries. */
        dw__delivery__free_unpacked(d, NULL);
        if (ev) edge_event_free(&ev->mail);
        natsMsg_Destroy(msg);
        return;
    }
    ev->delivery = d;
    answer_ahead(b, ev, (size_t)natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
    enqueue(b, ev);
}

void bridge_delivery_handled(edge_bridge *b, size_t answered_bytes)
{
    atomic_fetch_sub(&b->answered_bytes, answered_bytes);
}

static void on_conn_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    edge_bridge *b = closure;
    const char *reply = natsMsg_GetReply(msg);
    Dw__ConnRequest *r = dw_pb_unpack(&dw__conn_request__descriptor, msg);
    edge_event *ev = r && reply ? edge_event_new(EDGE_EV_CONN_REQUEST) : NULL;
    if (!ev || !(ev->reply = strdup(reply))) {
        if (r) dw__conn_request__free_unpacked(r, NULL);
        if (ev) edge_event_free(&ev->mail);
        natsMsg_Destroy(msg);
        return;
    }
    ev->conn_request = r;
    natsMsg_Destroy(msg);
    enqueue(b, ev);
}

static void on_edge_down(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    edge_bridge *b = closure;
    Dw__ConnEvent *ce = dw_pb_unpack(&dw__conn_event__descriptor, msg);
    /* While leaving, the EDGE_DOWN for this edge is our own. */
    if (ce && ce->edge_id && !strcmp(ce->edge_id, b->cfg.edge_id) && !atomic_load(&b->leaving)) {
        DW_WARN("this edge was declared down while alive; closing its connections",
                "edge=%s reason=\"%s\"", b->cfg.edge_id, ce->reason ? ce->reason : "");
        edge_event *ev = edge_event_new(EDGE_EV_EDGE_DOWN_SELF);
        if (ev) enqueue(b, ev);
    }
    if (ce) dw__conn_event__free_unpacked(ce, NULL);
    natsMsg_Destroy(msg);
}

/* Membership changes anywhere (core subscription on the stream's subjects:
 * best effort, the presence query is the authority) become join/leave
 * events for this edge's v1 members. */
static void on_membership(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    edge_bridge *b = closure;
    /* Every connect and disconnect of the cluster comes through here: with
     * no v1 member on this edge, none can matter, so do not even decode.
     * A member joining after this check is still joining when the event
     * would have been handled, and would have skipped it then too. */
    if (b->cfg.presence_listeners &&
        !atomic_load_explicit(b->cfg.presence_listeners, memory_order_relaxed)) {
        natsMsg_Destroy(msg);
        return;
    }
    Dw__ConnEvent *ce = dw_pb_unpack(&dw__conn_event__descriptor, msg);
    natsMsg_Destroy(msg);
    if (!ce) return;
    if (!ce->n_rooms || ce->kind == DW__CONN_EVENT__KIND__EDGE_DOWN) {
        dw__conn_event__free_unpacked(ce, NULL);
        return;
    }
    edge_event *ev = edge_event_new(EDGE_EV_PRESENCE);
    if (!ev) {
        dw__conn_event__free_unpacked(ce, NULL);
        return;
    }
    ev->conn_event = ce;
    enqueue(b, ev);
}

int bridge_presence_watch(edge_bridge *b, bool on)
{
    if (on == (b->presence_sub != NULL)) return 0;
    if (!on) {
        natsSubscription_Unsubscribe(b->presence_sub);
        natsSubscription_Destroy(b->presence_sub);
        b->presence_sub = NULL;
        return 0;
    }
    if (!bridge_ready(b)) return -1;
    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_Subscribe(&sub, b->nc, "dw.conn.*", on_membership, b);
    if (s == NATS_OK) s = natsSubscription_SetPendingLimits(sub, 65536, 64 * 1024 * 1024);
    if (s != NATS_OK) {
        DW_WARN("presence subscription failed", "status=%s", natsStatus_GetText(s));
        natsSubscription_Destroy(sub);
        return -1;
    }
    b->presence_sub = sub;
    return 0;
}

static void *setup_main(void *arg)
{
    edge_bridge *b = arg;
    while (!atomic_load(&b->stopping)) {
        /* The registry creates the streams; the edge's NATS user may only
         * look at them (deploy/nats/auth.conf). */
        if (natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED &&
            dw_streams_exist(b->js) == NATS_OK) {
            char subj[128];
            dw_subj_edge_deliver(subj, sizeof subj, b->cfg.edge_id);
            char csubj[128];
            dw_subj_edge_conn(csubj, sizeof csubj, b->cfg.edge_id);
            natsStatus s = natsConnection_Subscribe(&b->deliver_sub, b->nc, subj, on_delivery, b);
            if (s == NATS_OK) s = natsSubscription_SetPendingLimits(b->deliver_sub, -1, -1);
            if (s == NATS_OK && !b->conn_sub)
                s = natsConnection_Subscribe(&b->conn_sub, b->nc, csubj, on_conn_request, b);
            if (s == NATS_OK && !b->down_sub)
                s = natsConnection_Subscribe(&b->down_sub, b->nc,
                                             dw_subj_conn_event(DW__CONN_EVENT__KIND__EDGE_DOWN),
                                             on_edge_down, b);
            if (s == NATS_OK) s = natsConnection_Flush(b->nc);
            if (s == NATS_OK) {
                atomic_store(&b->setup_done, true);
                DW_INFO("bus ready", "edge=%s deliver=%s", b->cfg.edge_id, subj);
                return NULL;
            }
            DW_WARN("subscribe failed, retrying", "status=%s", natsStatus_GetText(s));
            natsSubscription_Destroy(b->deliver_sub);
            b->deliver_sub = NULL;
        }
        /* Retry pacing while NATS is away; not a synchronisation. */
        struct timespec ts = {0, 250 * 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

void bridge_note_held(edge_bridge *b, uint32_t ready, const char *probe_id, uint64_t probe_seq)
{
    atomic_store(&b->held_ready, ready);
    pthread_mutex_lock(&b->check_mu);
    snprintf(b->probe_id, sizeof b->probe_id, "%s", probe_id ? probe_id : "");
    b->probe_seq = probe_seq;
    pthread_mutex_unlock(&b->check_mu);
}

/* One look: does the registry still list us? It is asked for our oldest
 * ready connection (the probe): an EDGE_DOWN drops every connection the
 * edge had, and asking for any one of ours would be answered by a client
 * that connected after it. */
static void self_check(edge_bridge *b)
{
    uint32_t ready = (uint32_t)atomic_load(&b->held_ready);
    char probe[DW_ID_LEN + 1];
    pthread_mutex_lock(&b->check_mu);
    memcpy(probe, b->probe_id, sizeof probe);
    uint64_t acked = b->probe_seq;
    pthread_mutex_unlock(&b->check_mu);
    if (!ready || !probe[0] || !bridge_ready(b) || atomic_load(&b->leaving)) return;
    Dw__ListQuery q = DW__LIST_QUERY__INIT;
    q.edge_id = (char *)b->cfg.edge_id;
    q.conn_id = probe;
    q.limit = 1;
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&q.base, &len);
    if (!buf) return;
    natsMsg *m = NULL;
    natsStatus s =
        natsConnection_Request(&m, b->nc, DW_SUBJ_REG_LIST, buf, (int)len, SELFCHECK_TIMEOUT_MS);
    free(buf);
    if (s != NATS_OK) return; /* no registry now: ask again later */
    Dw__ListReply *r = dw_pb_unpack(&dw__list_reply__descriptor, m);
    natsMsg_Destroy(m);
    if (!r) return;
    /* Only an answer from a registry that applied the probe's connect can
     * say it is missing (a connect still on its way is not a loss). */
    if (r->ok && r->n_conns == 0 && r->applied_seq >= acked) {
        edge_event *ev = edge_event_new(EDGE_EV_EDGE_DOWN_SELF);
        if (ev) {
            DW_WARN("the registry lost this edge's oldest connection; closing them all",
                    "edge=%s conn=%s connections=%u applied_seq=%llu", b->cfg.edge_id, probe, ready,
                    (unsigned long long)r->applied_seq);
            snprintf(ev->conn_id, sizeof ev->conn_id, "%s", probe);
            enqueue(b, ev);
        }
    }
    dw__list_reply__free_unpacked(r, NULL);
}

static void *check_main(void *arg)
{
    edge_bridge *b = arg;
    pthread_mutex_lock(&b->check_mu);
    while (!atomic_load(&b->stopping)) {
        if (!b->check_now)
            dw_cond_wait_until(&b->check_cv, &b->check_mu,
                               dw_mono_ns() + SELFCHECK_EVERY_MS * 1000000LL);
        if (atomic_load(&b->stopping)) break;
        bool now = b->check_now;
        b->check_now = false;
        pthread_mutex_unlock(&b->check_mu);
        /* After a reconnect, give our subscriptions and the registry a
         * moment to be back before asking (paced, not a synchronisation:
         * the next regular look comes anyway). */
        if (now) nats_Sleep(500);
        self_check(b);
        pthread_mutex_lock(&b->check_mu);
    }
    pthread_mutex_unlock(&b->check_mu);
    return NULL;
}

static void on_reconnect(void *arg)
{
    edge_bridge *b = arg;
    pthread_mutex_lock(&b->check_mu);
    b->check_now = true;
    pthread_cond_signal(&b->check_cv);
    pthread_mutex_unlock(&b->check_mu);
}

int bridge_create(edge_bridge **out, const edge_bridge_config *cfg)
{
    edge_bridge *b = calloc(1, sizeof *b);
    if (!b) return -1;
    b->cfg = *cfg;
    pthread_mutex_init(&b->check_mu, NULL);
    dw_cond_init_mono(&b->check_cv);
    *out = b;
    return 0;
}

int bridge_start(edge_bridge *b, natsConnection *nc)
{
    b->nc = nc;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = b->cfg.max_pending;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = b;
    /* Past MaxPending a publish fails at once instead of stalling the loop. */
    jo.PublishAsync.StallWait = 1;
    if (natsConnection_JetStream(&b->js, b->nc, &jo) != NATS_OK) return -1;
    if (pthread_create(&b->setup_thread, NULL, setup_main, b)) return -1;
    b->setup_started = true;
    if (pthread_create(&b->check_thread, NULL, check_main, b)) return -1;
    b->check_started = true;
    dw_bus_on_reconnect(on_reconnect, b);
    return 0;
}

bool bridge_ready(edge_bridge *b)
{
    return atomic_load(&b->setup_done) &&
           natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED;
}

/* ref: what the ack names (the edge's own "<conn>:<n>") when the
 * Nats-Msg-Id is something else (a client's idempotency key); NULL when the
 * id is the ref. */
static int publish_async_ref(edge_bridge *b, const char *subj, const char *msg_id, const char *ref,
                             const ProtobufCMessage *pb);

static int publish_async(edge_bridge *b, const char *subj, const char *msg_id,
                         const ProtobufCMessage *pb)
{
    return publish_async_ref(b, subj, msg_id, NULL, pb);
}

static int publish_async_ref(edge_bridge *b, const char *subj, const char *msg_id, const char *ref,
                             const ProtobufCMessage *pb)
{
    size_t len;
    uint8_t *buf = dw_pb_pack(pb, &len);
    if (!buf) return -1;
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, subj, NULL, (const char *)buf, (int)len);
    free(buf);
    if (s == NATS_OK && ref) s = natsMsgHeader_Set(m, DW_HDR_REF, ref);
    if (s == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = msg_id;
        po.MaxWait = b->cfg.publish_timeout_ms;
        s = js_PublishMsgAsync(b->js, &m, &po);
    }
    if (s != NATS_OK) {
        natsMsg_Destroy(m);
        return -1;
    }
    return 0;
}

int bridge_publish_conn(edge_bridge *b, const Dw__ConnEvent *ev)
{
    char msg_id[DW_MSGID_MAX];
    /* joins/leaves come with the rooms protocol */
    if (dw_msgid_conn(msg_id, sizeof msg_id, ev->kind, ev->conn_id)) return -1;
    return publish_async(b, dw_subj_conn_event(ev->kind), msg_id, &ev->base);
}

int bridge_publish_reannounce(edge_bridge *b, const Dw__ConnEvent *ev, uint64_t round)
{
    char msg_id[DW_MSGID_MAX];
    if (dw_msgid_reannounce(msg_id, sizeof msg_id, round, ev->conn_id)) return -1;
    return publish_async(b, dw_subj_conn_event(DW__CONN_EVENT__KIND__CONNECT), msg_id, &ev->base);
}

int bridge_publish_drop(edge_bridge *b, const Dw__ConnEvent *ev, uint64_t round)
{
    char msg_id[DW_MSGID_MAX];
    if (dw_msgid_drop(msg_id, sizeof msg_id, round, ev->conn_id)) return -1;
    return publish_async(b, dw_subj_conn_event(DW__CONN_EVENT__KIND__DISCONNECT), msg_id,
                         &ev->base);
}

int bridge_publish_leave(edge_bridge *b, const Dw__ConnEvent *ev, uint64_t n)
{
    char msg_id[DW_MSGID_MAX];
    if (dw_msgid_membership(msg_id, sizeof msg_id, ev->kind, ev->conn_id,
                            ev->n_rooms ? ev->rooms[0] : "", n))
        return -1;
    return publish_async(b, dw_subj_conn_event(DW__CONN_EVENT__KIND__LEAVE), msg_id, &ev->base);
}

int bridge_publish_msg(edge_bridge *b, const Dw__ChatMessage *m, const char *msg_id)
{
    char subj[DW_ROOM_MAX + 24];
    if (dw_subj_msg(subj, sizeof subj, m->room)) return -1;
    if (!msg_id || !strcmp(msg_id, m->id)) return publish_async(b, subj, m->id, &m->base);
    return publish_async_ref(b, subj, msg_id, m->id, &m->base);
}

/* A core publish of a protobuf message: buffered by nats.c, never waits for
 * the network (send-asap only shortens how long it sits in the buffer). */
static int publish_pb(edge_bridge *b, const char *subj, const ProtobufCMessage *pb)
{
    size_t len;
    uint8_t *buf = dw_pb_pack(pb, &len);
    if (!buf) return -1;
    natsStatus s = natsConnection_Publish(b->nc, subj, buf, (int)len);
    free(buf);
    return s == NATS_OK ? 0 : -1;
}

int bridge_reply(edge_bridge *b, const char *reply, const Dw__DeliveryReply *r)
{
    return publish_pb(b, reply, &r->base);
}

int bridge_reply_conn(edge_bridge *b, const char *reply, const Dw__ConnReply *r)
{
    return publish_pb(b, reply, &r->base);
}

int bridge_heartbeat(edge_bridge *b, uint32_t connections)
{
    Dw__EdgeHeartbeat hb = DW__EDGE_HEARTBEAT__INIT;
    hb.edge_id = (char *)b->cfg.edge_id;
    hb.ts_ms = dw_now_ms();
    hb.connections = connections;
    hb.version = DW_VERSION;
    return publish_pb(b, DW_SUBJ_EDGE_HEARTBEAT, &hb.base);
}

/* A publish the server refused for lack of permission fails no request in
 * nats.c: it only becomes the connection's last error. */
static bool edge_down_refused(edge_bridge *b)
{
    const char *text = NULL;
    return natsConnection_GetLastError(b->nc, &text) == NATS_NOT_PERMITTED && text &&
           strstr(text, dw_subj_conn_event(DW__CONN_EVENT__KIND__EDGE_DOWN));
}

int bridge_publish_edge_down(edge_bridge *b, const char *reason, int64_t timeout_ms)
{
    atomic_store(&b->leaving, true);
    if (!bridge_ready(b)) return -1;
    const char *subj = dw_subj_conn_event(DW__CONN_EVENT__KIND__EDGE_DOWN);
    /* A fresh id for every stop: neither the dispatcher's "edge_down.<edge>"
     * nor the stop of an earlier process with the same DW_EDGE_ID inside
     * the duplicate window may swallow this one. */
    char nonce[DW_ID_LEN + 1] = "", msg_id[DW_MSGID_MAX], inbox[128];
    if (dw_id_random(nonce) || dw_bus_new_inbox(inbox, sizeof inbox) ||
        dw_msgid_edge_down_stop(msg_id, sizeof msg_id, b->cfg.edge_id, nonce))
        return -1;
    Dw__ConnEvent ev;
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__EDGE_DOWN, NULL, b->cfg.edge_id, reason);
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&ev.base, &len);
    if (!buf) return -1;

    /* A request by hand rather than a JetStream publish: a refused publish
     * fails nothing in nats.c (it only becomes the connection's last
     * error), and an async one would stay pending until its timeout and
     * hold up bridge_flush. */
    int rc = -1;
    bool refused = false;
    natsSubscription *sub = NULL;
    natsMsg *m = NULL, *reply = NULL;
    natsStatus s = natsConnection_SubscribeSync(&sub, b->nc, inbox);
    if (s == NATS_OK) s = natsMsg_Create(&m, subj, inbox, (const char *)buf, (int)len);
    if (s == NATS_OK) s = natsMsgHeader_Set(m, DW_HDR_MSG_ID, msg_id);
    if (s == NATS_OK) s = natsConnection_PublishMsg(b->nc, m);
    /* The server answers a refusal before the PONG of this flush. */
    if (s == NATS_OK) s = natsConnection_FlushTimeout(b->nc, timeout_ms);
    int64_t deadline = dw_mono_ns() + timeout_ms * 1000000;
    while (s == NATS_OK && !(refused = edge_down_refused(b)) && dw_mono_ns() < deadline) {
        /* Short waits: a refusal can only be seen between them. */
        s = natsSubscription_NextMsg(&reply, sub, 20);
        if (s == NATS_TIMEOUT) {
            s = NATS_OK;
            continue;
        }
        if (s != NATS_OK) break;
        const char *data = natsMsg_GetData(reply);
        int dlen = natsMsg_GetDataLength(reply);
        /* {"stream":"DW_CONN","seq":N} or {"error":{...}} */
        rc = data && dlen > 0 && !strstr(data, "\"error\"") ? 0 : -1; /* NUL-terminated */
        if (rc) DW_WARN("edge_down not stored", "reply=\"%.*s\"", dlen > 200 ? 200 : dlen, data);
        break;
    }
    if (refused)
        DW_WARN("edge_down refused: this NATS user may not publish it; disconnecting one by one",
                "subject=%s", subj);
    else if (rc && s == NATS_OK && !reply)
        DW_WARN("edge_down not stored in time; disconnecting one by one", "timeout_ms=%lld",
                (long long)timeout_ms);
    else if (rc && s != NATS_OK)
        DW_WARN("edge_down not published; disconnecting one by one", "status=%s",
                natsStatus_GetText(s));
    natsMsg_Destroy(reply);
    natsMsg_Destroy(m);
    natsSubscription_Destroy(sub);
    free(buf);
    return rc;
}

void bridge_flush(edge_bridge *b, int64_t timeout_ms)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    js_PublishAsyncComplete(b->js, &po);
    natsConnection_FlushTimeout(b->nc, timeout_ms);
}

void bridge_stop(edge_bridge *b)
{
    if (!b) return;
    atomic_store(&b->stopping, true);
    dw_bus_on_reconnect_remove(on_reconnect, b);
    if (b->setup_started) pthread_join(b->setup_thread, NULL);
    b->setup_started = false;
    if (b->check_started) {
        pthread_mutex_lock(&b->check_mu);
        pthread_cond_signal(&b->check_cv);
        pthread_mutex_unlock(&b->check_mu);
        pthread_join(b->check_thread, NULL);
    }
    b->check_started = false;
    natsSubscription **subs[] = {&b->deliver_sub, &b->conn_sub, &b->down_sub, &b->presence_sub};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        if (*subs[i]) natsSubscription_Unsubscribe(*subs[i]);
        natsSubscription_Destroy(*subs[i]);
        *subs[i] = NULL;
    }
}

void bridge_destroy(edge_bridge *b)
{
    if (!b) return;
    bridge_stop(b);
    jsCtx_Destroy(b->js);
    pthread_mutex_destroy(&b->check_mu);
    pthread_cond_destroy(&b->check_cv);
    free(b);
}
