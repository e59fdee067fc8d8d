/* The connections table (store.h): opening it (and checking that the
 * keyring has every key its values need), closing, metadata, the hold,
 * flushes and checkpoints. Applying events is store_apply.c, reads
 * store_read.c, key rotation store_rotate.c, the encoding store_codec.c
 * (store_int.h). */
#include "store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "store_int.h"

/* ---- open / close ----------------------------------------------------- */

/* Count c/ keys: only for a table written before m/count existed. */
static int count_scan(reg_store *st, uint64_t *n)
{
    store_scan sc;
    size_t klen;
    *n = 0;
    for (const char *k = store__scan_begin(&sc, st, NULL, "c/", 2, NULL, 0, &klen); k;
         k = store__scan_next(&sc, &klen))
        (*n)++;
    return store__scan_end(&sc, NULL);
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
void store__key_ids_put(reg_store *st, rocksdb_writebatch_t *b)
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
int store__write_sync(reg_store *st, rocksdb_writebatch_t *b, const char *what)
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
        store__key_ids_put(st, b);
        int rc = store__write_sync(st, b, "key_ids");
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
    if (store__read_u64(st, st->ropts, KEY_APPLIED, &v, &found)) goto read_error;
    atomic_store(&st->applied_seq, v);
    if (store__read_u64(st, st->ropts, KEY_APPLIED_TS, &v, &found)) goto read_error;
    atomic_store(&st->applied_ts, (int64_t)v);
    if (store__read_u64(st, st->ropts, KEY_HOLD, &v, &found)) goto read_error;
    atomic_store(&st->hold, (int64_t)v);
    if (store__read_u64(st, st->ropts, KEY_COUNT, &v, &found)) goto read_error;
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
        store__u64_put_be(v, (uint64_t)restored_to_ms);
        rocksdb_writebatch_put(b, KEY_HOLD, strlen(KEY_HOLD), (const char *)v, 8);
    } else {
        rocksdb_writebatch_delete(b, KEY_HOLD, strlen(KEY_HOLD));
    }
    pthread_mutex_lock(&st->wmu);
    int rc = store__write_sync(st, b, "hold");
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
