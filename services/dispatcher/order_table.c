/* The ordering core's tables (order_int.h): messages by sequence, rooms
 * by name, edges by id (chained hash tables that grow), the rooms waiting
 * for resolution, and each edge's queue (a ring). No NATS in here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order_int.h"

uint64_t order__hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

uint64_t order__hash_u64(uint64_t x)
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
int order__table_grow(void ***tab, size_t *cap, size_t n, size_t next_off,
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

uint64_t order__msg_key(const void *e)
{
    return order__hash_u64(((const order_msg *)e)->seq);
}

static uint64_t room_key(const void *e)
{
    return order__hash_str(((const order_room *)e)->name);
}

static uint64_t edge_key(const void *e)
{
    return order__hash_str(((const order_edge *)e)->id);
}

order_msg *order__msg_find(order *s, uint64_t seq)
{
    if (!s->mh_cap) return NULL;
    for (order_msg *m = s->mh[order__hash_u64(seq) & (s->mh_cap - 1)]; m; m = m->hnext)
        if (m->seq == seq) return m;
    return NULL;
}

void order__msg_unhash(order *s, order_msg *m)
{
    order_msg **pp = &s->mh[order__hash_u64(m->seq) & (s->mh_cap - 1)];
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
    for (order_room *r = s->rh[order__hash_str(name) & (s->rh_cap - 1)]; r; r = r->hnext)
        if (!strcmp(r->name, name)) return r;
    return NULL;
}

order_room *order__room_get(order *s, const char *name)
{
    order_room *r = room_find(s, name);
    if (r) return r;
    if (order__table_grow((void ***)&s->rh, &s->rh_cap, s->rh_n + 1, offsetof(order_room, hnext),
                          room_key))
        return NULL;
    if (!(r = calloc(1, sizeof *r)) || !(r->name = strdup(name))) {
        free(r);
        return NULL;
    }
    size_t b = order__hash_str(name) & (s->rh_cap - 1);
    r->hnext = s->rh[b];
    s->rh[b] = r;
    s->rh_n++;
    return r;
}

void order__pend_remove(order *s, order_room *r)
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

void order__pend_add(order *s, order_room *r)
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
void order__room_maybe_free(order *s, order_room *r)
{
    if (r->n_msgs || r->round) return;
    order__pend_remove(s, r);
    order_room **pp = &s->rh[order__hash_str(r->name) & (s->rh_cap - 1)];
    while (*pp && *pp != r)
        pp = &(*pp)->hnext;
    if (*pp) {
        *pp = r->hnext;
        s->rh_n--;
    }
    free(r->name);
    free(r);
}

order_edge *order__edge_get(order *s, const char *id)
{
    if (s->eh_cap)
        for (order_edge *e = s->eh[order__hash_str(id) & (s->eh_cap - 1)]; e; e = e->hnext)
            if (!strcmp(e->id, id)) return e;
    if (order__table_grow((void ***)&s->eh, &s->eh_cap, s->eh_n + 1, offsetof(order_edge, hnext),
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
    size_t b = order__hash_str(id) & (s->eh_cap - 1);
    e->hnext = s->eh[b];
    s->eh[b] = e;
    s->eh_n++;
    s->edges[s->n_edges++] = e;
    return e;
}

order_edge *order__edge_find(order *s, const char *id)
{
    if (!s->eh_cap) return NULL;
    for (order_edge *e = s->eh[order__hash_str(id) & (s->eh_cap - 1)]; e; e = e->hnext)
        if (!strcmp(e->id, id)) return e;
    return NULL;
}

/* An edge with nothing queued, nothing in flight and no backoff left is
 * forgotten (edges come and go with deploys). */
void order__edge_maybe_free(order *s, size_t idx, int64_t now_ms)
{
    order_edge *e = s->edges[idx];
    if (e->qlen || e->inflight || e->refs || e->next_ms > now_ms) return;
    order_edge **pp = &s->eh[order__hash_str(e->id) & (s->eh_cap - 1)];
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

int order__q_reserve(order_edge *e, size_t add)
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

item *order__q_at(order_edge *e, size_t i)
{
    return &e->q[(e->qhead + i) % e->qcap];
}
