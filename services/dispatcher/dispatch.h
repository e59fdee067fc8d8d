/* The dispatcher's loop: pull a batch from DW_MSG, ask the registry which
 * edges hold each room, send one pipelined request per edge, then ack what
 * every edge took and NAK the rest with an exponential backoff; a retry
 * goes only to the edges that did not take the message yet (retries.h).
 * Up to max_inflight batches are sent and awaiting their edges' replies at
 * once: one thread fetches and sends, another collects the replies and
 * settles the batches in the order they were sent.
 * After the last attempt the message is written to DW_DLQ (acked by
 * JetStream) and only then terminated. Also watches edge heartbeats and
 * declares silent edges down (edges.h). The decisions live in fanout.h;
 * this file does the NATS I/O around them. */
#ifndef DISPATCHER_DISPATCH_H
#define DISPATCHER_DISPATCH_H

#include <nats/nats.h>
#include <stdint.h>

typedef struct dispatch_cfg {
    int64_t fetch_batch;         /* messages per pull */
    int64_t fetch_wait_ms;       /* how long an idle pull waits for a first message */
    int64_t ack_wait_ms;         /* consumer AckWait */
    int64_t max_deliver;         /* consumer MaxDeliver */
    int64_t max_ack_pending;     /* consumer MaxAckPending */
    int64_t registry_timeout_ms; /* per batch, for all of its room questions */
    int64_t edge_timeout_ms;     /* per batch, for all of its edge requests */
    int64_t retry_base_ms;       /* NAK delay after the first failed attempt */
    int64_t retry_max_ms;        /* cap of the doubling NAK delay */
    int64_t retry_state_max;     /* messages whose per-edge progress is remembered */
    int64_t edge_dead_ms;        /* heartbeat silence that makes an edge down */
    int64_t max_inflight;        /* batches sent and not yet settled (>= 1) */
    int conn_barrier;            /* registry applies DW_CONN up to its end first */
} dispatch_cfg;

typedef struct dispatcher dispatcher;

/* Bind to (creating or updating) the durable consumer, subscribe to edge
 * heartbeats and open the reply inbox. nc and js must outlive the
 * dispatcher; cfg is copied. 0, or -1 (logged; retry later). */
int dispatch_create(dispatcher **out, natsConnection *nc, jsCtx *js, const dispatch_cfg *cfg);

/* Run batches until dw_stop is set; the batches in flight when it is set
 * are finished (acked / NAK'd / dead-lettered) before returning. Starts and
 * joins its own settle thread. 0, or -1 when that thread cannot start. */
int dispatch_run(dispatcher *d);

/* Unsubscribe everything (the durable consumer stays) and free. NULL-safe. */
void dispatch_destroy(dispatcher *d);

#endif
