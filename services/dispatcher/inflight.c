#include "inflight.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "dw/util.h"

struct inflight {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC, like dw_mono_ns; one condition for both sides:
                        * each waits for a different predicate, so broadcast */
    size_t depth, head, count;
    int closed;
};

int inflight_create(inflight **out, size_t depth)
{
    pthread_condattr_t ca;
    int mu_ok = 0, cv_ok = 0;
    inflight *q = depth ? calloc(1, sizeof *q) : NULL;

    if (!q) return -1;
    q->depth = depth;
    if (pthread_mutex_init(&q->mu, NULL)) goto error;
    mu_ok = 1;
    if (pthread_condattr_init(&ca)) goto error;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    cv_ok = !pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!cv_ok) goto error;
    *out = q;
    return 0;

error:
    if (mu_ok) pthread_mutex_destroy(&q->mu);
    free(q);
    return -1;
}

void inflight_destroy(inflight *q)
{
    if (!q) return;
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

long inflight_reserve(inflight *q, int64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000),
                          .tv_nsec = (long)(deadline_ns % 1000000000)};
    long slot = -1;
    pthread_mutex_lock(&q->mu);
    while (q->count == q->depth && dw_mono_ns() < deadline_ns)
        pthread_cond_timedwait(&q->cv, &q->mu, &ts);
    if (q->count < q->depth) slot = (long)((q->head + q->count) % q->depth);
    pthread_mutex_unlock(&q->mu);
    return slot;
}

void inflight_push(inflight *q)
{
    pthread_mutex_lock(&q->mu);
    if (q->count < q->depth) q->count++;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void inflight_close(inflight *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

long inflight_front(inflight *q)
{
    long slot = -1;
    pthread_mutex_lock(&q->mu);
    while (!q->count && !q->closed)
        pthread_cond_wait(&q->cv, &q->mu);
    if (q->count) slot = (long)q->head;
    pthread_mutex_unlock(&q->mu);
    return slot;
}

void inflight_pop(inflight *q)
{
    pthread_mutex_lock(&q->mu);
    if (q->count) {
        q->head = (q->head + 1) % q->depth;
        q->count--;
    }
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

size_t inflight_count(inflight *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->count;
    pthread_mutex_unlock(&q->mu);
    return n;
}
