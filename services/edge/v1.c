/* The dynamowave.v1 protocol on the lws thread: rooms, acks, history,
 * resume and presence (docs/protocol.md), behind the protocol table
 * (protocol.h: edge_proto_v1). Bus work that would block goes to jobs.c
 * and comes back through v1_on_job_done(). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "dw/wire.h"
#include "edge.h"
#include "integ.h"
#include "jobs.h"
#include "proto_v1.h"
#include "protocol.h"

static void send_owned(edge *e, edge_session *s, char *text, size_t len)
{
    if (text) session_send_text(e, s, text, len);
    free(text);
}

/* Build a frame with f(..., &len_) and send it (argument order matters:
 * the length is known only after the call). */
#define SEND(e, s, call)                                                                           \
    do {                                                                                           \
        size_t len_ = 0;                                                                           \
        char *t_ = (call);                                                                         \
        send_owned((e), (s), t_, len_);                                                            \
    } while (0)

static void v1_err(edge *e, edge_session *s, const char *code, const char *msg, const char *ref)
{
    SEND(e, s, v1_error(code, msg, ref, -1, &len_));
}

static int v1_on_ready(edge *e, edge_session *s)
{
    SEND(e, s, v1_hello(s->id, s->user, &len_));
    return 0;
}

static void v1_on_throttled(edge *e, edge_session *s, int64_t wait_ms)
{
    SEND(e, s, v1_error("rate_limited", "too many messages", NULL, wait_ms, &len_));
}

static edge_job *job_new(edge_session *s, edge_job_kind kind, const v1_request *req)
{
    edge_job *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    job->kind = kind;
    memcpy(job->conn_id, s->id, sizeof job->conn_id);
    snprintf(job->room, sizeof job->room, "%s", req->room);
    snprintf(job->user, sizeof job->user, "%s", s->user);
    if (req->ref && !(job->ref = strdup(req->ref))) {
        free(job);
        return NULL;
    }
    return job;
}

static void publish_leave(edge *e, edge_session *s, const char *room)
{
    Dw__ConnEvent ev;
    char *rooms[] = {(char *)room};
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__LEAVE, s->id, e->edge_id, NULL);
    ev.rooms = rooms;
    ev.n_rooms = 1;
    ev.user_id = s->user;
    if (bridge_publish_leave(e->bridge, &ev, ++s->msg_counter))
        DW_WARN("leave event not published", "conn=%s room=%s", s->id, room);
}

static edge_membership *membership(edge *e, edge_session *s, const char *room)
{
    edge_room *r = rooms_get(&e->rooms, room);
    return r ? rooms_membership(s, r) : NULL;
}

static void do_join(edge *e, edge_session *s, const v1_request *req)
{
    edge_room *r = rooms_get(&e->rooms, req->room);
    edge_membership *m = r ? rooms_membership(s, r) : NULL;
    if (m && !m->joining) {
        SEND(e, s, v1_joined(req->room, r->last_seq, true, req->ref, &len_));
        return;
    }
    if (m) {
        v1_err(e, s, "bad_request", "a join of this room is in progress", req->ref);
        return;
    }
    if (!admit_room(s, req->room)) {
        v1_err(e, s, "forbidden", "your token does not allow this room", req->ref);
        return;
    }
    if (s->nrooms >= e->cfg->max_rooms) {
        v1_err(e, s, "bad_request", "too many rooms for one connection", req->ref);
        return;
    }
    edge_job *job = job_new(s, JOB_JOIN, req);
    if (!job || rooms_join(&e->rooms, s, req->room) < 0) {
        edge_job_free(job);
        v1_err(e, s, "unavailable", "out of memory", req->ref);
        return;
    }
    membership(e, s, req->room)->joining = true;
    /* Hear presence before the join is published (same connection, so the
     * subscription is in place first); the tick turns it off once no v1
     * member is left. */
    bridge_presence_watch(e->bridge, true);
    job->has_since = req->has_since;
    job->since = req->since;
    edge_jobs_submit(e->jobs, job);
}

static void do_leave(edge *e, edge_session *s, const v1_request *req)
{
    edge_membership *m = membership(e, s, req->room);
    if (m && m->joining) {
        /* The JOIN is on its way to the stream; a LEAVE now could land
         * before it. Leave once the join has finished. */
        m->leave_after_join = true;
    } else if (m) {
        publish_leave(e, s, req->room);
        rooms_leave(&e->rooms, s, req->room);
    }
    SEND(e, s, v1_left(req->room, req->ref, &len_));
}

static void do_send(edge *e, edge_session *s, const v1_request *req)
{
    if (!membership(e, s, req->room)) {
        v1_err(e, s, "not_member", "join the room first", req->ref);
        return;
    }
    if (s->nacks >= (uint32_t)e->cfg->max_pending_acks) {
        SEND(
            e, s,
            v1_error("rate_limited", "too many messages awaiting their ack", req->ref, 100, &len_));
        return;
    }
    edge_pending_ack *pa = calloc(1, sizeof *pa);
    if (!pa || (req->ref && !(pa->ref = strdup(req->ref)))) {
        free(pa);
        v1_err(e, s, "unavailable", "out of memory", req->ref);
        return;
    }
    char id[DW_MSGID_CHAT_MAX];
    pa->n = ++s->msg_counter;
    dw_msgid_chat(id, sizeof id, s->id, pa->n);
    snprintf(pa->room, sizeof pa->room, "%s", req->room);
    snprintf(pa->client_id, sizeof pa->client_id, "%s", req->client_id[0] ? req->client_id : id);

    Dw__ChatMessage m = DW__CHAT_MESSAGE__INIT;
    m.id = id;
    m.room = (char *)req->room;
    m.conn_id = s->id;
    m.user_id = s->user;
    m.data.data = (uint8_t *)req->data;
    m.data.len = req->data_len;
    m.ts_ms = s->last_active_ms;
    m.conn_seq = e->conn_seq_acked;
    m.data_json = req->data_json;
    m.exclude_sender = req->exclude_self;
    m.client_id = pa->client_id;
    /* The client's id is the idempotency key: a retry of this send after
     * "unavailable" or a reconnect is stored once (docs/protocol.md). */
    char key[DW_MSGID_MAX];
    const char *msg_id = NULL;
    if (req->client_id[0] && !dw_msgid_v1(key, sizeof key, s->user_stable,
                                          s->user_stable ? s->user : s->id, req->client_id))
        msg_id = key;
    if (bridge_publish_msg(e->bridge, &m, msg_id)) {
        free(pa->ref);
        free(pa);
        v1_err(e, s, "unavailable", "the message could not be stored; try again", req->ref);
        return;
    }
    pa->sent_ns = dw_mono_ns();
    if (s->acks_tail)
        s->acks_tail->next = pa;
    else
        s->acks = pa;
    s->acks_tail = pa;
    s->nacks++;
}

static void do_job(edge *e, edge_session *s, const v1_request *req, edge_job_kind kind)
{
    edge_membership *m = membership(e, s, req->room);
    if (!m || m->joining) {
        v1_err(e, s, "not_member", "join the room first", req->ref);
        return;
    }
    edge_job *job = job_new(s, kind, req);
    if (!job) {
        v1_err(e, s, "unavailable", "out of memory", req->ref);
        return;
    }
    job->before = req->before;
    job->limit = req->limit;
    snprintf(job->after, sizeof job->after, "%s", req->after);
    edge_jobs_submit(e->jobs, job);
}

static void v1_handle(edge *e, edge_session *s, const char *buf, size_t len)
{
    if (integ_handle(e, s, buf, len, true)) return; /* a route to user code (DW_ROUTES) */
    v1_request req;
    if (v1_parse(buf, len, &req)) {
        session_close(s, 1011, "out of memory");
        return;
    }
    switch (req.action) {
    case V1_BAD: v1_err(e, s, req.error_code, req.error_msg, req.ref); break;
    case V1_JOIN: do_join(e, s, &req); break;
    case V1_LEAVE: do_leave(e, s, &req); break;
    case V1_SEND: do_send(e, s, &req); break;
    case V1_HISTORY: do_job(e, s, &req, JOB_HISTORY); break;
    case V1_PRESENCE: do_job(e, s, &req, JOB_PRESENCE); break;
    }
    v1_request_free(&req);
}

static void v1_on_msg_ack(edge *e, edge_session *s, const edge_event *ev)
{
    char conn[DW_ID_LEN + 1];
    uint64_t n = 0;
    dw_msgid_chat_parse(ev->msg_id, conn, &n);
    /* Acks mostly come in publish order, but a failure is reported when
     * its wait runs out, after later sends were acked: take exactly the one
     * this event is about, so every send gets its one answer. */
    edge_pending_ack *prev = NULL, *pa = s->acks;
    while (pa && pa->n != n) {
        prev = pa;
        pa = pa->next;
    }
    if (!pa) return;
    if (prev)
        prev->next = pa->next;
    else
        s->acks = pa->next;
    if (s->acks_tail == pa) s->acks_tail = prev;
    s->nacks--;
    if (ev->ok) {
        dw_metric_observe_ns(e->m->stage_stored, dw_mono_ns() - pa->sent_ns);
        SEND(e, s, v1_ack(pa->client_id, pa->room, ev->seq, pa->ref, &len_));
    } else
        v1_err(e, s, "unavailable", "the message could not be stored; try again", pa->ref);
    free(pa->ref);
    free(pa);
}

static v1_msg msg_view(const Dw__ChatMessage *m, uint64_t seq)
{
    v1_msg v = {
        .room = m->room,
        .seq = seq,
        .id = m->client_id && *m->client_id ? m->client_id : m->id,
        .from = m->user_id,
        .data = (const char *)m->data.data,
        .data_len = m->data.len,
        .data_json = m->data_json,
        .ts_ms = m->ts_ms,
    };
    return v;
}

static void join_done(edge *e, edge_session *s, edge_job *job)
{
    edge_room *r = rooms_get(&e->rooms, job->room);
    edge_membership *m = r ? rooms_membership(s, r) : NULL;
    if (!m) return;
    if (job->error) {
        rooms_leave(&e->rooms, s, job->room);
        v1_err(e, s, job->error, "could not join the room now; try again", job->ref);
        return;
    }
    SEND(e, s, v1_joined(job->room, job->last_seq, job->recovered, job->ref, &len_));
    uint64_t upto = job->last_seq;
    for (size_t i = 0; i < job->nmsgs; i++) {
        v1_msg v = msg_view(job->msgs[i].m, job->msgs[i].seq);
        SEND(e, s, v1_message(&v, &len_));
        if (job->msgs[i].seq > upto) upto = job->msgs[i].seq;
    }
    /* Live messages that arrived meanwhile, minus what the replay covered. */
    for (edge_held *h = m->held; h; h = h->next)
        if (h->seq > upto) session_deliver(e, s, h->frame);
    rooms_release_held(m);
    m->joining = false;
    /* A message stored before the join took effect may still be on its way
     * from the dispatcher: the replay already gave it to this member. */
    m->floor_seq = upto;
    if (r->last_seq < job->last_seq) r->last_seq = job->last_seq;
    if (m->leave_after_join) {
        publish_leave(e, s, job->room);
        rooms_leave(&e->rooms, s, job->room);
    }
}

void v1_on_job_done(edge *e, edge_job *job)
{
    edge_session *s = connmap_get(&e->conns, job->conn_id, strlen(job->conn_id));
    if (!s || s->state != SESS_READY) return;
    switch (job->kind) {
    case JOB_JOIN: join_done(e, s, job); break;
    case JOB_HISTORY: {
        if (job->error) {
            v1_err(e, s, job->error, "history is not available now; try again", job->ref);
            break;
        }
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < job->nmsgs; i++) {
            v1_msg v = msg_view(job->msgs[i].m, job->msgs[i].seq);
            json_array_append_new(arr, v1_message_obj(&v));
        }
        SEND(e, s, v1_history(job->room, arr, job->more, job->ref, &len_));
        break;
    }
    case JOB_PRESENCE: {
        if (job->error) {
            v1_err(e, s, job->error, "presence is not available now; try again", job->ref);
            break;
        }
        Dw__PresenceReply *p = job->presence;
        const char **users = calloc(p->n_users + 1, sizeof *users);
        uint32_t *conns = calloc(p->n_users + 1, sizeof *conns);
        if (users && conns) {
            for (size_t i = 0; i < p->n_users; i++) {
                users[i] = p->users[i]->user_id;
                conns[i] = p->users[i]->connections;
            }
            SEND(e, s, v1_presence(job->room, users, conns, p->n_users, p->more, job->ref, &len_));
        }
        free(users);
        free(conns);
        break;
    }
    }
}

void v1_on_presence(edge *e, const Dw__ConnEvent *ce)
{
    const char *type;
    switch (ce->kind) {
    case DW__CONN_EVENT__KIND__CONNECT:
    case DW__CONN_EVENT__KIND__JOIN: type = "join"; break;
    case DW__CONN_EVENT__KIND__LEAVE:
    case DW__CONN_EVENT__KIND__DISCONNECT: type = "leave"; break;
    default: return;
    }
    for (size_t i = 0; i < ce->n_rooms; i++) {
        edge_room *r = rooms_get(&e->rooms, ce->rooms[i]);
        edge_frame *f = NULL;
        /* Only the room's v1 members: the plain ones never see presence. */
        for (uint32_t j = 0; r && j < r->nv1; j++) {
            edge_session *s = r->v1[j];
            if (ce->conn_id && !strcmp(s->id, ce->conn_id)) continue;
            edge_membership *m = rooms_membership(s, r);
            if (!m || m->joining) continue;
            if (!f) {
                size_t len;
                char *text = v1_presence_event(type, ce->rooms[i], ce->user_id, &len);
                f = text ? frame_text(text, len) : NULL;
                free(text);
                if (!f) break;
            }
            session_deliver(e, s, f);
        }
        frame_unref(f);
    }
}

static void v1_on_closed(edge *e, edge_session *s)
{
    while (s->acks) {
        edge_pending_ack *n = s->acks->next;
        free(s->acks->ref);
        free(s->acks);
        s->acks = n;
    }
    s->acks_tail = NULL;
    s->nacks = 0;
}

const edge_protocol edge_proto_v1 = {
    .name = V1_PROTOCOL,
    .on_ready = v1_on_ready,
    .on_message = v1_handle,
    .on_throttled = v1_on_throttled,
    .on_ack = v1_on_msg_ack,
    .on_closed = v1_on_closed,
};
