/* Routes to user code (DW_ROUTES, docs/integrations.md): a client frame
 * whose action names a route goes to the user's workers instead of the
 * edge's own handling, in either protocol.
 *   sync   a core NATS request to dw.rpc.<action> (workers in queue
 *          groups); the worker's {"reply": ...} goes back to the sender as
 *          one frame; {"error": ...}, no responders or no answer within
 *          DW_ROUTE_TIMEOUT_MS give the sender an error frame.
 *   async  stored in DW_ROUTE (dw.route.<action>, asynchronous JetStream
 *          publish) before the sender is told (v1: an ack with the stream
 *          seq; plain: nothing, an error frame when it was not stored);
 *          workers read it through the durable consumer route-<action>,
 *          which the edge creates at start (explicit ack, exponential
 *          backoff, DW_ROUTE_MAX_DELIVER attempts, then the deadletter
 *          service puts it in DW_DLQ).
 * Nothing here blocks the lws thread: requests and publishes are buffered
 * by nats.c; their answers come back on nats.c threads as EDGE_EV_ROUTE
 * events through the mailbox; timeouts are found by the tick.
 *
 * Threads: integ_create in main's init; integ_start, integ_handle,
 * integ_on_event, integ_tick and integ_stop on the lws thread (start and
 * stop from edge_run); integ_destroy after the NATS connection is closed.
 * The route counters are atomics: the nats.c thread that answers
 * dw.ops.routes reads them. The pure parts are integ_codec.h. */
#ifndef EDGE_INTEG_H
#define EDGE_INTEG_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/mailbox.h"

struct edge;
struct edge_session;
struct edge_event;

typedef struct edge_integ edge_integ;

typedef struct integ_config {
    const char *routes;         /* DW_ROUTES */
    int64_t timeout_ms;         /* a sync route's wait for the worker */
    int64_t max_inflight;       /* route requests per connection awaiting their answer */
    int64_t max_deliver;        /* async: attempts before the dead-letter queue */
    int64_t backoff_ms;         /* async: first redelivery after this, doubling */
    int64_t publish_timeout_ms; /* async: the JetStream ack */
    const char *edge_id;
    dw_mailbox *mailbox; /* where answers go (borrowed; outlives the integ) */
} integ_config;

/* Parse the routes (a built-in action, a bad name or mode: -1 with the
 * reason in err; the edge refuses to start). cfg strings and the mailbox
 * are borrowed and must outlive it. */
int integ_create(edge_integ **out, const integ_config *cfg, char *err, size_t errlen);

/* Routes configured (0: integ_handle never takes a frame). Any thread. */
size_t integ_count(const edge_integ *ig);

/* On the service's connection (borrowed): the per-route metrics, the
 * reply inbox, dw.ops.routes, and a thread that makes the route-<action>
 * consumers (retried until DW_ROUTE exists). 0 or -1. */
int integ_start(edge_integ *ig, natsConnection *nc);

/* A whole text message of a ready session: 1 when its action is a route
 * (handled: sent on, or answered with an error frame), 0 when it is not
 * (the protocol handles it). v1: the session speaks dynamowave.v1. */
int integ_handle(struct edge *e, struct edge_session *s, const char *buf, size_t len, bool v1);

/* An EDGE_EV_ROUTE event: a worker's answer, "no responders", or the
 * JetStream ack of an async frame. */
void integ_on_event(struct edge *e, struct edge_event *ev);

/* From the tick: answer the requests whose time ran out. */
void integ_tick(struct edge *e);

/* No request awaits its answer (a worker's reply, a JetStream ack): a
 * stopping edge waits for this before it closes its sockets. lws thread;
 * NULL-safe (true). */
bool integ_idle(const edge_integ *ig);

/* No new answer is taken; waits up to timeout_ms for async publishes in
 * flight. Pending requests are dropped (their connections are closing). */
void integ_stop(edge_integ *ig, int64_t timeout_ms);

/* After the connection is closed. NULL-safe. */
void integ_destroy(edge_integ *ig);

#endif
