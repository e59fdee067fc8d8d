/* Reading a JetStream pull consumer by hand: pull requests to
 * $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with a reply inbox of our
 * own, read from a plain subscription into an array the caller bounds, and
 * acks published to each delivery's $JS.ACK reply subject.
 *
 * Why not natsSubscription_Fetch/_FetchRequest: in nats.c 3.4.1 (Debian
 * 12) a fetch that starts with deliveries already queued (late ones of a
 * request an earlier fetch stopped waiting for) lowers its target by their
 * count and then collects while count != target; with more than half a
 * batch queued it never stops at the batch and writes message pointers
 * past its array. The heap is corrupt from then on; a slow server makes
 * late deliveries common (tests/unit/registry/test_apply.c reproduces it).
 *
 * One dw_pull per consumer, used by one thread at a time. */
#ifndef DW_PULL_H
#define DW_PULL_H

#include <nats/nats.h>
#include <stdint.h>

typedef struct dw_pull dw_pull;

/* Subscribe a fresh inbox for consumer's deliveries (nothing queued for an
 * earlier dw_pull can be taken for this one's). expires_ms: how long one
 * request waits at the server. nc is borrowed and must outlive the pull.
 * On NATS_OK *out is the caller's (dw_pull_close). */
natsStatus dw_pull_open(dw_pull **out, natsConnection *nc, const char *stream, const char *consumer,
                        int64_t expires_ms);

/* Unsubscribe and free. Deliveries still on their way are redelivered by
 * the server after its ack wait. NULL-safe. */
void dw_pull_close(dw_pull *p);

/* Up to batch deliveries into msgs (*n of them, each owned by the caller):
 * whatever is queued, else the first to arrive within wait_ms plus what
 * came with it. NATS_OK with *n > 0; NATS_TIMEOUT with none; otherwise the
 * consumer cannot be read (NATS_NO_RESPONDERS: no such stream or consumer;
 * NATS_ERR: the server refused the request, e.g. 409, logged). */
natsStatus dw_pull_fetch(dw_pull *p, natsMsg **msgs, int batch, int64_t wait_ms, int *n);

/* Acknowledgements of one delivery, published to its reply subject (the
 * message is not bound to a nats.c JetStream subscription, so natsMsg_Ack
 * and friends refuse it). ack_sync waits for the server to confirm. */
natsStatus dw_pull_ack(natsConnection *nc, natsMsg *m);
natsStatus dw_pull_ack_sync(natsConnection *nc, natsMsg *m, int64_t timeout_ms);
natsStatus dw_pull_nak(natsConnection *nc, natsMsg *m, int64_t delay_ms);
natsStatus dw_pull_term(natsConnection *nc, natsMsg *m);
/* "+WPI": still working on it; the server restarts its ack wait. */
natsStatus dw_pull_progress(natsConnection *nc, natsMsg *m);

#endif
