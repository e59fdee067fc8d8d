/* Pipelined requests: publish many requests at once, each with its own
 * reply subject under one inbox we own, then wait for all the replies or a
 * deadline, whichever comes first. Used for the per-room registry questions
 * and the per-edge deliveries of a batch.
 *
 * One subscription "<inbox>.*" (asynchronous: its callback runs on a nats.c
 * thread and hands each reply to the waiting thread under a mutex). Reply
 * subjects are "<inbox>.<round>-<slot>": a reply of an earlier round that
 * arrives after its deadline is dropped, never mistaken for a current one.
 * "No responders" status messages arrive like replies; the caller tells
 * them apart with natsMsg_IsNoResponders().
 *
 * Threads: inbox_begin .. inbox_end belong to one thread. */
#ifndef DISPATCHER_INBOX_H
#define DISPATCHER_INBOX_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

typedef struct inbox inbox;

/* Subscribes on nc. 0 or -1 (logged). */
int inbox_create(inbox **out, natsConnection *nc);
/* Unsubscribes and frees any reply not taken. NULL-safe. */
void inbox_destroy(inbox *ib);

/* Stop a callback subscription and wait until its last callback has
 * returned, so that the callback's closure may be freed; then destroy it.
 * NULL-safe. */
void inbox_sub_close(natsSubscription *sub);

/* Start a round of n requests. 0 or -1 when out of memory. */
int inbox_begin(inbox *ib, size_t n);
/* The reply subject of request `slot` of the current round into buf. */
void inbox_reply_subject(const inbox *ib, size_t slot, char *buf, size_t len);
/* Count a request that was never published (so waiting does not expect it). */
void inbox_skip(inbox *ib, size_t slot);
/* Block until every published request has a reply or deadline_ns
 * (dw_mono_ns clock) has passed. Returns the number of replies in. */
size_t inbox_wait(inbox *ib, int64_t deadline_ns);
/* The reply of `slot` (caller owns it: natsMsg_Destroy), or NULL if none came. */
natsMsg *inbox_take(inbox *ib, size_t slot);
/* End the round: replies not taken are freed, late ones will be dropped. */
void inbox_end(inbox *ib);

#endif
