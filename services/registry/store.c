#include "store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "events.h"

/* "r/" room "/" edge "/" conn: 2 + 64 + 1 + 128 + 1 + 128, with room to spare. */
#define KEY_MAX 512

#define KEY_APPLIED "m/applied_seq"
#define KEY_APPLIED_TS "m/applied_ts"
#define KEY_COUNT "m/count"
#define KEY_KEY_IDS "m/key_ids"
#define KEY_HOLD "m/restored_to"
/* The outbox of lifecycle events: o/<seq>/<idx>, both zero-padded so that
 * the keys sort in event order. */
#define OUTBOX_PREFIX "o/"
#define OUTBOX_UPPER "o0"
#define OUTBOX_KEY_LEN (2 + 20 + 1 + 10)

/* Values re-sealed per write batch by reg_store_rotate (the writer waits
 * for one batch at most). */
#define ROTATE_BATCH 512

struct reg_store {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *topts;
    rocksdb_writeoptions_t *wopts;
    rocksdb_writeoptions_t *sync_wopts; /* metadata that must survive a power cut */
    rocksdb_readoptions_t *ropts;
    pthread_mutex_t wmu; /* one writer at a time: apply reads, then writes */
    _Atomic uint64_t applied_seq;
    _Atomic int64_t applied_ts;
    _Atomic uint64_t count;
    _Atomic int64_t hold;
    const dw_keyring *keys;               /* borrowed */
    uint32_t cur_key;                     /* 0: values are written in plaintext */
    _Atomic int allow_plain;              /* 0 is in m/key_ids: plaintext values are legitimate */
    uint32_t key_ids[DW_KEYRING_MAX + 1]; /* m/key_ids, under wmu */
    size_t n_key_ids;
    int read_only;
    int events; /* derive lifecycle events into the outbox */
    /* Events at or before this position are in DW_EVENTS already: not
     * written (a replica catching up or replaying would only delete them). */
    _Atomic uint64_t floor_seq;
    _Atomic uint32_t floor_idx;
};

/* ---- small helpers ---------------------------------------------------- */

int reg_id_valid(const char *s)
{
    if (!s) return 0;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (c <= 0x20 || c >= 0x7f || c == '/' || n >= REG_ID_MAX) return 0;
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

/* ---- values: sealed or plaintext -------------------------------------- */

/* The stored form of a packed record under key: sealed with the current
 * key (bound to the key, so a value copied to another row does not open),
 * or the packed bytes themselves without a key. *out is malloc'd. 0 or -1. */
static int value_encode(reg_store *st, const char *key, size_t klen, const uint8_t *packed,
                        size_t len, uint8_t **out, size_t *outlen)
{
    if (!st->cur_key) {
        *out = malloc(len ? len : 1);
        if (!*out) return -1;
        memcpy(*out, packed, len);
        *outlen = len;
        return 0;
    }
    int rc = dw_crypto_seal(st->keys, key, klen, packed, len, out, outlen);
    if (rc) {
        DW_ERROR("cannot seal a record", "err=\"%s\"", dw_crypto_strerror(rc));
        return -1;
    }
    return 0;
}

/* The bytes under key as they were before value_encode: 0 with *out
 * (malloc'd) and *outlen, or -1 when they cannot be read (logged): a
 * sealed value that does not open, or plaintext where none may be. */
static int value_open(reg_store *st, const char *key, size_t klen, const char *val, size_t vlen,
                      uint8_t **out, size_t *outlen)
{
    uint32_t kid = 0;
    if (dw_crypto_is_sealed(val, vlen, &kid)) {
        int rc = dw_crypto_open(st->keys, key, klen, val, vlen, out, outlen, NULL);
        if (rc) {
            char hex[16];
            DW_ERROR("cannot open a sealed record", "key=\"%.*s\" key_id=%s err=\"%s\"", (int)klen,
                     key, dw_key_id_hex(kid, hex, sizeof hex), dw_crypto_strerror(rc));
            return -1;
        }
        return 0;
    }
    if (!atomic_load(&st->allow_plain)) {
        /* An encrypted table never holds plaintext: someone wrote it. */
        DW_ERROR("plaintext record in an encrypted table", "key=\"%.*s\"", (int)klen, key);
        return -1;
    }
    *out = malloc(vlen ? vlen : 1);
    if (!*out) return -1;
    memcpy(*out, val, vlen);
    *outlen = vlen;
    return 0;
}

/* Decode the value under key. NULL when it cannot be read (logged). */
static Dw__ConnRecord *value_decode(reg_store *st, const char *key, size_t klen, const char *val,
                                    size_t vlen)
{
    uint8_t *pt = NULL;
    size_t ptlen = 0;
    if (value_open(st, key, klen, val, vlen, &pt, &ptlen)) return NULL;
    Dw__ConnRecord *rec = dw__conn_record__unpack(NULL, ptlen, pt);
    free(pt);
    if (!rec) DW_ERROR("undecodable record", "key=\"%.*s\"", (int)klen, key);
    return rec;
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
 * An unreadable value counts as absent: the caller overwrites or deletes
 * the key, which repairs it. */
static int get_record(reg_store *st, const rocksdb_readoptions_t *ro, const char *conn_id,
                      Dw__ConnRecord **rec)
{
    char key[KEY_MAX], *err = NULL;
    size_t klen = key_join(key, "c", conn_id, NULL, NULL), vlen = 0;
    *rec = NULL;
    if (!klen) return 0;
    char *val = rocksdb_get(st->db, ro, key, klen, &vlen, &err);
    if (err) {
        DW_ERROR("rocksdb get failed", "key=c/%s err=\"%s\"", conn_id, err);
        rocksdb_free(err);
        return -1;
    }
    if (!val) return 0;
    *rec = value_decode(st, key, klen, val, vlen);
    rocksdb_free(val);
    return *rec ? 1 : 0;
}

static void batch_put_empty(rocksdb_writebatch_t *b, const char *key, size_t klen)
{
    if (klen) rocksdb_writebatch_put(b, key, klen, "", 0);
}

static void batch_delete(rocksdb_writebatch_t *b, const char *key, size_t klen)
{
    if (klen) rocksdb_writebatch_delete(b, key, klen);
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

static int key_ids_has(const reg_store *st, uint32_t id)
{
    for (size_t i = 0; i < st->n_key_ids; i++)
        if (st->key_ids[i] == id) return 1;
    return 0;
}

/* m/key_ids into st->key_ids; *found tells whether the key exists. */
static int key_ids_read(reg_store *st, int *found)
{
    char *err = NULL;
    size_t vlen = 0;
    char *val = rocksdb_get(st->db, st->ropts, KEY_KEY_IDS, strlen(KEY_KEY_IDS), &vlen, &err);
    if (err) {
        DW_ERROR("rocksdb get failed", "key=%s err=\"%s\"", KEY_KEY_IDS, err);
        rocksdb_free(err);
        return -1;
    }
    *found = val != NULL;
    st->n_key_ids = 0;
    for (size_t i = 0; val && i + 4 <= vlen && st->n_key_ids < DW_KEYRING_MAX + 1; i += 4) {
        const uint8_t *p = (const uint8_t *)val + i;
        st->key_ids[st->n_key_ids++] =
            ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    }
    rocksdb_free(val);
    return 0;
}

/* Put st->key_ids into b. */
static void key_ids_put(reg_store *st, rocksdb_writebatch_t *b)
{
    uint8_t v[4 * (DW_KEYRING_MAX + 1)];
    for (size_t i = 0; i < st->n_key_ids; i++) {
        v[4 * i] = (uint8_t)(st->key_ids[i] >> 24);
        v[4 * i + 1] = (uint8_t)(st->key_ids[i] >> 16);
        v[4 * i + 2] = (uint8_t)(st->key_ids[i] >> 8);
        v[4 * i + 3] = (uint8_t)st->key_ids[i];
    }
    rocksdb_writebatch_put(b, KEY_KEY_IDS, strlen(KEY_KEY_IDS), (const char *)v, 4 * st->n_key_ids);
}

/* Write a batch with fsync. 0 or -1 (logged). */
static int write_sync(reg_store *st, rocksdb_writebatch_t *b, const char *what)
{
    char *err = NULL;
    rocksdb_write(st->db, st->sync_wopts, b, &err);
    if (err) {
        DW_ERROR("rocksdb write failed", "what=%s err=\"%s\"", what, err);
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

/* Refuse a table whose values need a key we lack; record the current key
 * before anything is sealed with it. 0 or -1 with *err. */
static int keys_check(reg_store *st, char **err)
{
    char hex[16], cur_hex[16], msg[512];
    int found;
    if (key_ids_read(st, &found)) goto read_error;
    if (!found) {
        /* A table from before encryption existed: its rows are plaintext. */
        st->n_key_ids = 0;
        if (atomic_load(&st->count) > 0) st->key_ids[st->n_key_ids++] = 0;
    }
    for (size_t i = 0; i < st->n_key_ids; i++) {
        uint32_t id = st->key_ids[i];
        if (!id || dw_keyring_has(st->keys, id)) continue;
        dw_key_id_hex(id, hex, sizeof hex);
        if (!st->cur_key)
            snprintf(msg, sizeof msg,
                     "the table is encrypted (values sealed with key id %s) and no key is "
                     "configured: refusing to start rather than read garbage; set the key file "
                     "with id %s",
                     hex, hex);
        else
            snprintf(msg, sizeof msg,
                     "the table holds values sealed with key id %s, which is not in the keyring "
                     "(current key id %s): refusing to start rather than read garbage; add the "
                     "key file with id %s as an old key",
                     hex, dw_key_id_hex(st->cur_key, cur_hex, sizeof cur_hex), hex);
        *err = strdup(msg);
        return -1;
    }
    if (!key_ids_has(st, st->cur_key)) {
        if (st->n_key_ids >= DW_KEYRING_MAX + 1) {
            *err =
                strdup("the table names too many keys: run a key rotation with the keys it needs");
            return -1;
        }
        st->key_ids[st->n_key_ids++] = st->cur_key;
        rocksdb_writebatch_t *b = rocksdb_writebatch_create();
        key_ids_put(st, b);
        int rc = write_sync(st, b, "key_ids");
        rocksdb_writebatch_destroy(b);
        if (rc) goto read_error;
    }
    atomic_store(&st->allow_plain, key_ids_has(st, 0));
    if (st->cur_key && key_ids_has(st, 0) && atomic_load(&st->count) > 0)
        DW_WARN(
            "the table still holds plaintext values: run 'dwctl registry rotate-key' to seal them",
            "connections=%llu", (unsigned long long)atomic_load(&st->count));
    return 0;

read_error:
    *err = strdup("cannot read or write the table's key ids");
    return -1;
}

int reg_store_open(reg_store **out, const char *dir, char **err)
{
    reg_store_opts o = {0};
    return reg_store_open_opts(out, dir, &o, err);
}

int reg_store_open_opts(reg_store **out, const char *dir, const reg_store_opts *o, char **err)
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
    st->keys = o->keys;
    st->cur_key = dw_keyring_current(o->keys);
    st->read_only = o->read_only;
    st->events = o->events && !o->read_only;

    st->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(st->opts, !o->read_only);
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
    st->sync_wopts = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(st->sync_wopts, 1);
    st->ropts = rocksdb_readoptions_create();

    if (o->read_only)
        st->db = rocksdb_open_for_read_only(st->opts, dir, 0, &rerr);
    else
        st->db = rocksdb_open(st->opts, dir, &rerr);
    if (rerr) {
        *err = strdup(rerr);
        rocksdb_free(rerr);
        goto error;
    }

    uint64_t v;
    int found;
    if (read_u64(st, st->ropts, KEY_APPLIED, &v, &found)) goto read_error;
    atomic_store(&st->applied_seq, v);
    if (read_u64(st, st->ropts, KEY_APPLIED_TS, &v, &found)) goto read_error;
    atomic_store(&st->applied_ts, (int64_t)v);
    if (read_u64(st, st->ropts, KEY_HOLD, &v, &found)) goto read_error;
    atomic_store(&st->hold, (int64_t)v);
    if (read_u64(st, st->ropts, KEY_COUNT, &v, &found)) goto read_error;
    if (!found && count_scan(st, &v)) goto read_error;
    atomic_store(&st->count, v);
    if (o->read_only) {
        if (key_ids_read(st, &found)) goto read_error;
        atomic_store(&st->allow_plain, !found || key_ids_has(st, 0));
    } else if (keys_check(st, err)) {
        goto error;
    }
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
    if (!st) return;
    if (st->db) rocksdb_close(st->db);
    rocksdb_readoptions_destroy(st->ropts);
    rocksdb_writeoptions_destroy(st->wopts);
    rocksdb_writeoptions_destroy(st->sync_wopts);
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

static void outbox_key(char *buf, uint64_t seq, uint32_t idx)
{
    snprintf(buf, OUTBOX_KEY_LEN + 1, OUTBOX_PREFIX "%020llu/%010u", (unsigned long long)seq,
             (unsigned)idx);
}

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
    ev.conn_id = (char *)str_or_empty(conn_id);
    ev.user_id = (char *)str_or_empty(user_id);
    ev.room = (char *)str_or_empty(room);
    ev.edge_id = (char *)str_or_empty(edge_id);
    ev.ts_ms = c->ts_ms;
    ev.reason = (char *)str_or_empty(reason);
    char key[OUTBOX_KEY_LEN + 1];
    outbox_key(key, pos.seq, pos.idx);
    size_t len = 0, vlen = 0;
    uint8_t *packed = dw_pb_pack(&ev.base, &len), *val = NULL;
    if (!packed || value_encode(c->st, key, OUTBOX_KEY_LEN, packed, len, &val, &vlen)) {
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

/* ---- apply ------------------------------------------------------------ */

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
    size_t klen = key_join(key, "c", rec->conn_id, NULL, NULL);
    int rc = klen ? value_encode(st, key, klen, packed, len, &val, &vlen) : 0;
    free(packed);
    if (rc) return -1;
    if (klen) rocksdb_writebatch_put(b, key, klen, (const char *)val, vlen);
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
    int rc = get_record(st, st->ropts, ev->conn_id, &old);
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
    rec.user_id = (char *)str_or_empty(ev->user_id);
    rec.source_ip = (char *)str_or_empty(ev->source_ip);
    rec.user_agent = (char *)str_or_empty(ev->user_agent);
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
    int rc = get_record(st, st->ropts, ev->conn_id, &old);
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
    int rc = get_record(st, st->ropts, ev->conn_id, &rec);
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
            batch_delete(b, key, key_join(key, "r", rec->rooms[i], rec->edge_id, rec->conn_id));
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
    char prefix[KEY_MAX], upper[KEY_MAX], reason[160];
    size_t plen = key_join(prefix, "e", ev->edge_id, "", NULL);
    if (!plen) return 0;
    memcpy(upper, prefix, plen);
    upper[plen - 1] = '/' + 1;
    snprintf(reason, sizeof reason, "edge_down%s%.128s", ev->reason && *ev->reason ? ":" : "",
             ev->reason ? ev->reason : "");

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
        if (klen - plen > REG_ID_MAX) continue;
        memcpy(conn_id, k + plen, klen - plen);
        conn_id[klen - plen] = '\0';
        /* The index entry goes even if its record is missing: self-repair. */
        rocksdb_writebatch_delete(b, k, klen);
        Dw__ConnRecord *rec = NULL;
        rc = get_record(st, st->ropts, conn_id, &rec);
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
    int rc = 0;
    int64_t delta = 0;
    char *err = NULL;

    pthread_mutex_lock(&st->wmu);
    if (seq <= atomic_load(&st->applied_seq)) {
        pthread_mutex_unlock(&st->wmu);
        return 0;
    }
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    /* The events' time is the stream's, never this replica's clock: every
     * replica must derive the same events. */
    ev_ctx c = {.st = st, .b = b, .seq = seq, .ts_ms = ev && ev->ts_ms > 0 ? ev->ts_ms : ts_ms};
    if (ev) rc = apply_event(st, b, seq, ev, &delta, &c);
    if (rc == 0 && c.failed) rc = -1;
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
        if (ts_ms > 0) {
            u64_put_be(v, (uint64_t)ts_ms);
            rocksdb_writebatch_put(b, KEY_APPLIED_TS, strlen(KEY_APPLIED_TS), (const char *)v, 8);
        }
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
        if (ts_ms > 0) atomic_store(&st->applied_ts, ts_ms);
    }
    rocksdb_writebatch_destroy(b);
    pthread_mutex_unlock(&st->wmu);
    return rc == 0 ? 1 : -1;
}

/* ---- the outbox --------------------------------------------------------- */

void reg_store_events_floor(reg_store *st, uint64_t seq, uint32_t idx)
{
    /* Written as a pair under wmu, so an apply never sees half of it. */
    pthread_mutex_lock(&st->wmu);
    atomic_store(&st->floor_seq, seq);
    atomic_store(&st->floor_idx, idx);
    pthread_mutex_unlock(&st->wmu);
}

void reg_store_events_floor_get(reg_store *st, uint64_t *seq, uint32_t *idx)
{
    pthread_mutex_lock(&st->wmu);
    *seq = atomic_load(&st->floor_seq);
    *idx = atomic_load(&st->floor_idx);
    pthread_mutex_unlock(&st->wmu);
}

void reg_outbox_free(reg_outbox *o)
{
    if (!o) return;
    for (size_t i = 0; i < o->n; i++)
        dw__lifecycle_event__free_unpacked(o->v[i].ev, NULL);
    free(o->v);
    o->v = NULL;
    o->n = 0;
}

/* The position in an outbox key, or -1 for a key of another shape. */
static int outbox_key_parse(const char *k, size_t klen, uint64_t *seq, uint32_t *idx)
{
    char buf[OUTBOX_KEY_LEN + 1];
    unsigned long long s;
    unsigned i;
    if (klen != OUTBOX_KEY_LEN) return -1;
    memcpy(buf, k, klen);
    buf[klen] = '\0';
    if (sscanf(buf, OUTBOX_PREFIX "%20llu/%10u", &s, &i) != 2) return -1;
    *seq = s;
    *idx = i;
    return 0;
}

int reg_store_outbox_read(reg_store *st, size_t limit, reg_outbox *out)
{
    size_t cap = 0;
    int rc = 0;
    char *err = NULL;
    memset(out, 0, sizeof *out);
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, OUTBOX_UPPER, strlen(OUTBOX_UPPER));
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, ro);
    for (rocksdb_iter_seek(it, OUTBOX_PREFIX, strlen(OUTBOX_PREFIX));
         rocksdb_iter_valid(it) && (!limit || out->n < limit); rocksdb_iter_next(it)) {
        size_t klen, vlen, ptlen = 0;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *val = rocksdb_iter_value(it, &vlen);
        reg_outbox_entry e = {0};
        uint8_t *pt = NULL;
        if (outbox_key_parse(k, klen, &e.seq, &e.idx)) continue;
        /* An entry that does not open or decode is skipped (logged): the
         * emitter deletes it with the ones around it. */
        if (value_open(st, k, klen, val, vlen, &pt, &ptlen)) continue;
        e.ev = dw__lifecycle_event__unpack(NULL, ptlen, pt);
        free(pt);
        if (!e.ev || !reg_ev_type_valid(e.ev->type)) {
            DW_ERROR("undecodable lifecycle event in the outbox", "key=\"%.*s\"", (int)klen, k);
            if (e.ev) dw__lifecycle_event__free_unpacked(e.ev, NULL);
            continue;
        }
        if (out->n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            reg_outbox_entry *nv = realloc(out->v, ncap * sizeof *nv);
            if (!nv) {
                dw__lifecycle_event__free_unpacked(e.ev, NULL);
                rc = -1;
                break;
            }
            out->v = nv;
            cap = ncap;
        }
        out->v[out->n++] = e;
    }
    rocksdb_iter_get_error(it, &err);
    if (err) {
        DW_ERROR("rocksdb outbox scan failed", "err=\"%s\"", err);
        rocksdb_free(err);
        rc = -1;
    }
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (rc) reg_outbox_free(out);
    return rc;
}

int reg_store_outbox_delete_through(reg_store *st, uint64_t seq, uint32_t idx)
{
    char end[OUTBOX_KEY_LEN + 1];
    /* [o/, the key right after (seq, idx)): keys are fixed-width. */
    if (idx < UINT32_MAX)
        outbox_key(end, seq, idx + 1);
    else if (seq < UINT64_MAX)
        outbox_key(end, seq + 1, 0);
    else
        memcpy(end, OUTBOX_UPPER, sizeof OUTBOX_UPPER);
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    rocksdb_writebatch_delete_range(b, OUTBOX_PREFIX, strlen(OUTBOX_PREFIX), end, strlen(end));
    char *err = NULL;
    pthread_mutex_lock(&st->wmu);
    rocksdb_write(st->db, st->wopts, b, &err);
    pthread_mutex_unlock(&st->wmu);
    rocksdb_writebatch_destroy(b);
    if (err) {
        DW_ERROR("rocksdb outbox delete failed", "err=\"%s\"", err);
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

/* ---- reads ------------------------------------------------------------ */

void reg_strs_free(reg_strs *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

void reg_conns_free(reg_conns *c)
{
    if (!c) return;
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
        if (!nv) return -1;
        s->v = nv;
        *cap = ncap;
    }
    char *copy = strndup(p, len);
    if (!copy) return -1;
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
        if (!nv) return -1;
        c->conns = nv;
        *cap = ncap;
    }
    c->conns[c->n++] = rec;
    return 0;
}

int reg_store_list(reg_store *st, const char *edge_id, const char *conn_id, const char *after,
                   size_t limit, reg_conns *out)
{
    read_view v;
    char prefix[KEY_MAX], upper[KEY_MAX], start[KEY_MAX];
    size_t cap = 0, plen, slen;
    int rc = 0, by_edge = edge_id && *edge_id, has_after = after && *after;
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
        if (has_after && strcmp(conn_id, after) <= 0) goto done;
        rc = get_record(st, v.ro, conn_id, &rec);
        if (rc == 1) {
            rc = 0;
            if ((by_edge && strcmp(rec->edge_id, edge_id)) || conns_push(out, &cap, rec))
                dw__conn_record__free_unpacked(rec, NULL);
        }
        goto done;
    }

    plen =
        by_edge ? key_join(prefix, "e", edge_id, "", NULL) : key_join(prefix, "c", "", NULL, NULL);
    memcpy(upper, prefix, plen);
    upper[plen - 1] = '/' + 1;
    /* Paging: start at prefix + after; the id itself is stepped over below.
     * An after too long to be an id sorts after every id of its prefix. */
    memcpy(start, prefix, plen);
    slen = plen;
    if (has_after) {
        size_t alen = strlen(after);
        if (plen + alen > KEY_MAX) goto done;
        memcpy(start + plen, after, alen);
        slen += alen;
    }
    rocksdb_readoptions_set_iterate_upper_bound(v.ro, upper, plen);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, v.ro);
    for (rocksdb_iter_seek(it, start, slen); rocksdb_iter_valid(it) && (!limit || out->n < limit);
         rocksdb_iter_next(it)) {
        Dw__ConnRecord *rec = NULL;
        size_t klen;
        const char *k = rocksdb_iter_key(it, &klen);
        if (has_after && klen == slen && !memcmp(k, start, slen)) continue;
        if (by_edge) {
            char id[REG_ID_MAX + 1];
            if (klen - plen > REG_ID_MAX) continue;
            memcpy(id, k + plen, klen - plen);
            id[klen - plen] = '\0';
            rc = get_record(st, v.ro, id, &rec);
            if (rc < 0) break;
            rc = 0;
        } else {
            size_t vlen;
            const char *val = rocksdb_iter_value(it, &vlen);
            rec = value_decode(st, k, klen, val, vlen);
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
    if (rc) reg_conns_free(out);
    return rc;
}

/* ---- presence --------------------------------------------------------- */

void reg_presence_free(reg_presence *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++)
        free(p->users[i]);
    free(p->users);
    free(p->conns);
    p->users = NULL;
    p->conns = NULL;
    p->n = 0;
}

int reg_store_presence(reg_store *st, const char *room, const char *after_user, size_t limit,
                       reg_presence *out)
{
    read_view v;
    char prefix[KEY_MAX], upper[KEY_MAX];
    reg_strs users = {0};
    size_t cap = 0;
    int rc = 0;
    char *err = NULL;

    memset(out, 0, sizeof *out);
    if (view_open(st, &v)) {
        view_close(st, &v);
        return -1;
    }
    out->applied_seq = v.applied_seq;
    size_t plen =
        room && dw_room_valid(room, strlen(room)) ? key_join(prefix, "r", room, "", NULL) : 0;
    if (!plen) goto done;

    /* One user id per member connection; grouped after sorting. */
    memcpy(upper, prefix, plen);
    upper[plen - 1] = '/' + 1;
    rocksdb_readoptions_set_iterate_upper_bound(v.ro, upper, plen);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, v.ro);
    for (rocksdb_iter_seek(it, prefix, plen); rc == 0 && rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t klen;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *slash = memchr(k + plen, '/', klen - plen); /* <edge>/<conn> */
        if (!slash) continue;
        size_t idlen = klen - (size_t)(slash + 1 - k);
        char id[REG_ID_MAX + 1];
        if (idlen == 0 || idlen > REG_ID_MAX) continue;
        memcpy(id, slash + 1, idlen);
        id[idlen] = '\0';
        Dw__ConnRecord *rec = NULL;
        rc = get_record(st, v.ro, id, &rec);
        if (rc < 0) break;
        rc = 0;
        if (rec && rec->user_id && *rec->user_id &&
            (!after_user || !*after_user || strcmp(rec->user_id, after_user) > 0))
            rc = strs_push(&users, &cap, rec->user_id, strlen(rec->user_id));
        dw__conn_record__free_unpacked(rec, NULL);
    }
    rocksdb_iter_get_error(it, &err);
    if (err) {
        DW_ERROR("rocksdb scan failed", "err=\"%s\"", err);
        rocksdb_free(err);
        rc = -1;
    }
    rocksdb_iter_destroy(it);
    if (rc || !users.n) goto done;

    qsort(users.v, users.n, sizeof *users.v, cmp_str);
    out->users = calloc(users.n, sizeof *out->users);
    out->conns = calloc(users.n, sizeof *out->conns);
    if (!out->users || !out->conns) {
        rc = -1;
        goto done;
    }
    for (size_t i = 0; i < users.n; i++) {
        if (out->n && !strcmp(out->users[out->n - 1], users.v[i])) {
            out->conns[out->n - 1]++;
            continue;
        }
        if (limit && out->n == limit) {
            out->more = 1;
            break;
        }
        out->users[out->n] = users.v[i];
        users.v[i] = NULL; /* moved */
        out->conns[out->n++] = 1;
    }
done:
    reg_strs_free(&users);
    view_close(st, &v);
    if (rc) reg_presence_free(out);
    return rc;
}

/* ---- metadata, hold, checkpoints, rotation ---------------------------- */

void reg_store_info_get(reg_store *st, reg_store_info *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&st->wmu);
    out->applied_seq = atomic_load(&st->applied_seq);
    out->applied_ts_ms = atomic_load(&st->applied_ts);
    out->count = atomic_load(&st->count);
    out->restored_to_ms = atomic_load(&st->hold);
    out->n_key_ids = st->n_key_ids;
    memcpy(out->key_ids, st->key_ids, st->n_key_ids * sizeof *st->key_ids);
    pthread_mutex_unlock(&st->wmu);
}

int64_t reg_store_hold(reg_store *st)
{
    return atomic_load(&st->hold);
}

int reg_store_set_hold(reg_store *st, int64_t restored_to_ms)
{
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    uint8_t v[8];
    if (restored_to_ms > 0) {
        u64_put_be(v, (uint64_t)restored_to_ms);
        rocksdb_writebatch_put(b, KEY_HOLD, strlen(KEY_HOLD), (const char *)v, 8);
    } else {
        rocksdb_writebatch_delete(b, KEY_HOLD, strlen(KEY_HOLD));
    }
    pthread_mutex_lock(&st->wmu);
    int rc = write_sync(st, b, "hold");
    if (rc == 0) atomic_store(&st->hold, restored_to_ms > 0 ? restored_to_ms : 0);
    pthread_mutex_unlock(&st->wmu);
    rocksdb_writebatch_destroy(b);
    return rc;
}

int reg_store_flush(reg_store *st)
{
    char *err = NULL;
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    rocksdb_flush(st->db, fo, &err);
    rocksdb_flushoptions_destroy(fo);
    if (err) {
        DW_ERROR("rocksdb flush failed", "err=\"%s\"", err);
        rocksdb_free(err);
        return -1;
    }
    return 0;
}

int reg_store_checkpoint(reg_store *st, const char *dir, char **err)
{
    char *rerr = NULL;
    *err = NULL;
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(st->db, &rerr);
    /* log_size_for_flush 0: flush first, so the checkpoint is table files
     * (hard links) plus an empty WAL rather than a copy of a long WAL. */
    if (!rerr) rocksdb_checkpoint_create(cp, dir, 0, &rerr);
    rocksdb_checkpoint_object_destroy(cp);
    if (rerr) {
        *err = strdup(rerr);
        rocksdb_free(rerr);
        return -1;
    }
    return 0;
}

/* Re-seal up to ROTATE_BATCH values from start (a key below upper: the
 * rows under c/, the outbox under o/), holding the writer lock so that no
 * event changes a row between our read and our write. A row must still
 * decode as a record before it is sealed again. On return start holds the
 * key to continue from, unless *done. */
static int rotate_batch(reg_store *st, char *start, size_t *slen, const char *upper, int *done,
                        uint64_t *rewritten, char **err)
{
    char *rerr = NULL;
    int rc = 0, n = 0;
    int rows = upper[0] == 'c';
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, upper, strlen(upper));

    pthread_mutex_lock(&st->wmu);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, ro);
    *done = 1;
    for (rocksdb_iter_seek(it, start, *slen); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *val = rocksdb_iter_value(it, &vlen);
        if (n == ROTATE_BATCH) {
            /* Continue from this key next time (not yet looked at). */
            if (klen <= KEY_MAX) {
                memcpy(start, k, klen);
                *slen = klen;
                *done = 0;
            }
            break;
        }
        uint32_t kid = 0;
        if (dw_crypto_is_sealed(val, vlen, &kid) && kid == st->cur_key) continue;
        uint8_t *pt = NULL, *sealed = NULL;
        size_t ptlen = 0, slen2 = 0;
        Dw__ConnRecord *rec = NULL;
        if (value_open(st, k, klen, val, vlen, &pt, &ptlen) ||
            (rows && !(rec = dw__conn_record__unpack(NULL, ptlen, pt)))) {
            char msg[KEY_MAX + 128];
            snprintf(msg, sizeof msg, "the value of %.*s cannot be read (see the log)", (int)klen,
                     k);
            *err = strdup(msg);
            free(pt);
            rc = -1;
            break;
        }
        if (rec) dw__conn_record__free_unpacked(rec, NULL);
        if (value_encode(st, k, klen, pt, ptlen, &sealed, &slen2)) {
            free(pt);
            *err = strdup("cannot seal a value");
            rc = -1;
            break;
        }
        rocksdb_writebatch_put(b, k, klen, (const char *)sealed, slen2);
        free(pt);
        free(sealed);
        n++;
    }
    rocksdb_iter_get_error(it, &rerr);
    rocksdb_iter_destroy(it);
    if (!rc && !rerr && n) rocksdb_write(st->db, st->wopts, b, &rerr);
    pthread_mutex_unlock(&st->wmu);
    if (rerr) {
        *err = strdup(rerr);
        rocksdb_free(rerr);
        rc = -1;
    }
    if (!rc) *rewritten += (uint64_t)n;
    rocksdb_readoptions_destroy(ro);
    rocksdb_writebatch_destroy(b);
    return rc;
}

int reg_store_rotate(reg_store *st, uint64_t *rewritten, char **err)
{
    char start[KEY_MAX];
    size_t slen = 2;
    int done = 0;
    *rewritten = 0;
    *err = NULL;
    if (!st->cur_key) {
        *err = strdup("no current key: set the key file to rotate to");
        return -1;
    }
    /* The rows, then the lifecycle events still waiting in the outbox. */
    static const char *const ranges[][2] = {{"c/", "c0"}, {OUTBOX_PREFIX, OUTBOX_UPPER}};
    for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
        memcpy(start, ranges[r][0], 2);
        slen = 2;
        done = 0;
        while (!done)
            if (rotate_batch(st, start, &slen, ranges[r][1], &done, rewritten, err)) return -1;
    }

    /* Every value is now sealed with the current key (the writer only seals
     * with it): the others are no longer needed. */
    pthread_mutex_lock(&st->wmu);
    uint32_t saved[DW_KEYRING_MAX + 1];
    size_t saved_n = st->n_key_ids;
    memcpy(saved, st->key_ids, sizeof saved);
    st->key_ids[0] = st->cur_key;
    st->n_key_ids = 1;
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    key_ids_put(st, b);
    int rc = write_sync(st, b, "key_ids");
    rocksdb_writebatch_destroy(b);
    if (rc) {
        memcpy(st->key_ids, saved, sizeof saved);
        st->n_key_ids = saved_n;
    } else {
        atomic_store(&st->allow_plain, 0);
    }
    pthread_mutex_unlock(&st->wmu);
    if (rc) {
        *err = strdup("cannot write the table's key ids");
        return -1;
    }
    /* Old ciphertexts (and plaintext) stay in table files until compacted. */
    rocksdb_compact_range(st->db, NULL, 0, NULL, 0);
    return 0;
}
