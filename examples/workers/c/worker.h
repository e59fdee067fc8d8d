/* The worker kit: what every DynamoWave worker written in C with nats.c
 * needs (docs/integrations.md). Copy it with the examples.
 *
 *   wk_connect        log in as the NATS user worker, from the environment
 *   wk_consumer_*     a durable pull consumer of your own, read by hand
 *   wk_room_publish   a message to a room through the management API
 *
 * Environment (what `make up` prints for workers):
 *   DW_NATS_URL            comma-separated NATS URLs (nats://127.0.0.1:4222)
 *   DW_NATS_USER           the NATS user (worker)
 *   DW_NATS_PASSWORD_FILE  its password file (var/secrets/nats_worker when
 *                          that exists: a `make up` in this checkout)
 *
 * Threads: one worker thread uses one wk_consumer; nats.c's own threads
 * are behind the connection. */
#ifndef WORKER_H
#define WORKER_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Set by SIGINT / SIGTERM (wk_connect installs the handlers). */
extern volatile int wk_stop;

/* Connect (retrying until NATS answers), with replies under
 * _INBOX.<user> (the only inbox the worker user may subscribe to). name
 * shows in the server's connection list. NATS_OK with *nc and *js owned by
 * the caller (jsCtx_Destroy, natsConnection_Destroy). */
natsStatus wk_connect(const char *name, natsConnection **nc, jsCtx **js);

/* A durable pull consumer on stream, created if it does not exist yet
 * (filter: the subjects it gets; deliver_new: only messages stored from
 * its creation on), read with pull requests of our own (see worker.c for
 * why not natsSubscription_Fetch). */
typedef struct wk_consumer wk_consumer;
natsStatus wk_consumer_open(wk_consumer **out, natsConnection *nc, jsCtx *js, const char *stream,
                            const char *durable, const char *filter, bool deliver_new);
/* The next delivery, waiting up to wait_ms: NATS_OK with *msg (the
 * caller's; answer it with wk_ack or wk_nak, then natsMsg_Destroy), or
 * NATS_TIMEOUT. */
natsStatus wk_consumer_next(wk_consumer *c, natsMsg **msg, int64_t wait_ms);
void wk_consumer_close(wk_consumer *c);

/* Done with a delivery / try it again after delay_ms (JetStream redelivers
 * an unanswered one after the consumer's ack wait anyway). */
natsStatus wk_ack(natsConnection *nc, natsMsg *msg);
natsStatus wk_nak(natsConnection *nc, natsMsg *msg, int64_t delay_ms);

/* The delivery's stream sequence (0 when it is no JetStream delivery). */
uint64_t wk_stream_seq(natsMsg *msg);

/* Store a message in room through the api service (dw.api.rooms.publish):
 * data is the text members get, from the sender's name, key an idempotency
 * key (NULL: none; with one, a retry within 2 minutes is stored once).
 * 0 with *seq (may be NULL) the message's sequence in the room, or -1 with
 * the reason in err. */
int wk_room_publish(natsConnection *nc, const char *room, const char *data, const char *from,
                    const char *key, uint64_t *seq, char *err, size_t errlen);

#endif
