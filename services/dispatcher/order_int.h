/* The ordering core's insides, shared by its files (not an API: order.h
 * is): the tables behind the opaque order, and the helpers one file calls
 * in another (order__verb).
 *
 *   order.c          messages in and out, settling, partitions, clocks
 *   order_table.c    hash tables (messages, rooms, edges), edge queues
 *   order_round.c    resolution rounds
 *   order_request.c  edge requests
 *
 * Threads: one, like order.h. */
#ifndef DISPATCHER_ORDER_INT_H
#define DISPATCHER_ORDER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "order.h"

/* Target states: where one message stands with one of its edges. */
enum {
    T_QUEUED = 0, /* in the edge's queue */
    T_INFLIGHT,   /* in the edge's request in flight */
    T_DONE,       /* the edge took it */
    T_GONE,       /* the edge is gone: nothing to do */
    T_FAILED,     /* given up after max_attempts */
};

struct order_target {
    struct order_edge *edge;
    uint8_t state;
    uint8_t last; /* order_outcome of the last failure */
    uint32_t attempts;
};

typedef struct item {
    order_msg *m;
    uint32_t t; /* target index */
} item;

typedef struct req {
    order_request pub;
    struct order_edge *edge;
    item *items;
    size_t n;
    struct req *prev, *next; /* in flight, oldest first */
} req;

typedef struct order_edge {
    char *id;
    item *q; /* ring */
    size_t qhead, qlen, qcap;
    req *inflight;
    int64_t next_ms;
    uint32_t failures, absences;
    size_t refs; /* targets of unsettled messages naming it */
    struct order_edge *hnext;
} order_edge;

typedef struct order_room {
    char *name;
    order_msg *head, *tail; /* unsettled, arrival (= seq) order */
    size_t n_msgs, n_unresolved;
    uint32_t round; /* the round it is in, 0 for none */
    uint32_t failures;
    int64_t next_ms; /* resolution backoff */
    int pending;     /* on s->pend */
    struct order_room *pend_prev, *pend_next;
    struct order_room *hnext;
} order_room;

typedef struct part_list {
    order_msg *head;
    size_t n;
} part_list;

struct order {
    order_cfg cfg;
    /* seq -> message */
    order_msg **mh;
    size_t mh_cap, mh_n;
    /* name -> room, id -> edge */
    order_room **rh;
    size_t rh_cap, rh_n;
    order_edge **eh;
    size_t eh_cap, eh_n;
    order_edge **edges; /* for taking turns */
    size_t n_edges, cap_edges, turn;
    /* rooms waiting for resolution */
    order_room *pend_head, *pend_tail;
    /* settled, oldest first */
    order_msg *set_head, *set_tail;
    part_list *parts;
    size_t n_parts;
    size_t held;
    /* the open round */
    uint32_t round_id;
    int round_open;
    order_query *rq;
    order_room **rq_rooms;
    size_t rq_n;
    /* edges declared gone while the open round was out (order_edge_gone):
     * its answers do not bind messages to them */
    char **rq_gone;
    size_t rq_n_gone;
    /* requests in flight */
    req *req_head, *req_tail;
    size_t n_reqs;
    uint64_t next_req_id;
};

/* order_table.c */
uint64_t order__hash_str(const char *s);
uint64_t order__hash_u64(uint64_t x);
/* Grow a pointer hash table (chained through an intrusive next field at
 * next_off) to keep the load at most 1. 0 or -1. */
int order__table_grow(void ***tab, size_t *cap, size_t n, size_t next_off,
                      uint64_t (*key)(const void *));
/* The key of a message in its table (order__table_grow). */
uint64_t order__msg_key(const void *e);
order_msg *order__msg_find(order *s, uint64_t seq);
void order__msg_unhash(order *s, order_msg *m);
order_room *order__room_get(order *s, const char *name);
void order__pend_remove(order *s, order_room *r);
void order__pend_add(order *s, order_room *r);
/* A room with no message and in no round is forgotten. */
void order__room_maybe_free(order *s, order_room *r);
order_edge *order__edge_get(order *s, const char *id);
order_edge *order__edge_find(order *s, const char *id);
/* An edge with nothing queued, nothing in flight and no backoff left is
 * forgotten (edges come and go with deploys). */
void order__edge_maybe_free(order *s, size_t idx, int64_t now_ms);
int order__q_reserve(order_edge *e, size_t add);
item *order__q_at(order_edge *e, size_t i);

/* order_round.c */
/* Forget the edges declared gone during the round (its end). */
void order__round_gone_clear(order *s);
/* Note an edge declared gone while a round is open (order_edge_gone). */
int order__round_gone_note(order *s, const char *edge_id);

/* order.c */
void order__msg_free(order *s, order_msg *m);
/* Freed once nobody can reach it any more: released or dropped, and no
 * request in flight carries it. */
void order__msg_maybe_free(order *s, order_msg *m);
void order__room_unlink(order *s, order_msg *m);
void order__part_unlink(order *s, order_msg *m);
void order__attempt_note(order_msg *m, int64_t now_ms);
/* m->reason = text (copied); NULL-safe on out of memory. */
void order__reason_set(order_msg *m, const char *text);
/* The message no longer needs its edges (settled or dropped). */
void order__targets_unref(order_msg *m);
void order__settle(order *s, order_msg *m, order_verdict v);
/* Every target is done: ack, or dead-letter what failed. */
void order__settle_if_done(order *s, order_msg *m);

#endif
