/* The connections table's insides, shared by its files (not an API:
 * store.h is): the key layout's constants, the state behind the opaque
 * reg_store, and the helpers one file calls in another (store__verb).
 *
 *   store.c         open, close, metadata, hold, flush, checkpoints
 *   store_codec.c   keys, numbers, sealed values, single reads, batches
 *   store_apply.c   events into the table
 *   store_read.c    room edges, edges, listings, presence
 *   store_rotate.c  key rotation
 *   store_outbox.c  lifecycle events waiting for DW_EVENTS, the floor
 *
 * Threads: as store.h says (one writer under wmu, readers on snapshots). */
#ifndef REG_STORE_INT_H
#define REG_STORE_INT_H

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

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
    /* Every outbox key below this one was deleted by this process (the
     * emitter's thread only; "" until the first delete). Reads start here,
     * so they never walk over the deleted keys' tombstones. */
    char outbox_lo[OUTBOX_KEY_LEN + 1];
};

/* store_codec.c */
const char *store__str_or_empty(const char *s);
void store__u64_put_be(uint8_t out[8], uint64_t v);
uint64_t store__u64_get_be(const uint8_t in[8]);
/* Build a key from parts joined by '/'; returns its length (0 if it does
 * not fit). */
size_t store__key_join(char *buf, const char *a, const char *b, const char *c, const char *d);
/* The stored form of a packed record under key: sealed with the current
 * key (bound to the key, so a value copied to another row does not open),
 * or the packed bytes themselves without a key. *out is malloc'd. 0 or -1. */
int store__value_encode(reg_store *st, const char *key, size_t klen, const uint8_t *packed,
                        size_t len, uint8_t **out, size_t *outlen);
/* The bytes under key as they were before store__value_encode: 0 with
 * *out (malloc'd) and *outlen, or -1 when they cannot be read (logged): a
 * sealed value that does not open, or plaintext where none may be. */
int store__value_open(reg_store *st, const char *key, size_t klen, const char *val, size_t vlen,
                      uint8_t **out, size_t *outlen);
/* Decode the record under key. NULL when it cannot be read (logged). */
Dw__ConnRecord *store__value_decode(reg_store *st, const char *key, size_t klen, const char *val,
                                    size_t vlen);
int store__read_u64(reg_store *st, const rocksdb_readoptions_t *ro, const char *key, uint64_t *v,
                    int *found);
int store__get_record(reg_store *st, const rocksdb_readoptions_t *ro, const char *conn_id,
                      Dw__ConnRecord **out);
void store__batch_put_empty(rocksdb_writebatch_t *b, const char *key, size_t klen);
void store__batch_delete(rocksdb_writebatch_t *b, const char *key, size_t klen);

/* A scan of the keys that start with a prefix (ending in '/'), in key
 * order: the one way this table iterates. It bounds the iterator at the
 * prefix's end (so RocksDB stops there), and logs and reports an error the
 * iterator met. ro is the read options to scan with (a snapshot's, or NULL
 * for fresh ones, owned by the scan); its upper bound is set to the
 * prefix's end, so it serves one scan at a time.
 *
 *   store_scan sc;
 *   for (k = store__scan_begin(&sc, st, ro, prefix, plen, NULL, 0, &klen); k;
 *        k = store__scan_next(&sc, &klen)) ...
 *   if (store__scan_end(&sc)) -> the scan was cut short by an error */
typedef struct store_scan {
    rocksdb_iterator_t *it;
    rocksdb_readoptions_t *own_ro; /* made by the scan (ro was NULL) */
    char upper[KEY_MAX];
    size_t plen; /* a key's own part starts here */
} store_scan;
/* Start at start (slen bytes; NULL: the prefix itself). Returns the first
 * key (its length in *klen) or NULL when there is none. */
const char *store__scan_begin(store_scan *sc, reg_store *st, rocksdb_readoptions_t *ro,
                              const char *prefix, size_t plen, const char *start, size_t slen,
                              size_t *klen);
/* The next key, or NULL at the end of the prefix. */
const char *store__scan_next(store_scan *sc, size_t *klen);
/* Jump to the first key at or after target, or NULL. */
const char *store__scan_seek(store_scan *sc, const char *target, size_t tlen, size_t *klen);
/* The value of the current key. */
const char *store__scan_value(store_scan *sc, size_t *vlen);
/* Free the iterator: 0, or -1 when RocksDB reported an error (logged;
 * also into *err, malloc'd, when err is not NULL). */
int store__scan_end(store_scan *sc, char **err);

/* store_outbox.c: the key of outbox entry (seq, idx) into buf
 * (OUTBOX_KEY_LEN + 1 bytes). */
void store__outbox_key(char *buf, uint64_t seq, uint32_t idx);

/* store.c */
void store__key_ids_put(reg_store *st, rocksdb_writebatch_t *b);
int store__write_sync(reg_store *st, rocksdb_writebatch_t *b, const char *what);

#endif
