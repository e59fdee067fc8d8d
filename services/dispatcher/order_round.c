/* The ordering core's resolution rounds (order.h): which rooms are asked
 * now, and what the registry's answer (or its silence) does to each of
 * their messages. No NATS in here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "order_int.h"
#include "dw/dlq_record.h"
#include "edges.h"

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
            order__pend_remove(s, r);
            s->rq[k] = (order_query){.room = r->name, .min_seq = min_seq, .answered = 0};
            s->rq_rooms[k] = r;
            k++;
        } else if (!r->n_unresolved) {
            order__pend_remove(s, r);
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

void order__round_gone_clear(order *s)
{
    for (size_t i = 0; i < s->rq_n_gone; i++)
        free(s->rq_gone[i]);
    free(s->rq_gone);
    s->rq_gone = NULL;
    s->rq_n_gone = 0;
}

/* From order_edge_gone: the open round may have been asked before the
 * edge's EDGE_DOWN was durable, so the registry may have answered with the
 * connections that EDGE_DOWN drops. Bound to the edge now, a message would
 * wait for it after everything else bound for it was given up: for ever if
 * it is dead, and if it wakes (declared down while stopped), it would reach
 * its old connections before they are closed, ahead of the messages given
 * up here, and a client that resumes from the last seq it saw would never
 * get those. 0, or -1 when out of memory (the edge is then not skipped). */
int order__round_gone_note(order *s, const char *edge_id)
{
    if (!s->round_open || names_have(s->rq_gone, s->rq_n_gone, edge_id)) return 0;
    char **g = realloc(s->rq_gone, (s->rq_n_gone + 1) * sizeof *g);
    if (!g) return -1;
    s->rq_gone = g;
    if (!(g[s->rq_n_gone] = strdup(edge_id))) return -1;
    s->rq_n_gone++;
    return 0;
}

/* Bind message m to the room's edges and queue it on each. */
static int resolve_msg(order *s, order_msg *m, order_edge *const *edges, size_t n, int64_t now_ms)
{
    uint32_t k = 0;
    if (n && !(m->targets = calloc(n, sizeof *m->targets))) return -1;
    for (size_t i = 0; i < n; i++) {
        if (m->has_only && !names_have(m->only, m->n_only, edges[i]->id)) continue;
        if (order__q_reserve(edges[i], 1)) {
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
        *order__q_at(edges[i], edges[i]->qlen) = (item){m, k};
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
        if (names_have(s->rq_gone, s->rq_n_gone, ids[k])) continue;
        order_edge *e = order__edge_get(s, ids[k]);
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
        order__settle_if_done(s, m);
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
        order__attempt_note(m, now_ms);
        n++;
        if (m->attempts >= s->cfg.max_attempts) {
            order__reason_set(m, reason);
            m->resolved = 1; /* given up: nothing to resolve any more */
            r->n_unresolved--;
            order__settle(s, m, ORDER_DEAD);
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
            order__pend_add(s, r);
        else
            order__room_maybe_free(s, r);
    }
    s->rq_n = 0;
    s->round_open = 0;
    order__round_gone_clear(s);
    return n;
}
