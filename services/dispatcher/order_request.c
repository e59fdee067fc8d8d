/* The ordering core's edge requests (order.h): one request in flight per
 * edge, built from the head of its queue under the size cap; what a reply,
 * a failure, a timeout or "no responders" does; an edge gone. No NATS in
 * here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order_int.h"
#include "dw/bus.h"

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
        while (e->qlen && !item_live(order__q_at(e, 0))) {
            e->qhead = (e->qhead + 1) % e->qcap;
            e->qlen--;
        }
        order__edge_maybe_free(s, idx, now_ms);
    }
    for (size_t k = 0; k < s->n_edges; k++) {
        size_t idx = (s->turn + k) % s->n_edges;
        order_edge *e = s->edges[idx];
        if (!e->qlen || e->inflight || e->next_ms > now_ms) continue;
        /* Take from the head while the request stays under the size cap. */
        size_t n = 0, bytes = 0;
        for (size_t i = 0; i < e->qlen; i++) {
            item *it = order__q_at(e, i);
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
            item it = *order__q_at(e, 0);
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
            order__q_reserve(e, 0);
            for (size_t i = live; i-- > 0;) {
                e->qhead = (e->qhead + e->qcap - 1) % e->qcap;
                *order__q_at(e, 0) = items[i];
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
    if (order__q_reserve(e, back)) {
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
        *order__q_at(e, 0) = r->items[i];
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
                order__attempt_note(m, now_ms);
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
        if (!m->dropped && !m->released) order__settle_if_done(s, m);
    }
    /* Last: a message dropped or released meanwhile may go now. */
    for (size_t i = 0; i < r->n; i++) {
        order_msg *m = r->items[i].m;
        /* The same message appears at most once per request. */
        order__msg_maybe_free(s, m);
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
    order__round_gone_note(s, edge_id);
    order_edge *e = order__edge_find(s, edge_id);
    if (!e) return;
    /* Collect first: settling changes nothing in the queue, but keep the
     * walk simple. */
    for (size_t i = 0; i < e->qlen; i++) {
        item *it = order__q_at(e, i);
        order_target *t = &it->m->targets[it->t];
        if (it->m->dropped || t->state != T_QUEUED) continue;
        t->state = T_GONE;
        it->m->open--;
        order__settle_if_done(s, it->m);
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
            order__settle_if_done(s, m);
        }
    }
    e->failures = e->absences = 0;
    e->next_ms = 0;
}
