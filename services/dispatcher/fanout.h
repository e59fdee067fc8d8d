/* One fetched batch of chat messages, from decoding to one verdict per
 * message. No NATS in here: the caller does the I/O (registry questions,
 * edge requests, acks) and reports what came back, so every decision can be
 * tested on its own.
 *
 * The life of a batch:
 *   fanout_add()          once per fetched message (decodes, groups by room)
 *   fanout_msg_skip() / fanout_msg_only()   edges a message must not be sent to
 *                         again (a retry) or may only go to (a replay)
 *   fanout_room_edges() / fanout_room_failed()   once per room: the registry's answer
 *   fanout_plan()         builds the requests: per edge, its messages in seq order,
 *                         split so no request exceeds the NATS max payload
 *   fanout_pack()         the Dw__Delivery bytes of one request
 *   fanout_delivery_done() once per request: ok / gone / failed
 *   fanout_decide()       one verdict per message: ack, nak after a delay, give up
 *   fanout_batch_clear()  before the next batch
 *
 * Threads: a batch belongs to the one thread that fills it. */
#ifndef DISPATCHER_FANOUT_H
#define DISPATCHER_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#include "dw/dw.pb-c.h"

/* Retry policy for messages that could not be delivered now: exponential
 * backoff, base_ms after the first failed attempt, doubling after each
 * further one, never more than max_ms. */
typedef struct fanout_retry {
    int64_t base_ms;      /* RETRY_BASE_MS: wait after the first failed attempt */
    int64_t max_ms;       /* RETRY_MAX_MS: the cap of the doubling */
    uint64_t max_deliver; /* MAX_DELIVER: the consumer's attempt limit (0 = none) */
} fanout_retry;

/* How long to wait before delivery attempt `attempt` + 1 of a message whose
 * attempt number `attempt` (1 = first delivery, JetStream's NumDelivered)
 * failed: min(base_ms * 2^(attempt-1), max_ms); -1 when that was the last
 * attempt the consumer allows. The one place that decides retries. */
int64_t fanout_retry_delay(const fanout_retry *policy, uint64_t attempt);

/* The whole schedule: the sum of every delay a message can wait before it
 * is given up (0 without an attempt limit). */
int64_t fanout_retry_total_ms(const fanout_retry *policy);

typedef enum {
    FANOUT_PENDING = 0, /* not sent / no answer yet: counts as failed */
    FANOUT_OK,          /* the edge took the items */
    FANOUT_GONE,        /* the edge is gone and its EDGE_DOWN is durable: done */
    FANOUT_FAILED,      /* error (publish failed, bad reply): the items must be retried */
    FANOUT_TIMEOUT,     /* no reply in time: the items must be retried */
} fanout_outcome;

typedef enum {
    FANOUT_ACK = 1, /* every edge is done */
    FANOUT_NAK,     /* retry after delay_ms. A message that does not decode
                     * gets it too, also on its last attempt (delay 0): the
                     * consumer then stops at MaxDeliver and JetStream's
                     * max-deliveries advisory hands it to the deadletter
                     * service, as for a message the dispatcher crashes on. */
    FANOUT_GIVE_UP, /* failed on its last attempt: dead-letter it */
} fanout_verdict;

typedef struct fanout_msg {
    void *handle;          /* the caller's message (natsMsg *); not owned */
    Dw__ChatMessage *chat; /* owned; NULL when the payload did not decode */
    uint64_t seq;          /* DW_MSG stream sequence */
    uint64_t attempt;      /* JetStream NumDelivered, 1 on the first delivery */
    size_t room;           /* index into rooms (chat != NULL only) */
    /* Edges (indexes into edges) whose request carrying this message failed,
     * and how (FANOUT_FAILED, FANOUT_TIMEOUT or FANOUT_PENDING); filled by
     * fanout_decide. */
    size_t *failed;
    fanout_outcome *failed_how;
    size_t n_failed;
    /* fanout_msg_skip / fanout_msg_only, by edge id (owned); resolved to
     * indexes (skip, n_skip: room edges it is not sent to) by fanout_plan. */
    char **skip_names;
    size_t n_skip_names;
    char **only_names;
    size_t n_only_names;
    int has_only;
    size_t *skip;
    size_t n_skip;
    fanout_verdict verdict; /* set by fanout_decide */
    int64_t delay_ms;       /* FANOUT_NAK only */
    const char *reason;     /* static text, for logs: why not FANOUT_ACK */
} fanout_msg;

typedef struct fanout_room {
    const char *name; /* points into the first message's chat */
    uint64_t min_seq; /* highest conn_seq of its messages: RoomQuery.min_seq */
    size_t *msgs;     /* message indexes, in the order they were added */
    size_t n_msgs, cap_msgs;
    size_t *edges; /* indexes into edges */
    size_t n_edges;
    int answered;      /* fanout_room_edges or fanout_room_failed was called */
    const char *error; /* static text when the registry could not answer */
} fanout_room;

typedef struct fanout_edge {
    char *id;     /* owned */
    size_t *msgs; /* message indexes in seq order */
    size_t n_msgs;
} fanout_edge;

/* One request to one edge: msgs[first .. first + count) of that edge. */
typedef struct fanout_delivery {
    size_t edge;
    size_t first;
    size_t count;
    fanout_outcome outcome;
} fanout_delivery;

/* Everything is read-only for the caller; the functions below change it. */
typedef struct fanout_batch {
    fanout_msg *msgs;
    size_t n_msgs, cap_msgs;
    fanout_room *rooms;
    size_t n_rooms, cap_rooms;
    fanout_edge *edges;
    size_t n_edges, cap_edges;
    fanout_delivery *deliveries;
    size_t n_deliveries;
    int planned; /* fanout_plan succeeded */
    /* open-addressing indexes name -> room / edge (+1; 0 = empty) */
    size_t *room_idx, room_idx_cap;
    size_t *edge_idx, edge_idx_cap;
} fanout_batch;

/* Zero a batch before first use. */
void fanout_batch_init(fanout_batch *b);
/* Free everything the batch holds and make it empty again. NULL-safe. */
void fanout_batch_clear(fanout_batch *b);

/* Add one fetched message: decode it and file it under its room. A payload
 * that does not decode, or names no valid room or id, is kept with
 * chat == NULL and is NAK'd until JetStream stops redelivering it (see
 * FANOUT_NAK). Returns the message's index, or -1 when out of memory (the
 * message was not added). */
long fanout_add(fanout_batch *b, void *handle, const void *data, size_t len, uint64_t seq,
                uint64_t attempt);

/* Message msg already reached these edges (an earlier attempt): do not send
 * it to them again. Adds to what an earlier call said. 0 or -1 (out of
 * memory: then it is sent to them again, which edges drop as a repeat). */
int fanout_msg_skip(fanout_batch *b, size_t msg, char *const *edge_ids, size_t n);
/* Message msg may only go to these edges (a replay of a partial failure);
 * the registry's other edges for its room are skipped. 0 or -1 (out of
 * memory: the caller must not deliver it now, e.g. NAK it). */
int fanout_msg_only(fanout_batch *b, size_t msg, char *const *edge_ids, size_t n);
/* After fanout_plan: whether message msg was not sent to edge `edge`
 * because of fanout_msg_skip / fanout_msg_only. */
int fanout_msg_skips(const fanout_batch *b, size_t msg, size_t edge);

/* The registry's answer for room `room`: the edges holding its members
 * (duplicates and ids that fail edges_id_valid are skipped; the caller
 * logs those). 0 or -1 when out of memory. */
int fanout_room_edges(fanout_batch *b, size_t room, char *const *edge_ids, size_t n);
/* The registry could not answer for room `room` (timeout, error): every
 * message of the room will be retried. reason: static text. */
void fanout_room_failed(fanout_batch *b, size_t room, const char *reason);

/* Build the requests once every room is answered: each edge gets its
 * messages in seq order, split into requests of at most max_bytes packed
 * (one item over the limit goes alone). 0, or -1 when out of memory. */
int fanout_plan(fanout_batch *b, size_t max_bytes);

/* Packed Dw__Delivery of request d, malloc'd into *out (caller frees).
 * 0 or -1 when out of memory. */
int fanout_pack(const fanout_batch *b, size_t d, uint8_t **out, size_t *len);

/* What happened to request d. */
void fanout_delivery_done(fanout_batch *b, size_t d, fanout_outcome outcome);

/* One verdict per message: NAK for what did not decode (see FANOUT_NAK);
 * NAK (or GIVE_UP on the last attempt) when the registry failed for its
 * room, or when any request carrying it is neither OK nor GONE (those edges
 * land in msg->failed); otherwise ACK, also for a room nobody is in and
 * for a message every edge of which is skipped. Call once every request
 * has its outcome. Without a successful fanout_plan (out of memory)
 * nothing was sent: every message with edges gets NAK/GIVE_UP. */
void fanout_decide(fanout_batch *b, const fanout_retry *policy);

#endif
