/* The dispatcher's requests to edges (dispatch_int.h): send what the
 * ordering core says may go, take the replies (and the connections an edge
 * reports gone), time out the silent ones; and the edges' heartbeats and
 * the registry's list of edges that feed their liveness. Loop thread,
 * except the nats.c callbacks (requests__on_*), which only post events or
 * touch the edges table (its own lock). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch_int.h"
#include "dw/log.h"
#include "dw/wire.h"

void requests__on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    const char *subj = natsMsg_GetSubject(msg);
    size_t plen = strlen(d->reply_inbox);
    loop_ev *e = NULL;
    if (subj && !strncmp(subj, d->reply_inbox, plen) && subj[plen] == '.' &&
        (e = dispatch__ev_new(d, EV_REPLY))) {
        e->req = strtoull(subj + plen + 1, NULL, 10);
        e->msg = msg;
        dispatch__post(d, e);
        return;
    }
    natsMsg_Destroy(msg);
}

void requests__on_heartbeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    Dw__EdgeHeartbeat *hb = dw_pb_unpack(&dw__edge_heartbeat__descriptor, msg);
    if (hb) {
        if (edges_seen(d->edges, hb->edge_id, mono_ms()) == 1)
            DW_INFO("edge back", "edge=%s", hb->edge_id);
        dw__edge_heartbeat__free_unpacked(hb, NULL);
    }
    natsMsg_Destroy(msg);
}

void requests__on_seed(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    dispatcher *d = closure;
    if (!natsMsg_IsNoResponders(msg)) {
        Dw__EdgesReply *r = dw_pb_unpack(&dw__edges_reply__descriptor, msg);
        if (r) {
            int64_t now = mono_ms();
            for (size_t i = 0; i < r->n_edge_ids; i++)
                edges_known(d->edges, r->edge_ids[i], now);
            dw__edges_reply__free_unpacked(r, NULL);
        }
    }
    natsMsg_Destroy(msg);
}

/* ---- the loop: edge requests ---- */

void requests__send(dispatcher *d, int64_t now)
{
    order_request *r;
    while (d->n_reqs < MAX_REQUESTS && (r = order_next_request(d->ord, now))) {
        char subj[EDGES_ID_MAX + 32], reply[192];
        dw_subj_edge_deliver(subj, sizeof subj, r->edge);
        snprintf(reply, sizeof reply, "%s.%" PRIu64, d->reply_inbox, r->id);
        natsStatus s = natsConnection_PublishRequest(d->nc, subj, reply, r->buf, (int)r->len);
        if (s != NATS_OK) {
            DW_WARN("delivery publish failed", "edge=%s items=%zu status=%s", r->edge, r->n_items,
                    natsStatus_GetText(s));
            dw_metric_add(d->m->retried, (int64_t)r->n_items);
            order_request_done(d->ord, r, ORDER_FAILED, now);
            continue;
        }
        d->reqs[d->n_reqs++] = (inflight_req){r->id, r};
    }
}

static order_request *req_take(dispatcher *d, uint64_t id)
{
    for (size_t i = 0; i < d->n_reqs; i++)
        if (d->reqs[i].id == id) {
            order_request *r = d->reqs[i].r;
            d->reqs[i] = d->reqs[--d->n_reqs];
            return r;
        }
    return NULL;
}

void requests__on_reply_ev(dispatcher *d, loop_ev *e, int64_t now)
{
    order_request *r = req_take(d, e->req);
    natsMsg *m = e->msg;
    if (!r) return; /* timed out already */
    if (natsMsg_IsNoResponders(m)) {
        /* Not there now; maybe reconnecting. Only silence past
         * EDGE_DEAD_MS makes an edge gone (the sweep). */
        DW_DEBUG("edge has no responders", "edge=%s items=%zu", r->edge, r->n_items);
        order_request_done(d->ord, r, ORDER_NO_RESPONDERS, now);
        return;
    }
    Dw__DeliveryReply *rep = dw_pb_unpack(&dw__delivery_reply__descriptor, m);
    if (!rep) {
        DW_WARN("bad delivery reply", "edge=%s bytes=%d", r->edge, natsMsg_GetDataLength(m));
        dw_metric_add(d->m->retried, (int64_t)r->n_items);
        order_request_done(d->ord, r, ORDER_FAILED, now);
        return;
    }
    for (size_t k = 0; k < rep->n_gone_conn_ids; k++) {
        const char *c = rep->gone_conn_ids[k];
        job *j = c && edges_id_valid(c, strlen(c)) ? calloc(1, sizeof *j) : NULL;
        if (!j) continue;
        j->kind = JOB_CONN_GONE;
        snprintf(j->conn, sizeof j->conn, "%s", c);
        snprintf(j->edge, sizeof j->edge, "%s", r->edge);
        worker__submit(d, j);
    }
    dw__delivery_reply__free_unpacked(rep, NULL);
    order_request_done(d->ord, r, ORDER_OK, now);
}

void requests__timeouts(dispatcher *d, int64_t now)
{
    for (size_t i = 0; i < d->n_reqs;) {
        order_request *r = d->reqs[i].r;
        if (now - r->sent_ms < d->cfg.edge_timeout_ms) {
            i++;
            continue;
        }
        DW_WARN("edge timeout", "edge=%s items=%zu timeout_ms=%" PRId64, r->edge, r->n_items,
                d->cfg.edge_timeout_ms);
        d->reqs[i] = d->reqs[--d->n_reqs];
        dw_metric_add(d->m->retried, (int64_t)r->n_items);
        order_request_done(d->ord, r, ORDER_TIMEOUT, now);
    }
}
