#include "dw/wire.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 3, 4))) static int put(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len) {
        if (len) buf[0] = '\0';
        return -1;
    }
    return 0;
}

static const char *or_empty(const char *s)
{
    return s ? s : "";
}

/* ---- DW_MSG ---- */

int dw_msgid_chat(char *buf, size_t len, const char *conn_id, uint64_t n)
{
    /* By hand, not put(): vsnprintf was about 1,000 instructions of every
     * chat message's publish at the edge. Same result. */
    char num[20];
    size_t nd = 0;
    do
        num[nd++] = (char)('0' + n % 10);
    while ((n /= 10));
    const char *c = or_empty(conn_id);
    size_t clen = strlen(c);
    if (clen + 1 + nd >= len) {
        if (len) buf[0] = '\0';
        return -1;
    }
    memcpy(buf, c, clen);
    char *q = buf + clen;
    *q++ = ':';
    while (nd)
        *q++ = num[--nd];
    *q = '\0';
    return 0;
}

int dw_msgid_chat_parse(const char *id, char *conn, uint64_t *n)
{
    conn[0] = '\0';
    *n = 0;
    const char *colon = id ? strchr(id, ':') : NULL;
    if (!colon || colon - id != DW_ID_LEN) return -1;
    memcpy(conn, id, DW_ID_LEN);
    conn[DW_ID_LEN] = '\0';
    *n = strtoull(colon + 1, NULL, 10);
    return 0;
}

int dw_msgid_v1(char *buf, size_t len, bool by_user, const char *user_or_conn,
                const char *client_id)
{
    return put(buf, len, "v1:%s:%s:%s", by_user ? "u" : "c", or_empty(user_or_conn),
               or_empty(client_id));
}

int dw_msgid_room_publish(char *buf, size_t len, const char *room, const char *key)
{
    if (key && *key) return put(buf, len, "api:k:%s:%s", or_empty(room), key);
    char rnd[DW_ID_LEN + 1];
    if (dw_id_random(rnd)) {
        if (len) buf[0] = '\0';
        return -1;
    }
    return put(buf, len, "api:%s", rnd);
}

/* ---- DW_CONN ---- */

int dw_msgid_conn(char *buf, size_t len, Dw__ConnEvent__Kind kind, const char *conn_id)
{
    const char *what = kind == DW__CONN_EVENT__KIND__CONNECT      ? "connect"
                       : kind == DW__CONN_EVENT__KIND__DISCONNECT ? "disconnect"
                                                                  : NULL;
    if (!what) {
        if (len) buf[0] = '\0';
        return -1;
    }
    return put(buf, len, "%s.%s", what, or_empty(conn_id));
}

int dw_msgid_reannounce(char *buf, size_t len, uint64_t round, const char *conn_id)
{
    return put(buf, len, "reannounce.%" PRIu64 ".%s", round, or_empty(conn_id));
}

int dw_msgid_drop(char *buf, size_t len, uint64_t round, const char *conn_id)
{
    return put(buf, len, "drop.%" PRIu64 ".%s", round, or_empty(conn_id));
}

int dw_msgid_membership(char *buf, size_t len, Dw__ConnEvent__Kind kind, const char *conn_id,
                        const char *room, uint64_t n)
{
    const char *what = kind == DW__CONN_EVENT__KIND__JOIN    ? "join"
                       : kind == DW__CONN_EVENT__KIND__LEAVE ? "leave"
                                                             : NULL;
    if (!what) {
        if (len) buf[0] = '\0';
        return -1;
    }
    return put(buf, len, "%s.%s.%s.%" PRIu64, what, or_empty(conn_id), or_empty(room), n);
}

int dw_msgid_conn_of(const char *id, char *conn)
{
    size_t n = id ? strlen(id) : 0;
    if (n < DW_ID_LEN) {
        conn[0] = '\0';
        return -1;
    }
    memcpy(conn, id + n - DW_ID_LEN, DW_ID_LEN + 1);
    return 0;
}

int dw_msgid_edge_down(char *buf, size_t len, const char *edge_id)
{
    return put(buf, len, "edge_down.%s", or_empty(edge_id));
}

int dw_msgid_edge_down_stop(char *buf, size_t len, const char *edge_id, const char *nonce)
{
    return put(buf, len, "edge_down.%s.stop.%s", or_empty(edge_id), or_empty(nonce));
}

int dw_msgid_edge_down_reconcile(char *buf, size_t len, const char *edge_id, int64_t ts_ms)
{
    return put(buf, len, "reconcile.edge_down.%s.%" PRId64, or_empty(edge_id), ts_ms);
}

int dw_msgid_gone(char *buf, size_t len, const char *conn_id)
{
    return put(buf, len, "gone.%s", or_empty(conn_id));
}

/* ---- DW_EVENTS ---- */

int dw_msgid_event(char *buf, size_t len, uint64_t seq, uint32_t idx)
{
    return put(buf, len, "ev.%" PRIu64 ".%" PRIu32, seq, idx);
}

/* A decimal number without sign or leading zero, at most max. */
static int parse_num(const char **p, const char *end, uint64_t max, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (s == end || *s < '0' || *s > '9') return -1;
    if (*s == '0' && s + 1 < end && s[1] >= '0' && s[1] <= '9') return -1;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (max - d) / 10) return -1;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return 0;
}

int dw_msgid_event_parse(const char *id, size_t len, uint64_t *seq, uint32_t *idx)
{
    const char *p = id, *end = id + len;
    uint64_t s, i;
    if (!id || len < 3 || memcmp(id, "ev.", 3)) return -1;
    p += 3;
    if (parse_num(&p, end, UINT64_MAX, &s) || p == end || *p++ != '.' ||
        parse_num(&p, end, UINT32_MAX, &i) || p != end)
        return -1;
    *seq = s;
    *idx = (uint32_t)i;
    return 0;
}

/* ---- DW_DLQ ---- */

int dw_msgid_dlq(char *buf, size_t len, uint64_t stream_seq)
{
    return put(buf, len, "dlq.%" PRIu64, stream_seq);
}

int dw_msgid_dlq_route(char *buf, size_t len, uint64_t stream_seq)
{
    return put(buf, len, "dlq.route.%" PRIu64, stream_seq);
}

int dw_msgid_replay(char *buf, size_t len, const char *orig_msg_id, uint64_t stream_seq,
                    uint64_t dlq_id)
{
    if (orig_msg_id && *orig_msg_id) return put(buf, len, "%s.r%" PRIu64, orig_msg_id, dlq_id);
    return put(buf, len, "dlq.%" PRIu64 ".r%" PRIu64, stream_seq, dlq_id);
}

/* ---- ConnEvent ---- */

void dw_conn_event_make(Dw__ConnEvent *ev, Dw__ConnEvent__Kind kind, const char *conn_id,
                        const char *edge_id, const char *reason)
{
    dw__conn_event__init(ev);
    ev->kind = kind;
    ev->conn_id = (char *)or_empty(conn_id);
    ev->edge_id = (char *)or_empty(edge_id);
    ev->reason = (char *)reason;
    ev->ts_ms = dw_now_ms();
}

/* ---- errors ---- */

static const char *const err_names[] = {
    [DW_ERR_NONE] = "",
    [DW_ERR_BAD_REQUEST] = DW_ERR_TEXT_BAD_REQUEST,
    [DW_ERR_INTERNAL] = DW_ERR_TEXT_INTERNAL,
    [DW_ERR_TOO_LARGE] = DW_ERR_TEXT_TOO_LARGE,
    [DW_ERR_OUT_OF_MEMORY] = DW_ERR_TEXT_OUT_OF_MEMORY,
    [DW_ERR_TOO_MANY_IDS] = DW_ERR_TEXT_TOO_MANY_IDS,
    [DW_ERR_OTHER] = "unknown",
};

const char *dw_err_name(dw_err e)
{
    return (unsigned)e < sizeof err_names / sizeof err_names[0] ? err_names[e] : "unknown";
}

dw_err dw_err_of(const char *text)
{
    if (!text || !*text) return DW_ERR_NONE;
    size_t n = strcspn(text, ":");
    for (int e = DW_ERR_BAD_REQUEST; e < DW_ERR_OTHER; e++)
        if (strlen(err_names[e]) == n && !strncmp(text, err_names[e], n)) return (dw_err)e;
    return DW_ERR_OTHER;
}

int dw_err_text(char *buf, size_t len, dw_err e, const char *detail)
{
    if (detail && *detail) return put(buf, len, "%s: %s", dw_err_name(e), detail);
    return put(buf, len, "%s", dw_err_name(e));
}

/* ---- protobuf ---- */

void *dw_pb_unpack(const ProtobufCMessageDescriptor *desc, natsMsg *m)
{
    if (!m) return NULL;
    const char *data = natsMsg_GetData(m);
    int len = natsMsg_GetDataLength(m);
    return protobuf_c_message_unpack(desc, NULL, len > 0 ? (size_t)len : 0,
                                     (const uint8_t *)(data ? data : ""));
}
