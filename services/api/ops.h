/* The three @connections operations, shared by the HTTP listener and the
 * NATS subjects: find the edge holding the connection in the registry
 * (dw.registry.list), then ask that edge (dw.edge.<edge_id>.conn) to post,
 * describe or close. Only the edge touches sockets. And publishing to a
 * room (api_ops_publish): a ChatMessage stored in DW_MSG, delivered by the
 * dispatchers like any client's message.
 *
 * When the registry lists a connection that its edge no longer holds (the
 * edge says found=false, or nothing answers on its subject) the answer is
 * 410 and a DISCONNECT event for the id is made durable in DW_CONN first,
 * with Nats-Msg-Id "disconnect.<id>" (the edge's own id for it), so the
 * registry drops the row exactly once. */
#ifndef API_OPS_H
#define API_OPS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/dw.pb-c.h"
#include "rooms.h"

typedef enum { API_OP_POST = 0, API_OP_GET, API_OP_DELETE, API_OP_PUBLISH, API_OP_COUNT } api_op;

/* "post", "get", "delete", "publish" */
const char *api_op_name(api_op op);

typedef struct api_ops_config {
    int64_t registry_timeout_ms; /* dw.registry.list request */
    int64_t edge_timeout_ms;     /* dw.edge.<id>.conn request */
    int64_t publish_timeout_ms;  /* JetStream ack of a DISCONNECT event or a room message */
    size_t max_message;          /* POST bodies and room messages above this: 413 */
} api_ops_config;

typedef struct api_ops {
    natsConnection *nc; /* borrowed */
    jsCtx *js;          /* borrowed */
    api_ops_config cfg;
} api_ops;

typedef struct api_result {
    unsigned status;     /* 200, 204, 400, 410, 413, 500 or 503 (ApiReply.status) */
    char error[192];     /* why, when status is not 200/204 */
    Dw__ConnReply *info; /* GET 200: the connection (owned: api_result_clear) */
    uint64_t seq;        /* publish 200: the message's DW_MSG sequence */
    bool duplicate;      /* publish 200: its idempotency key was stored before */
} api_result;

/* Run one operation to the end. Blocks on NATS for up to the two request
 * timeouts plus the publish timeout: call it on a worker thread, never on
 * the lws thread or in a nats.c callback of a busy subscription. data/len:
 * the POST message (ignored otherwise). res is overwritten. */
void api_ops_run(const api_ops *o, api_op op, const char *conn_id, const uint8_t *data, size_t len,
                 api_result *res);

/* Store rq's message in DW_MSG (dw.msg.<partition>.<room>) as a ChatMessage
 * from rq->from, and wait up to publish_timeout_ms for JetStream's ack:
 * 200 with res->seq, or 400, 413, 503 (NATS away, DW_MSG missing, no ack in
 * time: nothing is known to be stored; a retry with the same idempotency
 * key is safe). Blocks: a worker thread only. */
void api_ops_publish(const api_ops *o, const api_publish_req *rq, api_result *res);

/* Release res->info. NULL-safe. */
void api_result_clear(api_result *res);

#endif
