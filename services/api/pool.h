/* Worker threads that run @connections operations (a dw/pool.h pool). The
 * lws thread and the nats.c subscription threads must not wait on NATS
 * round trips, so both hand a job to the pool and get it back through the
 * job's done callback, which runs on the worker once the operation has
 * finished. */
#ifndef API_POOL_H
#define API_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "dw/pool.h"
#include "ops.h"

typedef struct api_job api_job;
typedef void (*api_job_done)(api_job *job);

struct api_job {
    dw_task task;       /* the pool's (first member) */
    const api_ops *ops; /* set by api_pool_submit */
    api_job *next;      /* the submitter's (HTTP: answers waiting for the lws thread) */
    api_op op;
    char *conn_id; /* owned */
    uint8_t *data; /* owned; POST message */
    size_t len;
    api_result res;      /* set before done runs */
    int64_t start_ns;    /* dw_mono_ns at creation, for the latency metric */
    api_job_done done;   /* runs on a worker thread; takes the job */
    void *origin;        /* the submitter (the HTTP listener, the NATS side) */
    void *owner;         /* HTTP: the session waiting, NULL once it closed;
                          * read and written on the lws thread only */
    char *reply;         /* NATS: reply subject, owned */
    api_publish_req pub; /* API_OP_PUBLISH: the request, owned */
};

/* A job for op on conn_id with a copy of data. NULL when out of memory. */
api_job *api_job_new(api_op op, const char *conn_id, const uint8_t *data, size_t len);
/* A publish job; takes *req (cleared: the job owns its data now). NULL
 * when out of memory (*req is still the caller's then). */
api_job *api_job_new_publish(api_publish_req *req);
/* NULL-safe. */
void api_job_free(api_job *job);

typedef struct api_pool api_pool;

/* Start workers threads that run jobs with ops (borrowed; must outlive the
 * pool). At most max_queue jobs wait (0: no limit). 0 or -1. */
int api_pool_start(api_pool **out, const api_ops *ops, int workers, size_t max_queue);

/* Queue a job: 0, or -1 when the queue is full or the pool is stopping
 * (the job is still the caller's then). Any thread. */
int api_pool_submit(api_pool *p, api_job *job);

/* Jobs waiting or running right now (for logs and metrics). */
size_t api_pool_depth(api_pool *p);

/* Stop taking jobs, finish the running ones, answer the queued ones with
 * 503 through their done callbacks, join the threads and free. NULL-safe. */
void api_pool_stop(api_pool *p);

#endif
