/* Registry queries over NATS request/reply, in the queue group DW_REG_QUEUE
 * so that replicas share the load:
 *   dw.registry.room      RoomQuery     -> RoomEdges
 *   dw.registry.list      ListQuery     -> ListReply
 *   dw.registry.edges     (empty)       -> EdgesReply
 *   dw.registry.presence  PresenceQuery -> PresenceReply
 *
 * A room query with min_seq above the applied sequence is parked, not
 * waited for on the NATS callback thread: one query that waits (or never
 * catches up) must not hold up the room queries queued behind it. A waiter
 * thread answers parked queries when reg_query_notify says the table moved,
 * or with ok=false "behind" when their wait runs out. */
#ifndef REG_QUERY_H
#define REG_QUERY_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Parked room queries beyond this are answered "busy" at once. */
#define REG_QUERY_MAX_PARKED 10000
/* Presence pages: users per reply when the query says 0, and at most. */
#define REG_PRESENCE_DEFAULT_PAGE 100
#define REG_PRESENCE_MAX_PAGE 1000

typedef struct reg_query reg_query;

/* Subscribe and start the waiter thread. wait_ms: how long a room query
 * may wait for min_seq (0 = answer "behind" at once). nc and st are
 * borrowed and must outlive reg_query_stop. Returns 0 or -1. */
int reg_query_start(reg_query **out, natsConnection *nc, reg_store *st, int64_t wait_ms);

/* The table reached seq: wake parked queries. Matches
 * reg_apply_opts.on_progress (arg is the reg_query). Any thread; a seq
 * below one already notified is ignored. */
void reg_query_notify(void *arg, uint64_t seq);

/* Stop taking queries: drain the subscriptions (queued requests are still
 * answered), answer parked ones, join the waiter thread. After it returns
 * the store is no longer touched. NULL-safe. */
void reg_query_stop(reg_query *q);

/* Swap the table under the queries (a restore): lock_store waits for the
 * queries using the current table and holds new ones back; unlock_store
 * installs st (which may be the same pointer, reopened) and lets them run.
 * The caller closes and opens tables between the two. */
void reg_query_lock_store(reg_query *q);
void reg_query_unlock_store(reg_query *q, reg_store *st);

/* Free q after reg_query_stop. If a subscription failed to drain (its
 * callback might still run), q is deliberately left allocated. NULL-safe. */
void reg_query_free(reg_query *q);

/* The replies, without NATS, for the handlers, tests and fuzzers. Each
 * returns a malloc'd packed reply (caller frees) and never fails on bad
 * input: garbage gets ok=false "bad_request". NULL only when out of memory. */

/* Decode a RoomQuery. Returns NULL and fills room / min_seq, or the error
 * text to send back. room must hold DW_ROOM_MAX + 1 bytes. */
const char *reg_query_room_parse(const void *data, size_t len, char *room, uint64_t *min_seq);
/* RoomEdges for room; err non-NULL sends ok=false with that error. */
uint8_t *reg_query_room_reply(reg_store *st, const char *room, const char *err, size_t *len);
/* ListReply for a packed ListQuery; a reply over max_bytes becomes
 * ok=false "too_large" (0 = no bound). */
uint8_t *reg_query_list_reply(reg_store *st, const void *data, size_t len, size_t max_bytes,
                              size_t *outlen);
/* EdgesReply (the request payload is ignored). */
uint8_t *reg_query_edges_reply(reg_store *st, size_t *outlen);
/* PresenceReply for a packed PresenceQuery: users of the room after
 * after_user, limit 0 = REG_PRESENCE_DEFAULT_PAGE, capped at
 * REG_PRESENCE_MAX_PAGE; more is set when users were left out. */
uint8_t *reg_query_presence_reply(reg_store *st, const void *data, size_t len, size_t max_bytes,
                                  size_t *outlen);

#endif
