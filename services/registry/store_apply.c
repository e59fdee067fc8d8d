/* Applying DW_CONN events to the table (store.h: reg_store_apply_many):
 * a run of events in one WriteBatch with their changes, the lifecycle
 * events they make (the outbox, store_outbox.c), m/count and
 * m/applied_seq. One writer at a time (wmu). */
#include "store.h"

#include <pthread.h>
#include <stdbool.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "events.h"
#include "store_int.h"

/* ---- lifecycle events ------------------------------------------------- */

/* What the events of one applied DW_CONN event need: where they go, the
 * next index, the time they carry. */
typedef struct ev_ctx {
    reg_store *st;
    rocksdb_writebatch_t *b;
    uint64_t seq;
    uint32_t idx;
    int64_t ts_ms;
    int failed;
} ev_ctx;

/* Add one event to the outbox in the apply's batch. Its index is taken
 * whether or not it is written, so that the positions are the same on
 * every replica, whatever each one's floor. */
static void ev_put(ev_ctx *c, const char *type, const char *conn_id, const char *user_id,
                   const char *room, const char *edge_id, const char *reason)
{
    reg_ev_pos pos = {c->seq, c->idx++}, floor;
    if (!c->st->events || c->failed) return;
    floor.seq = atomic_load(&c->st->floor_seq);
    floor.idx = atomic_load(&c->st->floor_idx);
    if (reg_ev_pos_cmp(pos, floor) <= 0) return;

    Dw__LifecycleEvent ev = DW__LIFECYCLE_EVENT__INIT;
    ev.type = (char *)type;
    ev.conn_id = (char *)store__str_or_empty(conn_id);
    ev.user_id = (char *)store__str_or_empty(user_id);
    ev.room = (char *)store__str_or_empty(room);
    ev.edge_id = (char *)store__str_or_empty(edge_id);
    ev.ts_ms = c->ts_ms;
    ev.reason = (char *)store__str_or_empty(reason);
    char key[OUTBOX_KEY_LEN + 1];
    store__outbox_key(key, pos.seq, pos.idx);
    size_t len = 0, vlen = 0;
    uint8_t *packed = dw_pb_pack(&ev.base, &len), *val = NULL;
    if (!packed || store__value_encode(c->st, key, OUTBOX_KEY_LEN, packed, len, &val, &vlen)) {
        c->failed = 1; /* the apply fails as a whole and is retried */
    } else {
        rocksdb_writebatch_put(c->b, key, OUTBOX_KEY_LEN, (const char *)val, vlen);
    }
    free(packed);
    free(val);
}

/* A connection leaves every room it is in, then is gone. */
static void ev_gone(ev_ctx *c, const Dw__ConnRecord *rec, const char *reason)
{
    for (size_t i = 0; i < rec->n_rooms; i++)
        ev_put(c, REG_EV_LEAVE, rec->conn_id, rec->user_id, rec->rooms[i], rec->edge_id,
               "disconnect");
    ev_put(c, REG_EV_DISCONNECT, rec->conn_id, rec->user_id, NULL, rec->edge_id, reason);
}

/* Append room to rooms[*n] unless it is invalid, already there, or the list
 * is full. The pointer is borrowed, not copied. */
static int rooms_add(const char **rooms, size_t *n, const char *room)
{
    if (!room || !dw_room_valid(room, strlen(room))) return 0;
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(rooms[i], room)) return 0;
    if (*n >= REG_ROOMS_MAX) return 0;
    rooms[(*n)++] = room;
    return 1;
}

static int rooms_has(char *const *rooms, size_t n, const char *room)
{
    for (size_t i = 0; i < n; i++)
        if (rooms[i] && !strcmp(rooms[i], room)) return 1;
    return 0;
}

/* Put the record plus its room and edge keys. */
static int batch_put_record(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnRecord *rec)
{
    char key[KEY_MAX];
    size_t len = 0, vlen = 0;
    uint8_t *packed = dw_pb_pack(&rec->base, &len), *val = NULL;
    if (!packed) return -1;
    size_t klen = store__key_join(key, "c", rec->conn_id, NULL, NULL);
    int rc = klen ? store__value_encode(st, key, klen, packed, len, &val, &vlen) : 0;
    free(packed);
    if (rc) return -1;
    if (klen) rocksdb_writebatch_put(b, key, klen, (const char *)val, vlen);
    free(val);
    store__batch_put_empty(b, key, store__key_join(key, "e", rec->edge_id, rec->conn_id, NULL));
    for (size_t i = 0; i < rec->n_rooms; i++)
        store__batch_put_empty(
            b, key, store__key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
    return 0;
}

/* Delete the record and every key that points at it. */
static void batch_delete_record(rocksdb_writebatch_t *b, const Dw__ConnRecord *rec)
{
    char key[KEY_MAX];
    store__batch_delete(b, key, store__key_join(key, "c", rec->conn_id, NULL, NULL));
    store__batch_delete(b, key, store__key_join(key, "e", rec->edge_id, rec->conn_id, NULL));
    for (size_t i = 0; i < rec->n_rooms; i++)
        store__batch_delete(b, key,
                            store__key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
}

/* The events of a CONNECT: a new connection (connect, then a join per
 * room); the same connection announced again by its edge (only the rooms
 * that differ from the table's); or an id reused on another edge (the old
 * connection is gone first). */
static void connect_events(ev_ctx *c, const Dw__ConnRecord *old, const Dw__ConnRecord *rec)
{
    if (old && !strcmp(old->edge_id, rec->edge_id)) {
        for (size_t i = 0; i < old->n_rooms; i++)
            if (!rooms_has(rec->rooms, rec->n_rooms, old->rooms[i]))
                ev_put(c, REG_EV_LEAVE, rec->conn_id, old->user_id, old->rooms[i], rec->edge_id,
                       "reconciled");
        for (size_t i = 0; i < rec->n_rooms; i++)
            if (!rooms_has(old->rooms, old->n_rooms, rec->rooms[i]))
                ev_put(c, REG_EV_JOIN, rec->conn_id, rec->user_id, rec->rooms[i], rec->edge_id,
                       NULL);
        return;
    }
    if (old) ev_gone(c, old, "replaced");
    ev_put(c, REG_EV_CONNECT, rec->conn_id, rec->user_id, NULL, rec->edge_id, NULL);
    for (size_t i = 0; i < rec->n_rooms; i++)
        ev_put(c, REG_EV_JOIN, rec->conn_id, rec->user_id, rec->rooms[i], rec->edge_id, NULL);
}

static int apply_connect(reg_store *st, rocksdb_writebatch_t *b, uint64_t seq,
                         const Dw__ConnEvent *ev, int64_t *delta, ev_ctx *c)
{
    Dw__ConnRecord *old = NULL;
    int rc = store__get_record(st, st->ropts, ev->conn_id, &old);
    if (rc < 0) return -1;
    /* A reused id replaces the old row cleanly: its old rooms and edge go. */
    if (old)
        batch_delete_record(b, old);
    else
        *delta = 1;

    size_t cap = ev->n_rooms < REG_ROOMS_MAX ? ev->n_rooms : REG_ROOMS_MAX;
    const char **rooms = calloc(cap ? cap : 1, sizeof *rooms);
    if (!rooms) {
        if (old) dw__conn_record__free_unpacked(old, NULL);
        return -1;
    }
    size_t n = 0;
    for (size_t i = 0; i < ev->n_rooms; i++)
        rooms_add(rooms, &n, ev->rooms[i]);

    Dw__ConnRecord rec = DW__CONN_RECORD__INIT;
    rec.conn_id = ev->conn_id;
    rec.edge_id = ev->edge_id;
    rec.rooms = (char **)rooms;
    rec.n_rooms = n;
    rec.user_id = (char *)store__str_or_empty(ev->user_id);
    rec.source_ip = (char *)store__str_or_empty(ev->source_ip);
    rec.user_agent = (char *)store__str_or_empty(ev->user_agent);
    rec.has_user_agent = ev->has_user_agent;
    rec.connected_at_ms = ev->ts_ms;
    rec.conn_seq = seq;
    rc = batch_put_record(st, b, &rec);
    if (rc == 0) connect_events(c, old, &rec);
    free(rooms);
    if (old) dw__conn_record__free_unpacked(old, NULL);
    return rc;
}

/* An event that names an edge only touches the row if it is on that edge:
 * a late event from the edge that held a reused id must not hit the row a
 * newer connect made elsewhere. An empty edge_id (ops, cleanup) matches. */
static int same_edge(const Dw__ConnEvent *ev, const Dw__ConnRecord *rec)
{
    return !ev->edge_id || !*ev->edge_id || !strcmp(ev->edge_id, rec->edge_id);
}

/* Only a DISCONNECT that removes a row is a disconnect for user code: a
 * second one for the same id (the edge's own after an edge_down, the api's
 * cleanup, a retry) finds no row and says nothing. */
static int apply_disconnect(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnEvent *ev,
                            int64_t *delta, ev_ctx *c)
{
    Dw__ConnRecord *old = NULL;
    int rc = store__get_record(st, st->ropts, ev->conn_id, &old);
    if (rc <= 0) return rc;
    if (!same_edge(ev, old)) {
        dw__conn_record__free_unpacked(old, NULL);
        return 0;
    }
    batch_delete_record(b, old);
    ev_gone(c, old, ev->reason && *ev->reason ? ev->reason : "closed");
    dw__conn_record__free_unpacked(old, NULL);
    *delta = -1;
    return 0;
}

/* JOIN (join=1) or LEAVE (join=0): rewrite the record's room list. */
static int apply_rooms(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnEvent *ev, int join,
                       ev_ctx *c)
{
    Dw__ConnRecord *rec = NULL;
    int rc = store__get_record(st, st->ropts, ev->conn_id, &rec);
    if (rc <= 0) return rc;
    if (!same_edge(ev, rec)) {
        dw__conn_record__free_unpacked(rec, NULL);
        return 0;
    }

    char key[KEY_MAX];
    size_t cap = rec->n_rooms + (join ? ev->n_rooms : 0);
    const char **rooms = calloc(cap ? cap : 1, sizeof *rooms);
    if (!rooms) {
        dw__conn_record__free_unpacked(rec, NULL);
        return -1;
    }
    size_t n = 0;
    int changed = 0;
    for (size_t i = 0; i < rec->n_rooms; i++) {
        if (!join && rooms_has(ev->rooms, ev->n_rooms, rec->rooms[i])) {
            store__batch_delete(
                b, key, store__key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
            ev_put(c, REG_EV_LEAVE, rec->conn_id, rec->user_id, rec->rooms[i], rec->edge_id,
                   "left");
            changed = 1;
            continue;
        }
        rooms_add(rooms, &n, rec->rooms[i]);
    }
    for (size_t i = 0; join && i < ev->n_rooms; i++) {
        if (rooms_add(rooms, &n, ev->rooms[i])) {
            ev_put(c, REG_EV_JOIN, rec->conn_id, rec->user_id, ev->rooms[i], rec->edge_id, NULL);
            changed = 1;
        }
    }
    /* (rc is still get_record's 1 here: a JOIN or LEAVE that changes
     * nothing must not pass for a failed write.) */
    rc = 0;
    if (changed) {
        char **saved = rec->rooms;
        size_t saved_n = rec->n_rooms;
        rec->rooms = (char **)rooms;
        rec->n_rooms = n;
        rc = batch_put_record(st, b, rec);
        rec->rooms = saved; /* free_unpacked must free its own array */
        rec->n_rooms = saved_n;
    }
    free(rooms);
    dw__conn_record__free_unpacked(rec, NULL);
    return rc;
}

/* Every connection of a dead edge is gone: user code hears a disconnect for
 * each (in id order, the same on every replica). */
static int apply_edge_down(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnEvent *ev,
                           int64_t *delta, ev_ctx *c)
{
    char prefix[KEY_MAX], reason[160];
    size_t plen = store__key_join(prefix, "e", ev->edge_id, "", NULL), klen;
    if (!plen) return 0;
    snprintf(reason, sizeof reason, "edge_down%s%.128s", ev->reason && *ev->reason ? ":" : "",
             ev->reason ? ev->reason : "");
    store_scan sc;
    int rc = 0;
    for (const char *k = store__scan_begin(&sc, st, NULL, prefix, plen, NULL, 0, &klen);
         rc == 0 && k; k = store__scan_next(&sc, &klen)) {
        char conn_id[REG_ID_MAX + 1];
        if (klen - plen > REG_ID_MAX) continue;
        memcpy(conn_id, k + plen, klen - plen);
        conn_id[klen - plen] = '\0';
        /* The index entry goes even if its record is missing: self-repair. */
        rocksdb_writebatch_delete(b, k, klen);
        Dw__ConnRecord *rec = NULL;
        rc = store__get_record(st, st->ropts, conn_id, &rec);
        if (rc == 1) {
            if (!strcmp(rec->edge_id, ev->edge_id)) {
                batch_delete_record(b, rec);
                ev_gone(c, rec, reason);
                (*delta)--;
            }
            dw__conn_record__free_unpacked(rec, NULL);
            rc = 0;
        }
    }
    if (store__scan_end(&sc, NULL)) rc = -1;
    return rc;
}

static int apply_event(reg_store *st, rocksdb_writebatch_t *b, uint64_t seq,
                       const Dw__ConnEvent *ev, int64_t *delta, ev_ctx *c)
{
    int conn_ok = reg_id_valid(ev->conn_id), edge_ok = reg_id_valid(ev->edge_id);
    switch (ev->kind) {
    case DW__CONN_EVENT__KIND__CONNECT:
        if (!conn_ok || !edge_ok) break;
        return apply_connect(st, b, seq, ev, delta, c);
    case DW__CONN_EVENT__KIND__DISCONNECT:
        if (!conn_ok) break;
        return apply_disconnect(st, b, ev, delta, c);
    case DW__CONN_EVENT__KIND__JOIN:
    case DW__CONN_EVENT__KIND__LEAVE:
        if (!conn_ok) break;
        return apply_rooms(st, b, ev, ev->kind == DW__CONN_EVENT__KIND__JOIN, c);
    case DW__CONN_EVENT__KIND__EDGE_DOWN:
        if (!edge_ok) break;
        return apply_edge_down(st, b, ev, delta, c);
    default:
        DW_WARN("unknown event kind ignored", "seq=%llu kind=%d", (unsigned long long)seq,
                (int)ev->kind);
        return 0;
    }
    /* Ids come from the edges; never print them raw when they are bad. */
    DW_WARN("event with invalid ids ignored", "seq=%llu kind=%d", (unsigned long long)seq,
            (int)ev->kind);
    return 0;
}

int reg_store_apply(reg_store *st, uint64_t seq, const Dw__ConnEvent *ev)
{
    return reg_store_apply_at(st, seq, 0, ev);
}

int reg_store_apply_at(reg_store *st, uint64_t seq, int64_t ts_ms, const Dw__ConnEvent *ev)
{
    reg_apply_item it = {.seq = seq, .ts_ms = ts_ms, .ev = ev};
    int rc = reg_store_apply_many(st, &it, 1);
    return rc < 0 ? -1 : rc > 0 ? 1 : 0;
}

/* Events applied into one WriteBatch, not yet written. */
typedef struct apply_run {
    rocksdb_writebatch_t *b;
    size_t n;         /* events in b */
    uint64_t count;   /* m/count after them */
    uint64_t seq;     /* the last sequence in b (or applied_seq) */
    int64_t ts_ms;    /* its JetStream time, 0 if none */
    const char **ids; /* conn_ids the events in b touched (borrowed) */
    size_t nids;
} apply_run;

/* Write what the run holds, with m/count, m/applied_seq and m/applied_ts,
 * as one WriteBatch. 0 or -1 (nothing of the run written). */
static int run_commit(reg_store *st, apply_run *r)
{
    if (!r->n) return 0;
    char *err = NULL;
    uint8_t v[8];
    store__u64_put_be(v, r->count);
    rocksdb_writebatch_put(r->b, KEY_COUNT, strlen(KEY_COUNT), (const char *)v, 8);
    store__u64_put_be(v, r->seq);
    rocksdb_writebatch_put(r->b, KEY_APPLIED, strlen(KEY_APPLIED), (const char *)v, 8);
    if (r->ts_ms > 0) {
        store__u64_put_be(v, (uint64_t)r->ts_ms);
        rocksdb_writebatch_put(r->b, KEY_APPLIED_TS, strlen(KEY_APPLIED_TS), (const char *)v, 8);
    }
    rocksdb_write(st->db, st->wopts, r->b, &err);
    if (err) {
        DW_ERROR("rocksdb write failed", "seq=%llu events=%zu err=\"%s\"",
                 (unsigned long long)r->seq, r->n, err);
        rocksdb_free(err);
        return -1;
    }
    atomic_store(&st->count, r->count);
    atomic_store(&st->applied_seq, r->seq);
    if (r->ts_ms > 0) atomic_store(&st->applied_ts, r->ts_ms);
    rocksdb_writebatch_clear(r->b);
    r->n = 0;
    r->nids = 0;
    return 0;
}

static bool run_touched(const apply_run *r, const char *conn_id)
{
    for (size_t i = 0; i < r->nids; i++)
        if (!strcmp(r->ids[i], conn_id)) return true;
    return false;
}

/* Each event reads the rows it changes (its conn_id's record; an EDGE_DOWN
 * every row of its edge) from the table as written, so an event whose rows
 * an event already in the run changed is applied after the run is written:
 * every event then reads what it would have read applied alone. */
int reg_store_apply_many(reg_store *st, const reg_apply_item *v, size_t n)
{
    int rc = 0, applied = 0;
    if (!n) return 0;
    pthread_mutex_lock(&st->wmu);
    apply_run r = {
        .b = rocksdb_writebatch_create(),
        .count = atomic_load(&st->count),
        .seq = atomic_load(&st->applied_seq),
        .ids = malloc(n * sizeof(const char *)),
    };
    if (!r.ids) rc = -1;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const Dw__ConnEvent *ev = v[i].ev;
        if (v[i].seq <= r.seq) continue; /* applied already */
        bool alone = ev && ev->kind == DW__CONN_EVENT__KIND__EDGE_DOWN;
        bool keyed = ev && ev->conn_id && *ev->conn_id && !alone;
        if ((alone || (keyed && run_touched(&r, ev->conn_id))) && run_commit(st, &r)) {
            rc = -1;
            break;
        }
        int64_t delta = 0;
        /* The events' time is the stream's, never this replica's clock:
         * every replica must derive the same events. */
        ev_ctx c = {.st = st,
                    .b = r.b,
                    .seq = v[i].seq,
                    .ts_ms = ev && ev->ts_ms > 0 ? ev->ts_ms : v[i].ts_ms};
        if (ev) rc = apply_event(st, r.b, v[i].seq, ev, &delta, &c);
        if (rc == 0 && c.failed) rc = -1;
        if (rc) break; /* the run is dropped: nothing after applied_seq is written */
        if (delta < 0 && (uint64_t)-delta > r.count)
            r.count = 0; /* never wrap, even if the index was inconsistent */
        else
            r.count = (uint64_t)((int64_t)r.count + delta);
        r.seq = v[i].seq;
        if (v[i].ts_ms > 0) r.ts_ms = v[i].ts_ms;
        r.n++;
        applied++;
        if (keyed) r.ids[r.nids++] = ev->conn_id;
        if (alone && run_commit(st, &r)) rc = -1;
    }
    if (rc == 0 && run_commit(st, &r)) rc = -1;
    rocksdb_writebatch_destroy(r.b);
    free(r.ids);
    pthread_mutex_unlock(&st->wmu);
    return rc < 0 ? -1 : applied;
}
