/* The deadletter service's shared state and its three parts:
 *   capture.c  the DW_DLQ index (ordered consumer) and the max-deliveries
 *              advisories (durable consumer on DW_DLQ_ADVISORIES): a message
 *              JetStream stopped redelivering that the dispatcher did not
 *              dead-letter itself is written to DW_DLQ, once;
 *   ops.c      dw.ops.dlq.list|show|replay|purge for dwctl;
 *   main.c     configuration, setup, the loop.
 *
 * Threads: the main loop (advisories, depth), the nats.c thread of the
 * DW_DLQ ordered consumer and the one of the ops subscription. The index
 * is guarded by mu; everything else is set before those threads start. */
#ifndef DEADLETTER_SVC_H
#define DEADLETTER_SVC_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "dw/metrics.h"
#include "dw/pull.h"
#include "index.h"

typedef struct dlq_svc_cfg {
    int64_t publish_wait_ms;     /* JetStream publish/ack and API waits */
    int64_t list_page;           /* list: entries per reply page at most */
    int64_t fetch_wait_ms;       /* advisory pull wait */
    int64_t crash_after_replays; /* testing: SIGKILL itself after this many
                                  * republishes, before removing the entry */
} dlq_svc_cfg;

typedef struct dlq_svc {
    natsConnection *nc;
    jsCtx *js;
    dlq_svc_cfg cfg;

    pthread_mutex_t mu; /* guards ix and the counters below */
    dlq_index *ix;
    atomic_int caught_up;  /* the ordered consumer delivered every entry there was */
    uint64_t replays_done; /* republishes acked (crash_after_replays) */

    natsSubscription *dlq_sub; /* ordered consumer on DW_DLQ */
    dw_pull *adv_pull;         /* the durable on DW_DLQ_ADVISORIES (dw/pull.h) */
    natsSubscription *ops_sub;

    struct {
        dw_metric *captured_dispatcher, *captured_advisory, *replayed, *purged, *depth, *advisories,
            *advisory_dups;
    } m;
} dlq_svc;

/* capture.c */

/* Subscribe the ordered consumer that feeds the index; 0 or -1 (logged). */
int capture_index_start(dlq_svc *svc);
/* Bind (creating) the advisory consumer; 0 or -1 (logged). */
int capture_advisories_start(dlq_svc *svc);
/* Fetch and handle advisories for up to cfg.fetch_wait_ms. Returns the
 * number handled, or -1 when the fetch failed (the caller backs off). */
int capture_advisories_poll(dlq_svc *svc);
/* Handle one advisory (JSON): 0 when it needs nothing more (captured now,
 * already in DW_DLQ, or not ours), -1 to try again later. */
int capture_advisory(dlq_svc *svc, const void *json, size_t len);

/* ops.c */

/* Answer dw.ops.dlq.* (queue group). 0 or -1 (logged). */
int ops_start(dlq_svc *svc);

/* DW_DLQ's entry count from JetStream, or -1 when it did not answer
 * within wait_ms; also updates the depth gauge. */
int64_t svc_depth(dlq_svc *svc, int64_t wait_ms);

#endif
