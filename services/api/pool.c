#include "pool.h"

#include <stdlib.h>
#include <string.h>

#include "dw/util.h"

struct api_pool {
    const api_ops *ops;
    dw_pool *pool;
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

static void job_run(dw_task *t)
{
    api_job *job = (api_job *)t;
    if (job->op == API_OP_PUBLISH)
        api_ops_publish(job->ops, &job->pub, &job->res);
    else
        api_ops_run(job->ops, job->op, job->conn_id, job->data, job->len, &job->res);
    job->done(job);
}

/* Queued when the pool stopped: answered 503 through done like any other. */
static void job_cancel(dw_task *t)
{
    api_job *job = (api_job *)t;
    memset(&job->res, 0, sizeof job->res);
    job->res.status = 503;
    strcpy(job->res.error, "the api service is stopping");
    job->done(job);
}

int api_pool_start(api_pool **out, const api_ops *ops, int workers, size_t max_queue)
{
    api_pool *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p) return -1;
    p->ops = ops;
    if (dw_pool_start(&p->pool, workers, max_queue)) {
        free(p);
        return -1;
    }
    *out = p;
    return 0;
}

int api_pool_submit(api_pool *p, api_job *job)
{
    job->ops = p->ops;
    job->task.run = job_run;
    job->task.cancel = job_cancel;
    return dw_pool_submit(p->pool, &job->task);
}

size_t api_pool_depth(api_pool *p)
{
    return dw_pool_depth(p->pool);
}

void api_pool_stop(api_pool *p)
{
    if (!p) return;
    dw_pool_stop(p->pool);
    free(p);
}
