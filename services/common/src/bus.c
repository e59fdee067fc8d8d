#include "dw/bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"

int dw_room_valid(const char *room, size_t len)
{
    if (!room || len == 0 || len > DW_ROOM_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = room[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
        if (c == '.' && (i == 0 || i + 1 == len || room[i - 1] == '.'))
            return 0;
    }
    return 1;
}

void dw_subj_edge_deliver(char *buf, size_t len, const char *edge_id)
{
    snprintf(buf, len, "dw.edge.%s.deliver", edge_id);
}

void dw_subj_edge_conn(char *buf, size_t len, const char *edge_id)
{
    snprintf(buf, len, "dw.edge.%s.conn", edge_id);
}

const char *dw_subj_conn_event(Dw__ConnEvent__Kind kind)
{
    switch (kind) {
    case DW__CONN_EVENT__KIND__CONNECT: return "dw.conn.connect";
    case DW__CONN_EVENT__KIND__DISCONNECT: return "dw.conn.disconnect";
    case DW__CONN_EVENT__KIND__JOIN: return "dw.conn.join";
    case DW__CONN_EVENT__KIND__LEAVE: return "dw.conn.leave";
    case DW__CONN_EVENT__KIND__EDGE_DOWN: return "dw.conn.edge_down";
    default: return "dw.conn.unknown";
    }
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    /* A deliberate close also lands here; only a lost connection is news. */
    if (!natsConnection_IsClosed(nc))
        DW_WARN("nats disconnected", "name=%s", (const char *)closure);
}

static void on_connected(natsConnection *nc, void *closure)
{
    DW_INFO("nats connected", "name=%s", (const char *)closure);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    DW_INFO("nats reconnected", "name=%s", (const char *)closure);
}

natsStatus dw_bus_connect(natsConnection **out, const char *url, const char *name)
{
    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK) s = natsOptions_SetName(opts, name);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 250);
    /* With a connected callback, Connect returns at once while NATS is
     * away (NATS_NOT_YET_CONNECTED) instead of blocking until it is up, so
     * a service can still be stopped. */
    if (s == NATS_OK) s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, (void *)name);
    /* Replies and publishes leave at once: without this nats.c holds them
     * up to ~1 ms for batching, which is most of a delivery's latency. */
    if (s == NATS_OK) s = natsOptions_SetSendAsap(opts, true);
    /* A large reconnect buffer keeps publishes made during a NATS restart. */
    if (s == NATS_OK) s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(opts, on_disconnected, (void *)name);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(opts, on_reconnected, (void *)name);
    if (s == NATS_OK) s = natsConnection_Connect(out, opts);
    natsOptions_Destroy(opts);
    if (s == NATS_NOT_YET_CONNECTED)
        s = NATS_OK; /* retrying in the background */
    return s;
}

void dw_stream_opts_default(dw_stream_opts *o)
{
    o->conn_max_age_s = 35LL * 24 * 3600;
    o->msg_max_age_s = 24LL * 3600;
    o->dedup_window_s = 120;
    o->replicas = 1;
}

static natsStatus ensure_one(jsCtx *js, jsStreamConfig *cfg)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddStream(&si, js, cfg, NULL, &jerr);
    /* "Subjects overlap" is what a second process gets when another one
     * created the same stream a moment earlier: then it exists; update. */
    if (s != NATS_OK && (jerr == JSStreamNameExistErr || jerr == JSStreamSubjectOverlapErr)) {
        s = js_UpdateStream(&si, js, cfg, NULL, &jerr);
    }
    if (s != NATS_OK)
        DW_ERROR("stream setup failed", "stream=%s status=%s jserr=%d last=\"%s\"", cfg->Name,
                 natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
    jsStreamInfo_Destroy(si);
    return s;
}

natsStatus dw_streams_ensure(jsCtx *js, const dw_stream_opts *o)
{
    jsStreamConfig cfg;
    const char *conn_subj[] = {"dw.conn.>"};
    const char *msg_subj[] = {"dw.msg.>"};

    jsStreamConfig_Init(&cfg);
    cfg.Name = DW_STREAM_CONN;
    cfg.Subjects = conn_subj;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.MaxAge = o->conn_max_age_s * 1000000000LL;
    cfg.Duplicates = o->dedup_window_s * 1000000000LL;
    cfg.Replicas = o->replicas;
    natsStatus s = ensure_one(js, &cfg);
    if (s != NATS_OK)
        return s;

    jsStreamConfig_Init(&cfg);
    cfg.Name = DW_STREAM_MSG;
    cfg.Subjects = msg_subj;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_LimitsPolicy;
    cfg.MaxAge = o->msg_max_age_s * 1000000000LL;
    cfg.Duplicates = o->dedup_window_s * 1000000000LL;
    cfg.Replicas = o->replicas;
    return ensure_one(js, &cfg);
}

uint8_t *dw_pb_pack(const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return NULL;
    *len = protobuf_c_message_pack(m, buf);
    return buf;
}
