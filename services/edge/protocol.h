/* The WebSocket protocols the edge speaks, as one table each: the plain
 * AWS API Gateway routing (aws.c: no subprotocol, or "dynamowave") and
 * dynamowave.v1 (v1.c). The server picks a session's table when it
 * connects (s->proto) and calls it for what is the protocol's business;
 * everything else (admission, the socket, the connection's life) is the
 * server's. All on the lws thread. */
#ifndef EDGE_PROTOCOL_H
#define EDGE_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

struct edge;
struct edge_session;
struct edge_event;

typedef struct edge_protocol {
    const char *name; /* the subprotocol */
    /* The connect event is durable: the session takes part from now on.
     * 0, or -1 when it cannot (it is closed 1011). */
    int (*on_ready)(struct edge *e, struct edge_session *s);
    /* One whole text message the rate limits let through. */
    void (*on_message)(struct edge *e, struct edge_session *s, const char *buf, size_t len);
    /* The rate limits refused a message; one would pass in wait_ms. */
    void (*on_throttled)(struct edge *e, struct edge_session *s, int64_t wait_ms);
    /* JetStream's answer (ev->ok, ev->seq, ev->msg_id) for a chat message
     * this ready session published. */
    void (*on_ack)(struct edge *e, struct edge_session *s, const struct edge_event *ev);
    /* The connection is gone: free what the protocol keeps on it. */
    void (*on_closed)(struct edge *e, struct edge_session *s);
} edge_protocol;

extern const edge_protocol edge_proto_aws; /* aws.c */
extern const edge_protocol edge_proto_v1;  /* v1.c */

#endif
