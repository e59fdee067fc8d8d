/* The edge's side of the bus: its subscriptions, publishes and replies,
 * and nothing else. NATS callbacks run on nats.c threads; they never touch
 * sockets. They turn what arrives (JetStream publish acks, deliveries from
 * the dispatcher, @connections requests) into events (event.h) posted to
 * the lws thread's mailbox, which wakes the loop (lws_cancel_service); the
 * loop handles them (bus_events.c). Publishing from the lws thread is
 * asynchronous: nothing here blocks the loop on the network. */
#ifndef EDGE_BRIDGE_H
#define EDGE_BRIDGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "dw/bus.h"
#include "dw/mailbox.h"
#include "dw/util.h"
#include "event.h"

typedef struct edge_bridge edge_bridge;

typedef struct edge_bridge_config {
    const char *edge_id;
    int64_t publish_timeout_ms;
    int64_t max_pending;
    dw_mailbox *mailbox; /* where events go (borrowed; outlives the bridge) */
    /* How many local members could receive presence events (rooms.h's
     * v1_members); while 0, membership events are dropped before they are
     * decoded. NULL: every one is queued. Must outlive the bridge. */
    const atomic_uint_fast32_t *presence_listeners;
} edge_bridge_config;

/* Life cycle:
 *   bridge_create   no NATS yet: the loop can ask bridge_ready (false)
 *   bridge_start    on the service's connection (dw/service.h; borrowed,
 *                   it outlives the bridge): a JetStream context of its own
 *                   for asynchronous publishes, a setup thread that waits
 *                   for the streams and subscribes to this edge's subjects
 *                   (bridge_ready turns true when that is done and NATS is
 *                   connected), and the self-check thread
 *   bridge_stop     threads joined, subscriptions closed: no new event,
 *                   except the acks of publishes in flight, which come
 *                   until the connection is closed
 *   bridge_destroy  after the connection is closed
 * cfg strings and the mailbox must outlive the bridge. */
int bridge_create(edge_bridge **out, const edge_bridge_config *cfg);
int bridge_start(edge_bridge *b, natsConnection *nc);
void bridge_stop(edge_bridge *b);

/* Any thread. */
bool bridge_ready(edge_bridge *b);

/* Asynchronous JetStream publishes; the result comes back as an event.
 * 0 when handed to the client library, -1 when refused at once (then no
 * event will come). */
int bridge_publish_conn(edge_bridge *b, const Dw__ConnEvent *ev);
/* A CONNECT again for a connection the registry lost (after this edge was
 * declared down while alive): a fresh Nats-Msg-Id per round, so the
 * stream's duplicate window does not swallow it. */
int bridge_publish_reannounce(edge_bridge *b, const Dw__ConnEvent *ev, uint64_t round);
/* A DISCONNECT for an id the registry has and this edge does not hold
 * (reconciliation): a fresh Nats-Msg-Id per round, for the same reason. */
int bridge_publish_drop(edge_bridge *b, const Dw__ConnEvent *ev, uint64_t round);
/* A chat message, m->id being the edge's own "<conn>:<n>". msg_id: the
 * Nats-Msg-Id (a v1 client's idempotency key, so a retry of the same send
 * is stored once; DW_MSG acks a repeat with the first one's sequence); NULL
 * for m->id. The ack event names m->id either way. */
int bridge_publish_msg(edge_bridge *b, const Dw__ChatMessage *m, const char *msg_id);

/* A LEAVE event (asynchronous; the result is only logged). */
int bridge_publish_leave(edge_bridge *b, const Dw__ConnEvent *ev, uint64_t n);

/* For jobs.c: the bus handles (borrowed; valid until bridge_destroy). */
jsCtx *bridge_js(edge_bridge *b);
natsConnection *bridge_nc(edge_bridge *b);

/* The loop handled a delivery the bridge answered on arrival
 * (ev->answered_bytes): the budget for answering ahead grows again. */
void bridge_delivery_handled(edge_bridge *b, size_t answered_bytes);

/* Core NATS publishes (buffered, never wait for the network). */
int bridge_reply(edge_bridge *b, const char *reply, const Dw__DeliveryReply *r);
int bridge_reply_conn(edge_bridge *b, const char *reply, const Dw__ConnReply *r);
int bridge_heartbeat(edge_bridge *b, uint32_t connections);

/* Hear every edge's membership events (dw.conn.*, for v1 presence) only
 * while on: the lws thread turns it on while the edge has v1 members.
 * Besides the decoding, each of those events is a JetStream publish with a
 * reply subject, and nats-server before 2.10.23 keeps one reply-permission
 * entry per such delivery to a user with allow_responses and walks them
 * all on every delivery (nats-io/nats-server#6058): a connect storm with
 * every edge subscribed brought the server to a crawl. lws thread only;
 * 0, or -1 when the bus is not ready or the subscription failed (call
 * again later). */
int bridge_presence_watch(edge_bridge *b, bool on);

/* What this edge holds, for the self-check (lws thread, from its tick):
 * connections ready, and the probe: the ready connection whose connect was
 * acked first (probe_id, NULL for none) and that connect's DW_CONN
 * sequence. Every few seconds, and at once after a reconnect, the bridge
 * asks the registry for the probe; when the registry has applied the
 * probe's connect and does not list it (an EDGE_DOWN for this edge was
 * applied while we were away and the core notice of it was missed), an
 * EDGE_EV_EDGE_DOWN_SELF event naming the probe (ev->conn_id) asks the loop
 * to close every connection, if the probe is still ready there
 * (bus_events.c says why). */
void bridge_note_held(edge_bridge *b, uint32_t ready, const char *probe_id, uint64_t probe_seq);

/* Shutdown, with the lws loop stopped: one EDGE_DOWN event for this edge
 * (the registry drops every connection of edge_id) instead of a DISCONNECT
 * per connection, and wait up to timeout_ms for JetStream to store it.
 * From the call on, an EDGE_DOWN naming this edge is taken as our own (no
 * re-announce). 0 when stored; -1 when not (not connected, refused, e.g.
 * the NATS user may not publish dw.conn.edge_down, or no ack in time):
 * then disconnect each connection as usual. */
int bridge_publish_edge_down(edge_bridge *b, const char *reason, int64_t timeout_ms);

/* Wait up to timeout_ms for outstanding publishes, then flush. Shutdown only. */
void bridge_flush(edge_bridge *b, int64_t timeout_ms);
/* Frees the bridge (bridge_stop first, and the connection closed). Events
 * already posted stay in the mailbox. NULL-safe. */
void bridge_destroy(edge_bridge *b);

#endif
