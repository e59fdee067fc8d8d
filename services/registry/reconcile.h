/* Reconciliation: make the table agree with the sockets the live edges
 * hold, for a table that was restored to a past time, or that missed
 * events (docs/operations.md, "Reconcile with the edges").
 *
 * The table is a view of DW_CONN, so corrections are DW_CONN events, which
 * every replica applies and a later restore replays:
 *   - an edge that no longer answers (NATS "no responders") and still has
 *     connections in the table: EDGE_DOWN for it, published here;
 *   - ids the table has for an edge that the edge does not hold: the edge
 *     is asked to DROP them and publishes DISCONNECT for each one it still
 *     does not hold when it reads the request;
 *   - ids an edge holds that the table lacks: the edge is asked to
 *     ANNOUNCE them and publishes CONNECT again for each one still open.
 * The edge checks again because a connection may open or close between
 * its LIST answer and the correction: only the edge knows, in order.
 *
 * Live edges are the ones whose heartbeat was seen within edge_ttl_ms plus
 * every edge the table names (so an edge with no rows is asked too). */
#ifndef REG_RECONCILE_H
#define REG_RECONCILE_H

#include <nats/nats.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>

#include "store.h"

typedef struct reg_reconcile_opts {
    int64_t edge_ttl_ms;        /* heartbeat seen this recently: live */
    int64_t request_timeout_ms; /* per request to an edge */
    uint32_t page;              /* ids per LIST page and per ANNOUNCE/DROP */
} reg_reconcile_opts;
void reg_reconcile_opts_default(reg_reconcile_opts *o);

typedef struct reg_reconcile reg_reconcile;

/* Subscribe to the edges' heartbeats. nc and js are borrowed and must
 * outlive reg_reconcile_free. 0 or -1. */
int reg_reconcile_start(reg_reconcile **out, natsConnection *nc, jsCtx *js,
                        const reg_reconcile_opts *o);

/* Unsubscribe and free. NULL-safe. */
void reg_reconcile_free(reg_reconcile *r);

typedef struct reg_reconcile_result {
    uint32_t edges;             /* edges asked */
    uint32_t edges_down;        /* no responders: EDGE_DOWN published */
    uint32_t edges_unreachable; /* timed out or refused: left as they are */
    uint64_t held;              /* ids the answering edges hold */
    uint64_t ghosts;            /* in the table, not on their edge */
    uint64_t missing;           /* on an edge, not in the table */
    uint64_t dropped;           /* DISCONNECT events the edges published */
    uint64_t announced;         /* CONNECT events the edges published */
} reg_reconcile_result;

/* One pass over every live edge, against st (borrowed; the caller keeps
 * it open and unswapped meanwhile; the apply thread may run). Waits first
 * until the heartbeat subscription is edge_ttl_ms old, so no live edge is
 * missed after a start; stops early once *stop is set. dry_run computes without asking for
 * corrections. Returns 0 (unreachable edges are counted, not errors) or -1 with *err (malloc'd)
 * when the table cannot be read or NATS is gone. The events are published when this returns; the
 * table has them once applied. */
int reg_reconcile_run(reg_reconcile *r, reg_store *st, int dry_run, atomic_int *stop,
                      reg_reconcile_result *res, char **err);

#endif
