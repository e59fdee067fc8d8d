/* Holding deliveries while this edge cannot be sure that the registry
 * still lists its connections.
 *
 * Why: the dispatcher declares an edge down when its heartbeats stop for
 * DW_EDGE_DEAD_MS (on the dispatcher) and gives up the messages it had for
 * it; the registry drops the edge's connections. An edge that was only
 * stalled (SIGSTOP, a loop blocked for seconds) or cut off from NATS wakes
 * with its old sockets open and learns that it was declared down from the
 * core notice or its self-check, then closes them with 1012 so that their
 * clients resume with `since` (bus_events.c). In the meantime a client
 * that connects to it lists the edge in its rooms again, the dispatcher
 * sends it those rooms' new messages, and written to the old sockets they
 * would move those clients' `since` past the messages given up for them: a
 * silent loss. So when heartbeats may have been missed (the loop stalled
 * for a heartbeat interval or more, or the NATS connection was lost for
 * that long) and the edge holds ready connections, deliveries wait here,
 * in order, until a self-check started after that moment answers: still
 * listed (handle them), declared down (close the old connections first,
 * then handle them: they reach only the connections still ready), or no
 * answer in time (treated as declared down). docs/operations.md, "Edge
 * declared down while alive".
 *
 * This file is the decision and the queue, with no NATS and no lws in it
 * (tests/unit/edge/test_hold.c); bus_events.c does the rest. lws thread
 * only. */
#ifndef EDGE_HOLD_H
#define EDGE_HOLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/mailbox.h"

typedef enum {
    HOLD_NONE = 0,
    HOLD_STALL,  /* the loop did not run for a heartbeat interval or more */
    HOLD_OUTAGE, /* the NATS connection was lost for that long */
} hold_cause;

/* "stall", "outage" or "none" (logs). */
const char *hold_cause_name(hold_cause c);

/* What the loop knows when it takes its mailbox, for hold_judge. */
typedef struct hold_inputs {
    int64_t now_ns;
    int64_t last_drain_ns; /* when the loop last took its mailbox; 0: never */
    /* When the NATS connection was lost, as recorded by the disconnect
     * hook and not yet cleared (bridge_lost_since); 0: not lost. */
    int64_t lost_ns;
    bool connected;       /* the NATS connection is up now */
    int64_t heartbeat_ms; /* DW_HEARTBEAT_MS */
    uint32_t nready;      /* connections ready (registered) */
} hold_inputs;

typedef struct hold_judgement {
    hold_cause cause; /* HOLD_NONE: no reason to suspect anything */
    int64_t gap_ms;   /* how long the stall or the outage (so far) was */
    /* The recorded loss of the connection is dealt with (it was short and
     * is over, or it begins a hold now): clear it (bridge_lost_clear). */
    bool clear_lost;
} hold_judgement;

/* Pure: may heartbeats have been missed since the loop last took its
 * mailbox? Call before any delivery taken with it is handled. A stall
 * counts from the previous take (the tick takes every 100 ms, so a gap of
 * a heartbeat interval is no lag). A lost connection counts from its loss,
 * over or not: a delivery can be handed to us on the new connection
 * before it is reported as back. Nothing is suspected without ready
 * connections (nobody to lose anything). */
hold_judgement hold_judge(const hold_inputs *in);

typedef struct edge_hold {
    bool on;
    hold_cause cause;
    uint64_t gen;     /* bumped per self-check asked for; only its answer counts */
    int64_t since_ns; /* when this hold began */
    int64_t clock_ns; /* the wait for an answer counts from here (hold_expired) */
    int64_t gap_ms;
    dw_mail *head, **tail; /* the held deliveries, oldest first */
    size_t n, bytes;       /* held now */
    uint64_t held_total;   /* held since this hold began */
    int64_t last_drain_ns;
} edge_hold;

void hold_init(edge_hold *h);

/* A hold begins (or, already on, begins again: an answer to an earlier
 * check no longer counts). Returns the generation of the check to ask
 * for. */
uint64_t hold_begin(edge_hold *h, hold_cause cause, int64_t gap_ms, int64_t now_ns);

/* Another check is asked for during the same hold (the previous one
 * named a connection that is gone since). Returns its generation. */
uint64_t hold_next_gen(edge_hold *h);

/* Keep m (the hold takes it) after the ones held before; bytes: its size,
 * for the bound. */
void hold_push(edge_hold *h, dw_mail *m, size_t bytes);

/* The hold is over: every held mail, oldest first (linked by next, the
 * caller's), or NULL. The hold is off and empty afterwards. */
dw_mail *hold_end(edge_hold *h);

/* From the tick: has the hold waited max_ms for an answer? The wait
 * counts only while connected (no check can be answered otherwise): a
 * disconnected tick starts it again. */
bool hold_expired(edge_hold *h, int64_t now_ns, bool connected, int64_t max_ms);

/* Shutdown: free whatever is held (dw_mail_free). */
void hold_free(edge_hold *h);

#endif
