/* The connect authorizer at work (DW_AUTHORIZER, docs/integrations.md).
 *
 * libwebsockets 4.1 answers an upgrade (101) in the same call that asks
 * LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION, and offers no way to hold that
 * answer while we wait for someone: so the edge reads the request head
 * before lws does. With an authorizer, every accepted socket goes to the
 * gate (LWS_CALLBACK_FILTER_NETWORK_CONNECTION: the gate takes a duplicate
 * of the descriptor, lws closes its own). The gate's thread reads the head
 * (poll, bounded by DW_MAX_HEADER + DW_MAX_URL and DW_HANDSHAKE_TIMEOUT_S),
 * and for a WebSocket upgrade asks the authorizer subject over NATS without
 * waiting for the answer (one inbox subscription for all requests). A
 * refusal is written by the gate (401/403, 503 on a timeout, no
 * responders, a bad reply, or too many pending); an allowed upgrade, and
 * any request that is no upgrade, is handed back to lws through the
 * mailbox with the bytes read so far (lws_adopt_socket_vhost_readbuf): lws
 * parses the head as if it had just come, and the upgrade's filter takes
 * the decision (authz_on_upgrade). The lws thread never waits, and other
 * clients are served while authorizations are pending.
 *
 * Plain ws:// only: behind TLS the gate would read ciphertext, so the edge
 * refuses DW_AUTHORIZER with DW_TLS_CERT (terminate TLS in front of it).
 *
 * Threads: authz_gate_start/stop on the edge's main thread, authz_gate_take
 * and the authz_on_* hooks on the lws thread; the gate's own thread and
 * nats.c's callback thread inside. */
#ifndef EDGE_AUTHZ_GATE_H
#define EDGE_AUTHZ_GATE_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stdint.h>

#include "authorizer.h"
#include "dw/mailbox.h"

struct edge;
struct edge_event;
struct edge_metrics;
struct edge_session;
struct lws;

typedef struct authz_gate authz_gate;

typedef struct authz_gate_config {
    const char *subject;          /* DW_AUTHORIZER */
    int64_t timeout_ms;           /* DW_AUTHORIZER_TIMEOUT_MS: then 503 */
    int64_t head_timeout_ms;      /* the whole head must come within this */
    size_t max_head;              /* bytes of request head */
    uint32_t max_pending;         /* requests in flight; beyond: 503 (and 4x + 64 sockets held) */
    const char *forward_headers;  /* DW_AUTHORIZER_HEADERS */
    const char *edge_id;          /* names the reply inbox */
    dw_mailbox *mailbox;          /* where sockets go back to the lws thread */
    struct edge_metrics *metrics; /* authorizer counters (atomics) */
} authz_gate_config;

/* Subscribe the reply inbox on nc and start the thread. 0, or -1 with a
 * message in err (a bad DW_AUTHORIZER_HEADERS, no inbox). */
int authz_gate_start(authz_gate **out, const authz_gate_config *cfg, natsConnection *nc, char *err,
                     size_t errlen);
/* Stop the thread and close every socket it holds. NULL-safe. */
void authz_gate_stop(authz_gate *g);

/* Is subject a valid authorizer subject (under dw.authz.)? */
bool authz_subject_valid(const char *subject);

/* lws thread, before the listener opens: with DW_AUTHORIZER, check the
 * settings (a subject under dw.authz., no TLS at the edge: the gate reads
 * request heads itself) and start e->authz on nc. 0 (also with no
 * authorizer), or -1 logged. */
int authz_edge_start(struct edge *e, natsConnection *nc);
/* lws thread, LWS_CALLBACK_FILTER_NETWORK_CONNECTION after the edge's own
 * checks: true when the gate took fd (with an authorizer every socket
 * goes to it first; lws must then drop its copy), false with no
 * authorizer. */
bool authz_on_accept(struct edge *e, int fd);

/* lws thread, LWS_CALLBACK_FILTER_NETWORK_CONNECTION: the gate takes a
 * duplicate of fd (lws then closes fd). false when it cannot (no memory,
 * no descriptor): lws should drop the connection. */
bool authz_gate_take(authz_gate *g, int fd);

/* What the gate hands back to the lws thread (EDGE_EV_AUTHZ). */
typedef struct authz_adopt {
    int fd;    /* the socket, owned until adopted */
    char *buf; /* the bytes read: the head and whatever followed */
    size_t len;
    bool decided; /* an upgrade the authorizer allowed: decision holds its answer */
    authz_decision decision;
} authz_adopt;

/* lws thread: the mailbox's EDGE_EV_AUTHZ, the socket back to lws. */
void authz_on_adopt(struct edge *e, struct edge_event *ev);
/* lws thread, LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION before the other
 * checks: take this upgrade's decision into *d (false: none, e.g. an
 * upgrade that came on a kept-alive connection after the first request:
 * refuse it with 503). */
bool authz_on_upgrade(struct edge *e, struct lws *wsi, authz_decision *d);
/* (then authz_apply, authorizer.h) */
/* lws thread, LWS_CALLBACK_WSI_DESTROY: free a decision never taken. */
void authz_on_destroy(struct lws *wsi);

#endif
