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
                                                   DW_SUBJ_API_DELETE, DW_SUBJ_API_ROOMS_PUBLISH};

/* A room publish is answered in JSON (it is for user code, in any
 * language); the @connections operations in protobuf (ApiReply). */
static void send_publish_reply(natsConnection *nc, const char *reply, const api_publish_req *rq,
                               const api_result *res)
{
    size_t len = 0;
    char *body = res->status == 200
                     ? api_publish_ok_json(rq ? rq->room : "", res->seq, res->duplicate, &len)
                     : api_publish_error_json(res->status, res->error, &len);
    natsStatus s = body ? natsConnection_Publish(nc, reply, body, (int)len) : NATS_NO_MEMORY;
    free(body);
    if (s != NATS_OK) DW_WARN("reply not sent", "status=%s", natsStatus_GetText(s));
}

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
    if (job->op == API_OP_PUBLISH)
        send_publish_reply(s->nc, job->reply, &job->pub, &job->res);
    else
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
    if (op == API_OP_PUBLISH)
        send_publish_reply(s->nc, reply, NULL, &res);
    else
        send_reply(s->nc, reply, &res);
    api_counters_answer(op, status, start_ns);
}

/* Submit a job, or answer at once when that is not possible. */
static void submit(api_subjects *s, api_job *job, const char *reply, int64_t start)
{
    if (job && !(job->reply = strdup(reply))) {
        api_job_free(job);
        job = NULL;
    }
    api_op op = job ? job->op : API_OP_COUNT;
    if (!job) {
        answer_now(s, reply, op, 500, "out of memory", start);
        return;
    }
    job->origin = s;
    job->done = job_done;
    job->start_ns = start;
    if (api_pool_submit(s->pool, job)) {
        api_job_free(job);
        answer_now(s, reply, op, 503, "busy (too many requests in progress) or stopping", start);
    }
}

/* dw.api.rooms.publish: a JSON request (rooms.h). */
static void on_publish(api_subjects *s, const char *reply, natsMsg *msg, int64_t start)
{
    api_publish_req rq;
    char err[192];
    memset(&rq, 0, sizeof rq);
    int len = natsMsg_GetDataLength(msg);
    /* JSON escapes may make a request a few times larger than its message;
     * anything beyond that is refused unread. */
    if ((size_t)len > s->max_message * 6 + 4096) {
        answer_now(s, reply, API_OP_PUBLISH, 413, "request too large", start);
        return;
    }
    int status = api_publish_parse_json(&rq, natsMsg_GetData(msg), (size_t)len, s->max_message, err,
                                        sizeof err);
    if (status) {
        answer_now(s, reply, API_OP_PUBLISH, (unsigned)status, err, start);
        return;
    }
    api_job *job = api_job_new_publish(&rq);
    if (!job) {
        api_publish_req_clear(&rq);
        answer_now(s, reply, API_OP_PUBLISH, 500, "out of memory", start);
        return;
    }
    submit(s, job, reply, start);
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
    if (op == API_OP_PUBLISH) {
        on_publish(s, reply, msg, start);
        goto done;
    }

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
        submit(s, api_job_new(op, rq->conn_id, rq->data.data, rq->data.len), reply, start);
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

/* How long requests already received may take to be queued, all
 * subscriptions together (within the stop's budget, dw/util.h). */
#define DRAIN_MS 2000
#define DRAIN_AWAY_MS 100

void api_subjects_stop(api_subjects *s)
{
    if (!s) return;
    /* Drained, a subscription delivers what it already has and then no
     * callback runs any more: s may be freed after. A drain needs the
     * server; while NATS is away it cannot be confirmed, and the callbacks
     * (which only decode and queue) are left to finish while the pool
     * stops. */
    if (dw_subs_drain(s->nc, s->subs, API_OP_COUNT, DRAIN_MS, DRAIN_AWAY_MS))
        DW_WARN("request subscriptions not drained (NATS away or slow): requests not yet "
                "received are left to another instance or their timeout",
                "%s", "");
}

void api_subjects_free(api_subjects *s)
{
    free(s);
}
