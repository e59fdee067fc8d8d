#include "rooms.h"

#include <stdlib.h>
#include <string.h>

#include "session.h"

static size_t hash_name(const char *s, size_t mask)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h & mask;
}

int rooms_init(edge_rooms *rs, size_t nbuckets)
{
    size_t n = 16;
    while (n < nbuckets)
        n <<= 1;
    rs->buckets = calloc(n, sizeof *rs->buckets);
    rs->nbuckets = rs->buckets ? n : 0;
    rs->count = 0;
    atomic_init(&rs->v1_members, 0);
    return rs->buckets ? 0 : -1;
}

void rooms_free(edge_rooms *rs)
{
    for (size_t i = 0; i < rs->nbuckets; i++) {
        edge_room *r = rs->buckets[i];
        while (r) {
            edge_room *next = r->next;
            free(r->members);
            free(r->v1);
            free(r);
            r = next;
        }
    }
    free(rs->buckets);
    memset(rs, 0, sizeof *rs);
}

edge_room *rooms_get(const edge_rooms *rs, const char *name)
{
    if (!rs->nbuckets) return NULL;
    for (edge_room *r = rs->buckets[hash_name(name, rs->nbuckets - 1)]; r; r = r->next)
        if (!strcmp(r->name, name)) return r;
    return NULL;
}

int rooms_join(edge_rooms *rs, edge_session *s, const char *name)
{
    size_t nlen = strlen(name);
    if (nlen > DW_ROOM_MAX) return -1;
    edge_room *r = rooms_get(rs, name);
    if (r) {
        for (uint16_t i = 0; i < s->nrooms; i++)
            if (s->rooms[i].room == r) return 1;
    }
    if (s->nrooms == s->rooms_cap) {
        uint16_t ncap = s->rooms_cap ? (uint16_t)(s->rooms_cap * 2) : 1;
        edge_membership *m = realloc(s->rooms, ncap * sizeof *m);
        if (!m) return -1;
        s->rooms = m;
        s->rooms_cap = ncap;
    }
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return -1;
        memcpy(r->name, name, nlen + 1);
        size_t b = hash_name(name, rs->nbuckets - 1);
        r->next = rs->buckets[b];
        rs->buckets[b] = r;
        rs->count++;
    }
    if (r->count == r->cap) {
        uint32_t ncap = r->cap ? r->cap * 2 : 8;
        edge_session **m = realloc(r->members, ncap * sizeof *m);
        if (!m) return -1; /* an empty new room stays; it is reused or freed later */
        r->members = m;
        r->cap = ncap;
    }
    if (s->v1 && r->nv1 == r->v1_cap) {
        uint32_t ncap = r->v1_cap ? r->v1_cap * 2 : 4;
        edge_session **m = realloc(r->v1, ncap * sizeof *m);
        if (!m) return -1;
        r->v1 = m;
        r->v1_cap = ncap;
    }
    r->members[r->count] = s;
    memset(&s->rooms[s->nrooms], 0, sizeof s->rooms[s->nrooms]);
    s->rooms[s->nrooms].room = r;
    s->rooms[s->nrooms].idx = r->count;
    if (s->v1) {
        r->v1[r->nv1] = s;
        s->rooms[s->nrooms].v1_idx = r->nv1++;
        atomic_fetch_add_explicit(&rs->v1_members, 1, memory_order_relaxed);
    }
    s->nrooms++;
    r->count++;
    return 0;
}

static void room_unlink(edge_rooms *rs, edge_room *r)
{
    edge_room **pp = &rs->buckets[hash_name(r->name, rs->nbuckets - 1)];
    while (*pp != r)
        pp = &(*pp)->next;
    *pp = r->next;
    rs->count--;
    free(r->members);
    free(r->v1);
    free(r);
}

edge_membership *rooms_membership(edge_session *s, const edge_room *room)
{
    for (uint16_t i = 0; i < s->nrooms; i++)
        if (s->rooms[i].room == room) return &s->rooms[i];
    return NULL;
}

void rooms_release_held(edge_membership *m)
{
    while (m->held) {
        edge_held *n = m->held->next;
        frame_unref(m->held->frame);
        free(m->held);
        m->held = n;
    }
    m->held_tail = NULL;
}

/* Take s out of r's member array (swap the last member into the hole and
 * fix its back-reference); frees r when it empties. */
static void detach(edge_rooms *rs, edge_session *s, edge_room *r, const edge_membership *m)
{
    uint32_t idx = m->idx;
    edge_session *last = r->members[r->count - 1];
    r->members[idx] = last;
    r->count--;
    if (last != s) {
        edge_membership *lm = rooms_membership(last, r);
        if (lm) lm->idx = idx;
    }
    if (s->v1) {
        uint32_t vidx = m->v1_idx;
        edge_session *vlast = r->v1[r->nv1 - 1];
        r->v1[vidx] = vlast;
        r->nv1--;
        if (vlast != s) {
            edge_membership *lm = rooms_membership(vlast, r);
            if (lm) lm->v1_idx = vidx;
        }
        atomic_fetch_sub_explicit(&rs->v1_members, 1, memory_order_relaxed);
    }
    if (!r->count) room_unlink(rs, r);
}

void rooms_leave(edge_rooms *rs, edge_session *s, const char *name)
{
    edge_room *r = rooms_get(rs, name);
    if (!r) return;
    for (uint16_t i = 0; i < s->nrooms; i++) {
        if (s->rooms[i].room != r) continue;
        rooms_release_held(&s->rooms[i]);
        detach(rs, s, r, &s->rooms[i]);
        s->rooms[i] = s->rooms[--s->nrooms];
        return;
    }
}

void rooms_leave_all(edge_rooms *rs, edge_session *s)
{
    for (uint16_t i = 0; i < s->nrooms; i++) {
        rooms_release_held(&s->rooms[i]);
        detach(rs, s, s->rooms[i].room, &s->rooms[i]);
    }
    free(s->rooms);
    s->rooms = NULL;
    s->nrooms = s->rooms_cap = 0;
}

uint32_t rooms_v1_members(const edge_rooms *rs)
{
    return (uint32_t)atomic_load_explicit(&rs->v1_members, memory_order_relaxed);
}
