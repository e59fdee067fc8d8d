/* The dead-letter streams:
 *   DW_DLQ             dw.dlq.>: the dead letters, kept until replayed or
 *                      purged (limits retention, no age limit), with a long
 *                      duplicate window so that the two writers of one
 *                      message's dead letter ("dlq.<seq>") make one entry;
 *   DW_DLQ_ADVISORIES  JetStream's max-deliveries advisories of the
 *                      dispatcher's consumer and of the async routes'
 *                      consumers (route-<action> on DW_ROUTE), kept (work queue) until the
 *                      deadletter service handled them, so that an advisory
 *                      raised while the service is down is not lost.
 * The deadletter service owns them (creates and updates); the dispatcher
 * creates them when missing, so that it never gives up on a message with
 * nowhere to put it. */
#ifndef DW_DLQ_STREAMS_H
#define DW_DLQ_STREAMS_H

#include <nats/nats.h>
#include <stdint.h>

typedef struct dlq_stream_opts {
    int64_t dedup_window_s;     /* DW_DLQ Nats-Msg-Id window (3600) */
    int64_t advisory_max_age_s; /* unhandled advisories are dropped after (7 days) */
    int replicas;               /* 1 locally, 3 in a cluster */
} dlq_stream_opts;

void dlq_stream_opts_default(dlq_stream_opts *o);

/* Create both streams; with update != 0 (the owner) also bring existing
 * ones to this configuration, otherwise leave them as they are. Errors are
 * logged. NATS_OK or the failing status. */
natsStatus dlq_streams_ensure(jsCtx *js, const dlq_stream_opts *o, int update);

#endif
