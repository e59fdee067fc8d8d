#include "subjects.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "counters.h"
#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"
#include "dw/wire.h"

struct api_subjects {
    natsConnection *nc;
    api_pool *pool;
    size_t max_message;
    natsSubscription *subs[API_OP_COUNT];
};

static const char *const subjects[API_OP_COUNT] = {DW_SUBJ_API_POST, DW_SUBJ_API_GET,
                                                   DW_SUBJ_API_DELETE};

static void send_reply(natsConnection *nc, const char *reply, const api_result *res)
{
    Dw__ApiReply r = DW__API_REPLY__INIT;
    r.status = res->status;
    r.error = (char *)res->error;
    r.info = res->info;
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&r.base, &len);
    natsStatus s = buf ? natsConnection_Publish(nc, reply, buf, (int)len) : NATS_NO_MEMORY;
    free(buf);
    if (s != NATS_OK) DW_WARN("reply not sent", "status=%s", natsStatus_GetText(s));
}

/* Worker thread: the operation is done. */
static void job_done(api_job *job)
{
    api_subjects *s = job->origin;
    send_reply(s->nc, job->reply, &job->res);
    api_counters_answer(job->op, job->res.status, job->start_ns);
    api_job_free(job);
}

static void answer_now(api_subjects *s, const char *reply, api_op op, unsigned status,
                       const char *error, int64_t start_ns)
{
    api_result res;
    memset(&res, 0, sizeof res);
    res.status = status;
    snprintf(res.error, sizeof res.error, "%s", error);
    send_reply(s->nc, reply, &res);
    api_counters_answer(op, status, start_ns);
}

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    api_subjects *s = closure;
    int64_t start = dw_mono_ns();
    const char *reply = natsMsg_GetReply(msg);
    const char *subj = natsMsg_GetSubject(msg);
    api_op op = API_OP_COUNT;
    for (int i = 0; i < API_OP_COUNT; i++)
        if (!strcmp(subj, subjects[i])) op = (api_op)i;
    if (!reply || op == API_OP_COUNT) goto done; /* a publish nobody waits for */

    Dw__ApiRequest *rq = dw_pb_unpack(&dw__api_request__descriptor, msg);
    if (!rq) {
        answer_now(s, reply, op, 400, "the request is not an ApiRequest", start);
        goto done;
    }
    if (!rq->conn_id || !*rq->conn_id) {
        answer_now(s, reply, op, 400, "missing conn_id", start);
    } else if (op == API_OP_POST && rq->data.len > s->max_message) {
        char why[96];
        snprintf(why, sizeof why, "message of %zu bytes is over the limit of %zu", rq->data.len,
                 s->max_message);
        answer_now(s, reply, op, 413, why, start);
    } else {
        api_job *job = api_job_new(op, rq->conn_id, rq->data.data, rq->data.len);
        if (job && !(job->reply = strdup(reply))) {
            api_job_free(job);
            job = NULL;
        }
        if (!job) {
            answer_now(s, reply, op, 500, "out of memory", start);
        } else {
            job->origin = s;
            job->done = job_done;
            job->start_ns = start;
            if (api_pool_submit(s->pool, job)) {
                api_job_free(job);
                answer_now(s, reply, op, 503, "busy (too many requests in progress) or stopping",
                           start);
            }
        }
    }
    dw__api_request__free_unpacked(rq, NULL);
done:
    natsMsg_Destroy(msg);
}

int api_subjects_start(api_subjects **out, natsConnection *nc, api_pool *pool, size_t max_message)
{
    api_subjects *s = calloc(1, sizeof *s);
    *out = NULL;
    if (!s) return -1;
    s->nc = nc;
    s->pool = pool;
    s->max_message = max_message;
    for (int i = 0; i < API_OP_COUNT; i++) {
        natsStatus st =
            natsConnection_QueueSubscribe(&s->subs[i], nc, subjects[i], API_QUEUE, on_request, s);
        if (st != NATS_OK) {
            DW_ERROR("cannot subscribe", "subject=%s status=%s", subjects[i],
                     natsStatus_GetText(st));
            api_subjects_stop(s);
            api_subjects_free(s);
            return -1;
        }
    }
    *out = s;
    return 0;
}

bool api_subjects_ready(api_subjects *s)
{
    return s && natsConnection_Status(s->nc) == NATS_CONN_STATUS_CONNECTED;
}

void api_subjects_stop(api_subjects *s)
{
    if (!s) return;
    for (int i = 0; i < API_OP_COUNT; i++) {
        if (!s->subs[i]) continue;
        /* Drained, a subscription delivers what it already has and then
         * no callback runs any more: s may be freed after. A drain needs
         * the server; without it, unsubscribing is all there is to do. */
        if (natsConnection_Status(s->nc) != NATS_CONN_STATUS_CONNECTED ||
            natsSubscription_Drain(s->subs[i]) != NATS_OK ||
            natsSubscription_WaitForDrainCompletion(s->subs[i], 2000) != NATS_OK)
            natsSubscription_Unsubscribe(s->subs[i]);
        natsSubscription_Destroy(s->subs[i]);
        s->subs[i] = NULL;
    }
}

void api_subjects_free(api_subjects *s)
{
    free(s);
}
