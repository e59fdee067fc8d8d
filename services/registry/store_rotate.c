/* Key rotation (store.h: reg_store_rotate): every value (rows and outbox
 * entries) re-sealed with the keyring's current key, a batch at a time
 * under the writer lock, then the other keys forgotten and the table
 * compacted. */
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

/* Re-seal up to ROTATE_BATCH values from start (a key under prefix: the
 * rows under c/, the outbox under o/), holding the writer lock so that no
 * event changes a row between our read and our write. A row must still
 * decode as a record before it is sealed again. On return start holds the
 * key to continue from, unless *done. */
static int rotate_batch(reg_store *st, char *start, size_t *slen, const char *prefix, int *done,
                        uint64_t *rewritten, char **err)
{
    char *rerr = NULL;
    int rc = 0, n = 0;
    int rows = prefix[0] == 'c';
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    store_scan sc;
    size_t klen, vlen;

    pthread_mutex_lock(&st->wmu);
    *done = 1;
    for (const char *k = store__scan_begin(&sc, st, NULL, prefix, 2, start, *slen, &klen); k;
         k = store__scan_next(&sc, &klen)) {
        const char *val = store__scan_value(&sc, &vlen);
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
        if (store__value_open(st, k, klen, val, vlen, &pt, &ptlen) ||
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
        if (store__value_encode(st, k, klen, pt, ptlen, &sealed, &slen2)) {
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
    if (store__scan_end(&sc, rc ? NULL : err)) rc = -1;
    if (!rc && n) rocksdb_write(st->db, st->wopts, b, &rerr);
    pthread_mutex_unlock(&st->wmu);
    if (rerr) {
        *err = strdup(rerr);
        rocksdb_free(rerr);
        rc = -1;
    }
    if (!rc) *rewritten += (uint64_t)n;
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
    static const char *const prefixes[] = {"c/", OUTBOX_PREFIX};
    for (size_t r = 0; r < sizeof prefixes / sizeof prefixes[0]; r++) {
        memcpy(start, prefixes[r], 2);
        slen = 2;
        done = 0;
        while (!done)
            if (rotate_batch(st, start, &slen, prefixes[r], &done, rewritten, err)) return -1;
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
    store__key_ids_put(st, b);
    int rc = store__write_sync(st, b, "key_ids");
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
