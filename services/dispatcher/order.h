/* The dispatcher's ordering core: every fetched chat message from the moment
 * it is fetched until it may be acked (or must be dead-lettered), and which
 * request may go to which edge now. No NATS in here: the caller does the I/O
 * (registry questions, edge requests, acks) and reports what came back, so
 * every decision is unit-tested on its own (tests/unit/dispatcher/test_order.c).
 *
 * The rules (docs/architecture.md, "Ordering"):
 *  - A room's messages are resolved (which edges hold members?) in seq
 *    order: a round asks once per room for every unresolved message of it,
 *    and a message never gets an answer older than one of an earlier
 *    message. While a room's resolution fails, its later messages wait
 *    behind it (other rooms keep flowing).
 *  - Each edge has one request in flight at a time, carrying what is queued
 *    for it in resolution order (so each room's messages in seq order). A
 *    request that fails puts its items back at the head of the edge's queue
 *    and the edge waits out an exponential backoff: nothing of a room ever
 *    overtakes an earlier message of that room on its way to an edge, and a
 *    failing edge holds back only its own deliveries.
 *  - "No responders" from an edge means "not there now" (it may be
 *    reconnecting to NATS): retried with a short backoff and never counted
 *    as an attempt; the edge is given up only by order_edge_gone (the
 *    caller's heartbeat timeout).
 *  - A message is settled once every edge it was bound for took it or is
 *    gone: ORDER_ACK. After max_attempts failed attempts (registry, or one
 *    edge's), the message is given up for what failed: ORDER_DEAD, with
 *    the reason and the edges that never took it.
 *
 * Lifetimes: a order_msg is owned by the scheduler from order_add until the
 * caller releases it (order_msg_release) after popping it settled, or until
 * order_drop_partition. Handles are the caller's (natsMsg *); the scheduler
 * hands them back through the release callback and never looks inside.
 *
 * Threads: one (the dispatcher's loop). Clocks are passed in (ms). */
#ifndef DISPATCHER_ORDER_H
#define DISPATCHER_ORDER_H

#include <stddef.h>
#include <stdint.h>

#include "dw/dw.pb-c.h"

#define ORDER_ATTEMPTS_KEPT 64 /* attempt times kept per message for its dead letter */

typedef struct order_cfg {
    int64_t retry_base_ms;         /* backoff after the first failed attempt, doubling */
    int64_t retry_max_ms;          /* cap of the backoff */
    int64_t absent_retry_ms;       /* backoff cap after "no responders" (not an attempt) */
    uint32_t max_attempts;         /* failed attempts before a message is given up (>= 1) */
    size_t max_request_bytes;      /* packed size of one edge request (one item may exceed it) */
    uint32_t max_round_rooms;      /* rooms asked in one resolution round */
    void (*release)(void *handle); /* frees a handle (dropped or released messages) */
} order_cfg;

typedef enum {
    ORDER_PENDING = 0, /* not settled */
    ORDER_ACK,         /* every edge took it (or it had none): ack */
    ORDER_DEAD,        /* given up: dead-letter it (reason, failed_edges), then terminate */
} order_verdict;

typedef enum {
    ORDER_OK = 1,       /* the edge took every item */
    ORDER_FAILED,       /* error reply or publish failure: an attempt */
    ORDER_TIMEOUT,      /* no reply in time: an attempt */
    ORDER_NO_RESPONDERS /* nobody listens on the edge's subject now: not an attempt */
} order_outcome;

typedef struct order_target order_target;

/* What the caller reads of a message. */
typedef struct order_msg {
    uint64_t seq;          /* DW_MSG stream sequence */
    uint32_t part;         /* partition it was fetched from */
    void *handle;          /* the caller's delivery (natsMsg *) */
    Dw__ChatMessage *chat; /* owned; NULL when the payload did not decode */
    order_verdict verdict; /* set when settled */
    char *reason;          /* ORDER_DEAD: registry_unavailable, edge_timeout:<edges>, ...
                            * (owned; NULL only when out of memory) */
    char **failed_edges;   /* ORDER_DEAD: edges that never took it (owned) */
    size_t n_failed_edges;
    uint32_t attempts;   /* failed attempts so far */
    int64_t *attempt_ms; /* their times, the first ORDER_ATTEMPTS_KEPT (owned; allocated
                          * at the first: most messages never fail) */
    size_t n_attempt_ms;
    int64_t fetched_ms;  /* order_add time */
    int64_t resolved_ms; /* when the registry's answer bound it to its edges */
    int64_t progress_ms; /* last in-progress ack (order_progress_due) */
    /* --- internal --- */
    struct order_room *room;
    struct order_msg *prev, *next; /* in the room, seq order; or the settled list */
    order_target *targets;
    uint32_t n_targets, open; /* targets not yet done */
    uint32_t round;           /* resolution round it is in (0: none) */
    uint32_t inflight;        /* items of it in requests in flight */
    char **only;              /* replay: deliver only to these edges (owned) */
    size_t n_only;
    int has_only;
    int resolved, dropped, settled;
    int released, popped;
    struct order_msg *part_next, *part_prev; /* all messages of the partition */
    struct order_msg *hnext;                 /* seq hash chain */
} order_msg;

typedef struct order order;

int order_create(order **out, const order_cfg *cfg);
/* Frees everything; handles go to cfg.release. NULL-safe. */
void order_destroy(order *s);

typedef enum {
    ORDER_ADDED = 0,
    ORDER_DUPLICATE = 1, /* seq is held already: *old_handle (if not NULL) is the
                          * handle it replaces, for the caller to free */
} order_add_result;

/* A fetched message. data/len: the ChatMessage as published. only, n_only:
 * a replay's edge list (has_only: restrict to it, even if empty). A payload
 * that does not decode or names no valid room is settled at once as
 * ORDER_DEAD ("poison"). Returns ORDER_ADDED, ORDER_DUPLICATE (a redelivery
 * of a message held: the newer handle replaces the older, returned in
 * *old_handle), or -1 when out of memory (nothing kept). */
int order_add(order *s, uint32_t part, uint64_t seq, void *handle, const void *data, size_t len,
              char *const *only, size_t n_only, int has_only, int64_t now_ms, void **old_handle);

/* --- resolution rounds (one at a time) --- */

typedef struct order_query {
    const char *room; /* valid until order_round_end */
    uint64_t min_seq; /* highest conn_seq of its messages in the round */
    int answered;     /* set by order_round_room_* */
} order_query;

/* Start a round: the rooms with unresolved messages whose backoff is over
 * (at most max_round_rooms). *q: an array of *n queries owned by the
 * scheduler until order_round_end. 0 rooms: no round is started (returns
 * 0 and *n == 0); -1 when out of memory. */
int order_round_begin(order *s, int64_t now_ms, order_query **q, size_t *n);
/* The registry's answer for query i: the edges holding the room's members
 * (invalid ids skipped; dupes folded). Every message of the room that was
 * in the round becomes resolved, bound for those edges minus what its
 * replay restriction excludes; one bound for none is settled ORDER_ACK. */
int order_round_room_edges(order *s, size_t i, char *const *edges, size_t n, int64_t now_ms);
/* The registry could not answer for query i: its messages count an attempt
 * (reason: registry_unavailable / registry_error ...), wait out the room's
 * backoff, and are given up after the last attempt. Returns how many
 * messages counted an attempt. */
size_t order_round_room_failed(order *s, size_t i, const char *reason, int64_t now_ms);
/* End the round: queries not answered count as failed ("registry_timeout"
 * -> registry_unavailable). Returns how many messages that made count an
 * attempt. */
size_t order_round_end(order *s, int64_t now_ms);
int order_round_open(const order *s);

/* --- edge requests --- */

typedef struct order_request {
    uint64_t id;
    const char *edge; /* valid while the request is in flight */
    uint8_t *buf;     /* packed Dw__Delivery (owned by the request) */
    size_t len;
    size_t n_items;
    int64_t sent_ms;
} order_request;

/* The next request to send, for an edge with items queued, none in flight
 * and no backoff running at now_ms (edges in turn); NULL when there is
 * none (or out of memory: retried on the next call). The request is in
 * flight from now on: report it exactly once with order_request_done. */
order_request *order_next_request(order *s, int64_t now_ms);
/* What became of request r (then r is freed). */
void order_request_done(order *s, order_request *r, order_outcome outcome, int64_t now_ms);
/* Requests in flight sent at or before before_ms (for timeouts): up to max
 * of them into out; returns how many. */
size_t order_requests_older(order *s, int64_t before_ms, order_request **out, size_t max);

/* The edge is gone (its EDGE_DOWN is durable): what is queued for it and
 * what is in flight to it count as done, and so does what the open round's
 * answers would bind to it (they may have been given before the registry
 * applied the EDGE_DOWN). Later rounds only name it again if the registry
 * does (it came back). */
void order_edge_gone(order *s, const char *edge_id, int64_t now_ms);

/* --- settling --- */

/* A settled message (ORDER_ACK or ORDER_DEAD), oldest settled first, or
 * NULL. The caller acks / dead-letters it, then order_msg_release. */
order_msg *order_settled_pop(order *s);
/* Put a popped ORDER_DEAD message back at the end of the settled list (its
 * dead letter could not be written yet; pop it again later). A message
 * whose partition was dropped meanwhile (m->dropped) is freed instead. */
void order_settled_push_back(order *s, order_msg *m);
/* Done with a popped message: frees it and hands its handle to release. */
void order_msg_release(order *s, order_msg *m);

/* --- partitions, timers --- */

/* Forget every message of partition part, settled ones included (they are
 * redelivered by the partition's next consumer); handles go to release.
 * Requests in flight keep their items alive until they are done; a message
 * the caller popped stays the caller's (m->dropped tells it not to act on
 * it) until order_msg_release. Returns how many messages were dropped. */
size_t order_drop_partition(order *s, uint32_t part);
/* Messages of partition part held now (not released). */
size_t order_held(const order *s, uint32_t part);
size_t order_held_total(const order *s);
/* The lowest stream sequence of partition part held now (0: none): every
 * message of the partition below it that was fetched is settled. */
uint64_t order_min_seq(const order *s, uint32_t part);
/* Requests in flight that carry items of partition part. */
size_t order_inflight_of(const order *s, uint32_t part);

/* Messages held (unsettled) since at least every_ms before now whose last
 * in-progress ack is as old: their handles into out (up to max), their
 * progress time set to now. */
size_t order_progress_due(order *s, int64_t now_ms, int64_t every_ms, void **out, size_t max);

/* When something waits for a clock (a room's or an edge's backoff): the
 * earliest such time, or INT64_MAX. Rooms waiting for a round count only
 * while no round is open (one cannot begin before the open one ends). */
int64_t order_next_wake(const order *s);

/* For metrics and logs. */
typedef struct order_stats {
    size_t held, unresolved, queued_items, inflight_requests, edges, rooms;
} order_stats;
void order_get_stats(const order *s, order_stats *st);

/* The backoff after failed attempt number `attempt` (1-based): min(base *
 * 2^(attempt-1), max). */
int64_t order_backoff(const order_cfg *cfg, uint32_t attempt);

#endif
