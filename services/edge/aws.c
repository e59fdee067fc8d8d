/* The plain AWS API Gateway protocol on the lws thread: every frame is
 * routed on its "action" (routes.c) like API Gateway's route selection:
 * sendmessage publishes to the lobby, anything else is answered by the
 * $default route; errors come back as API Gateway words them. Behind the
 * protocol table (protocol.h: edge_proto_aws). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "dw/wire.h"
#include "edge.h"
#include "integ.h"
#include "protocol.h"
#include "routes.h"

static void reply_error(edge *e, edge_session *s, const char *message, const char *request_id)
{
    size_t len;
    char *body = routes_error_reply(message, s->id, request_id, &len);
    if (body) session_send_text(e, s, body, len);
    free(body);
}

/* Plain connections live in the lobby. */
static int aws_on_ready(edge *e, edge_session *s)
{
    return rooms_join(&e->rooms, s, DW_ROOM_LOBBY) < 0 ? -1 : 0;
}

static void aws_on_throttled(edge *e, edge_session *s, int64_t wait_ms)
{
    char rid[DW_ID_LEN + 1] = "";
    dw_id_random(rid);
    reply_error(e, s, "Too Many Requests", rid);
}

static void aws_on_message(edge *e, edge_session *s, const char *buf, size_t len)
{
    if (integ_handle(e, s, buf, len, false)) return; /* a route to user code (DW_ROUTES) */
    edge_request req;
    if (routes_parse(buf, len, &req)) {
        session_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        return;
    }
    switch (req.route) {
    case ROUTE_SENDMESSAGE: {
        char id[DW_MSGID_CHAT_MAX];
        dw_msgid_chat(id, sizeof id, s->id, ++s->msg_counter);
        Dw__ChatMessage m = DW__CHAT_MESSAGE__INIT;
        m.id = id;
        m.room = DW_ROOM_LOBBY;
        m.conn_id = s->id;
        m.user_id = s->user;
        m.data.data = (uint8_t *)req.data;
        m.data.len = req.data_len;
        m.ts_ms = s->last_active_ms;
        m.conn_seq = e->conn_seq_acked;
        if (bridge_publish_msg(e->bridge, &m, NULL)) reply_error(e, s, "Internal server error", id);
        break;
    }
    case ROUTE_BAD_REQUEST: {
        char rid[DW_ID_LEN + 1] = "";
        dw_id_random(rid);
        char msg[160];
        snprintf(msg, sizeof msg, "Bad request: %s", req.error);
        reply_error(e, s, msg, rid);
        break;
    }
    case ROUTE_DEFAULT: {
        edge_conn_info ci = {s->id, s->ip, s->user_agent, s->connected_at_ms, s->last_active_ms};
        size_t rlen;
        char *reply = routes_default_reply(&ci, &rlen);
        if (reply) session_send_text(e, s, reply, rlen);
        free(reply);
        dw_metric_inc(e->m->default_replies);
        break;
    }
    }
    routes_request_free(&req);
}

/* JetStream did not take a message: the client hears it as API Gateway
 * says it. */
static void aws_on_ack(edge *e, edge_session *s, const edge_event *ev)
{
    if (ev->ok) return;
    DW_WARN("message not durable", "conn=%s id=%s err=\"%s\"", ev->conn_id, ev->msg_id, ev->error);
    reply_error(e, s, "Internal server error", ev->msg_id);
}

static void aws_on_closed(edge *e, edge_session *s)
{
}

const edge_protocol edge_proto_aws = {
    .name = "dynamowave",
    .on_ready = aws_on_ready,
    .on_message = aws_on_message,
    .on_throttled = aws_on_throttled,
    .on_ack = aws_on_ack,
    .on_closed = aws_on_closed,
};
