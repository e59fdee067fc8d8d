#include "edges.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct edge_entry {
    char *id;
    int64_t last_seen_ms; /* last heartbeat, or when we first heard of it */
    int64_t down_ms;      /* when marked down; state == EDGES_DOWN */
    edges_state state;
} edge_entry;

/* A flat array: a deployment has tens of edges, and heartbeats arrive every
 * ~2 s per edge, so a linear scan costs less than keeping a hash right. */
struct edges_table {
    pthread_mutex_t mu;
    edge_entry *v;
    size_t n, cap, max;
    int64_t dead_ms, forget_ms;
};

int edges_id_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > EDGES_ID_MAX) return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '.' || c == '*' || c == '>') return 0;
    }
    return 1;
}

int edges_create(edges_table **out, int64_t dead_ms, int64_t forget_ms, size_t max_edges)
{
    edges_table *t = calloc(1, sizeof *t);
    if (!t) return -1;
    if (pthread_mutex_init(&t->mu, NULL)) {
        free(t);
        return -1;
    }
    t->dead_ms = dead_ms;
    t->forget_ms = forget_ms;
    t->max = max_edges;
    *out = t;
    return 0;
}

void edges_destroy(edges_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].id);
    free(t->v);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

static edge_entry *find(edges_table *t, const char *id)
{
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->v[i].id, id)) return &t->v[i];
    return NULL;
}

/* Caller holds mu and checked the id. NULL when full or out of memory. */
static edge_entry *add(edges_table *t, const char *id, int64_t now_ms)
{
    if (t->n >= t->max) return NULL;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        edge_entry *v = realloc(t->v, cap * sizeof *v);
        if (!v) return NULL;
        t->v = v;
        t->cap = cap;
    }
    char *copy = strdup(id);
    if (!copy) return NULL;
    edge_entry *e = &t->v[t->n++];
    e->id = copy;
    e->last_seen_ms = now_ms;
    e->down_ms = 0;
    e->state = EDGES_ALIVE;
    return e;
}

int edges_seen(edges_table *t, const char *edge_id, int64_t now_ms)
{
    if (!edge_id || !edges_id_valid(edge_id, strlen(edge_id))) return -1;
    int rc = 0;
    pthread_mutex_lock(&t->mu);
    edge_entry *e = find(t, edge_id);
    if (!e) e = add(t, edge_id, now_ms);
    if (!e) {
        rc = -1;
    } else {
        /* Heartbeats can be handled out of order across threads: keep the max. */
        if (now_ms > e->last_seen_ms) e->last_seen_ms = now_ms;
        rc = e->state == EDGES_DOWN;
        e->state = EDGES_ALIVE;
        e->down_ms = 0;
    }
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int edges_known(edges_table *t, const char *edge_id, int64_t now_ms)
{
    if (!edge_id || !edges_id_valid(edge_id, strlen(edge_id))) return -1;
    int rc = 0;
    pthread_mutex_lock(&t->mu);
    if (!find(t, edge_id) && !add(t, edge_id, now_ms)) rc = -1;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

int edges_stale(edges_table *t, int64_t now_ms, char ***out, size_t *n)
{
    char **ids = NULL;
    size_t count = 0;
    int rc = 0;

    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n;) {
        edge_entry *e = &t->v[i];
        if (e->state == EDGES_DOWN && now_ms - e->down_ms >= t->forget_ms) {
            free(e->id);
            t->v[i] = t->v[--t->n];
            continue;
        }
        i++;
    }
    for (size_t i = 0; i < t->n; i++) {
        edge_entry *e = &t->v[i];
        if (e->state != EDGES_ALIVE || now_ms - e->last_seen_ms < t->dead_ms) continue;
        if (!ids && !(ids = calloc(t->n, sizeof *ids))) goto error;
        if (!(ids[count] = strdup(e->id))) goto error;
        count++;
    }
    pthread_mutex_unlock(&t->mu);
    *out = ids;
    *n = count;
    return rc;

error:
    pthread_mutex_unlock(&t->mu);
    edges_list_free(ids, count);
    return -1;
}

void edges_list_free(char **ids, size_t n)
{
    if (!ids) return;
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

void edges_touch_all(edges_table *t, int64_t now_ms)
{
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].state == EDGES_ALIVE && t->v[i].last_seen_ms < now_ms)
            t->v[i].last_seen_ms = now_ms;
    pthread_mutex_unlock(&t->mu);
}

void edges_mark_down(edges_table *t, const char *edge_id, int64_t now_ms)
{
    if (!edge_id || !edges_id_valid(edge_id, strlen(edge_id))) return;
    pthread_mutex_lock(&t->mu);
    edge_entry *e = find(t, edge_id);
    if (!e) e = add(t, edge_id, now_ms);
    if (e) {
        e->state = EDGES_DOWN;
        e->down_ms = now_ms;
    }
    pthread_mutex_unlock(&t->mu);
}

edges_state edges_get(edges_table *t, const char *edge_id)
{
    pthread_mutex_lock(&t->mu);
    edge_entry *e = edge_id ? find(t, edge_id) : NULL;
    edges_state st = e ? e->state : EDGES_UNKNOWN;
    pthread_mutex_unlock(&t->mu);
    return st;
}

size_t edges_count(edges_table *t)
{
    pthread_mutex_lock(&t->mu);
    size_t n = t->n;
    pthread_mutex_unlock(&t->mu);
    return n;
}
