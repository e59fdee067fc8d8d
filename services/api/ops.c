#include "ops.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"
#include "dw/wire.h"

const char *api_op_name(api_op op)
{
    switch (op) {
    case API_OP_POST: return "post";
    case API_OP_GET: return "get";
    case API_OP_DELETE: return "delete";
    case API_OP_PUBLISH: return "publish";
    default: return "other";
    }
}

static void fail(api_result *res, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(api_result *res, unsigned status, const char *fmt, ...)
{
    va_list ap;
    res->status = status;
    va_start(ap, fmt);
    vsnprintf(res->error, sizeof res->error, fmt, ap);
    va_end(ap);
}

void api_result_clear(api_result *res)
{
    if (!res) return;
    if (res->info) dw__conn_reply__free_unpacked(res->info, NULL);
    res->info = NULL;
}

/* Request/reply with a packed protobuf; *reply is the caller's on NATS_OK. */
static natsStatus request_pb(const api_ops *o, natsMsg **reply, const char *subj,
                             const ProtobufCMessage *m, int64_t timeout_ms)
{
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(m, &len);
    *reply = NULL;
    if (!buf) return NATS_NO_MEMORY;
    natsStatus s = natsConnection_Request(reply, o->nc, subj, buf, (int)len, timeout_ms);
    free(buf);
    return s;
}

/* The registry's row for conn_id: 1 found (*out the caller's), 0 not
 * listed, -1 the registry could not answer (res filled). */
static int registry_lookup(const api_ops *o, const char *conn_id, Dw__ConnRecord **out,
                           api_result *res)
{
    Dw__ListQuery q = DW__LIST_QUERY__INIT;
    natsMsg *msg = NULL;
    q.conn_id = (char *)conn_id;
    q.limit = 1;
    *out = NULL;
    natsStatus s = request_pb(o, &msg, DW_SUBJ_REG_LIST, &q.base, o->cfg.registry_timeout_ms);
    if (s != NATS_OK) {
        fail(res, 503, "registry unavailable: %s",
             s == NATS_NO_RESPONDERS ? "nothing answers on " DW_SUBJ_REG_LIST
             : s == NATS_TIMEOUT     ? "no reply in time"
                                     : natsStatus_GetText(s));
        return -1;
    }
    Dw__ListReply *lr = dw_pb_unpack(&dw__list_reply__descriptor, msg);
    natsMsg_Destroy(msg);
    if (!lr) {
        fail(res, 503, "registry unavailable: undecodable reply");
        return -1;
    }
    int rc = 0;
    if (!lr->ok) {
        /* bad_request: the registry refuses the id itself; no row can have it */
        if (dw_err_of(lr->error) == DW_ERR_BAD_REQUEST) {
            rc = 0;
        } else {
            fail(res, 503, "registry error: %s", lr->error && *lr->error ? lr->error : "refused");
            rc = -1;
        }
        goto done;
    }
    for (size_t i = 0; i < lr->n_conns; i++) {
        if (!strcmp(lr->conns[i]->conn_id, conn_id)) {
            /* Keep the one record: move it out of the reply. */
            *out = lr->conns[i];
            lr->conns[i] = lr->conns[--lr->n_conns];
            rc = 1;
            break;
        }
    }
done:
    dw__list_reply__free_unpacked(lr, NULL);
    return rc;
}

/* Make the registry forget conn_id: the edge no longer has it. A failure
 * is logged, not returned: the answer is 410 either way, and the next
 * request for the id tries again. */
static void publish_disconnect(const api_ops *o, const Dw__ConnRecord *rec, const char *why)
{
    Dw__ConnEvent ev;
    char msg_id[DW_MSGID_MAX];
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__DISCONNECT, rec->conn_id, rec->edge_id, why);
    /* The edge's own id for this DISCONNECT: the registry applies one. */
    dw_msgid_conn(msg_id, sizeof msg_id, ev.kind, rec->conn_id);

    dw_js_ack ack;
    jsErrCode jerr = 0;
    natsStatus s = dw_js_publish_pb(o->js, dw_subj_conn_event(ev.kind), &ev.base, msg_id,
                                    o->cfg.publish_timeout_ms, &ack, &jerr);
    if (s == NATS_OK)
        DW_INFO("stale connection removed", "conn=%s edge=%s why=%s seq=%llu", rec->conn_id,
                rec->edge_id, why, (unsigned long long)ack.seq);
    else
        DW_ERROR("disconnect not published", "conn=%s edge=%s status=%s jerr=%d", rec->conn_id,
                 rec->edge_id, natsStatus_GetText(s), (int)jerr);
}

/* Missing fields of the edge's answer come from the registry's row (an
 * edge that knows less than the table must not make GET emptier). */
static void fill_from_record(Dw__ConnReply *info, const Dw__ConnRecord *rec)
{
    if ((!info->source_ip || !*info->source_ip) && rec->source_ip && *rec->source_ip) {
        free(info->source_ip);
        info->source_ip = strdup(rec->source_ip);
    }
    if (!info->has_user_agent && rec->has_user_agent) {
        free(info->user_agent);
        info->user_agent = strdup(rec->user_agent ? rec->user_agent : "");
        info->has_user_agent = 1;
    }
    if ((!info->conn_id || !*info->conn_id) && rec->conn_id) {
        free(info->conn_id);
        info->conn_id = strdup(rec->conn_id);
    }
    if (info->connected_at_ms <= 0) info->connected_at_ms = rec->connected_at_ms;
}

void api_ops_run(const api_ops *o, api_op op, const char *conn_id, const uint8_t *data, size_t len,
                 api_result *res)
{
    Dw__ConnRecord *rec = NULL;
    natsMsg *msg = NULL;
    Dw__ConnReply *cr = NULL;

    memset(res, 0, sizeof *res);
    if ((unsigned)op >= API_OP_COUNT || op == API_OP_PUBLISH) {
        fail(res, 400, "unknown operation");
        return;
    }
    if (!conn_id || !*conn_id) {
        fail(res, 400, "missing connection id");
        return;
    }
    if (op == API_OP_POST && len > o->cfg.max_message) {
        fail(res, 413, "message of %zu bytes is over the limit of %zu", len, o->cfg.max_message);
        return;
    }
    /* Edges make every id with dw_id_random: any other id is nobody's. */
    if (!dw_id_valid(conn_id, strlen(conn_id))) {
        fail(res, 410, "no such connection");
        return;
    }

    /* Requests made while NATS is away would only wait out their timeout. */
    if (natsConnection_Status(o->nc) != NATS_CONN_STATUS_CONNECTED) {
        fail(res, 503, "NATS unavailable");
        return;
    }
    int found = registry_lookup(o, conn_id, &rec, res);
    if (found < 0) return;
    if (!found) {
        fail(res, 410, "no such connection");
        return;
    }

    Dw__ConnRequest rq = DW__CONN_REQUEST__INIT;
    rq.conn_id = (char *)conn_id;
    switch (op) {
    case API_OP_POST:
        rq.op = DW__CONN_REQUEST__OP__POST;
        rq.data.data = (uint8_t *)data;
        rq.data.len = len;
        break;
    case API_OP_GET: rq.op = DW__CONN_REQUEST__OP__INFO; break;
    default:
        rq.op = DW__CONN_REQUEST__OP__CLOSE;
        rq.close_code = 1000;
        break;
    }
    char subj[256];
    if (!rec->edge_id || !*rec->edge_id || strlen(rec->edge_id) > sizeof subj - 32) {
        fail(res, 500, "the registry lists the connection without a usable edge id");
        goto done;
    }
    dw_subj_edge_conn(subj, sizeof subj, rec->edge_id);
    natsStatus s = request_pb(o, &msg, subj, &rq.base, o->cfg.edge_timeout_ms);
    if (s == NATS_NO_RESPONDERS) {
        /* The edge is gone, and every connection it held with it. */
        publish_disconnect(o, rec, "api: edge gone");
        fail(res, 410, "no such connection");
        goto done;
    }
    if (s != NATS_OK) {
        fail(res, 503, "edge %s did not answer: %s", rec->edge_id,
             s == NATS_TIMEOUT ? "no reply in time" : natsStatus_GetText(s));
        goto done;
    }
    cr = dw_pb_unpack(&dw__conn_reply__descriptor, msg);
    if (!cr) {
        fail(res, 500, "edge %s sent an undecodable reply", rec->edge_id);
        goto done;
    }
    if (!cr->found) {
        publish_disconnect(o, rec, "api: edge does not hold it");
        fail(res, 410, "no such connection");
        goto done;
    }
    if (cr->error && *cr->error) {
        /* The edge's own limit may be lower than ours. */
        fail(res, dw_err_of(cr->error) == DW_ERR_TOO_LARGE ? 413 : 500, "edge %s: %s", rec->edge_id,
             cr->error);
        goto done;
    }
    switch (op) {
    case API_OP_POST: res->status = 200; break;
    case API_OP_DELETE: res->status = 204; break;
    default:
        fill_from_record(cr, rec);
        res->status = 200;
        res->info = cr;
        cr = NULL;
        break;
    }
done:
    if (cr) dw__conn_reply__free_unpacked(cr, NULL);
    natsMsg_Destroy(msg);
    if (rec) dw__conn_record__free_unpacked(rec, NULL);
}

void api_ops_publish(const api_ops *o, const api_publish_req *rq, api_result *res)
{
    char id[API_MSG_ID_MAX], subj[DW_ROOM_MAX + 32];
    memset(res, 0, sizeof *res);
    if (!dw_room_valid(rq->room, strlen(rq->room)) || dw_subj_msg(subj, sizeof subj, rq->room)) {
        fail(res, 400, "room: not a valid room name");
        return;
    }
    if (rq->len > o->cfg.max_message) {
        fail(res, 413, "message of %zu bytes is over the limit of %zu", rq->len,
             o->cfg.max_message);
        return;
    }
    if (natsConnection_Status(o->nc) != NATS_CONN_STATUS_CONNECTED) {
        fail(res, 503, "NATS unavailable");
        return;
    }
    if (api_publish_msg_id(rq, id, sizeof id)) {
        fail(res, 500, "cannot make a message id");
        return;
    }
    /* What an edge stores for a client's message, with the backend as the
     * sender: no connection, the "from" name as the user. */
    Dw__ChatMessage m = DW__CHAT_MESSAGE__INIT;
    m.id = id;
    m.room = (char *)rq->room;
    m.conn_id = "";
    m.user_id = (char *)(rq->from[0] ? rq->from : API_FROM_DEFAULT);
    m.data.data = (uint8_t *)rq->data;
    m.data.len = rq->len;
    m.ts_ms = dw_now_ms();
    m.data_json = rq->data_json;
    m.client_id = rq->key[0] ? (char *)rq->key : id;

    dw_js_ack ack;
    jsErrCode jerr = 0;
    natsStatus s =
        dw_js_publish_pb(o->js, subj, &m.base, id, o->cfg.publish_timeout_ms, &ack, &jerr);
    if (s == NATS_OK) {
        res->status = 200;
        res->seq = ack.seq;
        res->duplicate = ack.duplicate != 0;
        return;
    }
    fail(res, 503, "the message was not stored: %s",
         s == NATS_TIMEOUT         ? "no JetStream ack in time (retry with an idempotency key)"
         : s == NATS_NO_RESPONDERS ? "DW_MSG does not exist yet"
                                   : natsStatus_GetText(s));
    DW_WARN("room message not stored", "room=%s status=%s jerr=%d", rq->room, natsStatus_GetText(s),
            (int)jerr);
}
