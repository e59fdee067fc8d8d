/* Local room membership: which of this edge's sessions are in which room.
 * The registry holds the cluster-wide view; this is the edge's own index so
 * that a delivery for a room finds its local members without a lookup per
 * recipient. lws thread only. */
#ifndef EDGE_ROOMS_H
#define EDGE_ROOMS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/bus.h"

struct edge_session;

typedef struct edge_room {
    char name[DW_ROOM_MAX + 1];
    struct edge_session **members;
    uint32_t count, cap;
    /* The dynamowave.v1 members again: only they receive presence events,
     * and a room of thousands of plain clients must not be scanned for
     * each connect elsewhere to find none. */
    struct edge_session **v1;
    uint32_t nv1, v1_cap;
    uint64_t last_seq;      /* newest message known here (deliveries, joins) */
    uint64_t delivered_seq; /* newest live delivery: lower ones are repeats */
    struct edge_room *next; /* hash chain */
} edge_room;

typedef struct edge_rooms {
    edge_room **buckets;
    size_t nbuckets, count;
    /* v1 memberships in every room of this edge. Written on the lws thread
     * only; read on the NATS thread, which drops presence events unread
     * while it is 0 (rooms_v1_members). */
    atomic_uint_fast32_t v1_members;
} edge_rooms;

struct edge_frame;

/* A live message held for a member whose join is still in progress. */
typedef struct edge_held {
    struct edge_held *next;
    uint64_t seq;
    struct edge_frame *frame;
} edge_held;

/* A session's membership in one room: the room and its index in members.
 * While joining, live messages are held (the join may still replay older
 * ones, which must come first). */
typedef struct edge_membership {
    edge_room *room;
    uint32_t idx;
    uint32_t v1_idx; /* in room->v1, for a v1 session */
    bool joining;
    bool leave_after_join;
    uint64_t floor_seq; /* replayed up to here: live copies of these are dropped */
    edge_held *held, *held_tail;
} edge_membership;

int rooms_init(edge_rooms *rs, size_t nbuckets);
void rooms_free(edge_rooms *rs);
edge_room *rooms_get(const edge_rooms *rs, const char *name);

/* Add s to the room called name (created on first member). The session's
 * membership array is grown here. 0, 1 if already a member, -1 memory. */
int rooms_join(edge_rooms *rs, struct edge_session *s, const char *name);
/* The membership of s in room (NULL if none). */
edge_membership *rooms_membership(struct edge_session *s, const edge_room *room);
/* Remove s from one room / from every room; held frames are released and
 * empty rooms are freed. */
void rooms_leave(edge_rooms *rs, struct edge_session *s, const char *name);
void rooms_leave_all(edge_rooms *rs, struct edge_session *s);
/* Release the frames held for a membership. */
void rooms_release_held(edge_membership *m);

/* How many v1 memberships this edge has now; any thread (a NATS callback
 * asks whether a presence event can interest anyone here). */
uint32_t rooms_v1_members(const edge_rooms *rs);

#endif
