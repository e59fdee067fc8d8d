/* The dispatcher's I/O shell around order.h (what may be sent where, and
 * when a message may be acked) and lease.h (which partitions are ours):
 *
 *  - the loop thread (dispatch_run) owns the ordering core: it pulls the
 *    partitions this dispatcher holds, sends one request at a time to each
 *    edge, acks what every edge took, and hands blocking work away;
 *  - the resolver thread asks the registry, one round at a time, which
 *    edges hold each waiting room's members (after DW_CONN's barrier);
 *  - the worker thread writes what must be durable before the loop acts:
 *    EDGE_DOWN events, gone connections, dead letters;
 *  - the lease thread (leasekv.h) takes and gives back partitions;
 *  - nats.c's threads only queue what arrives (deliveries, replies) for
 *    the loop, or note heartbeats in the edges table (edges.h: its own
 *    lock).
 * Nothing but the loop touches the ordering core. The files of this shell
 * and what each owns: dispatch_int.h. */
#ifndef DISPATCHER_DISPATCH_H
#define DISPATCHER_DISPATCH_H

#include <nats/nats.h>
#include <stdint.h>

typedef struct dispatch_cfg {
    const char *instance;        /* this process's id (leases, consumer names) */
    int64_t fetch_batch;         /* messages per pull request */
    int64_t fetch_wait_ms;       /* how long a pull request waits at the server */
    int64_t ack_wait_ms;         /* consumers' AckWait; held messages send in-progress acks */
    int64_t max_deliver;         /* failed attempts before a message is dead-lettered */
    int64_t max_held;            /* messages held (fetched, not settled) at most, all partitions */
    int64_t registry_timeout_ms; /* per resolution round */
    int64_t edge_timeout_ms;     /* per edge request */
    int64_t retry_base_ms;       /* backoff after the first failed attempt */
    int64_t retry_max_ms;        /* cap of the doubling backoff */
    int64_t absent_retry_ms;     /* retry cap while an edge has no responders */
    int64_t edge_dead_ms;        /* heartbeat silence that makes an edge down */
    int64_t lease_ttl_ms;        /* a dispatcher silent this long loses its partitions */
    int conn_barrier;            /* registry applies DW_CONN up to its end first */
} dispatch_cfg;

typedef struct dispatcher dispatcher;

/* Open the reply inboxes, subscribe to edge heartbeats, start the resolver,
 * worker and lease threads. nc and js must outlive the dispatcher; cfg is
 * copied. 0, or -1 (logged; retry later). */
int dispatch_create(dispatcher **out, natsConnection *nc, jsCtx *js, const dispatch_cfg *cfg);

/* Run until dw_stop is set; then stop pulling, let the requests in flight
 * finish (up to the edge timeout), ack what settled and give the partitions
 * back. 0. */
int dispatch_run(dispatcher *d);

/* Stop the threads, unsubscribe and free (durable consumers stay). NULL-safe. */
void dispatch_destroy(dispatcher *d);

/* nats.c's reconnected callback must call this (any thread): everything in
 * flight over the old connection is suspect and every held partition is
 * read again from its floor. NULL-safe. */
void dispatch_reconnected(dispatcher *d);

#endif
