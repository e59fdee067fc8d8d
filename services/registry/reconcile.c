#include "reconcile.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "dw/util.h"
#include "dw/wire.h"

/* Heartbeats from junk edge ids must not grow the table without bound. */
#define MAX_EDGES 4096
#define EDGE_ID_MAX 128
/* The edge's own bound per request (services/edge/bus_events.c). */
#define EDGE_MAX_IDS 10000

typedef struct seen_edge {
    char id[EDGE_ID_MAX + 1];
    int64_t last_ms;
} seen_edge;

struct reg_reconcile {
    natsConnection *nc;
    jsCtx *js;
    reg_reconcile_opts o;
    natsSubscription *hb_sub;
    /* When we started hearing heartbeats: at start, and again after every
     * reconnect (heartbeats sent meanwhile never reached us). */
    _Atomic int64_t started_ms;

    pthread_mutex_t mu; /* edges */
    seen_edge *edges;
    size_t nedges;
};

void reg_reconcile_opts_default(reg_reconcile_opts *o)
{
    o->edge_ttl_ms = 6000; /* three of the edge's default 2 s heartbeats */
    o->request_timeout_ms = 5000;
    o->page = 5000;
}

/* ---- live edges ------------------------------------------------------- */

static void on_heartbeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    (void)nc;
    (void)sub;
    reg_reconcile *r = arg;
    Dw__EdgeHeartbeat *hb = dw_pb_unpack(&dw__edge_heartbeat__descriptor, msg);
    natsMsg_Destroy(msg);
    if (!hb) return;
    size_t n = hb->edge_id ? strlen(hb->edge_id) : 0;
    if (n && n <= EDGE_ID_MAX && reg_id_valid(hb->edge_id)) {
        int64_t now = dw_now_ms();
        pthread_mutex_lock(&r->mu);
        size_t i = 0;
        while (i < r->nedges && strcmp(r->edges[i].id, hb->edge_id))
            i++;
        if (i == r->nedges) {
            /* Full: reuse the longest-silent slot (junk ids age out). */
            if (r->nedges == MAX_EDGES) {
                size_t old = 0;
                for (size_t j = 1; j < r->nedges; j++)
                    if (r->edges[j].last_ms < r->edges[old].last_ms) old = j;
                i = old;
            } else {
                r->nedges++;
            }
            memcpy(r->edges[i].id, hb->edge_id, n + 1);
        }
        r->edges[i].last_ms = now;
        pthread_mutex_unlock(&r->mu);
    }
    dw__edge_heartbeat__free_unpacked(hb, NULL);
}

static void on_reconnect(void *arg)
{
    reg_reconcile *r = arg;
    atomic_store(&r->started_ms, dw_now_ms());
}

int reg_reconcile_start(reg_reconcile **out, natsConnection *nc, jsCtx *js,
                        const reg_reconcile_opts *o)
{
    reg_reconcile *r = calloc(1, sizeof *r);
    *out = NULL;
    if (!r || !(r->edges = calloc(MAX_EDGES, sizeof *r->edges))) {
        free(r);
        return -1;
    }
    r->nc = nc;
    r->js = js;
    r->o = *o;
    pthread_mutex_init(&r->mu, NULL);
    atomic_store(&r->started_ms, dw_now_ms());
    dw_bus_on_reconnect(on_reconnect, r);
    natsStatus s =
        natsConnection_Subscribe(&r->hb_sub, nc, DW_SUBJ_EDGE_HEARTBEAT, on_heartbeat, r);
    if (s != NATS_OK) {
        DW_ERROR("subscribe failed", "subject=%s status=%s", DW_SUBJ_EDGE_HEARTBEAT,
                 natsStatus_GetText(s));
        reg_reconcile_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

void reg_reconcile_free(reg_reconcile *r)
{
    if (!r) return;
    dw_bus_on_reconnect_remove(on_reconnect, r);
    if (r->hb_sub) {
        /* Unsubscribe returns once no callback runs any more. */
        natsSubscription_Unsubscribe(r->hb_sub);
        natsSubscription_Destroy(r->hb_sub);
    }
    pthread_mutex_destroy(&r->mu);
    free(r->edges);
    free(r);
}

/* ---- one pass ----------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has(char **sorted, size_t n, const char *id)
{
    return bsearch(&id, sorted, n, sizeof *sorted, cmp_str) != NULL;
}

/* A growable array of owned strings. */
typedef struct strv {
    char **v;
    size_t n, cap;
} strv;

static int strv_push(strv *a, const char *s)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        char **v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    if (!(a->v[a->n] = strdup(s))) return -1;
    a->n++;
    return 0;
}

static void strv_free(strv *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
    memset(a, 0, sizeof *a);
}

/* Live edges: heartbeats within the TTL, plus every edge of the table. */
static int edges_to_ask(reg_reconcile *r, reg_store *st, strv *out)
{
    reg_strs tab = {0};
    if (reg_store_edges(st, &tab)) return -1;
    int rc = 0;
    for (size_t i = 0; i < tab.n && !rc; i++)
        rc = strv_push(out, tab.v[i]);
    reg_strs_free(&tab);
    int64_t now = dw_now_ms();
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->nedges && !rc; i++)
        if (now - r->edges[i].last_ms <= r->o.edge_ttl_ms) rc = strv_push(out, r->edges[i].id);
    pthread_mutex_unlock(&r->mu);
    if (rc) return -1;
    qsort(out->v, out->n, sizeof *out->v, cmp_str);
    size_t k = 0; /* drop the duplicates */
    for (size_t i = 0; i < out->n; i++) {
        if (k && !strcmp(out->v[k - 1], out->v[i]))
            free(out->v[i]);
        else
            out->v[k++] = out->v[i];
    }
    out->n = k;
    return 0;
}

typedef enum { ASK_OK = 0, ASK_DOWN, ASK_UNREACHABLE } ask_rc;

/* One request to the edge; *rep owned by the caller on ASK_OK. */
static ask_rc ask(reg_reconcile *r, const char *edge_id, const Dw__ConnRequest *rq,
                  Dw__ConnReply **rep)
{
    char subj[EDGE_ID_MAX + 32];
    size_t len = 0;
    natsMsg *m = NULL;
    *rep = NULL;
    dw_subj_edge_conn(subj, sizeof subj, edge_id);
    uint8_t *buf = dw_pb_pack(&rq->base, &len);
    if (!buf) return ASK_UNREACHABLE;
    natsStatus s =
        natsConnection_Request(&m, r->nc, subj, buf, (int)len, (int64_t)r->o.request_timeout_ms);
    free(buf);
    if (s == NATS_NO_RESPONDERS) return ASK_DOWN;
    if (s != NATS_OK) {
        DW_WARN("reconcile: edge did not answer; left as it is", "edge=%s status=%s", edge_id,
                natsStatus_GetText(s));
        return ASK_UNREACHABLE;
    }
    *rep = dw_pb_unpack(&dw__conn_reply__descriptor, m);
    natsMsg_Destroy(m);
    /* An edge from before reconciliation answers found=false. */
    if (!*rep || !(*rep)->found || ((*rep)->error && *(*rep)->error)) {
        DW_WARN("reconcile: edge refused; left as it is", "edge=%s err=\"%s\"", edge_id,
                *rep && (*rep)->error && *(*rep)->error ? (*rep)->error : "unsupported");
        if (*rep) dw__conn_reply__free_unpacked(*rep, NULL);
        *rep = NULL;
        return ASK_UNREACHABLE;
    }
    return ASK_OK;
}

/* Every id edge_id holds, sorted. */
static ask_rc list_edge(reg_reconcile *r, const char *edge_id, strv *held)
{
    Dw__ConnRequest rq = DW__CONN_REQUEST__INIT;
    rq.op = DW__CONN_REQUEST__OP__LIST;
    rq.limit = r->o.page;
    for (;;) {
        Dw__ConnReply *rep = NULL;
        ask_rc a = ask(r, edge_id, &rq, &rep);
        if (a != ASK_OK) return a;
        int fail = 0;
        for (size_t i = 0; i < rep->n_conn_ids && !fail; i++)
            fail = strv_push(held, rep->conn_ids[i]);
        int more = rep->more && rep->next_cursor > rq.cursor;
        rq.cursor = rep->next_cursor;
        dw__conn_reply__free_unpacked(rep, NULL);
        if (fail) return ASK_UNREACHABLE;
        if (!more) break;
    }
    qsort(held->v, held->n, sizeof *held->v, cmp_str);
    return ASK_OK;
}

/* ANNOUNCE or DROP ids, in batches; adds the events published to *count. */
static void correct(reg_reconcile *r, const char *edge_id, Dw__ConnRequest__Op op, strv *ids,
                    uint64_t *count)
{
    size_t batch = r->o.page && r->o.page < EDGE_MAX_IDS ? r->o.page : EDGE_MAX_IDS;
    for (size_t off = 0; off < ids->n; off += batch) {
        Dw__ConnRequest rq = DW__CONN_REQUEST__INIT;
        Dw__ConnReply *rep = NULL;
        rq.op = op;
        rq.conn_ids = ids->v + off;
        rq.n_conn_ids = ids->n - off < batch ? ids->n - off : batch;
        if (ask(r, edge_id, &rq, &rep) != ASK_OK) return;
        *count += rep->count;
        dw__conn_reply__free_unpacked(rep, NULL);
    }
}

static int publish_edge_down(reg_reconcile *r, const char *edge_id)
{
    Dw__ConnEvent ev;
    char msg_id[DW_MSGID_MAX];
    dw_conn_event_make(&ev, DW__CONN_EVENT__KIND__EDGE_DOWN, NULL, edge_id,
                       "reconcile: the edge does not answer");
    /* Not the dispatcher's "edge_down.<id>": one it published within the
     * dedup window may be from before the edge's rows were announced again. */
    if (dw_msgid_edge_down_reconcile(msg_id, sizeof msg_id, edge_id, ev.ts_ms)) return -1;
    jsErrCode jerr = 0;
    natsStatus s = dw_js_publish_pb(r->js, dw_subj_conn_event(ev.kind), &ev.base, msg_id,
                                    r->o.request_timeout_ms, NULL, &jerr);
    if (s != NATS_OK) {
        DW_ERROR("reconcile: edge_down not published", "edge=%s status=%s jserr=%d", edge_id,
                 natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    return 0;
}

/* The table's ids for edge_id, sorted (the store lists in id order). */
static int table_ids(reg_store *st, const char *edge_id, uint32_t page, strv *out)
{
    char after[EDGE_ID_MAX + 1] = "";
    for (;;) {
        reg_conns c = {0};
        if (reg_store_list(st, edge_id, NULL, after, page, &c)) return -1;
        int fail = 0;
        for (size_t i = 0; i < c.n && !fail; i++)
            fail = strv_push(out, c.conns[i]->conn_id);
        size_t got = c.n;
        if (got) snprintf(after, sizeof after, "%s", c.conns[got - 1]->conn_id);
        reg_conns_free(&c);
        if (fail) return -1;
        if (got < page) return 0;
    }
}

/* Ids of a that b lacks (both sorted). */
static int diff(const strv *a, const strv *b, strv *out)
{
    for (size_t i = 0; i < a->n; i++)
        if (!has(b->v, b->n, a->v[i]) && strv_push(out, a->v[i])) return -1;
    return 0;
}

/* Heard a heartbeat of edge_id within the TTL. */
static int heard_lately(reg_reconcile *r, const char *edge_id)
{
    int64_t now = dw_now_ms();
    int heard = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->nedges && !heard; i++)
        heard = !strcmp(r->edges[i].id, edge_id) && now - r->edges[i].last_ms <= r->o.edge_ttl_ms;
    pthread_mutex_unlock(&r->mu);
    return heard;
}

static int reconcile_edge(reg_reconcile *r, reg_store *st, const char *edge_id, int dry_run,
                          reg_reconcile_result *res)
{
    strv held = {0}, tab = {0}, ghosts = {0}, missing = {0};
    int rc = -1;
    if (table_ids(st, edge_id, r->o.page ? r->o.page : 5000, &tab)) goto done;
    res->edges++;
    ask_rc a = list_edge(r, edge_id, &held);
    if (a == ASK_DOWN && heard_lately(r, edge_id)) {
        /* No responders from an edge whose heartbeat we hear is "not yet"
         * (it is reconnecting, or resubscribing after a NATS restart), not
         * "gone": declaring it down would drop live members. */
        DW_WARN("reconcile: edge has no responders but still heartbeats; left as it is", "edge=%s",
                edge_id);
        a = ASK_UNREACHABLE;
    }
    if (a == ASK_DOWN) {
        res->edges_down++;
        res->ghosts += tab.n;
        DW_WARN("reconcile: edge gone, its connections with it", "edge=%s connections=%zu", edge_id,
                tab.n);
        if (tab.n && !dry_run) publish_edge_down(r, edge_id);
        rc = 0;
        goto done;
    }
    if (a == ASK_UNREACHABLE) {
        res->edges_unreachable++;
        rc = 0;
        goto done;
    }
    res->held += held.n;
    if (diff(&tab, &held, &ghosts) || diff(&held, &tab, &missing)) goto done;
    res->ghosts += ghosts.n;
    res->missing += missing.n;
    if (ghosts.n || missing.n)
        DW_INFO("reconcile: edge differs from the table",
                "edge=%s held=%zu table=%zu ghosts=%zu "
                "missing=%zu dry_run=%d",
                edge_id, held.n, tab.n, ghosts.n, missing.n, dry_run);
    if (!dry_run) {
        correct(r, edge_id, DW__CONN_REQUEST__OP__DROP, &ghosts, &res->dropped);
        correct(r, edge_id, DW__CONN_REQUEST__OP__ANNOUNCE, &missing, &res->announced);
    }
    rc = 0;
done:
    strv_free(&held);
    strv_free(&tab);
    strv_free(&ghosts);
    strv_free(&missing);
    return rc;
}

int reg_reconcile_run(reg_reconcile *r, reg_store *st, int dry_run, atomic_int *stop,
                      reg_reconcile_result *res, char **err)
{
    strv edges = {0};
    memset(res, 0, sizeof *res);
    *err = NULL;
    /* Just started: let every live edge be heard once. */
    while (!*stop && dw_now_ms() - atomic_load(&r->started_ms) < r->o.edge_ttl_ms)
        nats_Sleep(50);
    if (edges_to_ask(r, st, &edges)) {
        *err = strdup("cannot read the table");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < edges.n && !*stop; i++) {
        if (reconcile_edge(r, st, edges.v[i], dry_run, res)) {
            *err = strdup("cannot read the table");
            rc = -1;
            break;
        }
    }
    strv_free(&edges);
    DW_INFO("reconcile done",
            "dry_run=%d edges=%u down=%u unreachable=%u held=%llu ghosts=%llu missing=%llu "
            "dropped=%llu announced=%llu",
            dry_run, res->edges, res->edges_down, res->edges_unreachable,
            (unsigned long long)res->held, (unsigned long long)res->ghosts,
            (unsigned long long)res->missing, (unsigned long long)res->dropped,
            (unsigned long long)res->announced);
    return rc;
}
