/* Work the lws thread must not wait for: a v1 join (publish the JOIN, wait
 * until the registry applied it, find where the room's stream ends, read
 * what a resuming client missed), a history page, a presence query. A
 * dw/pool.h pool's workers do it and post the finished job back to the lws
 * thread's mailbox as an EDGE_EV_JOB_DONE event, which owns the job (its
 * destructor frees it).
 *
 * Threads: edge_jobs_submit on the lws thread; the jobs run on the
 * workers, using the bridge's connection (borrowed: the bridge outlives
 * the pool). */
#ifndef EDGE_JOBS_H
#define EDGE_JOBS_H

#include <stdbool.h>
#include <stdint.h>

#include "bridge.h"
#include "dw/bus.h"
#include "dw/mailbox.h"
#include "dw/pool.h"
#include "proto_v1.h"

typedef enum { JOB_JOIN, JOB_HISTORY, JOB_PRESENCE } edge_job_kind;

typedef struct edge_job_msg {
    uint64_t seq;
    Dw__ChatMessage *m; /* owned */
} edge_job_msg;

typedef struct edge_job {
    dw_task task; /* the pool's (first member) */
    struct edge_jobs *jobs;
    edge_job_kind kind;
    /* input */
    char conn_id[DW_ID_LEN + 1];
    char room[DW_ROOM_MAX + 1];
    char user[V1_USER_MAX + 1];
    char *ref; /* the request's ref (JSON text), owned */
    bool has_since;
    uint64_t since;
    uint64_t before; /* history: 0 = up to now */
    uint32_t limit;
    char after[V1_USER_MAX + 1];
    /* output */
    const char *error; /* NULL, or a v1 error code ("unavailable") */
    uint64_t last_seq; /* join: the room's last seq when the join took effect */
    bool recovered;
    bool more;
    edge_job_msg *msgs; /* oldest first */
    size_t nmsgs;
    Dw__PresenceReply *presence;
} edge_job;

typedef struct edge_jobs edge_jobs;

typedef struct edge_jobs_config {
    const char *edge_id;
    dw_mailbox *mailbox; /* where finished jobs go (borrowed) */
    int threads;
    int64_t timeout_ms;  /* each bus call */
    uint32_t resume_max; /* more missed messages than this: recovered=false */
} edge_jobs_config;

/* b is borrowed and must outlive the pool; cfg strings too. 0 or -1. */
int edge_jobs_start(edge_jobs **out, edge_bridge *b, const edge_jobs_config *cfg);
/* Takes ownership of job; it comes back as an EDGE_EV_JOB_DONE event. */
void edge_jobs_submit(edge_jobs *j, edge_job *job);
/* Stops the workers: running jobs finish (and are posted), queued ones are
 * dropped. NULL-safe. */
void edge_jobs_stop(edge_jobs *j);

/* NULL-safe. */
void edge_job_free(edge_job *job);

#endif
