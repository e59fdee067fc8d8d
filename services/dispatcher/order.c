/* The ordering core (order.h): a message's life from order_add to its
 * release, settling (ack or dead letter), partitions and clocks. Rounds
 * are in order_round.c, edge requests in order_request.c, the tables in
 * order_table.c (order_int.h). No NATS in here. */
#include "order.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order_int.h"
#include "dw/bus.h"
#include "dw/dlq_record.h"

/* ---- messages ---- */

void order__msg_free(order *s, order_msg *m)
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
    free(m->reason);
    free(m->attempt_ms);
    free(m);
}

/* Freed once nobody can reach it any more: released or dropped, and no
 * request in flight carries it. */
void order__msg_maybe_free(order *s, order_msg *m)
{
    if ((m->released || (m->dropped && !m->popped)) && !m->inflight) order__msg_free(s, m);
}

void order__room_unlink(order *s, order_msg *m)
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
    order__room_maybe_free(s, r);
}

void order__part_unlink(order *s, order_msg *m)
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

void order__attempt_note(order_msg *m, int64_t now_ms)
{
    m->attempts++;
    if (!m->attempt_ms && !(m->attempt_ms = malloc(ORDER_ATTEMPTS_KEPT * sizeof *m->attempt_ms)))
        return; /* the count is kept, the times are only for the dead letter */
    if (m->n_attempt_ms < ORDER_ATTEMPTS_KEPT) m->attempt_ms[m->n_attempt_ms++] = now_ms;
}

void order__reason_set(order_msg *m, const char *text)
{
    free(m->reason);
    m->reason = strdup(text);
}

/* The message no longer needs its edges (settled or dropped). */
void order__targets_unref(order_msg *m)
{
    for (uint32_t i = 0; i < m->n_targets; i++)
        m->targets[i].edge->refs--;
    m->n_targets = 0; /* the states stay readable through r->items[].t */
}

/* At the end of the settled list (oldest settled first). */
static void settled_append(order *s, order_msg *m)
{
    m->prev = s->set_tail;
    m->next = NULL;
    if (s->set_tail)
        s->set_tail->next = m;
    else
        s->set_head = m;
    s->set_tail = m;
}

void order__settle(order *s, order_msg *m, order_verdict v)
{
    if (m->settled) return;
    m->settled = 1;
    m->verdict = v;
    order__targets_unref(m);
    order__room_unlink(s, m);
    settled_append(s, m);
}

/* Every target is done: ack, or dead-letter what failed. */
void order__settle_if_done(order *s, order_msg *m)
{
    if (m->settled || !m->resolved || m->open) return;
    size_t n_failed = 0, timeouts = 0;
    for (uint32_t i = 0; i < m->n_targets; i++)
        if (m->targets[i].state == T_FAILED) {
            n_failed++;
            if (m->targets[i].last == ORDER_TIMEOUT) timeouts++;
        }
    if (!n_failed) {
        order__settle(s, m, ORDER_ACK);
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
        char reason[512];
        dlq_reason_edges(reason, sizeof reason,
                         timeouts ? DLQ_REASON_EDGE_TIMEOUT : DLQ_REASON_EDGE_ERROR, ids,
                         m->n_failed_edges);
        order__reason_set(m, reason);
    } else {
        order__reason_set(m, timeouts ? DLQ_REASON_EDGE_TIMEOUT : DLQ_REASON_EDGE_ERROR);
    }
    free(ids);
    order__settle(s, m, ORDER_DEAD);
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
            if (!--m->inflight && (m->released || m->dropped)) order__msg_free(s, m);
        }
        free(r->items);
        free(r->pub.buf);
        free(r);
    }
    for (size_t p = 0; p < s->n_parts; p++) {
        order_msg *m = s->parts[p].head;
        while (m) {
            order_msg *n = m->part_next;
            order__msg_free(s, m);
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
    order__round_gone_clear(s);
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
    order_msg *dup = order__msg_find(s, seq);
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
    if (order__table_grow((void ***)&s->mh, &s->mh_cap, s->mh_n + 1, offsetof(order_msg, hnext),
                          order__msg_key))
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
    if (m->chat && !(r = order__room_get(s, m->chat->room))) goto oom;
    /* From here on nothing fails. */
    m->handle = handle;
    size_t b = order__hash_u64(seq) & (s->mh_cap - 1);
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
        order__reason_set(m, DLQ_REASON_POISON);
        m->resolved = 1;
        order__settle(s, m, ORDER_DEAD);
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
    order__pend_add(s, r);
    return ORDER_ADDED;

oom:
    order__msg_free(s, m);
    return -1;
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
        order__msg_maybe_free(s, m);
        return;
    }
    settled_append(s, m);
}

void order_msg_release(order *s, order_msg *m)
{
    if (!m || m->released) return;
    m->released = 1;
    m->popped = 0;
    if (!m->dropped) {
        order__msg_unhash(s, m);
        order__part_unlink(s, m);
    }
    order__msg_maybe_free(s, m);
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
        order__msg_unhash(s, m);
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
            order__room_unlink(s, m);
            order__targets_unref(m);
        }
        n++;
        m = next;
    }
    /* Queues hold pointers to them: take them out before freeing. */
    for (size_t i = 0; i < s->n_edges; i++) {
        order_edge *e = s->edges[i];
        size_t w = 0;
        for (size_t k = 0; k < e->qlen; k++) {
            item it = *order__q_at(e, k);
            if (it.m->dropped) continue;
            *order__q_at(e, w++) = it;
        }
        e->qlen = w;
    }
    m = s->parts[part].head;
    while (m) {
        order_msg *next = m->part_next;
        m->part_next = m->part_prev = NULL;
        s->held--;
        order__msg_maybe_free(s, m);
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
    /* While a round is open no other can begin: the rooms waiting for one
     * have no clock until it ends (the caller hears that as news). */
    for (const order_room *r = s->round_open ? NULL : s->pend_head; r; r = r->pend_next)
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
