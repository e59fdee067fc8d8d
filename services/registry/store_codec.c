/* The table's encoding (store_int.h): key layout, big-endian numbers, and
 * values sealed with the keyring's current key or plaintext; reading one
 * record or number; batch helpers. */
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

const char *store__str_or_empty(const char *s)
{
    return s ? s : "";
}

void store__u64_put_be(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

uint64_t store__u64_get_be(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | in[i];
    return v;
}

/* Build a key from parts joined by '/'; returns its length (0 if it does not fit). */
size_t store__key_join(char *buf, const char *a, const char *b, const char *c, const char *d)
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
int store__value_encode(reg_store *st, const char *key, size_t klen, const uint8_t *packed,
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

int store__value_open(reg_store *st, const char *key, size_t klen, const char *val, size_t vlen,
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

Dw__ConnRecord *store__value_decode(reg_store *st, const char *key, size_t klen, const char *val,
                                    size_t vlen)
{
    uint8_t *pt = NULL;
    size_t ptlen = 0;
    if (store__value_open(st, key, klen, val, vlen, &pt, &ptlen)) return NULL;
    Dw__ConnRecord *rec = dw__conn_record__unpack(NULL, ptlen, pt);
    free(pt);
    if (!rec) DW_ERROR("undecodable record", "key=\"%.*s\"", (int)klen, key);
    return rec;
}

/* Read a big-endian u64 under key; *found tells whether it exists. */
int store__read_u64(reg_store *st, const rocksdb_readoptions_t *ro, const char *key, uint64_t *v,
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
    *v = *found ? store__u64_get_be((const uint8_t *)val) : 0;
    rocksdb_free(val);
    return 0;
}

/* Look up c/<conn_id>. Returns 1 with *rec (free with
 * dw__conn_record__free_unpacked), 0 when absent, -1 on a RocksDB error.
 * An unreadable value counts as absent: the caller overwrites or deletes
 * the key, which repairs it. */
int store__get_record(reg_store *st, const rocksdb_readoptions_t *ro, const char *conn_id,
                      Dw__ConnRecord **rec)
{
    char key[KEY_MAX], *err = NULL;
    size_t klen = store__key_join(key, "c", conn_id, NULL, NULL), vlen = 0;
    *rec = NULL;
    if (!klen) return 0;
    char *val = rocksdb_get(st->db, ro, key, klen, &vlen, &err);
    if (err) {
        DW_ERROR("rocksdb get failed", "key=c/%s err=\"%s\"", conn_id, err);
        rocksdb_free(err);
        return -1;
    }
    if (!val) return 0;
    *rec = store__value_decode(st, key, klen, val, vlen);
    rocksdb_free(val);
    return *rec ? 1 : 0;
}

void store__batch_put_empty(rocksdb_writebatch_t *b, const char *key, size_t klen)
{
    if (klen) rocksdb_writebatch_put(b, key, klen, "", 0);
}

void store__batch_delete(rocksdb_writebatch_t *b, const char *key, size_t klen)
{
    if (klen) rocksdb_writebatch_delete(b, key, klen);
}

/* ---- scans -------------------------------------------------------------- */

static const char *scan_key(store_scan *sc, size_t *klen)
{
    return rocksdb_iter_valid(sc->it) ? rocksdb_iter_key(sc->it, klen) : NULL;
}

const char *store__scan_begin(store_scan *sc, reg_store *st, rocksdb_readoptions_t *ro,
                              const char *prefix, size_t plen, const char *start, size_t slen,
                              size_t *klen)
{
    sc->own_ro = ro ? NULL : rocksdb_readoptions_create();
    sc->plen = plen;
    /* Every key under "x/" sorts before "x0" ('0' is '/' + 1). */
    memcpy(sc->upper, prefix, plen);
    sc->upper[plen - 1] = '/' + 1;
    rocksdb_readoptions_set_iterate_upper_bound(ro ? ro : sc->own_ro, sc->upper, plen);
    sc->it = rocksdb_create_iterator(st->db, ro ? ro : sc->own_ro);
    if (start)
        rocksdb_iter_seek(sc->it, start, slen);
    else
        rocksdb_iter_seek(sc->it, prefix, plen);
    return scan_key(sc, klen);
}

const char *store__scan_next(store_scan *sc, size_t *klen)
{
    rocksdb_iter_next(sc->it);
    return scan_key(sc, klen);
}

const char *store__scan_seek(store_scan *sc, const char *target, size_t tlen, size_t *klen)
{
    rocksdb_iter_seek(sc->it, target, tlen);
    return scan_key(sc, klen);
}

const char *store__scan_value(store_scan *sc, size_t *vlen)
{
    return rocksdb_iter_value(sc->it, vlen);
}

int store__scan_end(store_scan *sc, char **errmsg)
{
    char *err = NULL;
    rocksdb_iter_get_error(sc->it, &err);
    rocksdb_iter_destroy(sc->it);
    if (sc->own_ro) rocksdb_readoptions_destroy(sc->own_ro);
    sc->it = NULL;
    sc->own_ro = NULL;
    if (!err) return 0;
    DW_ERROR("rocksdb scan failed", "bound=%.*s err=\"%s\"", (int)sc->plen, sc->upper, err);
    if (errmsg) *errmsg = strdup(err);
    rocksdb_free(err);
    return -1;
}
