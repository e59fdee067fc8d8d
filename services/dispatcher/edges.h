/* Edge liveness: when did we last hear of each edge, and which edges have
 * been silent long enough to be declared down (EDGE_DOWN, once).
 *
 * Threads: nats.c callback threads (edges_seen for heartbeats, edges_known
 * for the registry's list of edges: requests.c) and the dispatcher's loop
 * (edges_known from round answers, edges_stale when sweeping,
 * edges_touch_all after a reconnect, edges_mark_down once the worker has
 * made an EDGE_DOWN durable), hence the internal mutex. The clock is always
 * passed in, so tests drive time by hand. */
#ifndef DISPATCHER_EDGES_H
#define DISPATCHER_EDGES_H

#include <stddef.h>
#include <stdint.h>

/* Longest edge id: it becomes a subject token (dw.edge.<id>.deliver). */
#define EDGES_ID_MAX 128

typedef struct edges_table edges_table;

typedef enum {
    EDGES_UNKNOWN = 0, /* never heard of, or forgotten */
    EDGES_ALIVE,       /* heard of within dead_ms, or not yet reported */
    EDGES_DOWN,        /* its EDGE_DOWN is durable; silent since */
} edges_state;

/* True when s (len bytes) can be an edge id: 1..EDGES_ID_MAX printable
 * ASCII characters without '.', '*' or '>' (they would change the subject). */
int edges_id_valid(const char *s, size_t len);

/* dead_ms: silence after which an edge is stale (EDGE_DEAD_MS).
 * forget_ms: how long a down edge is remembered (so it is reported once);
 * after that a registry answer naming it starts its clock again.
 * max_edges bounds the table against junk heartbeats. 0 or -1. */
int edges_create(edges_table **out, int64_t dead_ms, int64_t forget_ms, size_t max_edges);
/* NULL-safe. */
void edges_destroy(edges_table *t);

/* A heartbeat from edge_id: alive at now_ms (again, if it was down).
 * 1 when that revived a down edge, 0 otherwise, -1 for an invalid id or a
 * full table. */
int edges_seen(edges_table *t, const char *edge_id, int64_t now_ms);

/* We heard of edge_id without hearing from it (startup seed from
 * dw.registry.edges, a registry answer): start its clock at now_ms unless
 * it is already known. Never revives a down edge. 0 or -1 like edges_seen. */
int edges_known(edges_table *t, const char *edge_id, int64_t now_ms);

/* Edges alive but silent for at least dead_ms at now_ms, not yet marked
 * down: *out is a malloc'd array of *n malloc'd ids (edges_list_free).
 * They stay in the answer of every sweep until edges_mark_down, so a
 * failed EDGE_DOWN publish is retried. Also forgets edges down for longer
 * than forget_ms. 0 or -1 when out of memory. */
int edges_stale(edges_table *t, int64_t now_ms, char ***out, size_t *n);
void edges_list_free(char **ids, size_t n);

/* We were away from NATS (our own reconnect): heartbeats sent meanwhile
 * never reached us, so silence says nothing yet. Every live edge's clock
 * starts again at now_ms. */
void edges_touch_all(edges_table *t, int64_t now_ms);

/* The EDGE_DOWN of edge_id is durable: do not report it again unless it
 * heartbeats again. Adds the edge if unknown (a "no responders" answer). */
void edges_mark_down(edges_table *t, const char *edge_id, int64_t now_ms);

edges_state edges_get(edges_table *t, const char *edge_id);
size_t edges_count(edges_table *t);

#endif
