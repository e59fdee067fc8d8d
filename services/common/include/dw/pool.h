/* A pool of worker threads for work that must not run on the thread that
 * asks for it (a socket loop, a nats.c callback): round trips to NATS,
 * writes that must be durable. Tasks are the caller's structs with a
 * dw_task inside; the pool links them into its queue and never frees them.
 *
 * Ownership: a submitted task belongs to the pool until its run (or cancel)
 * callback is called; from then on it is the callback's, which typically
 * hands the result back (a mailbox, dw/mailbox.h) or frees it.
 *
 * Threads: submit, depth and stop from any thread; run and cancel on the
 * pool's workers. */
#ifndef DW_POOL_H
#define DW_POOL_H

#include <stddef.h>

typedef struct dw_task {
    struct dw_task *next;              /* the pool's queue */
    void (*run)(struct dw_task *t);    /* the work; takes the task */
    void (*cancel)(struct dw_task *t); /* instead of run when the pool stops
                                        * first; takes the task (NULL: the
                                        * task is dropped as it is) */
} dw_task;

typedef struct dw_pool dw_pool;

/* Start threads workers (>= 1). max_queue: tasks that may wait (0: no
 * limit). 0, or -1 (nothing started). */
int dw_pool_start(dw_pool **out, int threads, size_t max_queue);

/* Queue t (run and, optionally, cancel set): 0, or -1 when the queue is
 * full or the pool is stopping; the task is still the caller's then. */
int dw_pool_submit(dw_pool *p, dw_task *t);

/* Tasks waiting or running now (logs, metrics). */
size_t dw_pool_depth(dw_pool *p);

/* Take no more tasks, let the running ones finish, cancel the queued ones
 * (on the workers, oldest first), join the threads and free. NULL-safe. */
void dw_pool_stop(dw_pool *p);

#endif
