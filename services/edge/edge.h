/* The edge process: its configuration and the state the lws thread owns. */
#ifndef EDGE_EDGE_H
#define EDGE_EDGE_H

#include <libwebsockets.h>
#include <pthread.h>
#include <stdint.h>

#include "admit.h"
#include "bridge.h"
#include "connmap.h"
#include "dedup.h"
#include "dw/metrics.h"
#include "dw/util.h"
#include "linger.h"
#include "rooms.h"
#include "session.h"

typedef struct edge_config {
    char *nats_url;
    char *host; /* listen address; empty = all */
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
    char *log_level;
} edge_config;

typedef struct edge_metrics {
    dw_metric *connections, *ready, *msgs_in, *msgs_accepted, *msgs_failed, *deliveries, *dups,
        *writes, *rejected_not_ready, *connect_failed, *default_replies, *rejected_deny,
        *rejected_auth, *rejected_rate, *rejected_ip, *rejected_origin, *rejected_tls,
        *rejected_url, *rate_limited, *closed_strikes, *closed_slow, *closed_idle, *closed_lifetime,
        *closed_too_large, *loop_lag;
    /* How long a message spends at each hop this edge sees (docs/operations.md) */
    dw_metric *stage_stored, *stage_delivered, *stage_written;
} edge_metrics;

typedef struct edge {
    const edge_config *cfg;
    char edge_id[DW_ID_LEN + 1];
    struct lws_context *ctx;
    edge_bridge *bridge;
    struct edge_jobs *jobs;
    edge_admit admit;
    struct dw_ping *ping;
    int64_t next_sweep_ns;
    edge_connmap conns;
    edge_rooms rooms;
    edge_dedup dedup;
    edge_linger linger;
    unsigned char *wbuf;     /* LWS_PRE + write_coalesce: the coalescing buffer */
    uint64_t conn_seq_acked; /* highest DW_CONN seq acked for our events */
    uint32_t nready;
    bool edge_down_stored;           /* shutdown: one EDGE_DOWN stands for every disconnect */
    struct disc_retry *disc_retries; /* failed disconnect events waiting to be retried */
    int64_t next_heartbeat_ns;
    lws_sorted_usec_list_t tick;
    int64_t tick_due_ns; /* when the tick should run: its lateness is the loop's lag */

    pthread_mutex_t wake_lock; /* guards ctx against wakes during destroy */
    struct lws_context *wake_ctx;

    struct edge_metrics *m;

} edge;

/* Run the server until dw_stop. 0 on a clean stop. */
int edge_run(edge *e);

/* server.c, for the protocol handlers (lws thread only). */
void session_close(edge_session *s, uint16_t code, const char *reason);
int session_send_text(edge_session *s, const char *text, size_t len);
/* Queue a shared frame to a ready session. */
void session_deliver(edge *e, edge_session *s, edge_frame *f);

/* v1.c: the dynamowave.v1 protocol (lws thread only). */
struct edge_job;
void v1_on_ready(edge *e, edge_session *s);
void v1_handle(edge *e, edge_session *s, const char *buf, size_t len);
void v1_on_msg_ack(edge *e, edge_session *s, const edge_event *ev);
void v1_on_job_done(edge *e, struct edge_job *job);
void v1_on_presence(edge *e, const Dw__ConnEvent *ce);
void v1_session_free(edge_session *s);

#endif
