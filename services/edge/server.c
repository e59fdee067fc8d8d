/* The libwebsockets side: one protocol callback for HTTP and WebSocket,
 * the handling of bus events on the lws thread, and the loop. */
#include <dlfcn.h>
#include <ev.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "dw/ping.h"
#include "dw/wire.h"
#include "edge.h"
#include "httproute.h"
#include "jobs.h"
#include "linger.h"
#include "proto_v1.h"
#include "protocol.h"
#include "routes.h"
#include "utf8.h"

#define TICK_US (100 * 1000)

/* ---- writing ---------------------------------------------------------- */

static void want_write(edge_session *s)
{
    if (!s->want_write) {
        s->want_write = true;
        lws_callback_on_writable(s->wsi);
    }
}

void session_close(edge_session *s, uint16_t code, const char *reason)
{
    if (s->state == SESS_CLOSING) return;
    s->state = SESS_CLOSING;
    s->close_code = code;
    s->close_reason = reason;
    s->linger = true;
    linger_close_started(s->wsi, !s->rx_paused_until_ms);
    s->want_write = false;
    want_write(s);
}

/* A reader that does not keep up is closed, not buffered without end: one
 * slow client must not grow the edge or delay the others. */
static bool over_outbound_cap(edge *e, edge_session *s, size_t add)
{
    if (s->out.bytes + add <= (size_t)e->cfg->max_outbound) return false;
    if (s->state != SESS_CLOSING) {
        dw_metric_inc(e->m->closed_slow);
        DW_INFO("slow reader closed", "conn=%s queued=%zu", s->id, s->out.bytes);
        outbox_clear(&s->out);
        session_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "slow reader: too much data queued");
    }
    return true;
}

int session_send_text(edge *e, edge_session *s, const char *text, size_t len)
{
    if (over_outbound_cap(e, s, len + 10)) return 0;
    edge_frame *f = frame_text(text, len);
    if (!f) return -1;
    int rc = outbox_push(&s->out, f);
    frame_unref(f);
    if (!rc) want_write(s);
    return rc;
}

static int on_writeable(edge *e, edge_session *s)
{
    s->want_write = false;
    if (s->state == SESS_CLOSING) {
        /* lws calls back again while it waits for the client's answer to
         * the close frame: closing once more would end that wait (and the
         * lingering read) at once. */
        if (s->close_handed) return 0;
        s->close_handed = true;
        const char *r = s->close_reason ? s->close_reason : "";
        lws_close_reason(s->wsi, (enum lws_close_status)s->close_code, (unsigned char *)r,
                         strlen(r));
        return -1;
    }
    /* The oldest frame of this pass: one observation per pass, not per
     * frame, keeps the cost off the fan-out path. */
    if (s->out.count) {
        const edge_frame *oldest = s->out.ring[s->out.head];
        if (oldest->born_ns)
            dw_metric_observe_ns(e->m->stage_written, dw_mono_ns() - oldest->born_ns);
    }
    edge_frame *big;
    size_t n = outbox_fill(&s->out, e->wbuf + LWS_PRE, (size_t)e->cfg->write_coalesce, &big);
    int w;
    if (big) {
        /* Already framed, and the frame keeps LWS_PRE of headroom. */
        w = lws_write(s->wsi, big->bytes, big->len, LWS_WRITE_RAW);
        outbox_pop(&s->out);
    } else if (n) {
        /* Whole frames back to back, one call: lws sends them as they are,
         * and keeps any unsent tail itself until the socket drains. */
        w = lws_write(s->wsi, e->wbuf + LWS_PRE, n, LWS_WRITE_RAW);
    } else {
        return 0;
    }
    if (w < 0) return -1;
    dw_metric_inc(e->m->writes);
    if (s->out.count) want_write(s);
    return 0;
}

/* ---- inbound ---------------------------------------------------------- */

/* One whole message from the client: the rate limits first, then the
 * session's protocol. */
static void handle_message(edge *e, edge_session *s, const char *buf, size_t len)
{
    dw_metric_inc(e->m->msgs_in);
    s->last_active_ms = dw_now_ms();
    bool strike_out = false;
    int64_t wait_ms = admit_message(e, s, &strike_out);
    if (wait_ms) {
        dw_metric_inc(e->m->rate_limited);
        if (strike_out) {
            dw_metric_inc(e->m->closed_strikes);
            session_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "rate limit exceeded repeatedly");
            return;
        }
        if (s->strikes.count >= 2 && !s->rx_paused_until_ms) {
            /* A client that keeps flooding after a warning is not read from
             * for a while: its bytes wait in its own TCP window instead of
             * costing the edge CPU that other clients need. */
            s->rx_paused_until_ms = s->last_active_ms + 1000;
            lws_rx_flow_control(s->wsi, 0);
        }
        s->proto->on_throttled(e, s, wait_ms);
        return;
    }
    s->proto->on_message(e, s, buf, len);
}

static int on_receive(edge *e, edge_session *s, const void *in, size_t len)
{
    if (s->state == SESS_CLOSING) return 0;
    if (lws_frame_is_binary(s->wsi)) {
        session_close(s, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, "binary frames are not accepted");
        return 0;
    }
    /* Text must be UTF-8 across fragment boundaries; checked here rather
     * than by lws so that the 1007 goes out like any other close (utf8.h). */
    if (lws_is_first_fragment(s->wsi)) s->utf8 = UTF8_ACCEPT;
    if (utf8_feed(&s->utf8, in, len) ||
        (lws_is_final_fragment(s->wsi) && !utf8_complete(s->utf8))) {
        session_close(s, LWS_CLOSE_STATUS_INVALID_PAYLOAD, "invalid UTF-8");
        return 0;
    }
    /* A frame's size is what came so far plus what lws says remains. */
    size_t remaining = lws_remaining_packet_payload(s->wsi);
    if (s->frame_bytes + len + remaining > (size_t)e->cfg->max_frame) {
        dw_metric_inc(e->m->closed_too_large);
        session_close(s, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "frame too large");
        return 0;
    }
    s->frame_bytes = remaining ? s->frame_bytes + len : 0;
    if (lws_is_first_fragment(s->wsi)) {
        s->rx_len = 0;
        /* The common case, a whole message in one piece: no copy. */
        if (s->state == SESS_READY && lws_is_final_fragment(s->wsi) &&
            !lws_remaining_packet_payload(s->wsi) && len <= (size_t)e->cfg->max_message) {
            handle_message(e, s, in, len);
            return 0;
        }
    }
    if (s->rx_len + len > (size_t)e->cfg->max_message) {
        dw_metric_inc(e->m->closed_too_large);
        free(s->rx);
        s->rx = NULL;
        s->rx_len = s->rx_cap = 0;
        session_close(s, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, "message too large");
        return 0;
    }
    if (s->rx_len + len > s->rx_cap) {
        /* Grow to what this message needs, not to the limit: most messages
         * are one small frame. */
        size_t ncap = s->rx_cap ? s->rx_cap : 256;
        while (ncap < s->rx_len + len)
            ncap *= 2;
        if (ncap > (size_t)e->cfg->max_message) ncap = (size_t)e->cfg->max_message;
        char *n = realloc(s->rx, ncap);
        if (!n) return -1;
        s->rx = n;
        s->rx_cap = ncap;
    }
    if (len) memcpy(s->rx + s->rx_len, in, len); /* s->rx is NULL until a byte came */
    s->rx_len += len;
    if (!lws_is_final_fragment(s->wsi) || lws_remaining_packet_payload(s->wsi)) return 0;

    if (s->state == SESS_PENDING) {
        /* rx flow control is off until READY, but lws may already hold
         * bytes that arrived with the handshake: keep them for later. */
        if (s->npending >= (uint32_t)e->cfg->max_pending_rx) {
            session_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "too many messages before ready");
            return 0;
        }
        edge_pending_rx *p = malloc(sizeof *p + s->rx_len);
        if (!p) return -1;
        p->next = NULL;
        p->len = s->rx_len;
        if (s->rx_len) memcpy(p->data, s->rx, s->rx_len);
        edge_pending_rx **pp = &s->pending;
        while (*pp)
            pp = &(*pp)->next;
        *pp = p;
        s->npending++;
    } else {
        /* (A message of empty fragments only has no buffer.) */
        handle_message(e, s, s->rx ? s->rx : "", s->rx_len);
    }
    /* Idle connections hold no reassembly buffer. */
    free(s->rx);
    s->rx = NULL;
    s->rx_len = s->rx_cap = 0;
    return 0;
}

/* ---- connection lifecycle --------------------------------------------- */

/* rooms and user only tell the other edges whom to announce as gone. */
static void publish_disconnect(edge *e, const char *conn_id, const char *user, char **rooms,
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

static void connect_event(edge *e, edge_session *s, Dw__ConnEvent *ev, char **rooms, size_t nrooms)
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

/* The session was zeroed and admitted (identity, source IP) in the
 * protocol filter; here it becomes a connection. */
static int on_established(edge *e, edge_session *s, struct lws *wsi)
{
    s->wsi = wsi;
    s->state = SESS_PENDING;
    if (dw_id_random(s->id)) {
        DW_ERROR("csprng failed", "%s", "");
        return -1;
    }
    s->connected_at_ms = s->last_active_ms = dw_now_ms();
    lws_get_peer_simple(wsi, s->ip, sizeof s->ip);
    const struct lws_protocols *proto = lws_get_protocol(wsi);
    s->v1 = proto && proto->name && !strcmp(proto->name, V1_PROTOCOL);
    s->proto = s->v1 ? &edge_proto_v1 : &edge_proto_aws;
    char name[80];
    const char *given = lws_get_urlarg_by_name(wsi, "name=", name, sizeof name);
    if (s->user[0]) {
        /* authenticated: the JWT's sub */
        s->user_stable = true;
    } else if (given && v1_name_valid(given, strlen(given))) {
        snprintf(s->user, sizeof s->user, "%s", given);
        s->user_stable = true;
    } else {
        /* Anonymous, but distinct: presence must tell users apart. */
        char rnd[DW_ID_LEN + 1];
        dw_id_random(rnd);
        snprintf(s->user, sizeof s->user, "anon-%.8s", rnd);
    }
    int ualen = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_USER_AGENT);
    if (ualen > 0) {
        if (ualen > 512) ualen = 512;
        s->user_agent = malloc((size_t)ualen + 1);
        if (s->user_agent &&
            lws_hdr_copy(wsi, s->user_agent, ualen + 1, WSI_TOKEN_HTTP_USER_AGENT) < 0) {
            free(s->user_agent);
            s->user_agent = NULL;
        }
    }
    if (connmap_put(&e->conns, s->id, s)) return -1;

    Dw__ConnEvent ev;
    char *rooms[] = {DW_ROOM_LOBBY};
    /* Plain (AWS) connections live in the lobby; v1 ones join rooms. */
    connect_event(e, s, &ev, rooms, s->v1 ? 0 : 1);
    if (bridge_publish_conn(e->bridge, &ev)) {
        /* Like a failing ConnectHandler: the client may not take part. */
        session_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "connect event not durable");
        return 0;
    }
    s->connect_published = true;
    /* Read nothing until the connect event is durable. */
    lws_rx_flow_control(wsi, 0);
    DW_DEBUG("connection opened", "conn=%s ip=%s", s->id, s->ip);
    return 0;
}

static void on_closed(edge *e, edge_session *s)
{
    admit_release(e, s);
    if (!s->id[0]) return;
    if (s->connect_published && !e->edge_down_stored) {
        char *rooms[128];
        size_t n = 0;
        for (uint16_t i = 0; i < s->nrooms && n < 128; i++)
            if (!s->rooms[i].joining) rooms[n++] = s->rooms[i].room->name;
        publish_disconnect(e, s->id, s->user, rooms, n,
                           s->close_code ? "closed_by_server" : "closed");
    }
    if (s->proto) s->proto->on_closed(e, s);
    if (s->state == SESS_READY) dw_metric_set(e->m->connections, --e->nready);
    rooms_leave_all(&e->rooms, s);
    connmap_del(&e->conns, s->id);
    outbox_clear(&s->out);
    free(s->rx);
    free(s->user_agent);
    while (s->pending) {
        edge_pending_rx *n = s->pending->next;
        free(s->pending);
        s->pending = n;
    }
    DW_DEBUG("connection closed", "conn=%s", s->id);
    s->id[0] = '\0';
}

/* ---- bus events -------------------------------------------------------- */

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
    dw_metric_set(e->m->connections, ++e->nready);
    while (s->pending && s->state == SESS_READY) {
        edge_pending_rx *p = s->pending;
        s->pending = p->next;
        s->npending--;
        handle_message(e, s, p->data, p->len);
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
static void disc_retry_due(edge *e)
{
    int64_t now = dw_now_ms();
    for (disc_retry *r = e->disc_retries; r; r = r->next) {
        if (r->inflight || now < r->due_ms) continue;
        r->inflight = true;
        publish_disconnect(e, r->conn_id, NULL, NULL, 0, "closed");
    }
}

void session_deliver(edge *e, edge_session *s, edge_frame *f)
{
    if (s->state != SESS_READY || over_outbound_cap(e, s, f->len)) return;
    if (outbox_push(&s->out, f)) {
        session_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        return;
    }
    dw_metric_inc(e->m->deliveries);
    want_write(s);
}

static edge_frame *v1_frame(const Dw__DeliveryItem *it)
{
    v1_msg v = {
        .room = it->room,
        .seq = it->seq,
        .id = it->client_id && *it->client_id ? it->client_id : it->id,
        .from = it->from_user,
        .data = (const char *)it->data.data,
        .data_len = it->data.len,
        .data_json = it->data_json,
        .ts_ms = it->ts_ms,
    };
    size_t len;
    char *text = v1_message(&v, &len);
    edge_frame *f = text ? frame_text(text, len) : NULL;
    free(text);
    return f;
}

/* A member still joining gets live messages after its replay: keep them. */
static void hold(edge_membership *m, edge_frame *f, uint64_t seq)
{
    edge_held *h = malloc(sizeof *h);
    if (!h) return;
    h->next = NULL;
    h->seq = seq;
    h->frame = frame_ref(f);
    if (m->held_tail)
        m->held_tail->next = h;
    else
        m->held = h;
    m->held_tail = h;
}

static void on_delivery(edge *e, edge_event *ev)
{
    Dw__Delivery *d = ev->delivery;
    Dw__DeliveryReply r = DW__DELIVERY_REPLY__INIT;
    char **gone = NULL;
    size_t ngone = 0, gone_cap = 0;
    int64_t now_ns = dw_mono_ns(), wall_ms = dw_now_ms();

    for (size_t i = 0; i < d->n_items; i++) {
        Dw__DeliveryItem *it = d->items[i];
        r.accepted++;
        /* Targeted items (to named connections) have no room order: a set
         * of recent sequences catches their repeats. */
        if (it->n_conn_ids && dedup_check_add(&e->dedup, it->seq)) {
            dw_metric_inc(e->m->dups);
            continue;
        }
        if (it->ts_ms > 0 && wall_ms >= it->ts_ms)
            dw_metric_observe_ns(e->m->stage_delivered, (wall_ms - it->ts_ms) * 1000000);
        /* One frame per message per edge and protocol, shared by every
         * recipient; the v1 one is built only if a v1 member needs it. */
        edge_frame *f = frame_text(it->data.data, it->data.len), *fv1 = NULL;
        if (!f) {
            r.accepted--;
            continue;
        }
        f->born_ns = now_ns;
        if (it->n_conn_ids) {
            for (size_t j = 0; j < it->n_conn_ids; j++) {
                edge_session *s = connmap_get(&e->conns, it->conn_ids[j], strlen(it->conn_ids[j]));
                if (s && s->state == SESS_READY) {
                    session_deliver(e, s, f);
                    continue;
                }
                if (ngone == gone_cap) {
                    size_t nc = gone_cap ? gone_cap * 2 : 8;
                    char **g = realloc(gone, nc * sizeof *g);
                    if (!g) continue;
                    gone = g;
                    gone_cap = nc;
                }
                gone[ngone++] = it->conn_ids[j];
            }
        } else {
            edge_room *room = rooms_get(&e->rooms, it->room);
            /* A room's messages come in seq order from the dispatcher that
             * owns its partition; anything at or below what was delivered
             * is a repeat (a retry whose reply was lost, a partition read
             * again from its floor, a former owner waking up). */
            if (room && it->seq <= room->delivered_seq) {
                dw_metric_inc(e->m->dups);
                frame_unref(f);
                continue;
            }
            if (room) room->delivered_seq = it->seq;
            for (uint32_t j = 0; room && j < room->count; j++) {
                edge_session *s = room->members[j];
                if (it->exclude_sender && it->from_conn && !strcmp(s->id, it->from_conn)) continue;
                if (!s->v1) {
                    session_deliver(e, s, f);
                    continue;
                }
                if (!fv1 && !(fv1 = v1_frame(it))) continue;
                fv1->born_ns = now_ns;
                edge_membership *m = rooms_membership(s, room);
                if (m && m->joining)
                    hold(m, fv1, it->seq);
                else if (!m || it->seq > m->floor_seq)
                    session_deliver(e, s, fv1);
            }
            if (room && it->seq > room->last_seq) room->last_seq = it->seq;
        }
        frame_unref(f);
        frame_unref(fv1);
    }
    if (ev->reply) {
        r.gone_conn_ids = gone;
        r.n_gone_conn_ids = ngone;
        bridge_reply(e->bridge, ev->reply, &r);
    }
    free(gone);
}

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
    connect_event(e, s, &ev, rooms, n);
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

/* The dispatcher declared this edge down (it missed heartbeats or a
 * delivery while we were stopped or cut off) and the registry dropped our
 * connections: announce each live one again. */
static void on_edge_down_self(edge *e)
{
    uint64_t round = ++reannounce_round;
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (s && s->state == SESS_READY) reannounce(e, s, round);
    }
}

static void drain_events(edge *e)
{
    edge_event *ev = (edge_event *)dw_mailbox_take(&e->mailbox);
    while (ev) {
        edge_event *next = (edge_event *)ev->mail.next;
        switch (ev->kind) {
        case EDGE_EV_CONNECT_ACK: on_connect_ack(e, ev); break;
        case EDGE_EV_DISCONNECT_ACK: on_disconnect_ack(e, ev); break;
        case EDGE_EV_MSG_ACK: on_msg_ack(e, ev); break;
        case EDGE_EV_DELIVERY: on_delivery(e, ev); break;
        case EDGE_EV_CONN_REQUEST: on_conn_request(e, ev); break;
        case EDGE_EV_EDGE_DOWN_SELF: on_edge_down_self(e); break;
        case EDGE_EV_JOB_DONE: v1_on_job_done(e, ev->job); break;
        case EDGE_EV_PRESENCE: v1_on_presence(e, ev->conn_event); break;
        }
        dw_mail_free(&ev->mail);
        ev = next;
    }
}

/* ---- HTTP -------------------------------------------------------------- */

static int http_text(struct lws *wsi, edge_session *s, unsigned int code, const char *text)
{
    s->state = SESS_HTTP;
    return dw_http_text(wsi, &s->http, code, text);
}

static int on_http(edge *e, struct lws *wsi, edge_session *s, const char *uri)
{
    size_t ulen = strlen(uri);
    int args = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
    if (ulen + (size_t)(args > 0 ? args : 0) > (size_t)e->cfg->max_url) {
        dw_metric_inc(e->m->rejected_url);
        return http_text(wsi, s, 414, "uri too long\n");
    }
    /* Nothing here takes a body. lws would read (and discard) one after
     * the answer, restarting its timeout at every chunk: a body sent a
     * byte at a time held a connection far past DW_HANDSHAKE_TIMEOUT_S.
     * Refuse it and close. */
    char cl[24];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0 ||
        (lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 && strcmp(cl, "0"))) {
        s->http_close = true;
        return http_text(wsi, s, 413, "request bodies are not accepted\n");
    }
    httproute r = httproute_match(uri, ulen);
    switch (r.target) {
    case HTTPROUTE_HEALTHZ: return http_text(wsi, s, 200, "ok\n");
    case HTTPROUTE_READYZ:
        return bridge_ready(e->bridge) ? http_text(wsi, s, 200, "ready\n")
                                       : http_text(wsi, s, 503, "not ready: bus\n");
    case HTTPROUTE_METRICS: s->state = SESS_HTTP; return dw_http_metrics(wsi, &s->http);
    case HTTPROUTE_FILE: {
        /* One of a fixed list of files, served by lws from WEB_DIR; a
         * file that resolves outside it (a symlink) is not served. */
        char path[PATH_MAX], root[PATH_MAX], real[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", e->cfg->web_dir, r.file);
        if (!realpath(e->cfg->web_dir, root) || !realpath(path, real) ||
            !httproute_inside(root, real)) {
            DW_WARN("static file not served: missing or outside the web root", "file=%s", r.file);
            return http_text(wsi, s, 404, "not found\n");
        }
        s->state = SESS_HTTP;
        int n = lws_serve_http_file(wsi, real, r.mime, NULL, 0);
        if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi))) return -1;
        return 0;
    }
    case HTTPROUTE_NOT_FOUND: break;
    }
    return http_text(wsi, s, 404, "not found\n");
}

/* ---- the callback ------------------------------------------------------ */

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    edge *e = lws_context_user(lws_get_context(wsi));
    edge_session *s = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION: return admit_network(e, (int)(intptr_t)in) ? 0 : 1;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        memset(s, 0, sizeof *s);
        /* Refuse rather than accept a connection we could not register. */
        if (!bridge_ready(e->bridge)) {
            dw_metric_inc(e->m->rejected_not_ready);
            lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "not ready");
            return 1;
        }
        const char *why = "";
        unsigned code = admit_upgrade(e, wsi, s, &why);
        if (!code) return 0;
        dw_metric_inc(code == 401                ? e->m->rejected_auth
                      : code == 403              ? e->m->rejected_origin
                      : code == 426              ? e->m->rejected_tls
                      : code == 414              ? e->m->rejected_url
                      : !strncmp(why, "edge", 4) ? e->m->rejected_rate
                                                 : e->m->rejected_ip);
        DW_INFO("upgrade refused", "code=%u why=\"%s\" ip=%s", code, why, s->ip);
        lws_return_http_status(wsi, code, why);
        return 1;
    }
    case LWS_CALLBACK_ESTABLISHED: return on_established(e, s, wsi);
    case LWS_CALLBACK_RECEIVE: return on_receive(e, s, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE: return on_writeable(e, s);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (linger_peer_close(wsi, in, len)) return -1;
        if (s) s->peer_closed = true;
        return 0;
    case LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL:
        if (s && s->id[0] &&
            linger_on_drop(&e->linger, wsi,
                           s->state == SESS_CLOSING ? LINGER_BY_EDGE
                           : s->peer_closed         ? LINGER_BY_PEER
                                                    : LINGER_BY_LWS))
            s->linger = true;
        return 0;
    case LWS_CALLBACK_CLOSED:
        if (s->linger) linger_adopt(&e->linger, wsi);
        on_closed(e, s);
        return 0;
    case LWS_CALLBACK_HTTP: return s ? on_http(e, wsi, s, in) : -1;
    case LWS_CALLBACK_HTTP_WRITEABLE: return s ? dw_http_write(wsi, &s->http, s->http_close) : -1;
    case LWS_CALLBACK_CLOSED_HTTP:
        /* lws also reports closes of connections it never gave user data
         * (e.g. a failed TLS accept). */
        dw_http_body_free(s ? &s->http : NULL);
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (e) drain_events(e);
        return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* ---- metrics ------------------------------------------------------------ */

static const double stage_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double lag_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};

#define COUNTER(field, name, labels, help)                                                         \
    DW_METRIC_COUNTER_ROW(edge_metrics, field, name, labels, help)
#define REJECTED(field, reason)                                                                    \
    COUNTER(field, "dw_edge_connections_rejected_total", "reason=\"" reason "\"",                  \
            "upgrades refused")
#define CLOSED(field, reason)                                                                      \
    COUNTER(field, "dw_edge_closed_total", "reason=\"" reason "\"", "connections the edge closed")

/* The edge's metrics (docs/operations.md), in exposition order. */
static const dw_metric_def edge_metric_defs[] = {
    DW_METRIC_GAUGE_ROW(edge_metrics, connections, "dw_edge_connections", NULL,
                        "connections taking part in chat"),
    COUNTER(msgs_in, "dw_edge_messages_in_total", NULL, "messages received from clients"),
    COUNTER(msgs_accepted, "dw_edge_messages_accepted_total", NULL,
            "chat messages made durable (JetStream acked)"),
    COUNTER(msgs_failed, "dw_edge_messages_failed_total", NULL,
            "chat messages JetStream did not take (client told)"),
    COUNTER(deliveries, "dw_edge_deliveries_total", NULL, "frames queued to sockets"),
    DW_METRIC_HISTOGRAM_ROW(
        edge_metrics, stage_stored, "dw_edge_stage_seconds", "stage=\"stored\"",
        "Time a message spends per hop seen by this edge: stored (a v1 send received -> "
        "JetStream acked it), delivered (accepted by the sending edge -> its delivery reached "
        "this edge; wall clocks), written (the delivery reached this edge -> the oldest frame of "
        "a write pass went to its socket)",
        stage_bounds),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, stage_delivered, "dw_edge_stage_seconds",
                            "stage=\"delivered\"", NULL, stage_bounds),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, stage_written, "dw_edge_stage_seconds",
                            "stage=\"written\"", NULL, stage_bounds),
    COUNTER(dups, "dw_edge_duplicates_dropped_total", NULL,
            "redelivered messages dropped by sequence"),
    COUNTER(writes, "dw_edge_socket_writes_total", NULL,
            "socket writes (each carries every frame queued)"),
    REJECTED(rejected_not_ready, "not_ready"),
    COUNTER(connect_failed, "dw_edge_connect_failed_total", NULL,
            "connections closed 1011: connect event not durable"),
    COUNTER(default_replies, "dw_edge_default_replies_total", NULL,
            "frames answered by the $default route"),
    REJECTED(rejected_deny, "deny_list"),
    REJECTED(rejected_auth, "auth"),
    REJECTED(rejected_rate, "edge_rate"),
    REJECTED(rejected_ip, "source_ip"),
    REJECTED(rejected_origin, "origin"),
    REJECTED(rejected_tls, "tls"),
    REJECTED(rejected_url, "url"),
    COUNTER(rate_limited, "dw_edge_rate_limited_total", NULL,
            "messages refused by the rate limits"),
    CLOSED(closed_strikes, "rate_limit"),
    CLOSED(closed_slow, "slow_reader"),
    CLOSED(closed_idle, "idle"),
    CLOSED(closed_lifetime, "lifetime"),
    CLOSED(closed_too_large, "too_large"),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, loop_lag, "dw_edge_loop_lag_seconds", NULL,
                            "how late the event loop ran the edge's 100 ms tick", lag_bounds),
};

/* libev, loaded only for DW_EVENT_LOOP=libev: the default poll() loop then
 * needs neither libev nor lws's evlib plugin at run time. The plugin links
 * the same libev.so.4, so the loop made here is the one it drives. */
typedef struct edge_libev {
    void *lib;
    struct ev_loop *(*loop_new)(unsigned int flags);
    int (*run)(struct ev_loop *loop, int flags);
    void (*loop_destroy)(struct ev_loop *loop);
    struct ev_loop *loop;
} edge_libev;

static int libev_start(edge_libev *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->lib = dlopen("libev.so.4", RTLD_NOW | RTLD_GLOBAL);
    if (!ev->lib) return -1;
    /* POSIX's way to turn dlsym's void * into a function pointer. */
    *(void **)&ev->loop_new = dlsym(ev->lib, "ev_loop_new");
    *(void **)&ev->run = dlsym(ev->lib, "ev_run");
    *(void **)&ev->loop_destroy = dlsym(ev->lib, "ev_loop_destroy");
    if (!ev->loop_new || !ev->run || !ev->loop_destroy) return -1;
    ev->loop = ev->loop_new(EVFLAG_AUTO);
    return ev->loop ? 0 : -1;
}

/* After lws_context_destroy. Safe on a zeroed or half-started one. */
static void libev_stop(edge_libev *ev)
{
    if (ev->loop) ev->loop_destroy(ev->loop);
    if (ev->lib) dlclose(ev->lib);
    memset(ev, 0, sizeof *ev);
}

static const struct lws_protocols protocols[] = {
    /* First entry: also serves clients that ask for no subprotocol (plain
     * AWS mode) and plain HTTP. */
    /* A small per-connection receive buffer keeps idle connections cheap;
     * larger frames simply arrive in several pieces. tx_packet_size must be
     * set: at 0, lws 4.1 caps every send() at the receive buffer's size,
     * which would split each coalesced write into 1 KB syscalls. */
    {"dynamowave", callback, sizeof(edge_session), 1024, 0, NULL, 65536},
    {V1_PROTOCOL, callback, sizeof(edge_session), 1024, 1, NULL, 65536},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* Once a second: close connections idle too long (no frame from the client)
 * or open too long, as API Gateway does (10 min, 2 h by default). */
static void sweep(edge *e)
{
    int64_t now = dw_now_ms();
    int64_t idle = e->cfg->idle_timeout_s * 1000, life = e->cfg->max_lifetime_s * 1000;
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (!s || s->state == SESS_CLOSING) continue;
        if (s->rx_paused_until_ms && now >= s->rx_paused_until_ms) {
            s->rx_paused_until_ms = 0;
            lws_rx_flow_control(s->wsi, 1);
        }
        if (idle && now - s->last_active_ms > idle) {
            dw_metric_inc(e->m->closed_idle);
            session_close(s, LWS_CLOSE_STATUS_GOINGAWAY, "idle timeout");
        } else if (life && now - s->connected_at_ms > life) {
            dw_metric_inc(e->m->closed_lifetime);
            session_close(s, LWS_CLOSE_STATUS_GOINGAWAY, "connection lifetime reached");
        }
    }
}

static void tick(lws_sorted_usec_list_t *sul)
{
    edge *e = (edge *)(void *)((char *)sul - offsetof(edge, tick));
    int64_t now = dw_mono_ns();
    /* How late the loop came back to us: a stalled loop delays everyone. */
    if (e->tick_due_ns) dw_metric_observe_ns(e->m->loop_lag, now - e->tick_due_ns);
    if (now >= e->next_heartbeat_ns && bridge_ready(e->bridge)) {
        bridge_heartbeat(e->bridge, e->nready);
        bridge_note_held(e->bridge, e->nready, e->conn_seq_acked);
        e->next_heartbeat_ns = now + e->cfg->heartbeat_ms * 1000000;
    }
    bridge_presence_watch(e->bridge, rooms_v1_members(&e->rooms) > 0);
    if (e->disc_retries) disc_retry_due(e);
    linger_service(&e->linger);
    if (now >= e->next_sweep_ns) {
        sweep(e);
        e->next_sweep_ns = now + 1000000000LL;
    }
    /* The tick also bounds how long the loop sleeps, so a stop request
     * (dw_stop, set by the signal handler) is seen promptly. */
    lws_sul_schedule(e->ctx, 0, &e->tick, tick, TICK_US);
    e->tick_due_ns = dw_mono_ns() + TICK_US * 1000LL;
}

bool edge_ready(void *arg)
{
    edge *e = arg;
    return e->bridge && bridge_ready(e->bridge);
}

static void wake(void *arg)
{
    edge *e = arg;
    pthread_mutex_lock(&e->wake_lock);
    if (e->wake_ctx) lws_cancel_service(e->wake_ctx);
    pthread_mutex_unlock(&e->wake_lock);
}

static void lws_log_bridge(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    dw_log(level == LLL_ERR ? DW_LOG_ERROR : DW_LOG_WARN, "lws", "detail=\"%.*s\"", (int)n, line);
}

int edge_init(edge *e)
{
    pthread_mutex_init(&e->wake_lock, NULL);
    if (dw_mailbox_init(&e->mailbox, wake, e)) {
        pthread_mutex_destroy(&e->wake_lock);
        return -1;
    }
    e->inited = true;
    edge_bridge_config bc = {
        .edge_id = e->edge_id,
        .publish_timeout_ms = e->cfg->publish_timeout_ms,
        .max_pending = e->cfg->publish_max_pending,
        .mailbox = &e->mailbox,
        .presence_listeners = &e->rooms.v1_members,
    };
    return bridge_create(&e->bridge, &bc);
}

int edge_run(edge *e, natsConnection *nc)
{
    int rc = -1;
    bool bridge_started = false;
    edge_libev ev = {0}; /* DW_EVENT_LOOP=libev */
    static edge_metrics metrics;
    if (dw_metrics_register(&metrics, edge_metric_defs,
                            sizeof edge_metric_defs / sizeof edge_metric_defs[0]))
        goto out;
    e->m = &metrics;
    char err[256];
    if (admit_init(e, err, sizeof err)) {
        DW_ERROR("bad configuration", "err=\"%s\"", err);
        goto out;
    }
    if (rooms_init(&e->rooms, 1024) || dedup_init(&e->dedup, (uint32_t)e->cfg->dedup_window))
        goto out;
    e->wbuf = malloc(LWS_PRE + (size_t)e->cfg->write_coalesce);
    if (!e->wbuf) goto out;
    if (linger_init(&e->linger, e->cfg->linger_ms, e->cfg->linger_bytes, e->cfg->linger_max,
                    !strcmp(e->cfg->event_loop, "poll")))
        goto out;

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_bridge);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = (int)e->cfg->port;
    info.iface = e->cfg->host[0] ? e->cfg->host : NULL;
    info.protocols = protocols;
    info.user = e; /* the callbacks' way to the edge (lws_context_user) */
    /* No LWS_SERVER_OPTION_VALIDATE_UTF8: on_receive checks text itself. */
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    info.pt_serv_buf_size = 32 * 1024;
    info.max_http_header_data = (unsigned short)e->cfg->max_header;
    info.timeout_secs = (unsigned int)e->cfg->handshake_timeout_s;
    /* lws gives a request its header table with a timeout of its own (10 s
     * by default), which replaces timeout_secs: without this, slow headers
     * had 10 s whatever DW_HANDSHAKE_TIMEOUT_S said. */
    info.timeout_secs_ah_idle = (unsigned int)e->cfg->handshake_timeout_s;
    /* Idle and lifetime limits are the edge's own once-a-second sweep: lws
     * 4.1 keeps its per-connection validity timers in one sorted list, which
     * makes every new connection cost O(connections). */
    static const lws_retry_bo_t no_validity_timers = {0};
    info.retry_and_idle_policy = &no_validity_timers;
    if (e->cfg->tls_cert[0]) {
        /* TLS on the port; plain HTTP still answers (probes on /healthz), and
         * REQUIRE_TLS refuses plain WebSocket upgrades with 426. */
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT |
                        LWS_SERVER_OPTION_ALLOW_NON_SSL_ON_SSL_PORT |
                        LWS_SERVER_OPTION_ALLOW_HTTP_ON_HTTPS_LISTENER;
        info.ssl_cert_filepath = e->cfg->tls_cert;
        info.ssl_private_key_filepath = e->cfg->tls_key[0] ? e->cfg->tls_key : NULL;
    } else if (e->cfg->require_tls) {
        DW_ERROR("bad configuration", "err=\"%s\"",
                 "DW_REQUIRE_TLS=1 needs DW_TLS_CERT and DW_TLS_KEY");
        goto out;
    }
    /* With libev, lws runs on a loop of ours (a "foreign" loop): lws's own
     * loop would install its own SIGINT handling, and its lws_service()
     * would not come back to check dw_stop. lws's poll() backend costs
     * O(connections) per pass; libev uses epoll. */
    void *foreign_loops[1] = {NULL};
    if (!strcmp(e->cfg->event_loop, "libev")) {
        if (libev_start(&ev)) {
            const char *why = dlerror();
            DW_ERROR("cannot create the libev loop (packages libev4, libwebsockets-evlib-ev)",
                     "err=\"%s\"", why ? why : "ev_loop_new failed");
            goto out;
        }
        foreign_loops[0] = ev.loop;
        info.foreign_loops = foreign_loops;
        info.options |= LWS_SERVER_OPTION_LIBEV;
    } else if (strcmp(e->cfg->event_loop, "poll")) {
        DW_ERROR("bad configuration", "err=\"DW_EVENT_LOOP must be poll or libev, not %s\"",
                 e->cfg->event_loop);
        goto out;
    }
    e->ctx = lws_create_context(&info);
    if (!e->ctx) {
        DW_ERROR("cannot listen", "host=%s port=%lld", e->cfg->host, (long long)e->cfg->port);
        goto out;
    }

    pthread_mutex_lock(&e->wake_lock);
    e->wake_ctx = e->ctx;
    pthread_mutex_unlock(&e->wake_lock);
    bridge_started = true; /* (a failed start is stopped like a started one) */
    if (bridge_start(e->bridge, nc)) goto out;
    edge_jobs_config jc = {
        .edge_id = e->edge_id,
        .mailbox = &e->mailbox,
        .threads = (int)e->cfg->job_threads,
        .timeout_ms = e->cfg->publish_timeout_ms,
        .resume_max = (uint32_t)e->cfg->resume_max,
    };
    if (edge_jobs_start(&e->jobs, e->bridge, &jc)) goto out;

    lws_sul_schedule(e->ctx, 0, &e->tick, tick, TICK_US);
    DW_INFO("edge listening", "edge=%s port=%lld", e->edge_id, (long long)e->cfg->port);
    while (!dw_stop) {
        /* The tick bounds either wait, so dw_stop is seen promptly. */
        if (ev.loop)
            ev.run(ev.loop, EVRUN_ONCE);
        else if (lws_service(e->ctx, 0) < 0)
            break;
    }
    DW_INFO("edge stopping", "edge=%s connections=%u", e->edge_id, e->nready);
    rc = 0;
    /* No join may reach the stream after the EDGE_DOWN below. */
    edge_jobs_stop(e->jobs);
    e->jobs = NULL;
    /* One event for every connection: a DISCONNECT each, published and
     * acked one by one, took longer than a 10 s stop allows at 18,000
     * connections. Only if it cannot be stored do the closes below publish
     * their own. */
    if (e->cfg->shutdown_edge_down && e->conns.count &&
        !bridge_publish_edge_down(e->bridge, "shutdown", e->cfg->shutdown_wait_ms)) {
        e->edge_down_stored = true;
        DW_INFO("edge_down stored", "edge=%s connections=%zu", e->edge_id, e->conns.count);
    }
out:
    /* Destroying the context closes every socket; unless the EDGE_DOWN
     * above was stored, each close publishes its disconnect event, which
     * the flush below waits for. */
    if (e->ctx) {
        pthread_mutex_lock(&e->wake_lock);
        e->wake_ctx = NULL;
        pthread_mutex_unlock(&e->wake_lock);
        lws_sul_cancel(&e->tick);
        linger_stop(&e->linger);
        lws_context_destroy(e->ctx);
        e->ctx = NULL;
    }
    libev_stop(&ev);
    edge_jobs_stop(e->jobs);
    e->jobs = NULL;
    /* The disconnects the closes published, acked before the drain. */
    if (bridge_started) bridge_flush(e->bridge, 3000);
    bridge_stop(e->bridge);
    return rc;
}

void edge_free(edge *e)
{
    if (!e->inited) return;
    /* The connection is closed: no callback posts any more. */
    bridge_destroy(e->bridge);
    e->bridge = NULL;
    free(e->wbuf);
    linger_free(&e->linger);
    dedup_free(&e->dedup);
    while (e->disc_retries) {
        disc_retry *n = e->disc_retries->next;
        free(e->disc_retries);
        e->disc_retries = n;
    }
    /* Every poster is gone: the bridge's connection is closed and the
     * job workers joined. */
    dw_mailbox_destroy(&e->mailbox);
    rooms_free(&e->rooms);
    connmap_free(&e->conns);
    pthread_mutex_destroy(&e->wake_lock);
    admit_free(e);
}
