#include "pool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "dw/util.h"

struct api_pool {
    const api_ops *ops;
    pthread_t *threads;
    int nthreads;
    size_t max_queue;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    api_job *head, *tail;
    size_t queued, running;
    bool stopping;
};

api_job *api_job_new(api_op op, const char *conn_id, const uint8_t *data, size_t len)
{
    api_job *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    job->op = op;
    job->start_ns = dw_mono_ns();
    job->conn_id = strdup(conn_id ? conn_id : "");
    if (!job->conn_id) goto error;
    if (len) {
        job->data = malloc(len);
        if (!job->data) goto error;
        memcpy(job->data, data, len);
        job->len = len;
    }
    return job;
error:
    api_job_free(job);
    return NULL;
}

api_job *api_job_new_publish(api_publish_req *req)
{
    api_job *job = api_job_new(API_OP_PUBLISH, "", NULL, 0);
    if (!job) return NULL;
    job->pub = *req;
    memset(req, 0, sizeof *req);
    return job;
}

void api_job_free(api_job *job)
{
    if (!job) return;
    api_result_clear(&job->res);
    api_publish_req_clear(&job->pub);
    free(job->conn_id);
    free(job->data);
    free(job->reply);
    free(job);
}

static void *worker_main(void *arg)
{
    api_pool *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->head && !p->stopping)
            pthread_cond_wait(&p->cond, &p->lock);
        if (!p->head) break; /* stopping and nothing left */
        api_job *job = p->head;
        p->head = job->next;
        if (!p->head) p->tail = NULL;
        job->next = NULL;
        p->queued--;
        bool cancel = p->stopping;
        if (!cancel) p->running++;
        pthread_mutex_unlock(&p->lock);

        if (cancel) {
            memset(&job->res, 0, sizeof job->res);
            job->res.status = 503;
            strcpy(job->res.error, "the api service is stopping");
        } else if (job->op == API_OP_PUBLISH) {
            api_ops_publish(p->ops, &job->pub, &job->res);
        } else {
            api_ops_run(p->ops, job->op, job->conn_id, job->data, job->len, &job->res);
        }
        job->done(job);

        pthread_mutex_lock(&p->lock);
        if (!cancel) p->running--;
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int api_pool_start(api_pool **out, const api_ops *ops, int workers, size_t max_queue)
{
    api_pool *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p) return -1;
    p->ops = ops;
    p->max_queue = max_queue;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->threads = calloc((size_t)workers, sizeof *p->threads);
    if (!p->threads) goto error;
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p)) goto error;
        p->nthreads++;
    }
    *out = p;
    return 0;
error:
    api_pool_stop(p);
    return -1;
}

int api_pool_submit(api_pool *p, api_job *job)
{
    int rc = -1;
    pthread_mutex_lock(&p->lock);
    if (!p->stopping && p->queued < p->max_queue) {
        job->next = NULL;
        if (p->tail)
            p->tail->next = job;
        else
            p->head = job;
        p->tail = job;
        p->queued++;
        pthread_cond_signal(&p->cond);
        rc = 0;
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

size_t api_pool_depth(api_pool *p)
{
    pthread_mutex_lock(&p->lock);
    size_t n = p->queued + p->running;
    pthread_mutex_unlock(&p->lock);
    return n;
}

void api_pool_stop(api_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}
