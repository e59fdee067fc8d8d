/* Reads of the table (store.h): a room's edges, every edge, a listing of
 * connections, a room's presence; each on a snapshot, so the applied_seq
 * it returns is the one its rows belong to. */
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

static void view_close(reg_store *st, read_view *v)
{
    rocksdb_readoptions_destroy(v->ro);
    rocksdb_release_snapshot(st->db, v->snap);
}

/* 0, or -1 (nothing left open). */
static int view_open(reg_store *st, read_view *v)
{
    int found;
    v->snap = rocksdb_create_snapshot(st->db);
    v->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(v->ro, v->snap);
    if (store__read_u64(st, v->ro, KEY_APPLIED, &v->applied_seq, &found) ||
        store__read_u64(st, v->ro, KEY_COUNT, &v->count, &found)) {
        view_close(st, v);
        return -1;
    }
    return 0;
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
    store_scan sc;
    char target[KEY_MAX];
    size_t cap = 0, klen;
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (view_open(st, &v)) return -1;
    out->applied_seq = v.applied_seq;
    const char *k = store__scan_begin(&sc, st, v.ro, prefix, plen, NULL, 0, &klen);
    while (k) {
        const char *part = k + plen;
        const char *slash = memchr(part, '/', klen - plen);
        if (!slash) { /* not written by us: step over it */
            k = store__scan_next(&sc, &klen);
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
        k = store__scan_seek(&sc, target, tlen, &klen);
    }
    if (store__scan_end(&sc, NULL)) rc = -1;
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
    size_t plen = store__key_join(prefix, "r", room, "", NULL);
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
    store_scan sc;
    char prefix[KEY_MAX], start[KEY_MAX];
    size_t cap = 0, plen, slen, klen;
    int rc = 0, by_edge = edge_id && *edge_id, has_after = after && *after;

    memset(out, 0, sizeof *out);
    if (view_open(st, &v)) return -1;
    out->applied_seq = v.applied_seq;
    out->total = v.count;
    if ((by_edge && !reg_id_valid(edge_id)) || (conn_id && *conn_id && !reg_id_valid(conn_id)))
        goto done; /* no such key can exist */

    if (conn_id && *conn_id) {
        Dw__ConnRecord *rec = NULL;
        if (has_after && strcmp(conn_id, after) <= 0) goto done;
        rc = store__get_record(st, v.ro, conn_id, &rec);
        if (rc == 1) {
            rc = 0;
            if ((by_edge && strcmp(rec->edge_id, edge_id)) || conns_push(out, &cap, rec))
                dw__conn_record__free_unpacked(rec, NULL);
        }
        goto done;
    }

    plen = by_edge ? store__key_join(prefix, "e", edge_id, "", NULL)
                   : store__key_join(prefix, "c", "", NULL, NULL);
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
    for (const char *k = store__scan_begin(&sc, st, v.ro, prefix, plen, start, slen, &klen);
         k && (!limit || out->n < limit); k = store__scan_next(&sc, &klen)) {
        Dw__ConnRecord *rec = NULL;
        if (has_after && klen == slen && !memcmp(k, start, slen)) continue;
        if (by_edge) {
            char id[REG_ID_MAX + 1];
            if (klen - plen > REG_ID_MAX) continue;
            memcpy(id, k + plen, klen - plen);
            id[klen - plen] = '\0';
            rc = store__get_record(st, v.ro, id, &rec);
            if (rc < 0) break;
            rc = 0;
        } else {
            size_t vlen;
            const char *val = store__scan_value(&sc, &vlen);
            rec = store__value_decode(st, k, klen, val, vlen);
        }
        if (rec && conns_push(out, &cap, rec)) {
            dw__conn_record__free_unpacked(rec, NULL);
            rc = -1;
            break;
        }
    }
    if (store__scan_end(&sc, NULL)) rc = -1;
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
    store_scan sc;
    char prefix[KEY_MAX];
    reg_strs users = {0};
    size_t cap = 0, klen;
    int rc = 0;

    memset(out, 0, sizeof *out);
    if (view_open(st, &v)) return -1;
    out->applied_seq = v.applied_seq;
    size_t plen = room && dw_room_valid(room, strlen(room))
                      ? store__key_join(prefix, "r", room, "", NULL)
                      : 0;
    if (!plen) goto done;

    /* One user id per member connection; grouped after sorting. */
    for (const char *k = store__scan_begin(&sc, st, v.ro, prefix, plen, NULL, 0, &klen);
         rc == 0 && k; k = store__scan_next(&sc, &klen)) {
        const char *slash = memchr(k + plen, '/', klen - plen); /* <edge>/<conn> */
        if (!slash) continue;
        size_t idlen = klen - (size_t)(slash + 1 - k);
        char id[REG_ID_MAX + 1];
        if (idlen == 0 || idlen > REG_ID_MAX) continue;
        memcpy(id, slash + 1, idlen);
        id[idlen] = '\0';
        Dw__ConnRecord *rec = NULL;
        rc = store__get_record(st, v.ro, id, &rec);
        if (rc < 0) break;
        rc = 0;
        if (rec && rec->user_id && *rec->user_id &&
            (!after_user || !*after_user || strcmp(rec->user_id, after_user) > 0))
            rc = strs_push(&users, &cap, rec->user_id, strlen(rec->user_id));
        dw__conn_record__free_unpacked(rec, NULL);
    }
    if (store__scan_end(&sc, NULL)) rc = -1;
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
