#include "jobs.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "dw/wire.h"

struct edge_jobs {
    edge_jobs_config cfg;
    edge_bridge *b;
    dw_pool *pool;
    atomic_uint_fast64_t counter;
};

void edge_job_free(edge_job *job)
{
    if (!job) return;
    for (size_t i = 0; i < job->nmsgs; i++)
        dw__chat_message__free_unpacked(job->msgs[i].m, NULL);
    free(job->msgs);
    if (job->presence) dw__presence_reply__free_unpacked(job->presence, NULL);
    free(job->ref);
    free(job);
}

static void room_subject(char *buf, size_t len, const char *room)
{
    dw_subj_msg(buf, len, room);
}

/* The room's last stream sequence (0: no message in the window). */
static int last_seq_of(edge_jobs *j, const char *room, uint64_t *out)
{
    char subj[DW_ROOM_MAX + 24];
    room_subject(subj, sizeof subj, room);
    natsMsg *m = NULL;
    jsErrCode jerr = 0;
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = j->cfg.timeout_ms;
    natsStatus s = js_GetLastMsg(&m, bridge_js(j->b), DW_STREAM_MSG, subj, &o, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) {
        *out = 0;
        return 0;
    }
    if (s != NATS_OK) return -1;
    *out = natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return 0;
}

static int first_seq_of_stream(edge_jobs *j, uint64_t *out)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = j->cfg.timeout_ms;
    if (js_GetStreamInfo(&si, bridge_js(j->b), DW_STREAM_MSG, &o, &jerr) != NATS_OK) return -1;
    *out = si->State.FirstSeq;
    jsStreamInfo_Destroy(si);
    return 0;
}

static int push_msg(edge_job *job, size_t *cap, uint64_t seq, natsMsg *m)
{
    Dw__ChatMessage *cm = dw_pb_unpack(&dw__chat_message__descriptor, m);
    if (!cm) return 0; /* not ours to show: skip it */
    if (job->nmsgs == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        edge_job_msg *n = realloc(job->msgs, ncap * sizeof *n);
        if (!n) {
            dw__chat_message__free_unpacked(cm, NULL);
            return -1;
        }
        job->msgs = n;
        *cap = ncap;
    }
    job->msgs[job->nmsgs].seq = seq;
    job->msgs[job->nmsgs].m = cm;
    job->nmsgs++;
    return 0;
}

/* Read the room's messages with from <= seq <= to, in order, into job->msgs.
 * Returns 0, 1 when there were more than max (job->msgs then holds the
 * newest max when keep_newest, else nothing), -1 on a bus error. */
static int read_range(edge_jobs *j, edge_job *job, uint64_t from, uint64_t to, uint32_t max,
                      bool keep_newest)
{
    char subj[DW_ROOM_MAX + 24];
    room_subject(subj, sizeof subj, job->room);
    if (from > to) return 0;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = from;
    so.Stream = DW_STREAM_MSG;
    natsSubscription *sub = NULL;
    jsErrCode jerr = 0;
    if (js_SubscribeSync(&sub, bridge_js(j->b), subj, NULL, &so, &jerr) != NATS_OK) return -1;
    int rc = 0;
    size_t cap = 0;
    for (;;) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, j->cfg.timeout_ms) != NATS_OK) {
            rc = -1;
            break;
        }
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, m) != NATS_OK) {
            natsMsg_Destroy(m);
            continue; /* a heartbeat or flow-control message */
        }
        uint64_t seq = meta->Sequence.Stream, pending = meta->NumPending;
        jsMsgMetaData_Destroy(meta);
        if (seq > to) {
            natsMsg_Destroy(m);
            break;
        }
        if (job->nmsgs == 0 && !keep_newest && pending + 1 > max) {
            /* NumPending counts what is left after this one: too many. */
            natsMsg_Destroy(m);
            rc = 1;
            break;
        }
        int prc = push_msg(job, &cap, seq, m);
        natsMsg_Destroy(m);
        if (prc) {
            rc = -1;
            break;
        }
        if (keep_newest && job->nmsgs > max) {
            dw__chat_message__free_unpacked(job->msgs[0].m, NULL);
            memmove(job->msgs, job->msgs + 1, (job->nmsgs - 1) * sizeof *job->msgs);
            job->nmsgs--;
            rc = 1;
        }
        if (seq >= to || pending == 0) break;
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    return rc;
}

static void drop_msgs(edge_job *job)
{
    for (size_t i = 0; i < job->nmsgs; i++)
        dw__chat_message__free_unpacked(job->msgs[i].m, NULL);
    job->nmsgs = 0;
}

static void run_join(edge_jobs *j, edge_job *job)
{
    Dw__ConnEvent ev;
    char *rooms[] = {job->room};
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__JOIN, job->conn_id, j->cfg.edge_id, NULL);
    ev.rooms = rooms;
    ev.n_rooms = 1;
    ev.user_id = job->user;
    char msg_id[DW_MSGID_MAX];
    dw_msgid_membership(msg_id, sizeof msg_id, ev.kind, job->conn_id, job->room,
                        atomic_fetch_add(&j->counter, 1));
    dw_js_ack ack;
    if (dw_js_publish_pb(bridge_js(j->b), dw_subj_conn_event(ev.kind), &ev.base, msg_id,
                         j->cfg.timeout_ms, &ack, NULL) != NATS_OK) {
        job->error = "unavailable";
        return;
    }
    uint64_t join_seq = ack.seq;

    /* Once the registry has applied the join, every message stored from now
     * on is fanned out to this edge; what was stored before is read below. */
    Dw__RoomQuery q = DW__ROOM_QUERY__INIT;
    q.room = job->room;
    q.min_seq = join_seq;
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&q.base, &len);
    natsMsg *reply = NULL;
    natsStatus s = buf ? natsConnection_Request(&reply, bridge_nc(j->b), DW_SUBJ_REG_ROOM, buf,
                                                (int)len, j->cfg.timeout_ms)
                       : NATS_NO_MEMORY;
    free(buf);
    Dw__RoomEdges *re = s == NATS_OK ? dw_pb_unpack(&dw__room_edges__descriptor, reply) : NULL;
    bool ok = re && re->ok;
    if (re) dw__room_edges__free_unpacked(re, NULL);
    natsMsg_Destroy(reply);
    if (!ok || last_seq_of(j, job->room, &job->last_seq)) {
        job->error = "unavailable";
        return;
    }
    job->recovered = true;
    if (!job->has_since || job->since >= job->last_seq) return;
    uint64_t first = 0;
    if (first_seq_of_stream(j, &first)) {
        job->error = "unavailable";
        return;
    }
    if (job->since + 1 < first) {
        job->recovered = false; /* the history window no longer holds it */
        return;
    }
    int rc = read_range(j, job, job->since + 1, job->last_seq, j->cfg.resume_max, false);
    if (rc) {
        drop_msgs(job);
        if (rc < 0)
            job->error = "unavailable";
        else
            job->recovered = false;
    }
}

static void run_history(edge_jobs *j, edge_job *job)
{
    uint64_t last = 0, first = 0;
    if (last_seq_of(j, job->room, &last) || first_seq_of_stream(j, &first)) {
        job->error = "unavailable";
        return;
    }
    uint64_t end = job->before ? job->before - 1 : last;
    if (end > last) end = last;
    if (!end || end < first) return;
    /* Streams read forwards: widen a window backwards until it holds a
     * page, or reaches the start of the stream. */
    uint64_t window = (uint64_t)job->limit * 8;
    for (;;) {
        uint64_t start = end >= window && end - window + 1 > first ? end - window + 1 : first;
        drop_msgs(job);
        int rc = read_range(j, job, start, end, job->limit, true);
        if (rc < 0) {
            job->error = "unavailable";
            drop_msgs(job);
            return;
        }
        if (rc == 1 || start == first) {
            job->more = rc == 1 || (job->nmsgs && job->msgs[0].seq > first && start > first);
            return;
        }
        window *= 8;
    }
}

static void run_presence(edge_jobs *j, edge_job *job)
{
    Dw__PresenceQuery q = DW__PRESENCE_QUERY__INIT;
    q.room = job->room;
    q.after_user = job->after;
    q.limit = job->limit;
    size_t len;
    uint8_t *buf = dw_pb_pack(&q.base, &len);
    natsMsg *reply = NULL;
    natsStatus s = buf ? natsConnection_Request(&reply, bridge_nc(j->b), DW_SUBJ_REG_PRESENCE, buf,
                                                (int)len, j->cfg.timeout_ms)
                       : NATS_NO_MEMORY;
    free(buf);
    if (s == NATS_OK) job->presence = dw_pb_unpack(&dw__presence_reply__descriptor, reply);
    natsMsg_Destroy(reply);
    if (!job->presence || !job->presence->ok) job->error = "unavailable";
}

/* The destructor of a job's done event: the event owns the job. */
static void job_event_free(dw_mail *m)
{
    edge_event *ev = (edge_event *)m;
    edge_job_free(ev->job);
    ev->job = NULL;
    edge_event_free(m);
}

static void job_run(dw_task *t)
{
    edge_job *job = (edge_job *)t;
    edge_jobs *j = job->jobs;
    switch (job->kind) {
    case JOB_JOIN: run_join(j, job); break;
    case JOB_HISTORY: run_history(j, job); break;
    case JOB_PRESENCE: run_presence(j, job); break;
    }
    edge_event *ev = edge_event_new(EDGE_EV_JOB_DONE);
    if (!ev) {
        edge_job_free(job);
        return;
    }
    ev->mail.destroy = job_event_free;
    ev->job = job;
    dw_mailbox_post(j->cfg.mailbox, &ev->mail);
}

/* Queued when the edge stopped: dropped. */
static void job_cancel(dw_task *t)
{
    edge_job_free((edge_job *)t);
}

int edge_jobs_start(edge_jobs **out, edge_bridge *b, const edge_jobs_config *cfg)
{
    edge_jobs *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->cfg = *cfg;
    j->b = b;
    if (dw_pool_start(&j->pool, cfg->threads, 0)) {
        free(j);
        return -1;
    }
    *out = j;
    return 0;
}

void edge_jobs_submit(edge_jobs *j, edge_job *job)
{
    job->jobs = j;
    job->task.run = job_run;
    job->task.cancel = job_cancel;
    if (dw_pool_submit(j->pool, &job->task)) edge_job_free(job); /* stopping */
}

void edge_jobs_stop(edge_jobs *j)
{
    if (!j) return;
    dw_pool_stop(j->pool);
    free(j);
}
