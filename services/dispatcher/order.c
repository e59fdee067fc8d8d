#include "order.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "edges.h"
#include "dw/dlq_record.h"

/* Target states: where one message stands with one of its edges. */
enum {
    T_QUEUED = 0, /* in the edge's queue */
    T_INFLIGHT,   /* in the edge's request in flight */
    T_DONE,       /* the edge took it */
    T_GONE,       /* the edge is gone: nothing to do */
    T_FAILED,     /* given up after max_attempts */
};

struct order_target {
    struct order_edge *edge;
    uint8_t state;
    uint8_t last; /* order_outcome of the last failure */
    uint32_t attempts;
};

typedef struct item {
    order_msg *m;
    uint32_t t; /* target index */
} item;

typedef struct req {
    order_request pub;
    struct order_edge *edge;
    item *items;
    size_t n;
    struct req *prev, *next; /* in flight, oldest first */
} req;

typedef struct order_edge {
    char *id;
    item *q; /* ring */
    size_t qhead, qlen, qcap;
    req *inflight;
    int64_t next_ms;
    uint32_t failures, absences;
    size_t refs; /* targets of unsettled messages naming it */
    struct order_edge *hnext;
} order_edge;

typedef struct order_room {
    char *name;
    order_msg *head, *tail; /* unsettled, arrival (= seq) order */
    size_t n_msgs, n_unresolved;
    uint32_t round; /* the round it is in, 0 for none */
    uint32_t failures;
    int64_t next_ms; /* resolution backoff */
    int pending;     /* on s->pend */
    struct order_room *pend_prev, *pend_next;
    struct order_room *hnext;
} order_room;

typedef struct part_list {
    order_msg *head;
    size_t n;
} part_list;

struct order {
    order_cfg cfg;
    /* seq -> message */
    order_msg **mh;
    size_t mh_cap, mh_n;
    /* name -> room, id -> edge */
    order_room **rh;
    size_t rh_cap, rh_n;
    order_edge **eh;
    size_t eh_cap, eh_n;
    order_edge **edges; /* for taking turns */
    size_t n_edges, cap_edges, turn;
    /* rooms waiting for resolution */
    order_room *pend_head, *pend_tail;
    /* settled, oldest first */
    order_msg *set_head, *set_tail;
    part_list *parts;
    size_t n_parts;
    size_t held;
    /* the open round */
    uint32_t round_id;
    int round_open;
    order_query *rq;
    order_room **rq_rooms;
    size_t rq_n;
    /* requests in flight */
    req *req_head, *req_tail;
    size_t n_reqs;
    uint64_t next_req_id;
};

/* ---- small helpers ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

int64_t order_backoff(const order_cfg *cfg, uint32_t attempt)
{
    int64_t cap = cfg->retry_max_ms > 0 ? cfg->retry_max_ms : INT64_MAX;
    int64_t d = cfg->retry_base_ms > 0 ? cfg->retry_base_ms : 0;
    for (uint32_t a = 1; a < attempt && d < cap; a++)
        d = d > cap / 2 ? cap : d * 2;
    return d < cap ? d : cap;
}

/* Grow a pointer hash table (chained through an intrusive next field at
 * next_off) to keep the load at most 1. */
static int table_grow(void ***tab, size_t *cap, size_t n, size_t next_off,
                      uint64_t (*key)(const void *))
{
    if (*cap && n < *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    void **nt = calloc(ncap, sizeof *nt);
    if (!nt) return -1;
    for (size_t i = 0; i < *cap; i++) {
        void *e = (*tab)[i];
        while (e) {
            void **nextp = (void **)((char *)e + next_off);
            void *next = *nextp;
            size_t b = (size_t)key(e) & (ncap - 1);
            *nextp = nt[b];
            nt[b] = e;
            e = next;
        }
    }
    free(*tab);
    *tab = nt;
    *cap = ncap;
    return 0;
}

static uint64_t msg_key(const void *e)
{
    return hash_u64(((const order_msg *)e)->seq);
}

static uint64_t room_key(const void *e)
{
    return hash_str(((const order_room *)e)->name);
}

static uint64_t edge_key(const void *e)
{
    return hash_str(((const order_edge *)e)->id);
}

static order_msg *msg_find(order *s, uint64_t seq)
{
    if (!s->mh_cap) return NULL;
    for (order_msg *m = s->mh[hash_u64(seq) & (s->mh_cap - 1)]; m; m = m->hnext)
        if (m->seq == seq) return m;
    return NULL;
}

static void msg_unhash(order *s, order_msg *m)
{
    order_msg **pp = &s->mh[hash_u64(m->seq) & (s->mh_cap - 1)];
    while (*pp && *pp != m)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = m->hnext;
        s->mh_n--;
    }
    m->hnext = NULL;
}

static order_room *room_find(order *s, const char *name)
{
    if (!s->rh_cap) return NULL;
    for (order_room *r = s->rh[hash_str(name) & (s->rh_cap - 1)]; r; r = r->hnext)
        if (!strcmp(r->name, name)) return r;
    return NULL;
}

static order_room *room_get(order *s, const char *name)
{
    order_room *r = room_find(s, name);
    if (r) return r;
    if (table_grow((void ***)&s->rh, &s->rh_cap, s->rh_n + 1, offsetof(order_room, hnext),
                   room_key))
        return NULL;
    if (!(r = calloc(1, sizeof *r)) || !(r->name = strdup(name))) {
        free(r);
        return NULL;
    }
    size_t b = hash_str(name) & (s->rh_cap - 1);
    r->hnext = s->rh[b];
    s->rh[b] = r;
    s->rh_n++;
    return r;
}

static void pend_remove(order *s, order_room *r)
{
    if (!r->pending) return;
    if (r->pend_prev)
        r->pend_prev->pend_next = r->pend_next;
    else
        s->pend_head = r->pend_next;
    if (r->pend_next)
        r->pend_next->pend_prev = r->pend_prev;
    else
        s->pend_tail = r->pend_prev;
    r->pend_prev = r->pend_next = NULL;
    r->pending = 0;
}

static void pend_add(order *s, order_room *r)
{
    if (r->pending) return;
    r->pend_prev = s->pend_tail;
    r->pend_next = NULL;
    if (s->pend_tail)
        s->pend_tail->pend_next = r;
    else
        s->pend_head = r;
    s->pend_tail = r;
    r->pending = 1;
}

/* A room with no message and in no round is forgotten. */
static void room_maybe_free(order *s, order_room *r)
{
    if (r->n_msgs || r->round) return;
    pend_remove(s, r);
    order_room **pp = &s->rh[hash_str(r->name) & (s->rh_cap - 1)];
    while (*pp && *pp != r)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = r->hnext;
        s->rh_n--;
    }
    free(r->name);
    free(r);
}

static order_edge *edge_get(order *s, const char *id)
{
    if (s->eh_cap)
        for (order_edge *e = s->eh[hash_str(id) & (s->eh_cap - 1)]; e; e = e->hnext)
            if (!strcmp(e->id, id)) return e;
    if (table_grow((void ***)&s->eh, &s->eh_cap, s->eh_n + 1, offsetof(order_edge, hnext),
                   edge_key))
        return NULL;
    if (s->n_edges == s->cap_edges) {
        size_t nc = s->cap_edges ? s->cap_edges * 2 : 16;
        order_edge **v = realloc(s->edges, nc * sizeof *v);
        if (!v) return NULL;
        s->edges = v;
        s->cap_edges = nc;
    }
    order_edge *e = calloc(1, sizeof *e);
    if (!e || !(e->id = strdup(id))) {
        free(e);
        return NULL;
    }
    size_t b = hash_str(id) & (s->eh_cap - 1);
    e->hnext = s->eh[b];
    s->eh[b] = e;
    s->eh_n++;
    s->edges[s->n_edges++] = e;
    return e;
}

static order_edge *edge_find(order *s, const char *id)
{
    if (!s->eh_cap) return NULL;
    for (order_edge *e = s->eh[hash_str(id) & (s->eh_cap - 1)]; e; e = e->hnext)
        if (!strcmp(e->id, id)) return e;
    return NULL;
}

/* An edge with nothing queued, nothing in flight and no backoff left is
 * forgotten (edges come and go with deploys). */
static void edge_maybe_free(order *s, size_t idx, int64_t now_ms)
{
    order_edge *e = s->edges[idx];
    if (e->qlen || e->inflight || e->refs || e->next_ms > now_ms) return;
    order_edge **pp = &s->eh[hash_str(e->id) & (s->eh_cap - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = e->hnext;
        s->eh_n--;
    }
    s->edges[idx] = s->edges[--s->n_edges];
    free(e->q);
    free(e->id);
    free(e);
}

static int q_reserve(order_edge *e, size_t add)
{
    if (e->qlen + add <= e->qcap) return 0;
    size_t nc = e->qcap ? e->qcap * 2 : 64;
    while (nc < e->qlen + add)
        nc *= 2;
    item *nq = malloc(nc * sizeof *nq);
    if (!nq) return -1;
    for (size_t i = 0; i < e->qlen; i++)
        nq[i] = e->q[(e->qhead + i) % e->qcap];
    free(e->q);
    e->q = nq;
    e->qcap = nc;
    e->qhead = 0;
    return 0;
}

static item *q_at(order_edge *e, size_t i)
{
    return &e->q[(e->qhead + i) % e->qcap];
}

/* ---- messages ---- */

static void msg_free(order *s, order_msg *m)
{
    if (m->handle && s->cfg.release) s->cfg.release(m->handle);
    if (m->chat) dw__chat_message__free_unpacked(m->chat, NULL);
    for (size_t i = 0; i < m->n_failed_edges; i++)
        free(m->failed_edges[i]);
    free(m->failed_edges);
    for (size_t i = 0; i < m->n_only; i++)
        free(m->only[i]);
    free(m->only);
    free(m->targets);
    free(m);
}

/* Freed once nobody can reach it any more: released or dropped, and no
 * request in flight carries it. */
static void msg_maybe_free(order *s, order_msg *m)
{
    if ((m->released || (m->dropped && !m->popped)) && !m->inflight) msg_free(s, m);
}

static void room_unlink(order *s, order_msg *m)
{
    order_room *r = m->room;
    if (!r) return;
    if (m->prev)
        m->prev->next = m->next;
    else
        r->head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        r->tail = m->prev;
    m->prev = m->next = NULL;
    r->n_msgs--;
    if (!m->resolved) r->n_unresolved--;
    m->room = NULL;
    room_maybe_free(s, r);
}

static void part_unlink(order *s, order_msg *m)
{
    part_list *pl = &s->parts[m->part];
    if (m->part_prev)
        m->part_prev->part_next = m->part_next;
    else
        pl->head = m->part_next;
    if (m->part_next) m->part_next->part_prev = m->part_prev;
    m->part_prev = m->part_next = NULL;
    pl->n--;
    s->held--;
}

static void attempt_note(order_msg *m, int64_t now_ms)
{
    m->attempts++;
    if (m->n_attempt_ms < ORDER_ATTEMPTS_KEPT) m->attempt_ms[m->n_attempt_ms++] = now_ms;
}

/* The message no longer needs its edges (settled or dropped). */
static void targets_unref(order_msg *m)
{
    for (uint32_t i = 0; i < m->n_targets; i++)
        m->targets[i].edge->refs--;
    m->n_targets = 0; /* the states stay readable through r->items[].t */
}

static void settle(order *s, order_msg *m, order_verdict v)
{
    if (m->settled) return;
    m->settled = 1;
    m->verdict = v;
    targets_unref(m);
    room_unlink(s, m);
    m->prev = s->set_tail;
    m->next = NULL;
    if (s->set_tail)
        s->set_tail->next = m;
    else
        s->set_head = m;
    s->set_tail = m;
}

/* Every target is done: ack, or dead-letter what failed. */
static void settle_if_done(order *s, order_msg *m)
{
    if (m->settled || !m->resolved || m->open) return;
    size_t n_failed = 0, timeouts = 0;
    for (uint32_t i = 0; i < m->n_targets; i++)
        if (m->targets[i].state == T_FAILED) {
            n_failed++;
            if (m->targets[i].last == ORDER_TIMEOUT) timeouts++;
        }
    if (!n_failed) {
        settle(s, m, ORDER_ACK);
        return;
    }
    const char **ids = malloc(n_failed * sizeof *ids);
    m->failed_edges = calloc(n_failed, sizeof *m->failed_edges);
    if (ids && m->failed_edges) {
        for (uint32_t i = 0; i < m->n_targets; i++)
            if (m->targets[i].state == T_FAILED) {
                ids[m->n_failed_edges] = m->targets[i].edge->id;
                m->failed_edges[m->n_failed_edges] = strdup(m->targets[i].edge->id);
                if (m->failed_edges[m->n_failed_edges]) m->n_failed_edges++;
            }
        dlq_reason_edges(m->reason, sizeof m->reason,
                         timeouts ? DLQ_REASON_EDGE_TIMEOUT : DLQ_REASON_EDGE_ERROR, ids,
                         m->n_failed_edges);
    } else {
        snprintf(m->reason, sizeof m->reason, "%s",
                 timeouts ? DLQ_REASON_EDGE_TIMEOUT : DLQ_REASON_EDGE_ERROR);
    }
    free(ids);
    settle(s, m, ORDER_DEAD);
}

int order_create(order **out, const order_cfg *cfg)
{
    order *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->cfg = *cfg;
    if (s->cfg.max_attempts < 1) s->cfg.max_attempts = 1;
    if (!s->cfg.max_round_rooms) s->cfg.max_round_rooms = 1024;
    if (!s->cfg.max_request_bytes) s->cfg.max_request_bytes = 512 * 1024;
    *out = s;
    return 0;
}

void order_destroy(order *s)
{
    if (!s) return;
    while (s->req_head) {
        req *r = s->req_head;
        s->req_head = r->next;
        for (size_t i = 0; i < r->n; i++) {
            order_msg *m = r->items[i].m;
            /* Released or dropped ones are on no list any more. */
            if (!--m->inflight && (m->released || m->dropped)) msg_free(s, m);
        }
        free(r->items);
        free(r->pub.buf);
        free(r);
    }
    for (size_t p = 0; p < s->n_parts; p++) {
        order_msg *m = s->parts[p].head;
        while (m) {
            order_msg *n = m->part_next;
            msg_free(s, m);
            m = n;
        }
    }
    /* Released messages whose request was in flight were freed above only
     * if still listed; settled-and-popped ones are the caller's. */
    for (size_t i = 0; i < s->rh_cap; i++) {
        order_room *r = s->rh[i];
        while (r) {
            order_room *n = r->hnext;
            free(r->name);
            free(r);
            r = n;
        }
    }
    for (size_t i = 0; i < s->n_edges; i++) {
        free(s->edges[i]->q);
        free(s->edges[i]->id);
        free(s->edges[i]);
    }
    free(s->edges);
    free(s->eh);
    free(s->rh);
    free(s->mh);
    free(s->parts);
    free(s->rq);
    free(s->rq_rooms);
    free(s);
}

static int chat_usable(const Dw__ChatMessage *c)
{
    return c->id && *c->id && c->room && dw_room_valid(c->room, strlen(c->room));
}

int order_add(order *s, uint32_t part, uint64_t seq, void *handle, const void *data, size_t len,
              char *const *only, size_t n_only, int has_only, int64_t now_ms, void **old_handle)
{
    if (old_handle) *old_handle = NULL;
    order_msg *dup = msg_find(s, seq);
    if (dup) {
        if (old_handle) *old_handle = dup->handle;
        dup->handle = handle;
        return ORDER_DUPLICATE;
    }
    if (part >= s->n_parts) {
        size_t np = (size_t)part + 1;
        part_list *v = realloc(s->parts, np * sizeof *v);
        if (!v) return -1;
        memset(v + s->n_parts, 0, (np - s->n_parts) * sizeof *v);
        s->parts = v;
        s->n_parts = np;
    }
    if (table_grow((void ***)&s->mh, &s->mh_cap, s->mh_n + 1, offsetof(order_msg, hnext), msg_key))
        return -1;
    order_msg *m = calloc(1, sizeof *m);
    if (!m) return -1;
    m->seq = seq;
    m->part = part;
    m->fetched_ms = m->progress_ms = now_ms;
    m->chat = dw__chat_message__unpack(NULL, len, data);
    if (m->chat && !chat_usable(m->chat)) {
        dw__chat_message__free_unpacked(m->chat, NULL);
        m->chat = NULL;
    }
    if (has_only) {
        m->has_only = 1;
        if (n_only && !(m->only = calloc(n_only, sizeof *m->only))) goto oom;
        for (size_t i = 0; i < n_only; i++) {
            if (!(m->only[i] = strdup(only[i] ? only[i] : ""))) goto oom;
            m->n_only++;
        }
    }
    order_room *r = NULL;
    if (m->chat && !(r = room_get(s, m->chat->room))) goto oom;
    /* From here on nothing fails. */
    m->handle = handle;
    size_t b = hash_u64(seq) & (s->mh_cap - 1);
    m->hnext = s->mh[b];
    s->mh[b] = m;
    s->mh_n++;
    part_list *pl = &s->parts[part];
    m->part_next = pl->head;
    if (pl->head) pl->head->part_prev = m;
    pl->head = m;
    pl->n++;
    s->held++;
    if (!m->chat) {
        /* Nothing can ever deliver it: straight to the dead letters. */
        snprintf(m->reason, sizeof m->reason, "%s", DLQ_REASON_POISON);
        m->resolved = 1;
        settle(s, m, ORDER_DEAD);
        return ORDER_ADDED;
    }
    m->room = r;
    m->prev = r->tail;
    if (r->tail)
        r->tail->next = m;
    else
        r->head = m;
    r->tail = m;
    r->n_msgs++;
    r->n_unresolved++;
    pend_add(s, r);
    return ORDER_ADDED;

oom:
    msg_free(s, m);
    return -1;
}

/* ---- resolution ---- */

int order_round_open(const order *s)
{
    return s->round_open;
}

int order_round_begin(order *s, int64_t now_ms, order_query **q, size_t *n)
{
    *q = NULL;
    *n = 0;
    if (s->round_open) return 0;
    size_t cap = 0;
    for (order_room *r = s->pend_head; r && cap < s->cfg.max_round_rooms; r = r->pend_next)
        if (r->next_ms <= now_ms && r->n_unresolved) cap++;
    if (!cap) return 0;
    order_query *nq = realloc(s->rq, cap * sizeof *nq);
    if (!nq) return -1;
    s->rq = nq;
    order_room **nr = realloc(s->rq_rooms, cap * sizeof *nr);
    if (!nr) return -1;
    s->rq_rooms = nr;
    if (!++s->round_id) s->round_id = 1;
    size_t k = 0;
    order_room *r = s->pend_head;
    while (r && k < cap) {
        order_room *next = r->pend_next;
        if (r->next_ms <= now_ms && r->n_unresolved) {
            uint64_t min_seq = 0;
            for (order_msg *m = r->head; m; m = m->next)
                if (!m->resolved) {
                    m->round = s->round_id;
                    if (m->chat->conn_seq > min_seq) min_seq = m->chat->conn_seq;
                }
            r->round = s->round_id;
            pend_remove(s, r);
            s->rq[k] = (order_query){.room = r->name, .min_seq = min_seq, .answered = 0};
            s->rq_rooms[k] = r;
            k++;
        } else if (!r->n_unresolved) {
            pend_remove(s, r);
        }
        r = next;
    }
    s->rq_n = k;
    s->round_open = 1;
    *q = s->rq;
    *n = k;
    return 0;
}

static int names_have(char *const *list, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i], id)) return 1;
    return 0;
}

/* Bind message m to the room's edges and queue it on each. */
static int resolve_msg(order *s, order_msg *m, order_edge *const *edges, size_t n, int64_t now_ms)
{
    uint32_t k = 0;
    if (n && !(m->targets = calloc(n, sizeof *m->targets))) return -1;
    for (size_t i = 0; i < n; i++) {
        if (m->has_only && !names_have(m->only, m->n_only, edges[i]->id)) continue;
        if (q_reserve(edges[i], 1)) {
            /* Undo what was queued: the message stays unresolved. */
            for (uint32_t j = 0; j < k; j++) {
                order_edge *e = m->targets[j].edge;
                e->qlen--;
                e->refs--;
            }
            free(m->targets);
            m->targets = NULL;
            return -1;
        }
        m->targets[k] = (order_target){.edge = edges[i], .state = T_QUEUED};
        edges[i]->refs++;
        *q_at(edges[i], edges[i]->qlen) = (item){m, k};
        edges[i]->qlen++;
        k++;
    }
    m->n_targets = m->open = k;
    m->resolved = 1;
    m->resolved_ms = now_ms;
    m->round = 0;
    if (m->room) m->room->n_unresolved--;
    return 0;
}

int order_round_room_edges(order *s, size_t i, char *const *ids, size_t n, int64_t now_ms)
{
    order_room *r = s->rq_rooms[i];
    order_edge **edges = NULL;
    size_t ne = 0;
    int rc = 0;
    if (s->rq[i].answered) return 0;
    s->rq[i].answered = 1;
    if (n && !(edges = malloc(n * sizeof *edges))) goto oom;
    for (size_t k = 0; k < n; k++) {
        if (!ids[k] || !edges_id_valid(ids[k], strlen(ids[k]))) continue;
        order_edge *e = edge_get(s, ids[k]);
        if (!e) goto oom;
        int dup = 0;
        for (size_t j = 0; j < ne && !dup; j++)
            dup = edges[j] == e;
        if (!dup) edges[ne++] = e;
    }
    for (order_msg *m = r->head, *next; m; m = next) {
        next = m->next;
        if (m->resolved || m->round != s->round_id) continue;
        if (resolve_msg(s, m, edges, ne, now_ms)) goto oom;
        settle_if_done(s, m);
    }
    r->failures = 0;
    r->next_ms = 0;
    free(edges);
    return 0;
oom:
    free(edges);
    rc = -1;
    s->rq[i].answered = 0;
    order_round_room_failed(s, i, DLQ_REASON_DISPATCHER, now_ms);
    return rc;
}

size_t order_round_room_failed(order *s, size_t i, const char *reason, int64_t now_ms)
{
    order_room *r = s->rq_rooms[i];
    size_t n = 0;
    if (s->rq[i].answered) return 0;
    s->rq[i].answered = 1;
    r->failures++;
    r->next_ms = now_ms + order_backoff(&s->cfg, r->failures);
    for (order_msg *m = r->head, *next; m; m = next) {
        next = m->next;
        if (m->resolved || m->round != s->round_id) continue;
        m->round = 0;
        attempt_note(m, now_ms);
        n++;
        if (m->attempts >= s->cfg.max_attempts) {
            snprintf(m->reason, sizeof m->reason, "%s", reason);
            m->resolved = 1; /* given up: nothing to resolve any more */
            r->n_unresolved--;
            settle(s, m, ORDER_DEAD);
        }
    }
    return n;
}

size_t order_round_end(order *s, int64_t now_ms)
{
    size_t n = 0;
    if (!s->round_open) return 0;
    for (size_t i = 0; i < s->rq_n; i++) {
        order_room *r = s->rq_rooms[i];
        if (!s->rq[i].answered) n += order_round_room_failed(s, i, DLQ_REASON_REGISTRY, now_ms);
        r->round = 0;
        if (r->n_unresolved)
            pend_add(s, r);
        else
            room_maybe_free(s, r);
    }
    s->rq_n = 0;
    s->round_open = 0;
    return n;
}

/* ---- requests ---- */

static void item_init(Dw__DeliveryItem *it, const order_msg *m)
{
    dw__delivery_item__init(it);
    it->id = m->chat->id;
    it->room = m->chat->room;
    it->seq = m->seq;
    it->data = m->chat->data;
    it->from_user = m->chat->user_id;
    it->from_conn = m->chat->conn_id;
    it->ts_ms = m->chat->ts_ms;
    it->data_json = m->chat->data_json;
    it->exclude_sender = m->chat->exclude_sender;
    it->client_id = m->chat->client_id;
}

static size_t varint_len(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Drop items at the head of e's queue that need nothing any more (their
 * target went away: the edge gone, the message dropped). */
static int item_live(const item *it)
{
    return !it->m->dropped && it->m->targets[it->t].state == T_QUEUED;
}

order_request *order_next_request(order *s, int64_t now_ms)
{
    for (size_t idx = s->n_edges; idx-- > 0;) {
        order_edge *e = s->edges[idx];
        while (e->qlen && !item_live(q_at(e, 0))) {
            e->qhead = (e->qhead + 1) % e->qcap;
            e->qlen--;
        }
        edge_maybe_free(s, idx, now_ms);
    }
    for (size_t k = 0; k < s->n_edges; k++) {
        size_t idx = (s->turn + k) % s->n_edges;
        order_edge *e = s->edges[idx];
        if (!e->qlen || e->inflight || e->next_ms > now_ms) continue;
        /* Take from the head while the request stays under the size cap. */
        size_t n = 0, bytes = 0;
        for (size_t i = 0; i < e->qlen; i++) {
            item *it = q_at(e, i);
            if (!item_live(it)) {
                n++;
                continue;
            }
            Dw__DeliveryItem di;
            item_init(&di, it->m);
            size_t body = protobuf_c_message_get_packed_size(&di.base);
            size_t sz = 1 + varint_len(body) + body;
            if (n && bytes + sz > s->cfg.max_request_bytes) break;
            bytes += sz;
            n++;
        }
        req *r = calloc(1, sizeof *r);
        item *items = r ? malloc(n * sizeof *items) : NULL;
        Dw__DeliveryItem *dis = items ? malloc(n * sizeof *dis) : NULL;
        Dw__DeliveryItem **ptrs = dis ? malloc(n * sizeof *ptrs) : NULL;
        if (!ptrs) {
            free(dis);
            free(items);
            free(r);
            return NULL;
        }
        size_t live = 0;
        for (size_t i = 0; i < n; i++) {
            item it = *q_at(e, 0);
            e->qhead = (e->qhead + 1) % e->qcap;
            e->qlen--;
            if (!item_live(&it)) continue;
            items[live] = it;
            item_init(&dis[live], it.m);
            ptrs[live] = &dis[live];
            live++;
        }
        if (!live) {
            free(ptrs);
            free(dis);
            free(items);
            free(r);
            continue;
        }
        Dw__Delivery del;
        dw__delivery__init(&del);
        del.n_items = live;
        del.items = ptrs;
        r->pub.buf = dw_pb_pack(&del.base, &r->pub.len);
        free(ptrs);
        free(dis);
        if (!r->pub.buf) {
            /* Put them back as they were: nothing was sent. */
            q_reserve(e, 0);
            for (size_t i = live; i-- > 0;) {
                e->qhead = (e->qhead + e->qcap - 1) % e->qcap;
                *q_at(e, 0) = items[i];
                e->qlen++;
            }
            free(items);
            free(r);
            return NULL;
        }
        for (size_t i = 0; i < live; i++) {
            items[i].m->targets[items[i].t].state = T_INFLIGHT;
            items[i].m->inflight++;
        }
        r->items = items;
        r->n = live;
        r->edge = e;
        r->pub.id = ++s->next_req_id;
        r->pub.edge = e->id;
        r->pub.n_items = live;
        r->pub.sent_ms = now_ms;
        r->prev = s->req_tail;
        if (s->req_tail)
            s->req_tail->next = r;
        else
            s->req_head = r;
        s->req_tail = r;
        s->n_reqs++;
        e->inflight = r;
        s->turn = (idx + 1) % (s->n_edges ? s->n_edges : 1);
        return &r->pub;
    }
    return NULL;
}

/* Put the request's items back at the head of the edge's queue, in order. */
static void requeue(order_edge *e, req *r)
{
    size_t back = 0;
    for (size_t i = 0; i < r->n; i++)
        if (r->items[i].m->targets[r->items[i].t].state == T_QUEUED) back++;
    if (q_reserve(e, back)) {
        /* Out of memory: these targets cannot wait; give them up. */
        for (size_t i = 0; i < r->n; i++) {
            order_target *t = &r->items[i].m->targets[r->items[i].t];
            if (t->state == T_QUEUED) {
                t->state = T_FAILED;
                r->items[i].m->open--;
            }
        }
        return;
    }
    for (size_t i = r->n; i-- > 0;) {
        if (r->items[i].m->targets[r->items[i].t].state != T_QUEUED) continue;
        e->qhead = (e->qhead + e->qcap - 1) % e->qcap;
        *q_at(e, 0) = r->items[i];
        e->qlen++;
    }
}

void order_request_done(order *s, order_request *pub, order_outcome outcome, int64_t now_ms)
{
    req *r = (req *)pub;
    order_edge *e = r->edge;
    if (r->prev)
        r->prev->next = r->next;
    else
        s->req_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->req_tail = r->prev;
    s->n_reqs--;
    if (e && e->inflight == r) e->inflight = NULL;

    if (outcome == ORDER_OK) {
        if (e) e->failures = e->absences = 0;
    } else if (outcome == ORDER_NO_RESPONDERS) {
        if (e) {
            e->absences++;
            int64_t d = order_backoff(&s->cfg, e->absences);
            if (s->cfg.absent_retry_ms > 0 && d > s->cfg.absent_retry_ms)
                d = s->cfg.absent_retry_ms;
            e->next_ms = now_ms + d;
        }
    } else if (e) {
        e->failures++;
        e->next_ms = now_ms + order_backoff(&s->cfg, e->failures);
    }
    for (size_t i = 0; i < r->n; i++) {
        order_msg *m = r->items[i].m;
        order_target *t = &m->targets[r->items[i].t];
        m->inflight--;
        if (t->state == T_INFLIGHT && !m->dropped) {
            if (outcome == ORDER_OK) {
                t->state = T_DONE;
                m->open--;
            } else if (outcome == ORDER_NO_RESPONDERS) {
                t->state = T_QUEUED;
            } else {
                t->attempts++;
                t->last = (uint8_t)outcome;
                attempt_note(m, now_ms);
                if (t->attempts >= s->cfg.max_attempts) {
                    t->state = T_FAILED;
                    m->open--;
                } else {
                    t->state = T_QUEUED;
                }
            }
        }
    }
    if (e && outcome != ORDER_OK) requeue(e, r);
    for (size_t i = 0; i < r->n; i++) {
        order_msg *m = r->items[i].m;
        if (!m->dropped && !m->released) settle_if_done(s, m);
    }
    /* Last: a message dropped or released meanwhile may go now. */
    for (size_t i = 0; i < r->n; i++) {
        order_msg *m = r->items[i].m;
        /* The same message appears at most once per request. */
        msg_maybe_free(s, m);
    }
    free(r->items);
    free(r->pub.buf);
    free(r);
}

size_t order_requests_older(order *s, int64_t before_ms, order_request **out, size_t max)
{
    size_t n = 0;
    for (req *r = s->req_head; r && n < max; r = r->next)
        if (r->pub.sent_ms <= before_ms) out[n++] = &r->pub;
    return n;
}

void order_edge_gone(order *s, const char *edge_id, int64_t now_ms)
{
    order_edge *e = edge_find(s, edge_id);
    if (!e) return;
    /* Collect first: settling changes nothing in the queue, but keep the
     * walk simple. */
    for (size_t i = 0; i < e->qlen; i++) {
        item *it = q_at(e, i);
        order_target *t = &it->m->targets[it->t];
        if (it->m->dropped || t->state != T_QUEUED) continue;
        t->state = T_GONE;
        it->m->open--;
        settle_if_done(s, it->m);
    }
    e->qlen = 0;
    e->qhead = 0;
    if (e->inflight) {
        req *r = e->inflight;
        for (size_t i = 0; i < r->n; i++) {
            order_msg *m = r->items[i].m;
            order_target *t = &m->targets[r->items[i].t];
            if (m->dropped || t->state != T_INFLIGHT) continue;
            t->state = T_GONE;
            m->open--;
            settle_if_done(s, m);
        }
    }
    e->failures = e->absences = 0;
    e->next_ms = 0;
}

/* ---- settling ---- */

order_msg *order_settled_pop(order *s)
{
    order_msg *m = s->set_head;
    if (!m) return NULL;
    s->set_head = m->next;
    if (s->set_head)
        s->set_head->prev = NULL;
    else
        s->set_tail = NULL;
    m->prev = m->next = NULL;
    m->popped = 1;
    return m;
}

void order_settled_push_back(order *s, order_msg *m)
{
    m->popped = 0;
    if (m->dropped) {
        msg_maybe_free(s, m);
        return;
    }
    m->prev = s->set_tail;
    m->next = NULL;
    if (s->set_tail)
        s->set_tail->next = m;
    else
        s->set_head = m;
    s->set_tail = m;
}

void order_msg_release(order *s, order_msg *m)
{
    if (!m || m->released) return;
    m->released = 1;
    m->popped = 0;
    if (!m->dropped) {
        msg_unhash(s, m);
        part_unlink(s, m);
    }
    msg_maybe_free(s, m);
}

/* ---- partitions, timers ---- */

size_t order_drop_partition(order *s, uint32_t part)
{
    if (part >= s->n_parts) return 0;
    size_t n = 0;
    order_msg *m = s->parts[part].head;
    while (m) {
        order_msg *next = m->part_next;
        m->dropped = 1;
        msg_unhash(s, m);
        if (m->settled && !m->popped) {
            /* Unlink from the settled list (it was not popped yet). */
            if (m->prev)
                m->prev->next = m->next;
            else if (s->set_head == m)
                s->set_head = m->next;
            if (m->next)
                m->next->prev = m->prev;
            else if (s->set_tail == m)
                s->set_tail = m->prev;
            m->prev = m->next = NULL;
        } else if (!m->settled) {
            room_unlink(s, m);
            targets_unref(m);
        }
        n++;
        m = next;
    }
    /* Queues hold pointers to them: take them out before freeing. */
    for (size_t i = 0; i < s->n_edges; i++) {
        order_edge *e = s->edges[i];
        size_t w = 0;
        for (size_t k = 0; k < e->qlen; k++) {
            item it = *q_at(e, k);
            if (it.m->dropped) continue;
            *q_at(e, w++) = it;
        }
        e->qlen = w;
    }
    m = s->parts[part].head;
    while (m) {
        order_msg *next = m->part_next;
        m->part_next = m->part_prev = NULL;
        s->held--;
        msg_maybe_free(s, m);
        m = next;
    }
    s->parts[part].head = NULL;
    s->parts[part].n = 0;
    return n;
}

size_t order_held(const order *s, uint32_t part)
{
    return part < s->n_parts ? s->parts[part].n : 0;
}

uint64_t order_min_seq(const order *s, uint32_t part)
{
    uint64_t min = 0;
    if (part >= s->n_parts) return 0;
    for (const order_msg *m = s->parts[part].head; m; m = m->part_next)
        if (!min || m->seq < min) min = m->seq;
    return min;
}

size_t order_held_total(const order *s)
{
    return s->held;
}

size_t order_inflight_of(const order *s, uint32_t part)
{
    size_t n = 0;
    for (const req *r = s->req_head; r; r = r->next)
        for (size_t i = 0; i < r->n; i++)
            if (r->items[i].m->part == part) {
                n++;
                break;
            }
    return n;
}

size_t order_progress_due(order *s, int64_t now_ms, int64_t every_ms, void **out, size_t max)
{
    size_t n = 0;
    for (size_t p = 0; p < s->n_parts; p++)
        for (order_msg *m = s->parts[p].head; m && n < max; m = m->part_next) {
            if (m->settled || now_ms - m->progress_ms < every_ms) continue;
            m->progress_ms = now_ms;
            out[n++] = m->handle;
        }
    return n;
}

int64_t order_next_wake(const order *s)
{
    int64_t t = INT64_MAX;
    for (const order_room *r = s->pend_head; r; r = r->pend_next)
        if (r->n_unresolved && r->next_ms < t) t = r->next_ms;
    for (size_t i = 0; i < s->n_edges; i++) {
        const order_edge *e = s->edges[i];
        if (e->qlen && !e->inflight && e->next_ms < t) t = e->next_ms;
    }
    return t;
}

void order_get_stats(const order *s, order_stats *st)
{
    memset(st, 0, sizeof *st);
    st->held = s->held;
    st->inflight_requests = s->n_reqs;
    st->edges = s->n_edges;
    st->rooms = s->rh_n;
    for (size_t i = 0; i < s->n_edges; i++)
        st->queued_items += s->edges[i]->qlen;
    for (size_t i = 0; i < s->rh_cap; i++)
        for (const order_room *r = s->rh[i]; r; r = r->hnext)
            st->unresolved += r->n_unresolved;
}
