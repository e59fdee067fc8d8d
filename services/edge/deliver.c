/* A Delivery from the dispatcher, on the lws thread: drop repeats, frame
 * each message once, and queue that frame on every local member of its
 * room (or on the named connections); reply which named ones are gone. */
#include <stdlib.h>
#include <string.h>

#include "deliver.h"
#include "dw/log.h"
#include "edge.h"
#include "proto_v1.h"

static edge_frame *v1_frame(const Dw__DeliveryItem *it)
{
    v1_msg v = {
        .room = it->room,
        .seq = it->seq,
        .id = it->client_id && *it->client_id ? it->client_id : it->id,
        .from = it->from_user,
        .data = (const char *)it->data.data,
        .data_len = it->data.len,
        .data_json = it->data_json,
        .ts_ms = it->ts_ms,
    };
    size_t len;
    char *text = v1_message(&v, &len);
    edge_frame *f = text ? frame_text(text, len) : NULL;
    free(text);
    return f;
}

/* A member still joining gets live messages after its replay: keep them. */
static void hold(edge_membership *m, edge_frame *f, uint64_t seq)
{
    edge_held *h = malloc(sizeof *h);
    if (!h) return;
    h->next = NULL;
    h->seq = seq;
    h->frame = frame_ref(f);
    if (m->held_tail)
        m->held_tail->next = h;
    else
        m->held = h;
    m->held_tail = h;
}

void deliver_handle(edge *e, edge_event *ev)
{
    Dw__Delivery *d = ev->delivery;
    Dw__DeliveryReply r = DW__DELIVERY_REPLY__INIT;
    char **gone = NULL;
    size_t ngone = 0, gone_cap = 0;
    int64_t now_ns = dw_mono_ns(), wall_ms = dw_now_ms();

    for (size_t i = 0; i < d->n_items; i++) {
        Dw__DeliveryItem *it = d->items[i];
        r.accepted++;
        /* Targeted items (to named connections) have no room order: a set
         * of recent sequences catches their repeats. */
        if (it->n_conn_ids && dedup_check_add(&e->dedup, it->seq)) {
            dw_metric_inc(e->m->dups);
            continue;
        }
        if (it->ts_ms > 0 && wall_ms >= it->ts_ms)
            dw_metric_observe_ns(e->m->stage_delivered, (wall_ms - it->ts_ms) * 1000000);
        /* One frame per message per edge and protocol, shared by every
         * recipient; the v1 one is built only if a v1 member needs it. */
        edge_frame *f = frame_text(it->data.data, it->data.len), *fv1 = NULL;
        if (!f) {
            r.accepted--;
            continue;
        }
        f->born_ns = now_ns;
        if (it->n_conn_ids) {
            for (size_t j = 0; j < it->n_conn_ids; j++) {
                edge_session *s = connmap_get(&e->conns, it->conn_ids[j], strlen(it->conn_ids[j]));
                if (s && s->state == SESS_READY) {
                    session_deliver(e, s, f);
                    continue;
                }
                if (ngone == gone_cap) {
                    size_t nc = gone_cap ? gone_cap * 2 : 8;
                    char **g = realloc(gone, nc * sizeof *g);
                    if (!g) continue;
                    gone = g;
                    gone_cap = nc;
                }
                gone[ngone++] = it->conn_ids[j];
            }
        } else {
            edge_room *room = rooms_get(&e->rooms, it->room);
            /* A room's messages come in seq order from the dispatcher that
             * owns its partition; anything at or below what was delivered
             * is a repeat (a retry whose reply was lost, a partition read
             * again from its floor, a former owner waking up). */
            if (room && it->seq <= room->delivered_seq) {
                dw_metric_inc(e->m->dups);
                frame_unref(f);
                continue;
            }
            if (room) room->delivered_seq = it->seq;
            for (uint32_t j = 0; room && j < room->count; j++) {
                edge_session *s = room->members[j];
                if (it->exclude_sender && it->from_conn && !strcmp(s->id, it->from_conn)) continue;
                if (!s->v1) {
                    session_deliver(e, s, f);
                    continue;
                }
                if (!fv1 && !(fv1 = v1_frame(it))) continue;
                fv1->born_ns = now_ns;
                edge_membership *m = rooms_membership(s, room);
                if (m && m->joining)
                    hold(m, fv1, it->seq);
                else if (!m || it->seq > m->floor_seq)
                    session_deliver(e, s, fv1);
            }
            if (room && it->seq > room->last_seq) room->last_seq = it->seq;
        }
        frame_unref(f);
        frame_unref(fv1);
    }
    if (ev->reply) {
        r.gone_conn_ids = gone;
        r.n_gone_conn_ids = ngone;
        bridge_reply(e->bridge, ev->reply, &r);
    }
    free(gone);
}
