#include "dw/pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct dw_pool {
    pthread_t *threads;
    int nthreads;
    size_t max_queue;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    dw_task *head, *tail;
    size_t queued, running;
    bool stopping;
};

static void *worker_main(void *arg)
{
    dw_pool *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->cond, &p->lock);
        if (!p->head) break; /* stopping and nothing left */
        dw_task *t = p->head;
        p->head = t->next;
        if (!p->head) p->tail = NULL;
        t->next = NULL;
        p->queued--;
        bool cancel = p->stopping;
        if (!cancel) p->running++;
        pthread_mutex_unlock(&p->lock);

        if (!cancel)
            t->run(t);
        else if (t->cancel)
            t->cancel(t);

        pthread_mutex_lock(&p->lock);
        if (!cancel) p->running--;
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int dw_pool_start(dw_pool **out, int threads, size_t max_queue)
{
    *out = NULL;
    if (threads < 1) return -1;
    dw_pool *p = calloc(1, sizeof *p);
    if (!p) return -1;
    p->max_queue = max_queue;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->threads = calloc((size_t)threads, sizeof *p->threads);
    if (!p->threads) goto error;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p)) goto error;
        p->nthreads++;
    }
    *out = p;
    return 0;
error:
    dw_pool_stop(p);
    return -1;
}

int dw_pool_submit(dw_pool *p, dw_task *t)
{
    int rc = -1;
    pthread_mutex_lock(&p->lock);
    if (!p->stopping && (!p->max_queue || p->queued < p->max_queue)) {
        t->next = NULL;
        if (p->tail)
            p->tail->next = t;
        else
            p->head = t;
        p->tail = t;
        p->queued++;
        pthread_cond_signal(&p->cond);
        rc = 0;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

size_t dw_pool_depth(dw_pool *p)
{
    pthread_mutex_lock(&p->lock);
    size_t n = p->queued + p->running;
    pthread_mutex_unlock(&p->lock);
    return n;
}

void dw_pool_stop(dw_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    /* No worker ever started (a failed start): cancel here. */
    while (p->head) {
        dw_task *t = p->head;
        p->head = t->next;
        t->next = NULL;
        if (t->cancel) t->cancel(t);
    }
    free(p->threads);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
