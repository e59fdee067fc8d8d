/* The edge process: its configuration and its state.
 *
 * Threads: the lws thread (the event loop: lws callbacks, the tick, the
 * mailbox's events) owns almost all of struct edge; nats.c callback
 * threads and the job workers only post to the mailbox. The fields any
 * other thread touches are grouped at the end and say how. Written once
 * before the threads start, then read-only: cfg, edge_id, bridge, m.
 *
 * The map of the edge's modules is in docs/architecture.md ("Where things
 * live"). */
#ifndef EDGE_EDGE_H
#define EDGE_EDGE_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "admit.h"
#include "bridge.h"
#include "connmap.h"
#include "dedup.h"
#include "dw/mailbox.h"
#include "dw/metrics.h"
#include "dw/service.h"
#include "dw/util.h"
#include "linger.h"
#include "rooms.h"
#include "session.h"

typedef struct edge_config {
    dw_service_cfg svc; /* NATS_URL, LOG_LEVEL, SHUTDOWN_TIMEOUT_MS (no status port: the
                         * edge's own port serves it) */
    char *host;         /* listen address; empty = all */
    int64_t port;
    char *edge_id;          /* empty = random per start */
    int64_t max_message;    /* reassembled message, bytes */
    int64_t max_pending_rx; /* messages held per connection before READY */
    int64_t publish_timeout_ms;
    int64_t publish_max_pending;
    int64_t heartbeat_ms;
    char *event_loop;       /* poll | libev */
    int shutdown_edge_down; /* on stop: one EDGE_DOWN, not a DISCONNECT each */
    int64_t shutdown_wait_ms;
    int64_t dedup_window;
    int64_t write_coalesce;   /* bytes per write call */
    int64_t max_rooms;        /* v1 rooms per connection */
    int64_t resume_max;       /* missed messages replayed on resume */
    int64_t job_threads;      /* workers for joins, history, presence */
    int64_t max_pending_acks; /* v1 sends awaiting their ack, per connection */
    char *web_dir;            /* the static chat page */
    /* TLS, authentication, limits (docs/security.md) */
    char *tls_cert, *tls_key;
    int require_tls;
    char *auth; /* none | jwt */
    char *jwt_secret_file, *jwt_secret_prev_file, *jwt_audience, *jwt_jwks_file;
    int64_t jwt_leeway_s;
    int64_t msg_rate, msg_burst, edge_msg_rate, edge_msg_burst;
    int64_t edge_conn_rate, edge_conn_burst;
    int64_t ip_max_conns, ip_conn_rate, ip_conn_burst;
    int64_t strikes;
    int64_t max_frame, max_url, max_header;
    int64_t idle_timeout_s, max_lifetime_s, handshake_timeout_s;
    int64_t max_outbound;
    int64_t linger_ms, linger_bytes, linger_max; /* lingering close (linger.h) */
    char *origins, *deny_cidrs;
    /* the connect authorizer (authz_gate.h) */
    char *authorizer, *authorizer_headers;
    int64_t authorizer_timeout_ms, authorizer_max_pending;
    /* routes to user code (integ.h, docs/integrations.md) */
    char *routes;
    int64_t route_timeout_ms, route_max_inflight, route_max_deliver, route_backoff_ms;
} edge_config;

typedef struct edge_metrics {
    dw_metric *connections, *msgs_in, *msgs_accepted, *msgs_failed, *deliveries, *dups, *writes,
        *rejected_not_ready, *connect_failed, *default_replies, *rejected_deny, *rejected_auth,
        *rejected_rate, *rejected_ip, *rejected_origin, *rejected_tls, *rejected_url, *rate_limited,
        *closed_strikes, *closed_slow, *closed_idle, *closed_lifetime, *closed_too_large, *loop_lag;
    /* How long a message spends at each hop this edge sees (docs/operations.md) */
    dw_metric *stage_stored, *stage_delivered, *stage_written;
    /* The connect authorizer (authz_gate.c) */
    dw_metric *authz_requests, *authz_allowed, *authz_denied, *authz_errors_timeout,
        *authz_errors_no_responders, *authz_errors_bad_reply, *authz_errors_overload,
        *authz_errors_other, *authz_latency, *rejected_authz;
} edge_metrics;

typedef struct edge {
    /* set before any thread starts, read-only after */
    const edge_config *cfg;
    char edge_id[DW_ID_LEN + 1];
    edge_bridge *bridge;      /* its own calls say which thread may make them */
    struct edge_metrics *m;   /* atomics: any thread may count */
    struct edge_integ *integ; /* routes (integ.h says which thread calls what) */

    /* lws thread only */
    struct lws_context *ctx;
    struct edge_jobs *jobs;
    struct authz_gate *authz; /* DW_AUTHORIZER; NULL without */
    edge_admit admit;
    int64_t next_sweep_ns;
    edge_connmap conns;
    edge_rooms rooms;
    edge_dedup dedup;
    edge_linger linger;
    unsigned char *wbuf;     /* LWS_PRE + write_coalesce: the coalescing buffer */
    uint64_t conn_seq_acked; /* highest DW_CONN seq acked for our events */
    uint32_t nready;
    /* The ready session whose connect was acked first, for the self-check
     * (bridge_note_held): chosen by the tick when NULL, NULL again when it
     * closes. */
    struct edge_session *probe;
    bool edge_down_stored;           /* shutdown: one EDGE_DOWN stands for every disconnect */
    struct disc_retry *disc_retries; /* failed disconnect events waiting to be retried */
    int64_t next_heartbeat_ns;
    lws_sorted_usec_list_t tick;
    int64_t tick_due_ns; /* when the tick should run: its lateness is the loop's lag */
    bool inited;         /* edge_init ran: edge_free has something to free */

    /* shared with other threads */
    atomic_bool stopping;      /* SIGTERM: draining (readyz 503, no new connections) */
    dw_mailbox mailbox;        /* any thread posts (its own lock); the lws thread takes */
    pthread_mutex_t wake_lock; /* guards wake_ctx: a post wakes the loop while it exists */
    struct lws_context *wake_ctx;
    /* rooms.v1_members (atomic) is read by the bridge's presence filter. */
} edge;

/* Before NATS: the mailbox and the bridge (not started). 0 or -1. */
int edge_init(edge *e);
/* Run the server on the service's connection nc until dw_stop, then stop
 * within the stop's budget (dw/util.h, DW_SHUTDOWN_TIMEOUT_MS): take no
 * new connection or frame, answer the sends already published (their
 * acks written), one EDGE_DOWN for this edge, close every socket with
 * 1001, wait for the disconnect events still in flight, stop the bridge.
 * While NATS is away only the closes are waited for. 0 on a clean stop. */
int edge_run(edge *e, natsConnection *nc);
/* Ready to take connections (the bus is up). Any thread. */
bool edge_ready(void *e);
/* After the connection is closed: free what edge_init and edge_run made. */
void edge_free(edge *e);

/* server.c: one whole message from a client, through the rate limits to
 * its protocol (also for messages held until the connection was ready).
 * lws thread only. */
void server_message(edge *e, edge_session *s, const char *buf, size_t len);

/* edge_metrics.c: register the edge's metrics into m. 0 or -1. */
int edge_metrics_register(edge_metrics *m);

/* v1.c: the dynamowave.v1 bus events (lws thread only); the protocol
 * itself is edge_proto_v1 (protocol.h). */
struct edge_job;
void v1_on_job_done(edge *e, struct edge_job *job);
void v1_on_presence(edge *e, const Dw__ConnEvent *ce);

#endif
