/* The dispatcher's insides, shared by its files (not an API): the state
 * (struct dispatcher), the events other threads post to the loop, and the
 * functions one file calls in another (module__verb). dispatch.h says which
 * thread does what.
 *
 *   dispatch.c    the loop: events, periodic work, setup and teardown
 *   partitions.c  leases into partitions, pull requests, deliveries in
 *   resolver.c    registry rounds (its own thread)
 *   requests.c    requests to edges, replies, timeouts, edge heartbeats
 *   worker.c      settling: acks, and the durable writes (its own thread) */
#ifndef DISPATCHER_DISPATCH_INT_H
#define DISPATCHER_DISPATCH_INT_H

#include <nats/nats.h>
#include <stdatomic.h>
#include <stdint.h>

#include "dispatch.h"
#include "dw/bus.h"
#include "dw/mailbox.h"
#include "dw/metrics.h"
#include "dw/pool.h"
#include "dw/util.h"
#include "edges.h"
#include "inbox.h"
#include "leasekv.h"
#include "order.h"

/* A down edge is remembered this long, so it is reported once; past the
 * JetStream dedup window (2 min), a registry that still names it gets a
 * fresh EDGE_DOWN. */
#define EDGES_FORGET_MS (5 * 60 * 1000)
#define EDGES_MAX 65536
#define SEED_EVERY_MS 5000
#define PUBLISH_WAIT_MS 2000
#define DLQ_PUBLISH_WAIT_MS 5000
/* How often the loop looks at its clocks when nothing arrives. */
#define TICK_MS 50
/* A pull request is over this long after its expiry, answered or not: the
 * server does not always say so (no 408 when it dropped the request), and
 * waiting long stalls the partition. A new request while the old one is
 * still served does no harm: deliveries are taken whichever request they
 * answer. */
#define PULL_GRACE_MS 200
/* A partition's next pull request goes out this long before the one out
 * expires (at most half its expiry), so the consumer always has one
 * waiting: nats-server 2.9 now and then ends a request without its 408,
 * and a partition that waited for the grace above held its messages back
 * for 200 ms (the latency run's p99). */
#define PULL_RENEW_MS 150
/* A partition whose pulls heard nothing at all on its pull inbox (no
 * delivery, not even a request's 408) for this long asks its consumer whether it is still
 * there: pulls to a deleted consumer go unanswered, and nothing else would
 * notice. */
#define PULL_SILENT_MS 3000
/* After a reconnect, a partition whose consumer does not answer its info
 * request within this long is read again from its floor. */
#define CHECK_WAIT_MS 2000
#define MAX_REQUESTS 4096
#define PROGRESS_BATCH 4096
#define ERROR_LOG_EVERY_MS 5000
/* DW_CONN's stream info answers in milliseconds; past this it has no
 * leader (or is overloaded): go on with the last barrier known. */
#define BARRIER_WAIT_MS 500
#define BARRIER_RETRY_MS 1000

/* The dispatcher's metrics (docs/operations.md). */
typedef struct dispatch_metrics {
    dw_metric *delivered, *retried, *dead_lettered, *dlq_failed, *redeliveries, *latency, *held,
        *partitions, *resets, *stage_fetched, *stage_resolved, *stage_confirmed;
} dispatch_metrics;

typedef enum {
    EV_PULL,    /* a delivery or status for a partition's pull request */
    EV_REPLY,   /* an edge's reply (or no responders) */
    EV_ROUND,   /* the resolver finished a round */
    EV_READY,   /* the lease thread set up a partition */
    EV_LOST,    /* a partition is not ours any more */
    EV_RELEASE, /* a partition should go: drain it */
    EV_JOB,     /* the worker finished a job */
    EV_INFO,    /* a partition consumer's info, asked for after a reconnect */
} ev_kind;

typedef struct round_answer {
    int ok;
    const char *reason; /* static, when !ok */
    char **edges;       /* owned */
    size_t n_edges;
} round_answer;

typedef struct round_work {
    dw_task task; /* the resolver's (first member) */
    struct dispatcher *d;
    char **rooms; /* owned copies */
    uint64_t *min_seq;
    round_answer *answers;
    size_t n;
} round_work;

typedef enum { JOB_EDGE_DOWN, JOB_CONN_GONE, JOB_DEAD_LETTER } job_kind;

typedef struct job {
    dw_task task; /* the worker's (first member) */
    struct dispatcher *d;
    job_kind kind;
    char edge[EDGES_ID_MAX + 1];
    char conn[EDGES_ID_MAX + 1];
    order_msg *msg; /* JOB_DEAD_LETTER: popped, the loop's until the job is back */
    int ok;
} job;

typedef struct loop_ev {
    dw_mail mail; /* first member; destroy: ev_free */
    struct dispatcher *d;
    ev_kind kind;
    uint32_t p, gen;
    uint64_t req;
    natsMsg *msg;
    char consumer[96];
    uint64_t floor;
    round_work *round;
    job *job;
} loop_ev;

/* ---- the loop's view of a partition ---- */

enum { P_NONE = 0, P_READY, P_RESETTING, P_DRAINING };

typedef struct part {
    int state;
    uint32_t gen;
    char next_subj[192];
    int pulling;        /* a pull request is out */
    uint64_t pull_id;   /* its id */
    int pull_left;      /* deliveries it may still bring */
    int64_t pull_until; /* over by then, heard or not */
    int64_t pull_renew; /* the next request goes out by then */
    int64_t wait_since; /* pulls out and nothing heard since (0: heard) */
    uint64_t last_dseq; /* consumer sequence of the last delivery */
    uint64_t max_seen;  /* highest stream sequence fetched */
    int64_t drain_until;
    int checking;        /* its consumer info is asked for (CHECK_*) */
    int64_t check_until; /* the answer is given up on by then */
} part;

typedef struct inflight_req {
    uint64_t id;
    order_request *r;
} inflight_req;

struct dispatcher {
    natsConnection *nc;
    jsCtx *js;
    dispatch_cfg cfg;
    order *ord;
    edges_table *edges;
    leasekv *lk;

    /* events for the loop */
    dw_mailbox mbox;
    atomic_bool reconnected;

    part parts[DW_MSG_PARTITIONS];
    natsSubscription *pull_sub;
    char pull_inbox[160];
    natsSubscription *reply_sub;
    char reply_inbox[160];
    natsSubscription *info_sub;
    char info_inbox[160];
    inflight_req reqs[MAX_REQUESTS];
    size_t n_reqs;
    uint64_t next_pull_id;

    /* resolver: one thread, one round at a time */
    dw_pool *resolver;
    int round_out;            /* a round is with the resolver */
    uint64_t barrier_last;    /* resolver thread: DW_CONN's last sequence, last known */
    int64_t barrier_retry_ms; /* resolver thread: ask for it again from then on */
    inbox *ib;

    /* worker: one thread */
    dw_pool *worker;
    char **downs_pending; /* edges with an EDGE_DOWN job out */
    size_t n_downs_pending;

    atomic_bool quit; /* threads stop */

    natsSubscription *hb_sub, *seed_sub;
    char seed_inbox[128];
    int64_t next_seed_ms, next_sweep_ms, next_progress_ms, next_floor_ms;
    int64_t sweep_every_ms;
    size_t per_part_cap;
    dispatch_metrics *m;
};

static inline int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

/* dispatch.c */
void dispatch__post(dispatcher *d, loop_ev *e);
loop_ev *dispatch__ev_new(dispatcher *d, ev_kind kind);

/* partitions.c */
void part__on_pull(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void part__on_info(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void part__lease_ready(void *arg, uint32_t p, uint32_t gen, const char *consumer, uint64_t floor);
void part__lease_lost(void *arg, uint32_t p);
void part__lease_release(void *arg, uint32_t p);
void part__drop(dispatcher *d, uint32_t p, int new_state);
void part__reset(dispatcher *d, uint32_t p, const char *why);
void part__pull(dispatcher *d, uint32_t p, int64_t now);
void part__on_msg(dispatcher *d, loop_ev *e, int64_t now);
/* Why a partition asks its consumer for its info: after a reconnect
 * (deliveries may have been lost on the way; no answer reads it again from
 * its floor), or after a silence (is the consumer still there? only a
 * definite "not found" or a loss reads it again: a cluster without a
 * leader does not answer either, and a new consumer would not help). */
enum { CHECK_NONE = 0, CHECK_RECONNECT, CHECK_SILENT };
void part__check(dispatcher *d, uint32_t p, int why, int64_t now);
/* The loop's per-partition clocks: pull requests, checks. */
void part__tick(dispatcher *d, uint32_t p, int64_t now);
void part__on_info_reply(dispatcher *d, loop_ev *e);

/* requests.c */
void requests__on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void requests__on_heartbeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void requests__on_seed(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void requests__send(dispatcher *d, int64_t now);
void requests__on_reply_ev(dispatcher *d, loop_ev *e, int64_t now);
void requests__timeouts(dispatcher *d, int64_t now);

/* resolver.c */
void resolver__round_free(round_work *w);
void resolver__start_round(dispatcher *d, int64_t now);
void resolver__on_round(dispatcher *d, round_work *w, int64_t now);

/* worker.c */
void worker__submit(dispatcher *d, job *j);
void worker__settle(dispatcher *d);
void worker__on_job(dispatcher *d, job *j, int64_t now);

#endif
