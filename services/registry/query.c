#include "query.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"
#include "dw/wire.h"

typedef struct parked {
    struct parked *next;
    char *reply;
    char room[DW_ROOM_MAX + 1];
    uint64_t min_seq;
    int64_t deadline_ns; /* dw_mono_ns clock */
} parked;

#define N_SUBS 4

struct reg_query {
    natsConnection *nc;
    /* The table can be swapped under us (a restore): readers hold stlock
     * for reading while they use st, the swap holds it for writing. No
     * other lock is ever taken while holding it. */
    pthread_rwlock_t stlock;
    reg_store *st;
    _Atomic uint64_t applied; /* st's applied_seq as last notified */
    int64_t wait_ms;
    natsSubscription *subs[N_SUBS];
    pthread_t waiter;
    int waiter_started;

    pthread_mutex_t mu;
    pthread_cond_t cv;   /* parked queries or the apply progress changed */
    pthread_cond_t idle; /* active dropped to 0 */
    parked *head, *tail; /* FIFO: same wait for all, so the head expires first */
    size_t n_parked;
    int active;    /* callbacks inside the store */
    int closing;   /* callbacks return without touching the store */
    int undrained; /* a subscription may still call us: never free q */
};

/* ---- reply builders --------------------------------------------------- */

const char *reg_query_room_parse(const void *data, size_t len, char *room, uint64_t *min_seq)
{
    Dw__RoomQuery *rq = dw__room_query__unpack(NULL, len, data ? data : (const void *)"");
    const char *err = NULL;
    room[0] = '\0';
    *min_seq = 0;
    if (!rq) return DW_ERR_TEXT_BAD_REQUEST;
    size_t n = rq->room ? strlen(rq->room) : 0;
    if (!dw_room_valid(rq->room, n)) {
        err = DW_ERR_TEXT_BAD_REQUEST ": room";
    } else {
        memcpy(room, rq->room, n + 1);
        *min_seq = rq->min_seq;
    }
    dw__room_query__free_unpacked(rq, NULL);
    return err;
}

uint8_t *reg_query_room_reply(reg_store *st, const char *room, const char *err, size_t *len)
{
    Dw__RoomEdges re = DW__ROOM_EDGES__INIT;
    reg_strs edges = {0};
    if (!err && reg_store_room_edges(st, room, &edges)) err = DW_ERR_TEXT_INTERNAL;
    if (err) {
        re.ok = 0;
        re.error = (char *)err;
        re.applied_seq = reg_store_applied_seq(st);
    } else {
        re.ok = 1;
        re.edge_ids = edges.v;
        re.n_edge_ids = edges.n;
        re.applied_seq = edges.applied_seq;
    }
    uint8_t *buf = dw_pb_pack(&re.base, len);
    reg_strs_free(&edges);
    return buf;
}

static uint8_t *list_error(reg_store *st, const char *err, uint64_t total, size_t *outlen)
{
    Dw__ListReply lr = DW__LIST_REPLY__INIT;
    lr.ok = 0;
    lr.error = (char *)err;
    lr.applied_seq = reg_store_applied_seq(st);
    lr.total = total;
    return dw_pb_pack(&lr.base, outlen);
}

uint8_t *reg_query_list_reply(reg_store *st, const void *data, size_t len, size_t max_bytes,
                              size_t *outlen)
{
    Dw__ListQuery *lq = dw__list_query__unpack(NULL, len, data ? data : (const void *)"");
    if (!lq) return list_error(st, DW_ERR_TEXT_BAD_REQUEST, reg_store_count(st), outlen);
    const char *edge = lq->edge_id ? lq->edge_id : "", *conn = lq->conn_id ? lq->conn_id : "";
    const char *after = lq->after_conn_id ? lq->after_conn_id : "";
    if ((*edge && !reg_id_valid(edge)) || (*conn && !reg_id_valid(conn)) ||
        (*after && !reg_id_valid(after))) {
        dw__list_query__free_unpacked(lq, NULL);
        return list_error(st, DW_ERR_TEXT_BAD_REQUEST ": id", reg_store_count(st), outlen);
    }

    reg_conns conns;
    uint8_t *buf = NULL;
    if (reg_store_list(st, edge, conn, lq->after_conn_id, lq->limit, &conns)) {
        buf = list_error(st, DW_ERR_TEXT_INTERNAL, reg_store_count(st), outlen);
        goto done;
    }
    Dw__ListReply lr = DW__LIST_REPLY__INIT;
    lr.ok = 1;
    lr.conns = conns.conns;
    lr.n_conns = conns.n;
    lr.applied_seq = conns.applied_seq;
    lr.total = conns.total;
    if (max_bytes && protobuf_c_message_get_packed_size(&lr.base) > max_bytes)
        buf = list_error(st, DW_ERR_TEXT_TOO_LARGE ": set a limit", conns.total, outlen);
    else
        buf = dw_pb_pack(&lr.base, outlen);
    reg_conns_free(&conns);
done:
    dw__list_query__free_unpacked(lq, NULL);
    return buf;
}

uint8_t *reg_query_edges_reply(reg_store *st, size_t *outlen)
{
    Dw__EdgesReply er = DW__EDGES_REPLY__INIT;
    reg_strs edges = {0};
    /* EdgesReply has no error field: a failed read answers no edges. */
    if (reg_store_edges(st, &edges) == 0) {
        er.edge_ids = edges.v;
        er.n_edge_ids = edges.n;
    }
    uint8_t *buf = dw_pb_pack(&er.base, outlen);
    reg_strs_free(&edges);
    return buf;
}

static uint8_t *presence_error(const char *err, size_t *outlen)
{
    Dw__PresenceReply pr = DW__PRESENCE_REPLY__INIT;
    pr.ok = 0;
    pr.error = (char *)err;
    return dw_pb_pack(&pr.base, outlen);
}

uint8_t *reg_query_presence_reply(reg_store *st, const void *data, size_t len, size_t max_bytes,
                                  size_t *outlen)
{
    Dw__PresenceQuery *pq = dw__presence_query__unpack(NULL, len, data ? data : (const void *)"");
    if (!pq) return presence_error(DW_ERR_TEXT_BAD_REQUEST, outlen);
    const char *room = pq->room ? pq->room : "";
    uint8_t *buf = NULL;
    if (!dw_room_valid(room, strlen(room))) {
        buf = presence_error(DW_ERR_TEXT_BAD_REQUEST ": room", outlen);
        goto done;
    }
    size_t limit = pq->limit ? pq->limit : REG_PRESENCE_DEFAULT_PAGE;
    if (limit > REG_PRESENCE_MAX_PAGE) limit = REG_PRESENCE_MAX_PAGE;
    reg_presence p;
    if (reg_store_presence(st, room, pq->after_user, limit, &p)) {
        buf = presence_error(DW_ERR_TEXT_INTERNAL, outlen);
        goto done;
    }
    Dw__PresenceReply pr = DW__PRESENCE_REPLY__INIT;
    Dw__PresenceUser *users = calloc(p.n ? p.n : 1, sizeof *users);
    Dw__PresenceUser **ptrs = calloc(p.n ? p.n : 1, sizeof *ptrs);
    if (!users || !ptrs) {
        free(users);
        free(ptrs);
        reg_presence_free(&p);
        buf = presence_error(DW_ERR_TEXT_INTERNAL, outlen);
        goto done;
    }
    for (size_t i = 0; i < p.n; i++) {
        dw__presence_user__init(&users[i]);
        users[i].user_id = p.users[i];
        users[i].connections = p.conns[i];
        ptrs[i] = &users[i];
    }
    pr.ok = 1;
    pr.users = ptrs;
    pr.n_users = p.n;
    pr.more = p.more;
    if (max_bytes && protobuf_c_message_get_packed_size(&pr.base) > max_bytes)
        buf = presence_error(DW_ERR_TEXT_TOO_LARGE ": set a smaller limit", outlen);
    else
        buf = dw_pb_pack(&pr.base, outlen);
    free(ptrs);
    free(users);
    reg_presence_free(&p);
done:
    dw__presence_query__free_unpacked(pq, NULL);
    return buf;
}

/* ---- NATS side -------------------------------------------------------- */

static reg_store *store_acquire(reg_query *q)
{
    pthread_rwlock_rdlock(&q->stlock);
    return q->st;
}

static void store_release(reg_query *q)
{
    pthread_rwlock_unlock(&q->stlock);
}

static void respond(reg_query *q, const char *reply, uint8_t *buf, size_t len)
{
    if (!buf) {
        DW_ERROR("out of memory building a reply", "%s", "");
        return;
    }
    natsStatus s = natsConnection_Publish(q->nc, reply, buf, (int)len);
    if (s != NATS_OK) DW_WARN("reply failed", "status=%s", natsStatus_GetText(s));
    free(buf);
}

static void respond_room(reg_query *q, const char *reply, const char *room, const char *err)
{
    size_t len = 0;
    uint8_t *buf = reg_query_room_reply(store_acquire(q), room, err, &len);
    store_release(q);
    respond(q, reply, buf, len);
}

/* Enter a callback; 0 when the store may not be touched any more. */
static int callback_enter(reg_query *q)
{
    pthread_mutex_lock(&q->mu);
    int ok = !q->closing;
    if (ok) q->active++;
    pthread_mutex_unlock(&q->mu);
    return ok;
}

static void callback_leave(reg_query *q)
{
    pthread_mutex_lock(&q->mu);
    if (--q->active == 0) pthread_cond_broadcast(&q->idle);
    pthread_mutex_unlock(&q->mu);
}

static void on_room(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    reg_query *q = arg;
    const char *reply = natsMsg_GetReply(msg);
    if (!reply || !*reply || !callback_enter(q)) {
        natsMsg_Destroy(msg);
        return;
    }
    char room[DW_ROOM_MAX + 1];
    uint64_t min_seq;
    const char *err = reg_query_room_parse(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg),
                                           room, &min_seq);
    if (err || min_seq <= atomic_load(&q->applied)) {
        respond_room(q, reply, room, err);
        goto done;
    }
    if (q->wait_ms <= 0) {
        respond_room(q, reply, room, "behind");
        goto done;
    }

    pthread_mutex_lock(&q->mu);
    /* Checked again under the lock: a notify that came after the first
     * check and before this lock would otherwise be missed. */
    const char *now_err = NULL;
    int answer_now = 0;
    if (min_seq <= atomic_load(&q->applied)) {
        answer_now = 1;
    } else if (q->n_parked >= REG_QUERY_MAX_PARKED) {
        answer_now = 1;
        now_err = "busy";
    } else {
        parked *p = calloc(1, sizeof *p);
        char *r = strdup(reply);
        if (!p || !r) {
            free(p);
            free(r);
            answer_now = 1;
            now_err = DW_ERR_TEXT_INTERNAL;
        } else {
            p->reply = r;
            memcpy(p->room, room, sizeof room);
            p->min_seq = min_seq;
            p->deadline_ns = dw_mono_ns() + q->wait_ms * 1000000LL;
            if (q->tail)
                q->tail->next = p;
            else
                q->head = p;
            q->tail = p;
            q->n_parked++;
            pthread_cond_signal(&q->cv);
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (answer_now) respond_room(q, reply, room, now_err);
done:
    callback_leave(q);
    natsMsg_Destroy(msg);
}

/* A paged query (list, presence): its reply is built from the request and
 * bounded by the connection's max payload. */
typedef uint8_t *(*paged_reply_fn)(reg_store *st, const void *data, size_t len, size_t max_bytes,
                                   size_t *out_len);

static void answer_paged(reg_query *q, natsMsg *msg, paged_reply_fn build)
{
    const char *reply = natsMsg_GetReply(msg);
    if (reply && *reply && callback_enter(q)) {
        size_t len = 0;
        int64_t maxp = natsConnection_GetMaxPayload(q->nc);
        uint8_t *buf = build(store_acquire(q), natsMsg_GetData(msg),
                             (size_t)natsMsg_GetDataLength(msg), maxp > 0 ? (size_t)maxp : 0, &len);
        store_release(q);
        respond(q, reply, buf, len);
        callback_leave(q);
    }
    natsMsg_Destroy(msg);
}

static void on_list(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    answer_paged(arg, msg, reg_query_list_reply);
}

static void on_edges(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    reg_query *q = arg;
    const char *reply = natsMsg_GetReply(msg);
    if (reply && *reply && callback_enter(q)) {
        size_t len = 0;
        uint8_t *buf = reg_query_edges_reply(store_acquire(q), &len);
        store_release(q);
        respond(q, reply, buf, len);
        callback_leave(q);
    }
    natsMsg_Destroy(msg);
}

static void on_presence(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    answer_paged(arg, msg, reg_query_presence_reply);
}

/* Take the parked queries that can be answered now (caught up, expired, or
 * all of them when stopping) off the list, in order. Called with q->mu held. */
static parked *take_ready(reg_query *q, int all)
{
    uint64_t applied = atomic_load(&q->applied);
    int64_t now = dw_mono_ns();
    parked *ready = NULL, **rtail = &ready, **pp = &q->head, *prev = NULL;
    while (*pp) {
        parked *p = *pp;
        if (all || p->min_seq <= applied || p->deadline_ns <= now) {
            *pp = p->next;
            if (q->tail == p) q->tail = prev;
            p->next = NULL;
            *rtail = p;
            rtail = &p->next;
            q->n_parked--;
        } else {
            prev = p;
            pp = &p->next;
        }
    }
    return ready;
}

static void answer_parked(reg_query *q, parked *list, int stopping)
{
    while (list) {
        parked *p = list;
        list = p->next;
        const char *err = NULL;
        if (p->min_seq > atomic_load(&q->applied)) err = stopping ? "shutting_down" : "behind";
        respond_room(q, p->reply, p->room, err);
        free(p->reply);
        free(p);
    }
}

static void *waiter_main(void *arg)
{
    reg_query *q = arg;
    pthread_mutex_lock(&q->mu);
    while (!q->closing) {
        parked *ready = take_ready(q, 0);
        if (ready) {
            pthread_mutex_unlock(&q->mu);
            answer_parked(q, ready, 0);
            pthread_mutex_lock(&q->mu);
            continue;
        }
        if (!q->head) {
            pthread_cond_wait(&q->cv, &q->mu);
            continue;
        }
        dw_cond_wait_until(&q->cv, &q->mu, q->head->deadline_ns);
    }
    parked *rest = take_ready(q, 1);
    pthread_mutex_unlock(&q->mu);
    answer_parked(q, rest, 1);
    return NULL;
}

void reg_query_notify(void *arg, uint64_t seq)
{
    reg_query *q = arg;
    /* Only forward: a late caller with an older seq must not undo a newer
     * one (a swapped-in table sets it directly, see reg_query_unlock_store). */
    uint64_t cur = atomic_load(&q->applied);
    while (seq > cur && !atomic_compare_exchange_weak(&q->applied, &cur, seq))
        ;
    pthread_mutex_lock(&q->mu);
    if (q->head) pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

int reg_query_start(reg_query **out, natsConnection *nc, reg_store *st, int64_t wait_ms)
{
    static const char *const subjects[N_SUBS] = {DW_SUBJ_REG_ROOM, DW_SUBJ_REG_LIST,
                                                 DW_SUBJ_REG_EDGES, DW_SUBJ_REG_PRESENCE};
    static natsMsgHandler const handlers[N_SUBS] = {on_room, on_list, on_edges, on_presence};
    reg_query *q = calloc(1, sizeof *q);
    *out = NULL;
    if (!q) return -1;
    q->nc = nc;
    q->st = st;
    atomic_store(&q->applied, reg_store_applied_seq(st));
    q->wait_ms = wait_ms;
    /* Writer preference: a swap must get in under a steady query load
     * (safe: no reader takes the lock twice). */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&q->stlock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&q->mu, NULL);
    /* The waiter's deadlines are on the monotonic clock (dw_mono_ns). */
    dw_cond_init_mono(&q->cv);
    pthread_cond_init(&q->idle, NULL);

    if (pthread_create(&q->waiter, NULL, waiter_main, q)) goto error;
    q->waiter_started = 1;
    for (int i = 0; i < N_SUBS; i++) {
        natsStatus s = natsConnection_QueueSubscribe(&q->subs[i], nc, subjects[i], DW_REG_QUEUE,
                                                     handlers[i], q);
        if (s != NATS_OK) {
            DW_ERROR("subscribe failed", "subject=%s status=%s", subjects[i],
                     natsStatus_GetText(s));
            goto error;
        }
    }
    *out = q;
    return 0;

error:
    reg_query_stop(q);
    reg_query_free(q);
    return -1;
}

void reg_query_stop(reg_query *q)
{
    if (!q) return;
    /* Drain: no new requests, but the ones already delivered to us are
     * answered. Room callbacks never block, so this is quick. */
    /* One deadline for all of them, short while NATS is away (with NATS
     * down the registry took 32 s to stop). A callback still running is
     * waited for below (q->active). */
    if (dw_subs_drain(q->nc, q->subs, N_SUBS, 5000, 500)) q->undrained = 1;

    pthread_mutex_lock(&q->mu);
    q->closing = 1;
    pthread_cond_broadcast(&q->cv);
    while (q->active > 0) /* a callback the drain did not cover */
        pthread_cond_wait(&q->idle, &q->mu);
    pthread_mutex_unlock(&q->mu);
    if (q->waiter_started) {
        pthread_join(q->waiter, NULL);
        q->waiter_started = 0;
    }
}

void reg_query_free(reg_query *q)
{
    if (!q) return;
    if (q->undrained) {
        /* Its callback may still run (and find closing set): better a
         * leak at exit than a use after free. */
        DW_WARN("query subscriptions did not drain", "%s", "");
        return;
    }
    pthread_cond_destroy(&q->cv);
    pthread_cond_destroy(&q->idle);
    pthread_mutex_destroy(&q->mu);
    pthread_rwlock_destroy(&q->stlock);
    free(q);
}

void reg_query_lock_store(reg_query *q)
{
    pthread_rwlock_wrlock(&q->stlock);
}

void reg_query_unlock_store(reg_query *q, reg_store *st)
{
    q->st = st;
    atomic_store(&q->applied, reg_store_applied_seq(st));
    pthread_rwlock_unlock(&q->stlock);
    /* Parked queries see the new table's position. */
    pthread_mutex_lock(&q->mu);
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}
