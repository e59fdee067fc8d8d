#include "store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"

/* "r/" room "/" edge "/" conn: 2 + 64 + 1 + 128 + 1 + 128, with room to spare. */
#define KEY_MAX 512

#define KEY_APPLIED "m/applied_seq"
#define KEY_COUNT "m/count"

struct reg_store {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *topts;
    rocksdb_writeoptions_t *wopts;
    rocksdb_readoptions_t *ropts;
    pthread_mutex_t wmu; /* one writer at a time: apply reads, then writes */
    _Atomic uint64_t applied_seq;
    _Atomic uint64_t count;
};

/* ---- small helpers ---------------------------------------------------- */

int reg_id_valid(const char *s)
{
    if (!s)
        return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (c <= 0x20 || c >= 0x7f || c == '/' || n >= REG_ID_MAX)
            return 0;
    }
    return n > 0;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static void u64_put_be(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t u64_get_be(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | in[i];
    return v;
}

/* Build a key from parts joined by '/'; returns its length (0 if it does not fit). */
static size_t key_join(char *buf, const char *a, const char *b, const char *c, const char *d)
{
    int n;
    if (d)
        n = snprintf(buf, KEY_MAX, "%s/%s/%s/%s", a, b, c, d);
    else if (c)
        n = snprintf(buf, KEY_MAX, "%s/%s/%s", a, b, c);
    else
        n = snprintf(buf, KEY_MAX, "%s/%s", a, b);
    return (n > 0 && n < KEY_MAX) ? (size_t)n : 0;
}

/* Read a big-endian u64 under key; *found tells whether it exists. */
static int read_u64(reg_store *st, const rocksdb_readoptions_t *ro, const char *key, uint64_t *v,
                    int *found)
{
    char *err = NULL;
    size_t vlen = 0;
    char *val = rocksdb_get(st->db, ro, key, strlen(key), &vlen, &err);
    if (err) {
        DW_ERROR("rocksdb get failed", "key=%s err=\"%s\"", key, err);
        rocksdb_free(err);
        return -1;
    }
    *found = val != NULL && vlen == 8;
    *v = *found ? u64_get_be((const uint8_t *)val) : 0;
    rocksdb_free(val);
    return 0;
}

/* Look up c/<conn_id>. Returns 1 with *rec (free with
 * dw__conn_record__free_unpacked), 0 when absent, -1 on a RocksDB error.
 * An undecodable value counts as absent: the caller overwrites or deletes
 * the key, which repairs it. */
static int get_record(reg_store *st, const rocksdb_readoptions_t *ro, const char *conn_id,
                      Dw__ConnRecord **rec)
{
    char key[KEY_MAX], *err = NULL;
    size_t klen = key_join(key, "c", conn_id, NULL, NULL), vlen = 0;
    *rec = NULL;
    if (!klen)
        return 0;
    char *val = rocksdb_get(st->db, ro, key, klen, &vlen, &err);
    if (err) {
        DW_ERROR("rocksdb get failed", "key=c/%s err=\"%s\"", conn_id, err);
        rocksdb_free(err);
        return -1;
    }
    if (!val)
        return 0;
    *rec = dw__conn_record__unpack(NULL, vlen, (const uint8_t *)val);
    rocksdb_free(val);
    if (!*rec) {
        DW_ERROR("undecodable record", "conn_id=%s", conn_id);
        return 0;
    }
    return 1;
}

static void batch_put_empty(rocksdb_writebatch_t *b, const char *key, size_t klen)
{
    if (klen)
        rocksdb_writebatch_put(b, key, klen, "", 0);
}

static void batch_delete(rocksdb_writebatch_t *b, const char *key, size_t klen)
{
    if (klen)
        rocksdb_writebatch_delete(b, key, klen);
}

/* ---- open / close ----------------------------------------------------- */

/* Count c/ keys: only for a table written before m/count existed. */
static int count_scan(reg_store *st, uint64_t *n)
{
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, "c0", 2);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, ro);
    char *err = NULL;
    *n = 0;
    for (rocksdb_iter_seek(it, "c/", 2); rocksdb_iter_valid(it); rocksdb_iter_next(it))
        (*n)++;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (err) {
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

int reg_store_open(reg_store **out, const char *dir, char **err)
{
    char *rerr = NULL;
    reg_store *st = calloc(1, sizeof *st);
    *out = NULL;
    *err = NULL;
    if (!st) {
        *err = strdup("out of memory");
        return -1;
    }
    pthread_mutex_init(&st->wmu, NULL);

    st->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(st->opts, 1);
    rocksdb_options_increase_parallelism(st->opts, 2);
    /* The process shares a 20,000 file limit with its sockets. */
    rocksdb_options_set_max_open_files(st->opts, 512);
    rocksdb_options_set_keep_log_file_num(st->opts, 5);
    st->topts = rocksdb_block_based_options_create();
    /* c/<id> point lookups (join, leave, disconnect) skip files that lack the key. */
    rocksdb_block_based_options_set_filter_policy(st->topts, rocksdb_filterpolicy_create_bloom(10));
    rocksdb_options_set_block_based_table_factory(st->opts, st->topts);

    st->wopts = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(st->wopts, 0);
    st->ropts = rocksdb_readoptions_create();

    st->db = rocksdb_open(st->opts, dir, &rerr);
    if (rerr) {
        *err = strdup(rerr);
        rocksdb_free(rerr);
        goto error;
    }

    uint64_t v;
    int found;
    if (read_u64(st, st->ropts, KEY_APPLIED, &v, &found))
        goto read_error;
    atomic_store(&st->applied_seq, v);
    if (read_u64(st, st->ropts, KEY_COUNT, &v, &found))
        goto read_error;
    if (!found && count_scan(st, &v))
        goto read_error;
    atomic_store(&st->count, v);
    *out = st;
    return 0;

read_error:
    *err = strdup("cannot read the table's metadata");
error:
    reg_store_close(st);
    return -1;
}

void reg_store_close(reg_store *st)
{
    if (!st)
        return;
    if (st->db)
        rocksdb_close(st->db);
    rocksdb_readoptions_destroy(st->ropts);
    rocksdb_writeoptions_destroy(st->wopts);
    rocksdb_options_destroy(st->opts);
    rocksdb_block_based_options_destroy(st->topts);
    pthread_mutex_destroy(&st->wmu);
    free(st);
}

uint64_t reg_store_applied_seq(const reg_store *st)
{
    return atomic_load(&((reg_store *)st)->applied_seq);
}

uint64_t reg_store_count(const reg_store *st)
{
    return atomic_load(&((reg_store *)st)->count);
}

/* ---- apply ------------------------------------------------------------ */

/* Append room to rooms[*n] unless it is invalid, already there, or the list
 * is full. The pointer is borrowed, not copied. */
static int rooms_add(const char **rooms, size_t *n, const char *room)
{
    if (!room || !dw_room_valid(room, strlen(room)))
        return 0;
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(rooms[i], room))
            return 0;
    if (*n >= REG_ROOMS_MAX)
        return 0;
    rooms[(*n)++] = room;
    return 1;
}

static int rooms_has(char *const *rooms, size_t n, const char *room)
{
    for (size_t i = 0; i < n; i++)
        if (rooms[i] && !strcmp(rooms[i], room))
            return 1;
    return 0;
}

/* Put the record plus its room and edge keys. */
static int batch_put_record(rocksdb_writebatch_t *b, const Dw__ConnRecord *rec)
{
    char key[KEY_MAX];
    size_t len = 0;
    uint8_t *val = dw_pb_pack(&rec->base, &len);
    if (!val)
        return -1;
    size_t klen = key_join(key, "c", rec->conn_id, NULL, NULL);
    if (klen)
        rocksdb_writebatch_put(b, key, klen, (const char *)val, len);
    free(val);
    batch_put_empty(b, key, key_join(key, "e", rec->edge_id, rec->conn_id, NULL));
    for (size_t i = 0; i < rec->n_rooms; i++)
        batch_put_empty(b, key, key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
    return 0;
}

/* Delete the record and every key that points at it. */
static void batch_delete_record(rocksdb_writebatch_t *b, const Dw__ConnRecord *rec)
{
    char key[KEY_MAX];
    batch_delete(b, key, key_join(key, "c", rec->conn_id, NULL, NULL));
    batch_delete(b, key, key_join(key, "e", rec->edge_id, rec->conn_id, NULL));
    for (size_t i = 0; i < rec->n_rooms; i++)
        batch_delete(b, key, key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
}

static int apply_connect(reg_store *st, rocksdb_writebatch_t *b, uint64_t seq,
                         const Dw__ConnEvent *ev, int64_t *delta)
{
    Dw__ConnRecord *old = NULL;
    int rc = get_record(st, st->ropts, ev->conn_id, &old);
    if (rc < 0)
        return -1;
    /* A reused id replaces the old row cleanly: its old rooms and edge go. */
    if (old) {
        batch_delete_record(b, old);
        dw__conn_record__free_unpacked(old, NULL);
    } else {
        *delta = 1;
    }

    size_t cap = ev->n_rooms < REG_ROOMS_MAX ? ev->n_rooms : REG_ROOMS_MAX;
    const char **rooms = calloc(cap ? cap : 1, sizeof *rooms);
    if (!rooms)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < ev->n_rooms; i++)
        rooms_add(rooms, &n, ev->rooms[i]);

    Dw__ConnRecord rec = DW__CONN_RECORD__INIT;
    rec.conn_id = ev->conn_id;
    rec.edge_id = ev->edge_id;
    rec.rooms = (char **)rooms;
    rec.n_rooms = n;
    rec.user_id = (char *)str_or_empty(ev->user_id);
    rec.source_ip = (char *)str_or_empty(ev->source_ip);
    rec.user_agent = (char *)str_or_empty(ev->user_agent);
    rec.has_user_agent = ev->has_user_agent;
    rec.connected_at_ms = ev->ts_ms;
    rec.conn_seq = seq;
    rc = batch_put_record(b, &rec);
    free(rooms);
    return rc;
}

/* An event that names an edge only touches the row if it is on that edge:
 * a late event from the edge that held a reused id must not hit the row a
 * newer connect made elsewhere. An empty edge_id (ops, cleanup) matches. */
static int same_edge(const Dw__ConnEvent *ev, const Dw__ConnRecord *rec)
{
    return !ev->edge_id || !*ev->edge_id || !strcmp(ev->edge_id, rec->edge_id);
}

static int apply_disconnect(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnEvent *ev,
                            int64_t *delta)
{
    Dw__ConnRecord *old = NULL;
    int rc = get_record(st, st->ropts, ev->conn_id, &old);
    if (rc <= 0)
        return rc;
    if (!same_edge(ev, old)) {
        dw__conn_record__free_unpacked(old, NULL);
        return 0;
    }
    batch_delete_record(b, old);
    dw__conn_record__free_unpacked(old, NULL);
    *delta = -1;
    return 0;
}

/* JOIN (join=1) or LEAVE (join=0): rewrite the record's room list. */
static int apply_rooms(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnEvent *ev, int join)
{
    Dw__ConnRecord *rec = NULL;
    int rc = get_record(st, st->ropts, ev->conn_id, &rec);
    if (rc <= 0)
        return rc;
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
            batch_delete(b, key, key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
            changed = 1;
            continue;
        }
        rooms_add(rooms, &n, rec->rooms[i]);
    }
    for (size_t i = 0; join && i < ev->n_rooms; i++) {
        if (rooms_add(rooms, &n, ev->rooms[i]))
            changed = 1;
    }
    if (changed) {
        char **saved = rec->rooms;
        size_t saved_n = rec->n_rooms;
        rec->rooms = (char **)rooms;
        rec->n_rooms = n;
        rc = batch_put_record(b, rec);
        rec->rooms = saved; /* free_unpacked must free its own array */
        rec->n_rooms = saved_n;
    }
    free(rooms);
    dw__conn_record__free_unpacked(rec, NULL);
    return rc;
}

static int apply_edge_down(reg_store *st, rocksdb_writebatch_t *b, const Dw__ConnEvent *ev,
                           int64_t *delta)
{
    char prefix[KEY_MAX], upper[KEY_MAX];
    size_t plen = key_join(prefix, "e", ev->edge_id, "", NULL);
    if (!plen)
        return 0;
    memcpy(upper, prefix, plen);
    upper[plen - 1] = '/' + 1;

    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, upper, plen);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, ro);
    int rc = 0;
    char *err = NULL;
    for (rocksdb_iter_seek(it, prefix, plen); rc == 0 && rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t klen;
        const char *k = rocksdb_iter_key(it, &klen);
        char conn_id[REG_ID_MAX + 1];
        if (klen - plen > REG_ID_MAX)
            continue;
        memcpy(conn_id, k + plen, klen - plen);
        conn_id[klen - plen] = '\0';
        /* The index entry goes even if its record is missing: self-repair. */
        rocksdb_writebatch_delete(b, k, klen);
        Dw__ConnRecord *rec = NULL;
        rc = get_record(st, st->ropts, conn_id, &rec);
        if (rc == 1) {
            if (!strcmp(rec->edge_id, ev->edge_id)) {
                batch_delete_record(b, rec);
                (*delta)--;
            }
            dw__conn_record__free_unpacked(rec, NULL);
            rc = 0;
        }
    }
    rocksdb_iter_get_error(it, &err);
    if (err) {
        DW_ERROR("rocksdb scan failed", "edge_id=%s err=\"%s\"", ev->edge_id, err);
        rocksdb_free(err);
        rc = -1;
    }
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    return rc;
}

static int apply_event(reg_store *st, rocksdb_writebatch_t *b, uint64_t seq,
                       const Dw__ConnEvent *ev, int64_t *delta)
{
    int conn_ok = reg_id_valid(ev->conn_id), edge_ok = reg_id_valid(ev->edge_id);
    switch (ev->kind) {
    case DW__CONN_EVENT__KIND__CONNECT:
        if (!conn_ok || !edge_ok)
            break;
        return apply_connect(st, b, seq, ev, delta);
    case DW__CONN_EVENT__KIND__DISCONNECT:
        if (!conn_ok)
            break;
        return apply_disconnect(st, b, ev, delta);
    case DW__CONN_EVENT__KIND__JOIN:
    case DW__CONN_EVENT__KIND__LEAVE:
        if (!conn_ok)
            break;
        return apply_rooms(st, b, ev, ev->kind == DW__CONN_EVENT__KIND__JOIN);
    case DW__CONN_EVENT__KIND__EDGE_DOWN:
        if (!edge_ok)
            break;
        return apply_edge_down(st, b, ev, delta);
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
    int rc = 0;
    int64_t delta = 0;
    char *err = NULL;

    pthread_mutex_lock(&st->wmu);
    if (seq <= atomic_load(&st->applied_seq)) {
        pthread_mutex_unlock(&st->wmu);
        return 0;
    }
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    if (ev)
        rc = apply_event(st, b, seq, ev, &delta);
    uint64_t count = atomic_load(&st->count);
    if (delta < 0 && (uint64_t)-delta > count)
        count = 0; /* never wrap, even if the index was inconsistent */
    else
        count = (uint64_t)((int64_t)count + delta);
    if (rc == 0) {
        uint8_t v[8];
        u64_put_be(v, count);
        rocksdb_writebatch_put(b, KEY_COUNT, strlen(KEY_COUNT), (const char *)v, 8);
        u64_put_be(v, seq);
        rocksdb_writebatch_put(b, KEY_APPLIED, strlen(KEY_APPLIED), (const char *)v, 8);
        rocksdb_write(st->db, st->wopts, b, &err);
        if (err) {
            DW_ERROR("rocksdb write failed", "seq=%llu err=\"%s\"", (unsigned long long)seq, err);
            rocksdb_free(err);
            rc = -1;
        }
    }
    if (rc == 0) {
        atomic_store(&st->count, count);
        atomic_store(&st->applied_seq, seq);
    }
    rocksdb_writebatch_destroy(b);
    pthread_mutex_unlock(&st->wmu);
    return rc == 0 ? 1 : -1;
}

/* ---- reads ------------------------------------------------------------ */

void reg_strs_free(reg_strs *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

void reg_conns_free(reg_conns *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        dw__conn_record__free_unpacked(c->conns[i], NULL);
    free(c->conns);
    c->conns = NULL;
    c->n = 0;
}

/* A consistent view for one read: a snapshot, read options bound to it, and
 * the applied_seq / count of that snapshot. */
typedef struct read_view {
    const rocksdb_snapshot_t *snap;
    rocksdb_readoptions_t *ro;
    uint64_t applied_seq, count;
} read_view;

static int view_open(reg_store *st, read_view *v)
{
    int found;
    v->snap = rocksdb_create_snapshot(st->db);
    v->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(v->ro, v->snap);
    if (read_u64(st, v->ro, KEY_APPLIED, &v->applied_seq, &found) ||
        read_u64(st, v->ro, KEY_COUNT, &v->count, &found))
        return -1;
    return 0;
}

static void view_close(reg_store *st, read_view *v)
{
    rocksdb_readoptions_destroy(v->ro);
    rocksdb_release_snapshot(st->db, v->snap);
}

static int strs_push(reg_strs *s, size_t *cap, const char *p, size_t len)
{
    if (s->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        char **nv = realloc(s->v, ncap * sizeof *nv);
        if (!nv)
            return -1;
        s->v = nv;
        *cap = ncap;
    }
    char *copy = strndup(p, len);
    if (!copy)
        return -1;
    s->v[s->n++] = copy;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Distinct first key parts after prefix (which ends in '/'): after finding
 * part P, seek to prefix + P + ('/' + 1), the first key past every key
 * that starts with prefix + P + '/'. One seek per distinct part. */
static int distinct_parts(reg_store *st, const char *prefix, size_t plen, reg_strs *out)
{
    read_view v;
    char upper[KEY_MAX], target[KEY_MAX];
    size_t cap = 0;
    int rc = 0;
    char *err = NULL;

    memset(out, 0, sizeof *out);
    if (view_open(st, &v)) {
        view_close(st, &v);
        return -1;
    }
    out->applied_seq = v.applied_seq;
    memcpy(upper, prefix, plen);
    upper[plen - 1] = '/' + 1;
    rocksdb_readoptions_set_iterate_upper_bound(v.ro, upper, plen);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, v.ro);
    rocksdb_iter_seek(it, prefix, plen);
    while (rocksdb_iter_valid(it)) {
        size_t klen;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *part = k + plen;
        const char *slash = memchr(part, '/', klen - plen);
        if (!slash) { /* not written by us: step over it */
            rocksdb_iter_next(it);
            continue;
        }
        size_t partlen = (size_t)(slash - part);
        if (strs_push(out, &cap, part, partlen)) {
            rc = -1;
            break;
        }
        size_t tlen = plen + partlen + 1;
        if (tlen > KEY_MAX) {
            rc = -1;
            break;
        }
        memcpy(target, k, plen + partlen);
        target[plen + partlen] = '/' + 1;
        rocksdb_iter_seek(it, target, tlen);
    }
    rocksdb_iter_get_error(it, &err);
    if (err) {
        DW_ERROR("rocksdb scan failed", "err=\"%s\"", err);
        rocksdb_free(err);
        rc = -1;
    }
    rocksdb_iter_destroy(it);
    view_close(st, &v);
    if (rc)
        reg_strs_free(out);
    else if (out->n > 1) /* key order puts "e-x" before "e" ('-' < '/') */
        qsort(out->v, out->n, sizeof *out->v, cmp_str);
    return rc;
}

int reg_store_room_edges(reg_store *st, const char *room, reg_strs *out)
{
    char prefix[KEY_MAX];
    memset(out, 0, sizeof *out);
    if (!room || !dw_room_valid(room, strlen(room))) {
        out->applied_seq = reg_store_applied_seq(st);
        return 0;
    }
    size_t plen = key_join(prefix, "r", room, "", NULL);
    return distinct_parts(st, prefix, plen, out);
}

int reg_store_edges(reg_store *st, reg_strs *out)
{
    return distinct_parts(st, "e/", 2, out);
}

static int conns_push(reg_conns *c, size_t *cap, Dw__ConnRecord *rec)
{
    if (c->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        Dw__ConnRecord **nv = realloc(c->conns, ncap * sizeof *nv);
        if (!nv)
            return -1;
        c->conns = nv;
        *cap = ncap;
    }
    c->conns[c->n++] = rec;
    return 0;
}

int reg_store_list(reg_store *st, const char *edge_id, const char *conn_id, size_t limit,
                   reg_conns *out)
{
    read_view v;
    char prefix[KEY_MAX], upper[KEY_MAX];
    size_t cap = 0, plen;
    int rc = 0, by_edge = edge_id && *edge_id;
    char *err = NULL;

    memset(out, 0, sizeof *out);
    if (view_open(st, &v)) {
        view_close(st, &v);
        return -1;
    }
    out->applied_seq = v.applied_seq;
    out->total = v.count;
    if ((by_edge && !reg_id_valid(edge_id)) || (conn_id && *conn_id && !reg_id_valid(conn_id)))
        goto done; /* no such key can exist */

    if (conn_id && *conn_id) {
        Dw__ConnRecord *rec = NULL;
        rc = get_record(st, v.ro, conn_id, &rec);
        if (rc == 1) {
            rc = 0;
            if ((by_edge && strcmp(rec->edge_id, edge_id)) || conns_push(out, &cap, rec))
                dw__conn_record__free_unpacked(rec, NULL);
        }
        goto done;
    }

    plen = by_edge ? key_join(prefix, "e", edge_id, "", NULL) : key_join(prefix, "c", "", NULL, NULL);
    memcpy(upper, prefix, plen);
    upper[plen - 1] = '/' + 1;
    rocksdb_readoptions_set_iterate_upper_bound(v.ro, upper, plen);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, v.ro);
    for (rocksdb_iter_seek(it, prefix, plen); rocksdb_iter_valid(it) && (!limit || out->n < limit);
         rocksdb_iter_next(it)) {
        Dw__ConnRecord *rec = NULL;
        if (by_edge) {
            size_t klen;
            const char *k = rocksdb_iter_key(it, &klen);
            char id[REG_ID_MAX + 1];
            if (klen - plen > REG_ID_MAX)
                continue;
            memcpy(id, k + plen, klen - plen);
            id[klen - plen] = '\0';
            rc = get_record(st, v.ro, id, &rec);
            if (rc < 0)
                break;
            rc = 0;
        } else {
            size_t vlen;
            const char *val = rocksdb_iter_value(it, &vlen);
            rec = dw__conn_record__unpack(NULL, vlen, (const uint8_t *)val);
        }
        if (rec && conns_push(out, &cap, rec)) {
            dw__conn_record__free_unpacked(rec, NULL);
            rc = -1;
            break;
        }
    }
    rocksdb_iter_get_error(it, &err);
    if (err) {
        DW_ERROR("rocksdb scan failed", "err=\"%s\"", err);
        rocksdb_free(err);
        rc = -1;
    }
    rocksdb_iter_destroy(it);
done:
    view_close(st, &v);
    if (rc)
        reg_conns_free(out);
    return rc;
}
