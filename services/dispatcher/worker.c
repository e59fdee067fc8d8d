/* The dispatcher's worker (dispatch_int.h): what must be durable before
 * the loop acts (EDGE_DOWN events, gone connections, dead letters) is
 * written on a thread of its own; the loop acks what settled, hands dead
 * letters to the worker and terminates them once they are written. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch_int.h"
#include "dw/log.h"
#include "dw/dlq_record.h"
#include "dw/pull.h"
#include "dw/wire.h"

/* ---- the worker thread ---- */

static int publish_conn_event(dispatcher *d, Dw__ConnEvent__Kind kind, const char *conn_id,
                              const char *edge_id, const char *reason, const char *msg_id)
{
    Dw__ConnEvent ev;
    dw_conn_event_make(&ev, kind, conn_id, edge_id, reason);
    jsErrCode jerr = 0;
    natsStatus s = dw_js_publish_pb(d->js, dw_subj_conn_event(kind), &ev.base, msg_id,
                                    PUBLISH_WAIT_MS, NULL, &jerr);
    if (s != NATS_OK) {
        DW_ERROR("conn event publish failed", "kind=%s edge=%s conn=%s status=%s jserr=%d",
                 dw_subj_conn_event(kind), edge_id ? edge_id : "", conn_id ? conn_id : "",
                 natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    return 0;
}

/* Write message m's dead letter to DW_DLQ and wait for JetStream's ack.
 * Its Nats-Msg-Id "dlq.<seq>" keeps one entry per message whoever writes
 * it. 0 when durable. */
static int dead_letter(dispatcher *d, order_msg *m)
{
    natsMsg *nm = m->handle;
    const char *subject = natsMsg_GetSubject(nm);
    const char *room = dlq_room_of_subject(subject);
    const char *orig_id = NULL;
    char dlq_subj[256], msg_id[DW_MSGID_MAX];
    if (natsMsgHeader_Get(nm, DW_HDR_MSG_ID, &orig_id) != NATS_OK)
        orig_id = m->chat ? m->chat->id : "";
    if (!room || dlq_subject(dlq_subj, sizeof dlq_subj, room)) {
        /* Not a chat subject: keep it under a room of its own name. */
        room = "unknown";
        snprintf(dlq_subj, sizeof dlq_subj, DW_SUBJ_DLQ_PREFIX "unknown");
    }
    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = (char *)subject;
    dl.stream_seq = m->seq;
    dl.msg_id = (char *)(orig_id ? orig_id : "");
    dl.payload.data = (uint8_t *)natsMsg_GetData(nm);
    dl.payload.len = (size_t)natsMsg_GetDataLength(nm);
    dl.reason = m->reason ? m->reason : "out_of_memory";
    dl.attempts = m->attempts;
    dl.first_failure_ms = m->n_attempt_ms ? m->attempt_ms[0] : dw_now_ms();
    dl.last_failure_ms = m->n_attempt_ms ? m->attempt_ms[m->n_attempt_ms - 1] : dw_now_ms();
    dl.failed_edges = m->failed_edges;
    dl.n_failed_edges = m->n_failed_edges;
    dl.room = (char *)room;
    dl.source = DLQ_SOURCE_DISPATCHER;
    dl.attempt_ms = m->attempt_ms;
    dl.n_attempt_ms = m->n_attempt_ms;
    size_t len = 0;
    uint8_t *buf = dlq_record_pack(&dl, &len);
    if (!buf) return -1;
    dw_msgid_dlq(msg_id, sizeof msg_id, m->seq);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = DLQ_PUBLISH_WAIT_MS;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_Publish(&pa, d->js, dlq_subj, buf, (int)len, &po, &jerr);
    free(buf);
    if (s == NATS_OK)
        DW_WARN("dead-lettered",
                "room=%s seq=%" PRIu64 " attempts=%u reason=%s dlq_seq=%" PRIu64 "%s", room, m->seq,
                m->attempts, dl.reason, pa->Sequence, pa->Duplicate ? " duplicate=true" : "");
    else
        DW_ERROR("dead letter not written; retrying", "room=%s seq=%" PRIu64 " status=%s jserr=%d",
                 room, m->seq, natsStatus_GetText(s), (int)jerr);
    jsPubAck_Destroy(pa);
    return s == NATS_OK ? 0 : -1;
}

static void run_job(dispatcher *d, job *j)
{
    char msg_id[DW_MSGID_MAX];
    switch (j->kind) {
    case JOB_EDGE_DOWN:
        dw_msgid_edge_down(msg_id, sizeof msg_id, j->edge);
        j->ok = !publish_conn_event(d, DW__CONN_EVENT__KIND__EDGE_DOWN, NULL, j->edge,
                                    "heartbeat_timeout", msg_id);
        break;
    case JOB_CONN_GONE:
        dw_msgid_gone(msg_id, sizeof msg_id, j->conn);
        j->ok = !publish_conn_event(d, DW__CONN_EVENT__KIND__DISCONNECT, j->conn, j->edge, "gone",
                                    msg_id);
        if (j->ok) DW_INFO("connection gone", "conn=%s edge=%s", j->conn, j->edge);
        break;
    case JOB_DEAD_LETTER: {
        /* Until it is durable the message may not be terminated: keep
         * trying (JetStream is what is down when this fails). */
        int64_t wait = 100;
        while (!(j->ok = !dead_letter(d, j->msg)) && !atomic_load(&d->quit)) {
            dw_metric_inc(d->m->dlq_failed);
            nats_Sleep(wait);
            if (wait < 2000) wait *= 2;
        }
        break;
    }
    }
}

/* Hand a finished (or undone) job back to the loop. */
static void job_back(job *j)
{
    dispatcher *d = j->d;
    loop_ev *e = dispatch__ev_new(d, EV_JOB);
    if (e) {
        e->job = j;
        dispatch__post(d, e);
    } else {
        free(j); /* its message stays with the loop's order table */
    }
}

/* On the worker's thread. */
static void job_run(dw_task *t)
{
    job *j = (job *)t;
    if (atomic_load(&j->d->quit))
        j->ok = 0; /* stopping: report it undone */
    else
        run_job(j->d, j);
    job_back(j);
}

static void job_cancel(dw_task *t)
{
    job *j = (job *)t;
    j->ok = 0; /* stopping: report it undone */
    job_back(j);
}

void worker__submit(dispatcher *d, job *j)
{
    j->d = d;
    j->task.run = job_run;
    j->task.cancel = job_cancel;
    if (dw_pool_submit(d->worker, &j->task)) job_cancel(&j->task); /* stopping */
}

/* ---- the loop: settling ---- */

void worker__settle(dispatcher *d)
{
    order_msg *m;
    int64_t wall_ms = dw_now_ms();
    while ((m = order_settled_pop(d->ord))) {
        if (m->dropped) {
            order_msg_release(d->ord, m);
            continue;
        }
        if (m->verdict == ORDER_ACK) {
            natsMsg *nm = m->handle;
            dw_pull_ack(d->nc, nm);
            dw_metric_inc(d->m->delivered);
            jsMsgMetaData *meta = NULL;
            if (natsMsg_GetMetaData(&meta, nm) == NATS_OK) {
                int64_t ns = wall_ms * 1000000 - meta->Timestamp;
                dw_metric_observe_ns(d->m->latency, ns > 0 ? ns : 0);
                jsMsgMetaData_Destroy(meta);
            }
            if (m->resolved_ms) {
                int64_t mono = mono_ms();
                dw_metric_observe_ns(d->m->stage_resolved,
                                     (m->resolved_ms - m->fetched_ms) * 1000000);
                dw_metric_observe_ns(d->m->stage_confirmed, (mono - m->resolved_ms) * 1000000);
            }
            order_msg_release(d->ord, m);
            continue;
        }
        job *j = calloc(1, sizeof *j);
        if (!j) {
            order_settled_push_back(d->ord, m);
            break;
        }
        j->kind = JOB_DEAD_LETTER;
        j->msg = m;
        worker__submit(d, j);
    }
}

void worker__on_job(dispatcher *d, job *j, int64_t now)
{
    switch (j->kind) {
    case JOB_EDGE_DOWN:
        for (size_t i = 0; i < d->n_downs_pending; i++)
            if (!strcmp(d->downs_pending[i], j->edge)) {
                free(d->downs_pending[i]);
                d->downs_pending[i] = d->downs_pending[--d->n_downs_pending];
                break;
            }
        if (j->ok) {
            edges_mark_down(d->edges, j->edge, mono_ms());
            order_edge_gone(d->ord, j->edge, now);
            DW_WARN("edge down", "edge=%s reason=heartbeat_timeout", j->edge);
        }
        break;
    case JOB_CONN_GONE: break;
    case JOB_DEAD_LETTER: {
        order_msg *m = j->msg;
        if (j->ok && !m->dropped) {
            dw_pull_term(d->nc, m->handle);
            dw_metric_inc(d->m->dead_lettered);
        }
        /* Not written (stopping), or dropped: its next owner deals with it. */
        order_msg_release(d->ord, m);
        break;
    }
    }
    free(j);
}
