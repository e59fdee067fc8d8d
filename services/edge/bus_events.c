/* What the bus tells the lws thread (events from the mailbox, event.h):
 * publish acks of connects, disconnects (retried with a backoff) and chat
 * messages, @connections requests and the registry's reconciliation, and
 * "this edge was declared down". Deliveries go to deliver.c, v1 jobs and
 * presence to v1.c. Also the connection events the edge publishes. */
#include <stdlib.h>
#include <string.h>

#include "authz_gate.h"
#include "bus_events.h"
#include "deliver.h"
#include "dw/log.h"
#include "dw/wire.h"
#include "edge.h"
#include "integ.h"
#include "protocol.h"

/* rooms and user only tell the other edges whom to announce as gone. */
void bus_publish_disconnect(edge *e, const char *conn_id, const char *user, char **rooms,
                            size_t nrooms, const char *reason)
{
    Dw__ConnEvent ev;
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__DISCONNECT, conn_id, e->edge_id, reason);
    ev.user_id = (char *)(user ? user : "");
    ev.rooms = rooms;
    ev.n_rooms = nrooms;
    if (bridge_publish_conn(e->bridge, &ev))
        DW_WARN("disconnect event not published", "conn=%s", conn_id);
}

void bus_connect_event(edge *e, edge_session *s, Dw__ConnEvent *ev, char **rooms, size_t nrooms)
{
    dw_conn_event_make(ev, DW__CONN_EVENT__KIND__CONNECT, s->id, e->edge_id, NULL);
    ev->rooms = rooms;
    ev->n_rooms = nrooms;
    ev->user_id = s->user;
    ev->source_ip = s->ip;
    ev->user_agent = s->user_agent ? s->user_agent : "";
    ev->has_user_agent = s->user_agent != NULL;
    ev->ts_ms = s->connected_at_ms;
}

static void on_connect_ack(edge *e, edge_event *ev)
{
    edge_session *s = connmap_get(&e->conns, ev->conn_id, strlen(ev->conn_id));
    if (ev->ok && ev->seq > e->conn_seq_acked) e->conn_seq_acked = ev->seq;
    if (!s || s->state != SESS_PENDING) return;
    if (!ev->ok) {
        DW_WARN("connect event failed", "conn=%s err=\"%s\"", s->id, ev->error);
        dw_metric_inc(e->m->connect_failed);
        session_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "connect event not durable");
        return;
    }
    if (s->proto->on_ready(e, s) < 0) {
        session_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        return;
    }
    s->state = SESS_READY;
    s->counted = true;
    s->conn_seq = ev->seq;
    dw_metric_set(e->m->connections, ++e->nready);
    while (s->pending && s->state == SESS_READY) {
        edge_pending_rx *p = s->pending;
        s->pending = p->next;
        s->npending--;
        server_message(e, s, p->data, p->len);
        free(p);
    }
    lws_rx_flow_control(s->wsi, 1);
}

static void on_msg_ack(edge *e, edge_event *ev)
{
    edge_session *s = connmap_get(&e->conns, ev->conn_id, strlen(ev->conn_id));
    if (ev->ok)
        dw_metric_inc(e->m->msgs_accepted);
    else
        dw_metric_inc(e->m->msgs_failed);
    if (s && s->state == SESS_READY)
        s->proto->on_ack(e, s, ev);
    else if (!ev->ok)
        DW_WARN("message not durable", "conn=%s id=%s err=\"%s\"", ev->conn_id, ev->msg_id,
                ev->error);
}

/* Disconnect events that failed wait here for their next try, with a
 * backoff: while JetStream is away (a restart, a leader election) a retry
 * at once would fail at once, thousands of times a second. */
typedef struct disc_retry {
    struct disc_retry *next;
    char conn_id[DW_ID_LEN + 1];
    uint32_t attempt;
    bool inflight;
    int64_t due_ms;
} disc_retry;

#define DISC_RETRY_BASE_MS 250
#define DISC_RETRY_MAX_MS 5000

static disc_retry *disc_find(edge *e, const char *conn_id, disc_retry ***link)
{
    disc_retry **pp = &e->disc_retries;
    while (*pp && strcmp((*pp)->conn_id, conn_id))
        pp = &(*pp)->next;
    if (link) *link = pp;
    return *pp;
}

static void on_disconnect_ack(edge *e, edge_event *ev)
{
    disc_retry **link = NULL, *r = disc_find(e, ev->conn_id, &link);
    if (ev->ok) {
        if (ev->seq > e->conn_seq_acked) e->conn_seq_acked = ev->seq;
        if (r) {
            *link = r->next;
            free(r);
        }
        return;
    }
    /* Try again later: a connection left in the registry would be a ghost.
     * The Nats-Msg-Id makes a repeat harmless. */
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return;
        snprintf(r->conn_id, sizeof r->conn_id, "%s", ev->conn_id);
        r->next = e->disc_retries;
        e->disc_retries = r;
    }
    int64_t delay = DISC_RETRY_BASE_MS << (r->attempt < 5 ? r->attempt : 5);
    if (delay > DISC_RETRY_MAX_MS) delay = DISC_RETRY_MAX_MS;
    r->attempt++;
    r->inflight = false;
    r->due_ms = dw_now_ms() + delay;
    if (r->attempt == 1 || r->attempt % 10 == 0)
        DW_WARN("disconnect event failed, retrying", "conn=%s attempt=%u retry_ms=%lld err=\"%s\"",
                ev->conn_id, r->attempt, (long long)delay, ev->error);
}

/* From the tick: publish the disconnects whose wait is over. */
void bus_events_retry_due(edge *e)
{
    int64_t now = dw_now_ms();
    for (disc_retry *r = e->disc_retries; r; r = r->next) {
        if (r->inflight || now < r->due_ms) continue;
        r->inflight = true;
        bus_publish_disconnect(e, r->conn_id, NULL, NULL, 0, "closed");
    }
}

/* "Service Restart" (IANA WebSocket close code registry): reconnect. */
#define CLOSE_SERVICE_RESTART 1012

/* Reconciliation requests bound their work: one page or one batch of ids. */
#define RECONCILE_MAX_IDS 10000

/* Bumped per re-announce or drop wave: part of the Nats-Msg-Id, so that a
 * wave is not taken for a duplicate of an earlier one inside the dedup
 * window. */
static uint64_t reannounce_round;

static void reannounce(edge *e, edge_session *s, uint64_t round)
{
    char *rooms[64];
    size_t n = 0;
    for (uint16_t j = 0; j < s->nrooms && n < 64; j++)
        rooms[n++] = s->rooms[j].room->name;
    Dw__ConnEvent ev;
    bus_connect_event(e, s, &ev, rooms, n);
    if (bridge_publish_reannounce(e->bridge, &ev, round))
        DW_WARN("re-announce failed", "conn=%s", s->id);
}

/* The registry reconciling its table with us (docs/operations.md): list
 * what we hold, announce what it lacks, drop what we do not hold. ANNOUNCE
 * and DROP check again here, on the thread that opens and closes sockets,
 * so a connection that came or went since the LIST is never wronged: a
 * re-announce is published before any later disconnect of the same id,
 * and a dropped id is one we do not hold (ids are never reused). */
static void on_reconcile_request(edge *e, edge_event *ev)
{
    Dw__ConnRequest *rq = ev->conn_request;
    Dw__ConnReply r = DW__CONN_REPLY__INIT;
    char **ids = NULL;
    r.found = true;
    if (rq->op == DW__CONN_REQUEST__OP__LIST) {
        size_t limit = rq->limit && rq->limit < RECONCILE_MAX_IDS ? rq->limit : RECONCILE_MAX_IDS;
        size_t i = rq->cursor < e->conns.nslots ? (size_t)rq->cursor : e->conns.nslots;
        ids = malloc(limit * sizeof *ids);
        if (!ids) {
            r.error = DW_ERR_TEXT_OUT_OF_MEMORY;
            goto reply;
        }
        for (; i < e->conns.nslots && r.n_conn_ids < limit; i++) {
            edge_session *s = e->conns.slots[i].value;
            if (s) ids[r.n_conn_ids++] = s->id;
        }
        r.conn_ids = ids;
        r.next_cursor = i;
        r.more = i < e->conns.nslots;
    } else if (rq->n_conn_ids > RECONCILE_MAX_IDS) {
        r.error = DW_ERR_TEXT_TOO_MANY_IDS;
    } else if (rq->op == DW__CONN_REQUEST__OP__ANNOUNCE) {
        uint64_t round = ++reannounce_round;
        for (size_t i = 0; i < rq->n_conn_ids; i++) {
            const char *id = rq->conn_ids[i];
            edge_session *s =
                strlen(id) == DW_ID_LEN ? connmap_get(&e->conns, id, DW_ID_LEN) : NULL;
            if (!s || s->state != SESS_READY) continue; /* pending: its own CONNECT is coming */
            reannounce(e, s, round);
            r.count++;
        }
        if (r.count) DW_INFO("reconcile: re-announced connections", "count=%u", r.count);
    } else {
        uint64_t round = ++reannounce_round;
        for (size_t i = 0; i < rq->n_conn_ids; i++) {
            const char *id = rq->conn_ids[i];
            if (strlen(id) == DW_ID_LEN && connmap_get(&e->conns, id, DW_ID_LEN)) continue;
            Dw__ConnEvent dev;
            dw_conn_event_make(&dev, DW__CONN_EVENT__KIND__DISCONNECT, id, e->edge_id,
                               "reconcile: not on this edge");
            if (bridge_publish_drop(e->bridge, &dev, round)) {
                DW_WARN("reconcile: disconnect event not published", "conn=%s", id);
                continue;
            }
            r.count++;
        }
        if (r.count)
            DW_INFO("reconcile: dropped connections this edge does not hold", "count=%u", r.count);
    }
reply:
    bridge_reply_conn(e->bridge, ev->reply, &r);
    free(ids);
}

/* The @connections operations, asked by the api service for one of ours. */
static void on_conn_request(edge *e, edge_event *ev)
{
    Dw__ConnRequest *rq = ev->conn_request;
    Dw__ConnReply r = DW__CONN_REPLY__INIT;
    if (rq->op == DW__CONN_REQUEST__OP__LIST || rq->op == DW__CONN_REQUEST__OP__ANNOUNCE ||
        rq->op == DW__CONN_REQUEST__OP__DROP) {
        on_reconcile_request(e, ev);
        return;
    }
    edge_session *s = rq->conn_id ? connmap_get(&e->conns, rq->conn_id, strlen(rq->conn_id)) : NULL;
    char *rooms[1];
    r.conn_id = rq->conn_id;
    if (s && s->state == SESS_READY) {
        r.found = true;
        switch (rq->op) {
        case DW__CONN_REQUEST__OP__INFO:
            r.source_ip = s->ip;
            r.user_agent = s->user_agent ? s->user_agent : "";
            r.has_user_agent = s->user_agent != NULL;
            r.connected_at_ms = s->connected_at_ms;
            r.last_active_ms = s->last_active_ms;
            r.user_id = "";
            for (uint16_t i = 0; i < s->nrooms && i < 1; i++)
                rooms[r.n_rooms++] = s->rooms[i].room->name;
            r.rooms = rooms;
            break;
        case DW__CONN_REQUEST__OP__POST:
            if (rq->data.len > (size_t)e->cfg->max_message)
                r.error = DW_ERR_TEXT_TOO_LARGE;
            else if (session_send_text(e, s, (const char *)rq->data.data, rq->data.len))
                r.error = DW_ERR_TEXT_OUT_OF_MEMORY;
            break;
        case DW__CONN_REQUEST__OP__CLOSE:
            session_close(s, rq->close_code ? (uint16_t)rq->close_code : LWS_CLOSE_STATUS_NORMAL,
                          "closed by the management API");
            break;
        default: r.error = DW_ERR_TEXT_BAD_REQUEST;
        }
    }
    bridge_reply_conn(e->bridge, ev->reply, &r);
}

/* The dispatcher declared this edge down (it missed our heartbeats for
 * EDGE_DEAD_MS: we were stopped or cut off) and the registry dropped our
 * connections, or the registry lists none of them. Either way, messages
 * to their rooms were fanned out without this edge for a while, and
 * nothing would ever bring those to sockets that stayed open. Close every
 * connection with 1012: a client that reconnects is a new member (a kill
 * -9 of the edge looks the same to it), and a v1 client's resume with
 * `since` gets what it missed. Announcing the connections again instead
 * kept the sockets open but lost those messages silently (425 of 5,000 in
 * a 12 s SIGSTOP of an edge under the fault suite's load). */
static void on_edge_down_self(edge *e, edge_event *ev)
{
    if (ev->conn_id[0]) {
        /* The self-check found the registry without the connection it asked
         * for. It asked on another thread: only if that connection is still
         * ready here (its own disconnect was never published) does its
         * absence mean the registry dropped us. */
        edge_session *s = connmap_get(&e->conns, ev->conn_id, strlen(ev->conn_id));
        if (!s || s->state != SESS_READY) return;
    }
    size_t n = 0;
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (!s || s->state == SESS_CLOSING) continue;
        session_close(s, CLOSE_SERVICE_RESTART, "this edge was declared down: reconnect");
        n++;
    }
    DW_WARN("this edge was declared down while alive: its connections are closed (1012) "
            "to reconnect and resume",
            "edge=%s connections=%zu", e->edge_id, n);
}

void bus_events_drain(edge *e)
{
    edge_event *ev = (edge_event *)dw_mailbox_take(&e->mailbox);
    while (ev) {
        edge_event *next = (edge_event *)ev->mail.next;
        switch (ev->kind) {
        case EDGE_EV_CONNECT_ACK: on_connect_ack(e, ev); break;
        case EDGE_EV_DISCONNECT_ACK: on_disconnect_ack(e, ev); break;
        case EDGE_EV_MSG_ACK: on_msg_ack(e, ev); break;
        case EDGE_EV_DELIVERY: deliver_handle(e, ev); break;
        case EDGE_EV_CONN_REQUEST: on_conn_request(e, ev); break;
        case EDGE_EV_EDGE_DOWN_SELF: on_edge_down_self(e, ev); break;
        case EDGE_EV_JOB_DONE: v1_on_job_done(e, ev->job); break;
        case EDGE_EV_PRESENCE: v1_on_presence(e, ev->conn_event); break;
        case EDGE_EV_AUTHZ: authz_on_adopt(e, ev); break;
        case EDGE_EV_ROUTE: integ_on_event(e, ev); break;
        }
        dw_mail_free(&ev->mail);
        ev = next;
    }
}

void bus_events_free(edge *e)
{
    while (e->disc_retries) {
        disc_retry *n = e->disc_retries->next;
        free(e->disc_retries);
        e->disc_retries = n;
    }
}
