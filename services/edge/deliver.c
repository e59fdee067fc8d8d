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

/* A run: consecutive items of one Delivery for the same room, each new
 * (above the room's delivered_seq); an item that excludes its sender is a
 * run of its own. Every plain
 * member gets the same bytes for all of them, so they are framed once into
 * one buffer (frame_texts) and each plain member's queue takes one
 * reference: one queue entry and one write per member per run, not per
 * message. Bounded by RUN_MAX items and by one coalesced write's bytes. */
#define RUN_MAX 256

/* Queue items[0..n) (a run, or one item) to the room's local members, in
 * order: a plain member gets plain, the run's frame; a v1 member each
 * message's v1 frame, held while it joins, dropped at or below its
 * replay's floor or when it is the sender of an exclude_sender item. */
static void deliver_run(edge *e, edge_room *room, Dw__DeliveryItem **items, size_t n,
                        int64_t now_ns)
{
    edge_frame *plain = NULL, *v1[RUN_MAX];
    for (size_t k = 0; k < n; k++) /* (not = {0}: 2 KB per run of one v1 message) */
        v1[k] = NULL;
    bool have_plain = room->count > room->nv1;
    if (have_plain) {
        edge_frame_part parts[RUN_MAX] = {{0}}; /* (n <= RUN_MAX, which gcc cannot see) */
        for (size_t k = 0; k < n; k++)
            parts[k] = (edge_frame_part){items[k]->data.data, items[k]->data.len};
        if ((plain = frame_texts(parts, n))) plain->born_ns = now_ns;
    }
    /* An exclude_sender item is always a run of its own. */
    const char *excluded =
        n == 1 && items[0]->exclude_sender && items[0]->from_conn ? items[0]->from_conn : NULL;
    for (uint32_t j = 0; j < room->count; j++) {
        edge_session *s = room->members[j];
        if (!s->v1) {
            if (plain && !(excluded && !strcmp(s->id, excluded))) session_deliver(e, s, plain);
            continue;
        }
        edge_membership *m = rooms_membership(s, room);
        for (size_t k = 0; k < n; k++) {
            Dw__DeliveryItem *it = items[k];
            if (it->exclude_sender && it->from_conn && !strcmp(s->id, it->from_conn)) continue;
            if (!v1[k]) {
                if (!(v1[k] = v1_frame(it))) continue;
                v1[k]->born_ns = now_ns;
            }
            if (m && m->joining)
                hold(m, v1[k], it->seq);
            else if (!m || it->seq > m->floor_seq)
                session_deliver(e, s, v1[k]);
        }
    }
    frame_unref(plain);
    for (size_t k = 0; k < n; k++)
        frame_unref(v1[k]);
}

/* Items from i on that go to the room of item i: repeats dropped, the rest
 * delivered in runs. Returns the index of the first item not taken. */
static size_t deliver_room(edge *e, Dw__Delivery *d, size_t i, int64_t now_ns, int64_t wall_ms,
                           Dw__DeliveryReply *r)
{
    const char *name = d->items[i]->room;
    edge_room *room = rooms_get(&e->rooms, name);
    Dw__DeliveryItem *run[RUN_MAX];
    size_t n = 0, bytes = 0, cap = (size_t)e->cfg->write_coalesce;
    for (; i < d->n_items; i++) {
        Dw__DeliveryItem *it = d->items[i];
        if (it->n_conn_ids || strcmp(it->room, name)) break;
        r->accepted++;
        if (it->ts_ms > 0 && wall_ms >= it->ts_ms)
            dw_metric_observe_ns(e->m->stage_delivered, (wall_ms - it->ts_ms) * 1000000);
        if (!room) continue; /* no member here */
        /* A room's messages come in seq order from the dispatcher that
         * owns its partition; anything at or below what was delivered is a
         * repeat (a retry whose reply was lost, a partition read again from
         * its floor, a former owner waking up). */
        if (it->seq <= room->delivered_seq) {
            dw_metric_inc(e->m->dups);
            continue;
        }
        room->delivered_seq = it->seq;
        if (it->seq > room->last_seq) room->last_seq = it->seq;
        size_t len = frame_text_len(it->data.len);
        bool alone = it->exclude_sender && it->from_conn;
        if (n && (n == RUN_MAX || bytes + len > cap || alone ||
                  (run[n - 1]->exclude_sender && run[n - 1]->from_conn))) {
            deliver_run(e, room, run, n, now_ns);
            n = bytes = 0;
        }
        run[n++] = it;
        bytes += len;
    }
    if (n) deliver_run(e, room, run, n, now_ns);
    return i;
}

/* An item for named connections (the api's post to a connection): no room
 * order, so a set of recent sequences catches its repeats. */
static void deliver_targeted(edge *e, Dw__DeliveryItem *it, int64_t now_ns, int64_t wall_ms,
                             Dw__DeliveryReply *r, char ***gone, size_t *ngone, size_t *gone_cap)
{
    r->accepted++;
    if (dedup_check_add(&e->dedup, it->seq)) {
        dw_metric_inc(e->m->dups);
        return;
    }
    if (it->ts_ms > 0 && wall_ms >= it->ts_ms)
        dw_metric_observe_ns(e->m->stage_delivered, (wall_ms - it->ts_ms) * 1000000);
    edge_frame *f = frame_text(it->data.data, it->data.len);
    if (!f) {
        r->accepted--;
        return;
    }
    f->born_ns = now_ns;
    for (size_t j = 0; j < it->n_conn_ids; j++) {
        edge_session *s = connmap_get(&e->conns, it->conn_ids[j], strlen(it->conn_ids[j]));
        if (s && s->state == SESS_READY) {
            session_deliver(e, s, f);
            continue;
        }
        if (*ngone == *gone_cap) {
            size_t nc = *gone_cap ? *gone_cap * 2 : 8;
            char **g = realloc(*gone, nc * sizeof *g);
            if (!g) continue;
            *gone = g;
            *gone_cap = nc;
        }
        (*gone)[(*ngone)++] = it->conn_ids[j];
    }
    frame_unref(f);
}

void deliver_handle(edge *e, edge_event *ev)
{
    Dw__Delivery *d = ev->delivery;
    Dw__DeliveryReply r = DW__DELIVERY_REPLY__INIT;
    char **gone = NULL;
    size_t ngone = 0, gone_cap = 0;
    int64_t now_ns = dw_mono_ns(), wall_ms = dw_now_ms();

    for (size_t i = 0; i < d->n_items;) {
        if (d->items[i]->n_conn_ids)
            deliver_targeted(e, d->items[i++], now_ns, wall_ms, &r, &gone, &ngone, &gone_cap);
        else
            i = deliver_room(e, d, i, now_ns, wall_ms, &r);
    }
    if (ev->reply) {
        r.gone_conn_ids = gone;
        r.n_gone_conn_ids = ngone;
        bridge_reply(e->bridge, ev->reply, &r);
    }
    if (ev->answered_bytes) bridge_delivery_handled(e->bridge, ev->answered_bytes);
    free(gone);
}
