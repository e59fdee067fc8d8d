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
    const char *lo = st->outbox_lo[0] ? st->outbox_lo : NULL;
    for (const char *k = store__scan_begin(&sc, st, NULL, OUTBOX_PREFIX, strlen(OUTBOX_PREFIX), lo,
                                           lo ? strlen(lo) : 0, &klen);
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

/* Why one point delete per key, not a range delete: each range delete of
 * [o/, end) stayed in the memtable, and every new iterator over the outbox
 * had to sort all of them out first. Reading one outbox batch cost 4.6 M
 * instructions after a few thousand connects, 57% of the registry's CPU
 * per connect. Point deletes below outbox_lo are never visited again: reads
 * seek past them. */
int reg_store_outbox_delete_through(reg_store *st, uint64_t seq, uint32_t idx)
{
    char end[OUTBOX_KEY_LEN + 1];
    /* [outbox_lo, the key right after (seq, idx)): keys are fixed-width.
     * The apply writes no key in there any more: only events after the
     * floor, which is at (seq, idx) or beyond when this is called. */
    if (idx < UINT32_MAX)
        store__outbox_key(end, seq, idx + 1);
    else if (seq < UINT64_MAX)
        store__outbox_key(end, seq + 1, 0);
    else
        memcpy(end, OUTBOX_UPPER, sizeof OUTBOX_UPPER);
    const char *lo = st->outbox_lo[0] ? st->outbox_lo : OUTBOX_PREFIX;
    if (strcmp(lo, end) >= 0) return 0;
    rocksdb_writebatch_t *b = rocksdb_writebatch_create();
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_iterate_upper_bound(ro, end, strlen(end));
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, ro);
    size_t klen;
    for (rocksdb_iter_seek(it, lo, strlen(lo)); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        const char *k = rocksdb_iter_key(it, &klen);
        rocksdb_writebatch_delete(b, k, klen);
    }
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (!err) {
        pthread_mutex_lock(&st->wmu);
        rocksdb_write(st->db, st->wopts, b, &err);
        pthread_mutex_unlock(&st->wmu);
    }
    rocksdb_writebatch_destroy(b);
    if (err) {
        DW_ERROR("rocksdb outbox delete failed", "err=\"%s\"", err);
        rocksdb_free(err);
        return -1;
    }
    memcpy(st->outbox_lo, end, sizeof st->outbox_lo);
    return 0;
}
