/* The edge's metrics as one table (docs/operations.md). */
#include "dw/metrics.h"
#include "edge.h"

static const double stage_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double lag_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};

#define COUNTER(field, name, labels, help)                                                         \
    DW_METRIC_COUNTER_ROW(edge_metrics, field, name, labels, help)
#define REJECTED(field, reason)                                                                    \
    COUNTER(field, "dw_edge_connections_rejected_total", "reason=\"" reason "\"",                  \
            "upgrades refused")
#define CLOSED(field, reason)                                                                      \
    COUNTER(field, "dw_edge_closed_total", "reason=\"" reason "\"", "connections the edge closed")

/* The edge's metrics (docs/operations.md), in exposition order. */
static const dw_metric_def edge_metric_defs[] = {
    DW_METRIC_GAUGE_ROW(edge_metrics, connections, "dw_edge_connections", NULL,
                        "connections taking part in chat"),
    COUNTER(msgs_in, "dw_edge_messages_in_total", NULL, "messages received from clients"),
    COUNTER(msgs_accepted, "dw_edge_messages_accepted_total", NULL,
            "chat messages made durable (JetStream acked)"),
    COUNTER(msgs_failed, "dw_edge_messages_failed_total", NULL,
            "chat messages JetStream did not take (client told)"),
    COUNTER(deliveries, "dw_edge_deliveries_total", NULL,
            "messages queued to sockets (one per message and recipient)"),
    DW_METRIC_HISTOGRAM_ROW(
        edge_metrics, stage_stored, "dw_edge_stage_seconds", "stage=\"stored\"",
        "Time a message spends per hop seen by this edge: stored (a v1 send received -> "
        "JetStream acked it), delivered (accepted by the sending edge -> its delivery reached "
        "this edge; wall clocks), written (the delivery reached this edge -> the oldest frame of "
        "a write pass went to its socket)",
        stage_bounds),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, stage_delivered, "dw_edge_stage_seconds",
                            "stage=\"delivered\"", NULL, stage_bounds),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, stage_written, "dw_edge_stage_seconds",
                            "stage=\"written\"", NULL, stage_bounds),
    COUNTER(dups, "dw_edge_duplicates_dropped_total", NULL,
            "redelivered messages dropped by sequence"),
    COUNTER(writes, "dw_edge_socket_writes_total", NULL,
            "socket writes (each carries every frame queued)"),
    REJECTED(rejected_not_ready, "not_ready"),
    COUNTER(connect_failed, "dw_edge_connect_failed_total", NULL,
            "connections closed 1011: connect event not durable"),
    COUNTER(default_replies, "dw_edge_default_replies_total", NULL,
            "frames answered by the $default route"),
    REJECTED(rejected_deny, "deny_list"),
    REJECTED(rejected_auth, "auth"),
    REJECTED(rejected_rate, "edge_rate"),
    REJECTED(rejected_ip, "source_ip"),
    REJECTED(rejected_origin, "origin"),
    REJECTED(rejected_tls, "tls"),
    REJECTED(rejected_url, "url"),
    COUNTER(rate_limited, "dw_edge_rate_limited_total", NULL,
            "messages refused by the rate limits"),
    CLOSED(closed_strikes, "rate_limit"),
    CLOSED(closed_slow, "slow_reader"),
    CLOSED(closed_idle, "idle"),
    CLOSED(closed_lifetime, "lifetime"),
    CLOSED(closed_too_large, "too_large"),
    REJECTED(rejected_authz, "authorizer"),
    COUNTER(authz_requests, "dw_edge_authorizer_requests_total", NULL,
            "upgrades the connect authorizer was asked about"),
    COUNTER(authz_allowed, "dw_edge_authorizer_allowed_total", NULL, "upgrades it allowed"),
    COUNTER(authz_denied, "dw_edge_authorizer_denied_total", NULL,
            "upgrades it refused (401 or 403)"),
    COUNTER(authz_errors_timeout, "dw_edge_authorizer_errors_total", "reason=\"timeout\"",
            "upgrades refused with 503 because the authorizer could not decide"),
    COUNTER(authz_errors_no_responders, "dw_edge_authorizer_errors_total",
            "reason=\"no_responders\"", NULL),
    COUNTER(authz_errors_bad_reply, "dw_edge_authorizer_errors_total", "reason=\"bad_reply\"",
            NULL),
    COUNTER(authz_errors_overload, "dw_edge_authorizer_errors_total", "reason=\"overload\"", NULL),
    COUNTER(authz_errors_other, "dw_edge_authorizer_errors_total", "reason=\"other\"", NULL),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, authz_latency, "dw_edge_authorizer_seconds", NULL,
                            "time from asking the authorizer to its answer (or the timeout)",
                            stage_bounds),
    DW_METRIC_HISTOGRAM_ROW(edge_metrics, loop_lag, "dw_edge_loop_lag_seconds", NULL,
                            "how late the event loop ran the edge's 100 ms tick", lag_bounds),
};

int edge_metrics_register(edge_metrics *m)
{
    return dw_metrics_register(m, edge_metric_defs,
                               sizeof edge_metric_defs / sizeof edge_metric_defs[0]);
}
