/* The table's outbox (store.h): lifecycle events waiting for DW_EVENTS,
 * written by the apply in the same batch as the change (store_apply.c),
 * read and deleted by the registry's emitter; and the floor below which
 * the apply does not write them (they are in DW_EVENTS already). */
#include "store.h"

#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/log.h"
#include "events.h"
#include "store_int.h"

void store__outbox_key(char *buf, uint64_t seq, uint32_t idx)
{
    snprintf(buf, OUTBOX_KEY_LEN + 1, OUTBOX_PREFIX "%020llu/%010u", (unsigned long long)seq,
             (unsigned)idx);
}

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
    size_t cap = 0, klen;
    int rc = 0;
    store_scan sc;
    memset(out, 0, sizeof *out);
    for (const char *k =
             store__scan_begin(&sc, st, NULL, OUTBOX_PREFIX, strlen(OUTBOX_PREFIX), NULL, 0, &klen);
         k && (!limit || out->n < limit); k = store__scan_next(&sc, &klen)) {
        size_t vlen, ptlen = 0;
        const char *val = store__scan_value(&sc, &vlen);
        reg_outbox_entry e = {0};
        uint8_t *pt = NULL;
        if (outbox_key_parse(k, klen, &e.seq, &e.idx)) continue;
        /* An entry that does not open or decode is skipped (logged): the
         * emitter deletes it with the ones around it. */
        if (store__value_open(st, k, klen, val, vlen, &pt, &ptlen)) continue;
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
    if (store__scan_end(&sc, NULL)) rc = -1;
    if (rc) reg_outbox_free(out);
    return rc;
}

int reg_store_outbox_delete_through(reg_store *st, uint64_t seq, uint32_t idx)
{
    char end[OUTBOX_KEY_LEN + 1];
    /* [o/, the key right after (seq, idx)): keys are fixed-width. */
    if (idx < UINT32_MAX)
        store__outbox_key(end, seq, idx + 1);
    else if (seq < UINT64_MAX)
        store__outbox_key(end, seq + 1, 0);
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
