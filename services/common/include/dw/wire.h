/* The wire contract between the services, in one place: every Nats-Msg-Id
 * a service gives a JetStream publish, the ConnEvent every writer of
 * DW_CONN builds, the error codes in replies, and decoding a protobuf
 * message from a NATS message. Two services that must agree on a string
 * call the same function here (tests/unit/common/test_wire.c checks each
 * form round trip).
 *
 * Why ids matter: JetStream drops a publish whose Nats-Msg-Id it saw within
 * the stream's duplicate window. Ids that name the same event must be
 * equal wherever they are made (the api's DISCONNECT of a stale row is the
 * edge's own "disconnect.<conn>", so the registry applies one), and ids of
 * distinct events must differ (each re-announce wave has its round).
 *
 * Builders write into buf (at most len bytes, NUL included) and return 0,
 * or -1 when the id does not fit (buf then holds no id). DW_MSGID_MAX bytes
 * always fit ids made of this project's names (ids <= 128 bytes, rooms <=
 * 64, v1 user ids <= 128, v1 client ids <= 64). Pure functions, any thread. */
#ifndef DW_WIRE_H
#define DW_WIRE_H

#include <nats/nats.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/dw.pb-c.h"
#include "dw/util.h"

#define DW_MSGID_MAX 384

/* The header JetStream deduplicates on. */
#define DW_HDR_MSG_ID "Nats-Msg-Id"
/* On a chat message whose Nats-Msg-Id is a v1 client's idempotency key:
 * the edge's own "<conn>:<n>", which its publish ack must name. */
#define DW_HDR_REF "Dw-Ref"

/* ---- DW_MSG: chat messages ---- */

/* A chat id of an edge connection fits in this (DW_ID_LEN + ':' + 20 digits). */
#define DW_MSGID_CHAT_MAX (DW_ID_LEN + 22)
/* "<conn>:<n>": the edge's id of the n-th message of connection conn (the
 * ChatMessage's id, and its Nats-Msg-Id unless a v1 client sent its own). */
int dw_msgid_chat(char *buf, size_t len, const char *conn_id, uint64_t n);
/* The parts of a chat id: conn (DW_ID_LEN + 1 bytes: the first DW_ID_LEN
 * characters) and n (0 when absent). 0, or -1 when id is not one. */
int dw_msgid_chat_parse(const char *id, char *conn, uint64_t *n);

/* A v1 client's idempotency key for its message id client_id:
 * "v1:u:<user>:<client_id>" when the user id is stable across connections
 * (a JWT sub, a ?name=), else "v1:c:<conn>:<client_id>" (docs/protocol.md). */
int dw_msgid_v1(char *buf, size_t len, bool by_user, const char *user_or_conn,
                const char *client_id);

/* A message a backend publishes to a room (the api): with an idempotency
 * key "api:k:<room>:<key>", so a retry within DW_MSG's duplicate window is
 * stored once (a key is a message's identity within its room); without
 * one (key NULL or "") "api:<random id>". */
int dw_msgid_room_publish(char *buf, size_t len, const char *room, const char *key);

/* ---- DW_CONN: connection events ---- */

/* The id of a connection's own CONNECT or DISCONNECT: "connect.<conn>",
 * "disconnect.<conn>" (the edge, and the api for a stale row). -1 for other
 * kinds too. */
int dw_msgid_conn(char *buf, size_t len, Dw__ConnEvent__Kind kind, const char *conn_id);
/* A CONNECT again, of re-announce wave round: "reannounce.<round>.<conn>". */
int dw_msgid_reannounce(char *buf, size_t len, uint64_t round, const char *conn_id);
/* A DISCONNECT of reconciliation wave round: "drop.<round>.<conn>". */
int dw_msgid_drop(char *buf, size_t len, uint64_t round, const char *conn_id);
/* A connection's n-th JOIN or LEAVE of room: "join.<conn>.<room>.<n>",
 * "leave.<conn>.<room>.<n>". -1 for other kinds. */
int dw_msgid_membership(char *buf, size_t len, Dw__ConnEvent__Kind kind, const char *conn_id,
                        const char *room, uint64_t n);
/* The connection a conn-event id names (connect, disconnect, reannounce,
 * drop: the id ends with it) into conn (DW_ID_LEN + 1 bytes). 0, or -1
 * when id is shorter than a connection id. */
int dw_msgid_conn_of(const char *id, char *conn);

/* EDGE_DOWN ids: the dispatcher's for a silent edge, "edge_down.<edge>";
 * an edge's own on stop, "edge_down.<edge>.stop.<nonce>" (fresh per stop);
 * the registry's reconciliation, "reconcile.edge_down.<edge>.<ts_ms>". */
int dw_msgid_edge_down(char *buf, size_t len, const char *edge_id);
int dw_msgid_edge_down_stop(char *buf, size_t len, const char *edge_id, const char *nonce);
int dw_msgid_edge_down_reconcile(char *buf, size_t len, const char *edge_id, int64_t ts_ms);

/* The dispatcher's DISCONNECT of a connection an edge reported gone:
 * "gone.<conn>". */
int dw_msgid_gone(char *buf, size_t len, const char *conn_id);

/* ---- DW_EVENTS: lifecycle events (the registry) ---- */

/* The event at position (seq, idx) in the sequence every replica derives
 * from DW_CONN: "ev.<seq>.<idx>". */
int dw_msgid_event(char *buf, size_t len, uint64_t seq, uint32_t idx);
/* The position in such an id (len bytes): 0, or -1 for anything else (no
 * leading zeros, no sign, no trailing bytes). */
int dw_msgid_event_parse(const char *id, size_t len, uint64_t *seq, uint32_t *idx);

/* ---- DW_DLQ and replays ---- */

/* The dead letter of DW_MSG sequence seq: "dlq.<seq>". Both writers (the
 * dispatcher, the deadletter service's advisory capture) use it, so DW_DLQ
 * keeps one entry per message. */
int dw_msgid_dlq(char *buf, size_t len, uint64_t stream_seq);
/* The dead letter of DW_ROUTE sequence seq (an async route's frame no
 * worker acked): "dlq.route.<seq>". */
int dw_msgid_dlq_route(char *buf, size_t len, uint64_t stream_seq);
/* The republish of DW_DLQ entry dlq_id: "<orig_msg_id>.r<dlq_id>", or
 * "dlq.<stream_seq>.r<dlq_id>" without an original id. Distinct from the
 * original's id (DW_MSG's duplicate window would swallow an early replay)
 * and the same for every replay of one entry. */
int dw_msgid_replay(char *buf, size_t len, const char *orig_msg_id, uint64_t stream_seq,
                    uint64_t dlq_id);

/* ---- ConnEvent ---- */

/* ev made a kind event of conn_id (NULL: "") on edge_id (NULL: "") at
 * dw_now_ms(), with reason (NULL: none). Strings are borrowed; the caller
 * sets rooms, user and the rest. */
void dw_conn_event_make(Dw__ConnEvent *ev, Dw__ConnEvent__Kind kind, const char *conn_id,
                        const char *edge_id, const char *reason);

/* ---- error codes in replies ----
 * The error field of RoomEdges, ListReply, PresenceReply and ConnReply:
 * a code, optionally ": <detail>" ("bad_request: room"). */
typedef enum {
    DW_ERR_NONE = 0,      /* "" */
    DW_ERR_BAD_REQUEST,   /* the request itself is wrong; asking again will not help */
    DW_ERR_INTERNAL,      /* the answerer failed (storage) */
    DW_ERR_TOO_LARGE,     /* the answer or the payload is over a limit */
    DW_ERR_OUT_OF_MEMORY, /* the answerer ran out of memory */
    DW_ERR_TOO_MANY_IDS,  /* more ids than one request may carry */
    DW_ERR_OTHER,         /* a code this build does not know */
} dw_err;

/* The codes' texts, for static replies ("bad_request: room" is
 * DW_ERR_TEXT_BAD_REQUEST ": room"). */
#define DW_ERR_TEXT_BAD_REQUEST "bad_request"
#define DW_ERR_TEXT_INTERNAL "internal"
#define DW_ERR_TEXT_TOO_LARGE "too_large"
#define DW_ERR_TEXT_OUT_OF_MEMORY "out_of_memory"
#define DW_ERR_TEXT_TOO_MANY_IDS "too_many_ids"

/* The code's text ("bad_request"); "" for DW_ERR_NONE, "unknown" for OTHER. */
const char *dw_err_name(dw_err e);
/* The code of an error text: NULL or "" -> DW_ERR_NONE, "bad_request" or
 * "bad_request: ..." -> DW_ERR_BAD_REQUEST, unknown -> DW_ERR_OTHER. */
dw_err dw_err_of(const char *text);
/* "<code>" or "<code>: <detail>" (detail NULL or "": none) into buf. 0 or -1. */
int dw_err_text(char *buf, size_t len, dw_err e, const char *detail);

/* ---- protobuf over NATS ---- */

/* Decode the data of m as a desc message (e.g. &dw__delivery__descriptor).
 * NULL when m is NULL or the bytes are not one. The result is the caller's:
 * free it with its type's free_unpacked (or protobuf_c_message_free_unpacked). */
void *dw_pb_unpack(const ProtobufCMessageDescriptor *desc, natsMsg *m);

#endif
