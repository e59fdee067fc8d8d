/* The libwebsockets side: the one protocol callback for HTTP and
 * WebSocket (admission, frames in, the connection's life), the tick, and
 * the loop. What the callback hands on: session.c (writes), the session's
 * protocol (aws.c, v1.c), bus_events.c (the mailbox), httpserve.c. */
#include <dlfcn.h>
#include <ev.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "authz_gate.h"
#include "bus_events.h"
#include "dw/log.h"
#include "edge.h"
#include "evlib.h"
#include "httpserve.h"
#include "integ.h"
#include "jobs.h"
#include "linger.h"
#include "proto_v1.h"
#include "protocol.h"
#include "utf8.h"

#define TICK_US (100 * 1000)

/* ---- inbound ---------------------------------------------------------- */

/* One whole message from the client: the rate limits first, then the
 * session's protocol. */
void server_message(edge *e, edge_session *s, const char *buf, size_t len)
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
    /* Stopping: what was published is answered, nothing new is taken; the
     * close (1001) tells the client that a send without an answer must be
     * sent again (docs/protocol.md). */
    if (s->state == SESS_CLOSING || atomic_load(&e->stopping)) return 0;
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
            server_message(e, s, in, len);
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
        server_message(e, s, s->rx ? s->rx : "", s->rx_len);
    }
    /* Idle connections hold no reassembly buffer. */
    free(s->rx);
    s->rx = NULL;
    s->rx_len = s->rx_cap = 0;
    return 0;
}

/* ---- connection lifecycle --------------------------------------------- */

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
    /* s->ip: admit_upgrade() read it (a second getpeername() per connect
     * cost a syscall and ~1,800 instructions for the same address). */
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
    bus_connect_event(e, s, &ev, rooms, s->v1 ? 0 : 1);
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

/* The ready session whose connect was acked first, or NULL: a scan, made
 * by the tick only while there is no probe (not on every close: closing
 * 18,000 connections in connect order would scan for each). */
static edge_session *oldest_ready(edge *e)
{
    edge_session *best = NULL;
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (s && s->state == SESS_READY && (!best || s->conn_seq < best->conn_seq)) best = s;
    }
    return best;
}

static void on_closed(edge *e, edge_session *s)
{
    admit_release(e, s);
    free(s->authz_context_json);
    s->authz_context_json = NULL;
    if (!s->id[0]) return;
    if (s->connect_published && !e->edge_down_stored) {
        char *rooms[128];
        size_t n = 0;
        for (uint16_t i = 0; i < s->nrooms && n < 128; i++)
            if (!s->rooms[i].joining) rooms[n++] = s->rooms[i].room->name;
        bus_publish_disconnect(e, s->id, s->user, rooms, n,
                               s->close_code ? "closed_by_server" : "closed");
    }
    if (s->proto) s->proto->on_closed(e, s);
    if (s->counted) dw_metric_set(e->m->connections, --e->nready);
    if (e->probe == s) e->probe = NULL;
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

/* ---- the callback ------------------------------------------------------ */

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    edge *e = lws_context_user(lws_get_context(wsi));
    edge_session *s = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_NETWORK_CONNECTION: {
        int fd = (int)(intptr_t)in;
        return !admit_network(e, fd) || authz_on_accept(e, fd) ? 1 : 0;
    }
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        memset(s, 0, sizeof *s);
        /* Refuse rather than accept a connection we could not register
         * (or would close at once: stopping). */
        if (!edge_ready(e)) {
            dw_metric_inc(e->m->rejected_not_ready);
            lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "not ready");
            return 1;
        }
        authz_decision authz;
        bool authorizer = e->cfg->authorizer[0] != '\0';
        if (authorizer && !authz_on_upgrade(e, wsi, &authz)) {
            /* An upgrade the gate never saw: one that came after a first
             * request on a kept-alive connection. Fail closed. */
            dw_metric_inc(e->m->rejected_authz);
            lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "not authorized");
            return 1;
        }
        const char *why = "";
        unsigned code = admit_upgrade(e, wsi, s, &why);
        if (authorizer) {
            /* The authorizer allowed it; the JWT (and the limits) also did. */
            if (!code && authz_apply(s, &authz)) code = 503;
            authz_decision_free(&authz);
        }
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
    case LWS_CALLBACK_SERVER_WRITEABLE: return session_on_writeable(e, s);
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
    case LWS_CALLBACK_HTTP: return s ? httpserve(e, wsi, s, in) : -1;
    case LWS_CALLBACK_HTTP_WRITEABLE: return s ? dw_http_write(wsi, &s->http, s->http_close) : -1;
    case LWS_CALLBACK_CLOSED_HTTP:
        /* lws also reports closes of connections it never gave user data
         * (e.g. a failed TLS accept). */
        dw_http_body_free(s ? &s->http : NULL);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY: authz_on_destroy(wsi); return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (e) bus_events_drain(e);
        return 0;
    default: return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
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
    /* Stopping: the EDGE_DOWN said this edge is gone; a heartbeat after
     * it would say the opposite. */
    if (now >= e->next_heartbeat_ns && bridge_ready(e->bridge) && !atomic_load(&e->stopping)) {
        bridge_heartbeat(e->bridge, e->nready);
        if (!e->probe && e->nready) e->probe = oldest_ready(e);
        bridge_note_held(e->bridge, e->nready, e->probe ? e->probe->id : NULL,
                         e->probe ? e->probe->conn_seq : 0);
        e->next_heartbeat_ns = now + e->cfg->heartbeat_ms * 1000000;
    }
    bridge_presence_watch(e->bridge, rooms_v1_members(&e->rooms) > 0);
    if (e->disc_retries) bus_events_retry_due(e);
    /* Mail posted before the loop could be woken (dw_mailbox: only a post
     * into an empty mailbox wakes) is not left waiting for the next one. */
    bus_events_drain(e);
    integ_tick(e);
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
    return !atomic_load(&e->stopping) && e->bridge && bridge_ready(e->bridge);
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
    /* lws 4.1 reports every adoption with a read buffer (the authorizer's
     * gate hands each socket back that way, authz_gate.h) at error level. */
    if (strstr(line, "adopt_socket_readbuf: calling service") ||
        strstr(line, "adopt_socket_readbuf: deferring handling ah"))
        return;
    dw_log(level == LLL_ERR ? DW_LOG_ERROR : DW_LOG_WARN, "lws", "detail=\"%.*s\"", (int)n, line);
}

/* ---- stopping ------------------------------------------------------------ */

/* The stop's phases that wait for clients: at most this long each (and
 * never past the stop's deadline). The close always keeps its share: the
 * steps before it end STOP_CLOSE_MS before the deadline, so that a NATS
 * that hangs cannot cost the clients their 1001. */
#define STOP_FLUSH_MS 2000 /* answers queued before the stop, written */
#define STOP_CLOSE_MS 2000 /* clients answering the close frame */

/* One pass of the event loop; < 0 when lws gave up. */
static int loop_once(edge *e, edge_libev *ev)
{
    if (ev->loop) {
        ev->run(ev->loop, EVRUN_ONCE);
        return 0;
    }
    return lws_service(e->ctx, 0) < 0 ? -1 : 0;
}

/* Run the loop until done(e) or ms pass; the tick bounds each pass. */
static void loop_until(edge *e, edge_libev *ev, bool (*done)(edge *), int64_t ms)
{
    int64_t until = dw_mono_ns() + ms * 1000000;
    while (!done(e) && dw_mono_ns() < until)
        if (loop_once(e, ev) < 0) break;
}

static bool outboxes_empty(edge *e)
{
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (s && s->state != SESS_CLOSING && s->out.count) return false;
    }
    return true;
}

static bool no_connections(edge *e)
{
    return e->conns.count == 0;
}

static bool bus_connected(edge *e)
{
    natsConnection *nc = bridge_nc(e->bridge);
    return nc && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
}

/* Every answer due is written: route requests answered (or NATS away, so
 * they cannot be), nothing queued on a socket. */
static bool answered(edge *e)
{
    return (integ_idle(e->integ) || !bus_connected(e)) && outboxes_empty(e);
}

/* How long a step before the close may wait: cap_ms, within the stop's
 * budget less the close's share. */
static int64_t before_close_ms(int64_t cap_ms)
{
    int64_t ms = dw_stop_left_ms(cap_ms + STOP_CLOSE_MS) - STOP_CLOSE_MS;
    return ms > 0 ? ms : 0;
}

/* How long a stop step may wait for NATS: before the close or after it;
 * 0 while NATS is away (an answer cannot come). */
static int64_t bus_wait_ms(edge *e, int64_t cap_ms, bool before_close)
{
    if (!bus_connected(e)) return 0;
    return before_close ? before_close_ms(cap_ms) : dw_stop_left_ms(cap_ms);
}

static uint32_t sends_unanswered(edge *e)
{
    uint32_t n = 0;
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (s) n += s->nacks;
    }
    return n;
}

/* SIGTERM (docs/operations.md "Edges: stopping"): the loop keeps running
 * between the steps, so that answers and close frames are written; each
 * step waits within the stop's budget (dw/util.h). */
static void stop_gracefully(edge *e, edge_libev *ev)
{
    DW_INFO("edge stopping", "edge=%s connections=%u shutdown_timeout_ms=%lld", e->edge_id,
            e->nready, (long long)dw_stop_timeout_ms());
    /* From here: /readyz 503, upgrades refused, frames from clients
     * dropped, no heartbeat. */
    atomic_store(&e->stopping, true);
    authz_gate_stop(e->authz);
    e->authz = NULL;
    /* No join may reach the stream after the EDGE_DOWN below. */
    edge_jobs_stop(e->jobs);
    e->jobs = NULL;

    /* 1. Sends already published get their answer: the acks (blocking the
     *    loop, which has nothing else to do), then their frames written.
     *    Connects in flight become ready the same way. Route requests in
     *    flight get their worker's answer, or their timeout's error
     *    (integ_tick), as usual. */
    dw_stop_step("edge: answering sends in flight");
    int64_t ms = bus_wait_ms(e, e->cfg->publish_timeout_ms, true);
    if (ms) bridge_flush(e->bridge, ms);
    bus_events_drain(e);
    int64_t answers_ms = STOP_FLUSH_MS + (integ_idle(e->integ) ? 0 : e->cfg->route_timeout_ms);
    loop_until(e, ev, answered, before_close_ms(answers_ms));
    uint32_t unanswered = sends_unanswered(e);
    if (unanswered)
        DW_WARN("sends not acked before the close: their clients send them again after "
                "reconnecting (same id, stored once)",
                "sends=%u nats_connected=%d", unanswered, ms > 0);

    /* 2. One event for every connection: a DISCONNECT each, published and
     *    acked one by one, took longer than a 10 s stop allows at 18,000
     *    connections. Only if it cannot be stored do the closes below
     *    publish their own. */
    dw_stop_step("edge: publishing edge_down");
    if (e->cfg->shutdown_edge_down && e->conns.count) {
        ms = bus_wait_ms(e, e->cfg->shutdown_wait_ms, true);
        if (!bridge_publish_edge_down(e->bridge, "shutdown", ms > 0 ? ms : 1)) {
            e->edge_down_stored = true;
            DW_INFO("edge_down stored", "edge=%s connections=%zu", e->edge_id, e->conns.count);
        } else if (!bus_connected(e)) {
            DW_WARN("NATS away: edge_down not published; the registry drops this edge's "
                    "connections once the dispatcher declares it down (DW_EDGE_DEAD_MS)",
                    "edge=%s connections=%zu", e->edge_id, e->conns.count);
        }
    }

    /* 3. Every socket closed with 1001 (going away): clients reconnect to
     *    another edge. Waiting for their close frames lets ours arrive
     *    before the TCP close (linger.h). */
    dw_stop_step("edge: closing connections");
    for (size_t i = 0; i < e->conns.nslots; i++) {
        edge_session *s = e->conns.slots[i].value;
        if (s) session_close(s, LWS_CLOSE_STATUS_GOINGAWAY, "server stopping");
    }
    loop_until(e, ev, no_connections, dw_stop_left_ms(STOP_CLOSE_MS));
    if (e->conns.count)
        DW_WARN("clients that did not answer the close in time: closed without waiting",
                "connections=%zu", e->conns.count);
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
    if (edge_metrics_register(&metrics)) goto out;
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
    /* The gate first: from the first accepted socket on, every upgrade
     * is asked about (authz_gate.h). */
    if (authz_edge_start(e, nc)) goto out;
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
    if (integ_start(e->integ, nc)) goto out;

    lws_sul_schedule(e->ctx, 0, &e->tick, tick, TICK_US);
    DW_INFO("edge listening", "edge=%s port=%lld", e->edge_id, (long long)e->cfg->port);
    while (!dw_stop) {
        /* The tick bounds either wait, so dw_stop is seen promptly. */
        if (loop_once(e, &ev) < 0) break;
    }
    rc = 0;
    stop_gracefully(e, &ev);
out:
    /* Destroying the context closes every socket still open; unless the
     * EDGE_DOWN was stored, each close publishes its disconnect event,
     * which the flush below waits for. */
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
    authz_gate_stop(e->authz);
    e->authz = NULL;
    edge_jobs_stop(e->jobs);
    e->jobs = NULL;
    /* Within what is left of the stop's budget, and only while NATS is
     * there (0: the wait would be for nothing). */
    int64_t integ_ms = bus_wait_ms(e, 2000, false);
    integ_stop(e->integ, integ_ms > 0 ? integ_ms : 1); /* (0 would wait without end) */
    /* The disconnects the closes published, acked before the drain. */
    int64_t flush_ms = bridge_started ? bus_wait_ms(e, 3000, false) : 0;
    if (flush_ms) bridge_flush(e->bridge, flush_ms);
    bridge_stop(e->bridge);
    return rc;
}

void edge_free(edge *e)
{
    if (!e->inited) return;
    /* The connection is closed: no callback posts any more. */
    bridge_destroy(e->bridge);
    e->bridge = NULL;
    integ_destroy(e->integ);
    e->integ = NULL;
    free(e->wbuf);
    linger_free(&e->linger);
    dedup_free(&e->dedup);
    bus_events_free(e);
    /* Every poster is gone: the bridge's connection is closed and the
     * job workers joined. */
    dw_mailbox_destroy(&e->mailbox);
    rooms_free(&e->rooms);
    connmap_free(&e->conns);
    pthread_mutex_destroy(&e->wake_lock);
    admit_free(e);
}
