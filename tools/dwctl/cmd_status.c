/* dwctl status: is the stack healthy, and how far behind is it? One screen.
 *
 * Services: who answers dw.ops.ping (every instance replies with its
 * service, instance, version and readiness; see dw/ping.h), gathered for
 * --wait-ms. A service that does not answer pings yet is still judged from
 * what it visibly does: the registry answers dw.registry.list, the
 * dispatcher keeps pull requests waiting on its DW_MSG consumers, an edge
 * publishes dw.edge.heartbeat (every 2 s: --wait-ms 2500 sees every edge).
 *
 * Registry: the applied DW_CONN seq, connections in total and per edge
 * (the table paged with after_conn_id). JetStream: DW_MSG, DW_CONN and
 * DW_DLQ sizes, every consumer's backlog, the dispatchers' partition
 * consumers, the DLQ depth. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/ping.h"
#include "dw/util.h"
#include "dw/wire.h"
#include "dwctl.h"
#include "status_routes.h"

#define NSTREAMS 5 /* DW_MSG, DW_CONN, DW_DLQ, DW_EVENTS, DW_ROUTE */
#define STREAM_DLQ 2
#define STREAM_EVENTS 3 /* optional, like DW_DLQ: lifecycle events may be off */
#define STREAM_ROUTE 4  /* optional: made by a registry of this version */
#define REG_PAGE 1000

/* One running process, as seen by a ping answer or judged otherwise. */
typedef struct svc_entry {
    char service[32];
    char instance[64]; /* "" unknown */
    char version[32];  /* "" unknown */
    int ready;         /* 1 yes, 0 no, -1 cannot tell */
    const char *source;
} svc_entry;

typedef struct edge_row {
    char edge_id[64];
    uint64_t conns; /* in the registry */
    bool heartbeat; /* seen during the window */
    char version[32];
    uint32_t hb_conns;
    int64_t hb_ts_ms;
} edge_row;

typedef struct status_report {
    /* registry: reachable = it replied; ok = with a usable answer */
    int reg_reachable, reg_ok;
    bool reg_partial; /* per-edge counts cover only part of the table */
    char reg_err[512];
    uint64_t applied_seq, total, listed;
    /* edges: from the registry and from heartbeats */
    edge_row *edges;
    size_t n_edges, cap_edges;
    /* streams */
    const char *stream_name[NSTREAMS];
    int stream_ok[NSTREAMS];
    char stream_err[NSTREAMS][256];
    jsStreamState stream_state[NSTREAMS];
    jsConsumerInfoList *consumers[NSTREAMS];
    /* dispatcher consumer on DW_MSG */
    int cons_ok;
    char cons_err[256];
    uint64_t num_pending;
    int64_t num_ack_pending, num_redelivered, num_waiting;
    unsigned partitions; /* of DW_MSG_PARTITIONS with a consumer */
    /* services */
    svc_entry *svcs;
    size_t n_svcs, cap_svcs;

    bool oom;
} status_report;

static void status_usage(FILE *out)
{
    fprintf(out, "Usage: dwctl status [--json] [--wait-ms MS]\n"
                 "\n"
                 "One look at the stack:\n"
                 "  services    every running service, its version and whether it is ready:\n"
                 "              those answering dw.ops.ping (source \"ping\"); the registry if it\n"
                 "              answers dw.registry.list; the dispatcher if a pull request of it\n"
                 "              waits on DW_MSG; each edge whose heartbeat arrives in the window\n"
                 "  registry    the DW_CONN sequence it has applied; connections in total and\n"
                 "              per edge\n"
                 "  streams     messages held by DW_MSG, DW_CONN and DW_DLQ\n"
                 "  consumers   every consumer's backlog: pending, unacknowledged, redelivered\n"
                 "  dlq         dead letters waiting in DW_DLQ (replay or purge them)\n"
                 "  routes      each route of DW_ROUTES (all edges): requests, errors,\n"
                 "              timeouts, the newest outcome, and whether a worker listens\n"
                 "              (async: one waits on route-<action>; sync: the newest request\n"
                 "              was answered by a worker, NO: it got no responders, ?: unknown)\n"
                 "\n"
                 "Exit status 0 when everything answers and every service that says whether\n"
                 "it is ready says yes; 1 otherwise (the report is still printed; the reason\n"
                 "is also one line on stderr).\n"
                 "\n"
                 "Options:\n"
                 "  --json         one JSON object instead of text\n"
                 "  --wait-ms MS   how long to gather ping answers and edge heartbeats\n"
                 "                 (default 300; edges beat every 2 s, so 2500 sees them all)\n");
    dwctl_print_global_help(out);
}

/* ---- services ---------------------------------------------------------- */

static svc_entry *svc_add(status_report *st, const char *service, const char *instance,
                          const char *version, int ready, const char *source)
{
    if (st->n_svcs == st->cap_svcs) {
        size_t cap = st->cap_svcs ? st->cap_svcs * 2 : 16;
        svc_entry *grown = realloc(st->svcs, cap * sizeof *grown);
        if (!grown) {
            st->oom = true;
            return NULL;
        }
        st->svcs = grown;
        st->cap_svcs = cap;
    }
    svc_entry *e = &st->svcs[st->n_svcs++];
    memset(e, 0, sizeof *e);
    snprintf(e->service, sizeof e->service, "%s", service ? service : "?");
    snprintf(e->instance, sizeof e->instance, "%s", instance ? instance : "");
    snprintf(e->version, sizeof e->version, "%s", version ? version : "");
    e->ready = ready;
    e->source = source;
    return e;
}

static bool svc_seen(const status_report *st, const char *service, const char *instance)
{
    for (size_t i = 0; i < st->n_svcs; i++)
        if (!strcmp(st->svcs[i].service, service) &&
            (!instance || !strcmp(st->svcs[i].instance, instance)))
            return true;
    return false;
}

static edge_row *edge_find(status_report *st, const char *edge_id, bool add)
{
    for (size_t i = 0; i < st->n_edges; i++)
        if (!strcmp(st->edges[i].edge_id, edge_id)) return &st->edges[i];
    if (!add) return NULL;
    if (st->n_edges == st->cap_edges) {
        size_t cap = st->cap_edges ? st->cap_edges * 2 : 16;
        edge_row *grown = realloc(st->edges, cap * sizeof *grown);
        if (!grown) {
            st->oom = true;
            return NULL;
        }
        st->edges = grown;
        st->cap_edges = cap;
    }
    edge_row *e = &st->edges[st->n_edges++];
    memset(e, 0, sizeof *e);
    snprintf(e->edge_id, sizeof e->edge_id, "%s", edge_id);
    return e;
}

static void add_heartbeat(status_report *st, natsMsg *msg)
{
    Dw__EdgeHeartbeat *hb = dw_pb_unpack(&dw__edge_heartbeat__descriptor, msg);
    natsMsg_Destroy(msg);
    if (!hb) return;
    edge_row *e = *hb->edge_id ? edge_find(st, hb->edge_id, true) : NULL;
    if (e && hb->ts_ms >= e->hb_ts_ms) {
        e->heartbeat = true;
        snprintf(e->version, sizeof e->version, "%s", hb->version);
        e->hb_conns = hb->connections;
        e->hb_ts_ms = hb->ts_ms;
    }
    dw__edge_heartbeat__free_unpacked(hb, NULL);
}

/* Ping answers until the deadline (one request, every instance replies),
 * then the heartbeats that arrived meanwhile. */
static void gather(status_report *st, natsSubscription *sub, natsSubscription *hb_sub,
                   int64_t deadline_ns)
{
    for (;;) {
        int64_t left_ms = (deadline_ns - dw_mono_ns()) / 1000000;
        if (left_ms <= 0) break;
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, left_ms) != NATS_OK) break;
        const char *service = NULL, *instance = NULL, *version = NULL, *ready = NULL;
        natsMsgHeader_Get(m, DW_PING_HDR_SERVICE, &service);
        natsMsgHeader_Get(m, DW_PING_HDR_INSTANCE, &instance);
        natsMsgHeader_Get(m, DW_PING_HDR_VERSION, &version);
        natsMsgHeader_Get(m, DW_PING_HDR_READY, &ready);
        if (service)
            svc_add(st, service, instance, version, ready ? !strcmp(ready, "true") : -1, "ping");
        natsMsg_Destroy(m);
    }
    /* Queued already: each NextMsg returns at once until the queue is empty. */
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, hb_sub, 1) == NATS_OK)
        add_heartbeat(st, m);
}

/* ---- registry ---------------------------------------------------------- */

static void probe_registry(dwctl *ctl, status_report *st)
{
    char after[256] = "";
    uint64_t pages = 0;

    for (;;) {
        Dw__ListQuery q = DW__LIST_QUERY__INIT;
        natsMsg *msg = NULL;
        q.limit = REG_PAGE;
        q.after_conn_id = after;
        if (dwctl_request(ctl, DW_SUBJ_REG_LIST, &q.base, &msg, st->reg_err, sizeof st->reg_err))
            return;
        st->reg_reachable = 1;
        Dw__ListReply *lr = dw_pb_unpack(&dw__list_reply__descriptor, msg);
        natsMsg_Destroy(msg);
        if (!lr) {
            snprintf(st->reg_err, sizeof st->reg_err, "the reply on %s is not a ListReply",
                     DW_SUBJ_REG_LIST);
            return;
        }
        if (!lr->ok) {
            snprintf(st->reg_err, sizeof st->reg_err, "%s",
                     *lr->error ? lr->error : "request refused");
            dw__list_reply__free_unpacked(lr, NULL);
            return;
        }
        if (pages++ == 0) {
            st->applied_seq = lr->applied_seq;
            st->total = lr->total;
        }
        /* A registry that ignores after_conn_id sends the first page again:
         * counting it twice would be wrong, stopping is honest. */
        if (*after && lr->n_conns && strcmp(lr->conns[0]->conn_id, after) <= 0) {
            st->reg_partial = true;
            dw__list_reply__free_unpacked(lr, NULL);
            break;
        }
        for (size_t i = 0; i < lr->n_conns; i++) {
            edge_row *e = edge_find(st, lr->conns[i]->edge_id, true);
            if (e) e->conns++;
        }
        st->listed += lr->n_conns;
        size_t n = lr->n_conns;
        if (n) snprintf(after, sizeof after, "%s", lr->conns[n - 1]->conn_id);
        dw__list_reply__free_unpacked(lr, NULL);
        if (n < REG_PAGE) break;
        if (pages > st->total / REG_PAGE + 2) { /* the table grows faster than we read */
            st->reg_partial = true;
            break;
        }
    }
    st->reg_ok = 1;
}

/* ---- JetStream ---------------------------------------------------------- */

static void probe_stream(dwctl *ctl, status_report *st, int i)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, ctl->js, st->stream_name[i], NULL, &jerr);
    if (s == NATS_OK) {
        st->stream_state[i] = si->State;
        /* the copied state must not point into si */
        st->stream_state[i].Subjects = NULL;
        st->stream_state[i].Deleted = NULL;
        st->stream_state[i].Lost = NULL;
        st->stream_ok[i] = 1;
    } else if (jerr == JSStreamNotFoundErr) {
        snprintf(st->stream_err[i], sizeof st->stream_err[i], "stream %s does not exist",
                 st->stream_name[i]);
    } else {
        snprintf(st->stream_err[i], sizeof st->stream_err[i], "stream %s: %s", st->stream_name[i],
                 s == NATS_TIMEOUT ? "JetStream did not answer (is it enabled?)"
                                   : natsStatus_GetText(s));
    }
    jsStreamInfo_Destroy(si);
    if (st->stream_ok[i]) {
        /* Every consumer's backlog; a failure here only leaves them out. */
        if (js_Consumers(&st->consumers[i], ctl->js, st->stream_name[i], NULL, &jerr) != NATS_OK)
            st->consumers[i] = NULL;
    }
}

static void probe_dispatcher(dwctl *ctl, status_report *st)
{
    dwctl_backlog b;
    natsStatus s = dwctl_dispatch_backlog(ctl, &b);
    if (s != NATS_OK) {
        snprintf(st->cons_err, sizeof st->cons_err, "consumers of %s: %s", DW_STREAM_MSG,
                 s == NATS_TIMEOUT ? "JetStream did not answer" : natsStatus_GetText(s));
        return;
    }
    st->partitions = b.partitions;
    st->num_pending = b.pending;
    st->num_ack_pending = b.ack_pending;
    st->num_redelivered = b.redelivered;
    st->num_waiting = b.waiting;
    if (st->partitions)
        st->cons_ok = 1;
    else
        snprintf(st->cons_err, sizeof st->cons_err,
                 "no partition consumer on %s (has a dispatcher ever run?)", DW_STREAM_MSG);
}

/* Services that did not answer the ping, judged from what they do. */
static void judge_silent_services(status_report *st)
{
    if (!svc_seen(st, "registry", NULL) && st->reg_reachable)
        svc_add(st, "registry", NULL, NULL, st->reg_ok, DW_SUBJ_REG_LIST);
    if (!svc_seen(st, "dispatcher", NULL) && st->cons_ok)
        /* a waiting pull request is a dispatcher asking for work; none may
         * only mean it is busy with a batch */
        svc_add(st, "dispatcher", NULL, NULL, st->num_waiting > 0 ? 1 : -1,
                "consumers " DW_STREAM_MSG "/dwp-*");
    for (size_t i = 0; i < st->n_edges; i++) {
        const edge_row *e = &st->edges[i];
        if (svc_seen(st, "edge", e->edge_id)) continue;
        if (e->heartbeat)
            svc_add(st, "edge", e->edge_id, e->version, 1, DW_SUBJ_EDGE_HEARTBEAT);
        else
            svc_add(st, "edge", e->edge_id, NULL, -1, "registry (no heartbeat seen)");
    }
}

static int cmp_svc(const void *a, const void *b)
{
    const svc_entry *x = a, *y = b;
    int c = strcmp(x->service, y->service);
    return c ? c : strcmp(x->instance, y->instance);
}

static int cmp_edge(const void *a, const void *b)
{
    return strcmp(((const edge_row *)a)->edge_id, ((const edge_row *)b)->edge_id);
}

/* ---- output ------------------------------------------------------------- */

static json_t *json_u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *str_or_null(const char *s)
{
    return s && *s ? dwctl_json_str(s) : json_null();
}

static json_t *ready_json(int ready)
{
    return ready < 0 ? json_null() : json_boolean(ready);
}

static json_t *status_json(const status_report *st, const routes_report *rr, const char *url,
                           int healthy)
{
    /* clang-format off */
    json_t *registry;
    if (st->reg_ok) {
        json_t *per_edge = json_object();
        for (size_t i = 0; per_edge && i < st->n_edges; i++)
            if (st->edges[i].conns)
                json_object_set_new(per_edge, st->edges[i].edge_id, json_u64(st->edges[i].conns));
        /* partial: the per-edge counts cover only connectionsListed */
        registry = json_pack("{s:b, s:n, s:o, s:o, s:o, s:o, s:b}",
                             "reachable", 1,
                             "error",
                             "appliedSeq", json_u64(st->applied_seq),
                             "totalConnections", json_u64(st->total),
                             "connectionsListed", json_u64(st->listed),
                             "connectionsPerEdge", per_edge,
                             "partial", st->reg_partial);
    } else {
        registry = json_pack("{s:b, s:o, s:n, s:n, s:n, s:n, s:b}",
                             "reachable", st->reg_reachable,
                             "error", dwctl_json_str(st->reg_err),
                             "appliedSeq",
                             "totalConnections",
                             "connectionsListed",
                             "connectionsPerEdge",
                             "partial", 0);
    }

    json_t *services = json_array();
    for (size_t i = 0; services && i < st->n_svcs; i++) {
        const svc_entry *e = &st->svcs[i];
        json_array_append_new(services,
            json_pack("{s:o, s:o, s:o, s:o, s:s}",
                      "service", dwctl_json_str(e->service),
                      "instance", str_or_null(e->instance),
                      "version", str_or_null(e->version),
                      "ready", ready_json(e->ready),
                      "source", e->source));
    }

    json_t *edges = json_array();
    int64_t now = dw_now_ms();
    for (size_t i = 0; edges && i < st->n_edges; i++) {
        const edge_row *e = &st->edges[i];
        json_t *hb = e->heartbeat
            ? json_pack("{s:o, s:I, s:I}",
                        "version", dwctl_json_str(e->version),
                        "connections", (json_int_t)e->hb_conns,
                        "ageMs", (json_int_t)(now - e->hb_ts_ms))
            : json_null();
        json_array_append_new(edges, json_pack("{s:o, s:o, s:o}",
                                               "edgeId", dwctl_json_str(e->edge_id),
                                               "connections", json_u64(e->conns),
                                               "heartbeat", hb));
    }

    json_t *streams = json_object();
    json_t *consumers = json_array();
    for (int i = 0; streams && i < NSTREAMS; i++) {
        const jsStreamState *ss = &st->stream_state[i];
        json_t *one;
        if (st->stream_ok[i])
            one = json_pack("{s:b, s:n, s:o, s:o, s:o, s:o, s:I}",
                            "exists", 1,
                            "error",
                            "messages", json_u64(ss->Msgs),
                            "bytes", json_u64(ss->Bytes),
                            "firstSeq", json_u64(ss->FirstSeq),
                            "lastSeq", json_u64(ss->LastSeq),
                            "consumers", (json_int_t)ss->Consumers);
        else
            one = json_pack("{s:b, s:o, s:n, s:n, s:n, s:n, s:n}",
                            "exists", 0,
                            "error", dwctl_json_str(st->stream_err[i]),
                            "messages", "bytes", "firstSeq", "lastSeq", "consumers");
        json_object_set_new(streams, st->stream_name[i], one);
        const jsConsumerInfoList *cl = st->consumers[i];
        for (int c = 0; consumers && cl && c < cl->Count; c++) {
            const jsConsumerInfo *ci = cl->List[c];
            json_array_append_new(consumers,
                json_pack("{s:s, s:o, s:o, s:I, s:I, s:I}",
                          "stream", st->stream_name[i],
                          "name", dwctl_json_str(ci->Name),
                          "numPending", json_u64(ci->NumPending),
                          "numAckPending", (json_int_t)ci->NumAckPending,
                          "numRedelivered", (json_int_t)ci->NumRedelivered,
                          "numWaiting", (json_int_t)ci->NumWaiting));
        }
    }

    json_t *disp;
    if (st->cons_ok)
        disp = json_pack("{s:s, s:b, s:I, s:n, s:o, s:I, s:I, s:I}",
                         "consumer", "dwp-*",
                         "exists", 1,
                         "partitions", (json_int_t)st->partitions,
                         "error",
                         "numPending", json_u64(st->num_pending),
                         "numAckPending", (json_int_t)st->num_ack_pending,
                         "numRedelivered", (json_int_t)st->num_redelivered,
                         "numWaiting", (json_int_t)st->num_waiting);
    else
        disp = json_pack("{s:s, s:b, s:I, s:o, s:n, s:n, s:n, s:n}",
                         "consumer", "dwp-*",
                         "exists", 0,
                         "partitions", (json_int_t)0,
                         "error", dwctl_json_str(st->cons_err),
                         "numPending", "numAckPending", "numRedelivered", "numWaiting");

    json_t *dlq = st->stream_ok[STREAM_DLQ]
        ? json_pack("{s:b, s:o}", "exists", 1,
                    "depth", json_u64(st->stream_state[STREAM_DLQ].Msgs))
        : json_pack("{s:b, s:n}", "exists", 0, "depth");

    return json_pack("{s:b, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                     "healthy", healthy,
                     "natsUrl", url,
                     "services", services,
                     "registry", registry,
                     "edges", edges,
                     "streams", streams,
                     "consumers", consumers,
                     "dispatcher", disp,
                     "dlq", dlq,
                     "routes", routes_json(rr));
    /* clang-format on */
}

static void print_table(dwctl_table *t)
{
    dwctl_table_print(t, stdout);
    dwctl_table_free(t);
}

static void status_text(const status_report *st, const char *url)
{
    char buf[1024];
    dwctl_table t;
    printf("NATS        %s (connected)\n\n", dwctl_term_safe(url, buf, sizeof buf));

    static const char *const svc_h[] = {"SERVICE", "INSTANCE", "VERSION", "READY", "SOURCE"};
    if (dwctl_table_init(&t, 5, svc_h) == 0) {
        for (size_t i = 0; i < st->n_svcs; i++) {
            const svc_entry *e = &st->svcs[i];
            const char *row[] = {e->service, e->instance, e->version,
                                 e->ready < 0 ? "?"
                                 : e->ready   ? "yes"
                                              : "NO",
                                 e->source};
            if (dwctl_table_add(&t, row)) break;
        }
        print_table(&t);
    }
    if (!st->n_svcs) printf("(no service answered)\n");

    printf("\n");
    if (st->reg_ok)
        printf("registry    applied seq %llu, %llu connection%s%s\n",
               (unsigned long long)st->applied_seq, (unsigned long long)st->total,
               st->total == 1 ? "" : "s",
               st->reg_partial ? " (per edge: only part of the table was read)" : "");
    else
        printf("registry    %s: %s\n", st->reg_reachable ? "ERROR" : "UNREACHABLE",
               dwctl_term_safe(st->reg_err, buf, sizeof buf));

    if (st->n_edges) {
        static const char *const edge_h[] = {"EDGE", "CONNECTIONS", "VERSION", "HEARTBEAT"};
        int64_t now = dw_now_ms();
        if (dwctl_table_init(&t, 4, edge_h) == 0) {
            for (size_t i = 0; i < st->n_edges; i++) {
                const edge_row *e = &st->edges[i];
                char n[32], age[32];
                snprintf(n, sizeof n, "%llu", (unsigned long long)e->conns);
                if (e->heartbeat)
                    snprintf(age, sizeof age, "%.1fs ago", (double)(now - e->hb_ts_ms) / 1000.0);
                else
                    snprintf(age, sizeof age, "-");
                const char *row[] = {e->edge_id, n, e->version, age};
                if (dwctl_table_add(&t, row)) break;
            }
            printf("\n");
            print_table(&t);
        }
    }

    static const char *const stream_h[] = {"STREAM", "MESSAGES", "BYTES", "SEQ"};
    if (dwctl_table_init(&t, 4, stream_h) == 0) {
        for (int i = 0; i < NSTREAMS; i++) {
            const jsStreamState *ss = &st->stream_state[i];
            char msgs[32], bytes[32], seq[sizeof st->stream_err[0]];
            if (st->stream_ok[i]) {
                snprintf(msgs, sizeof msgs, "%llu", (unsigned long long)ss->Msgs);
                snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)ss->Bytes);
                snprintf(seq, sizeof seq, "%llu..%llu", (unsigned long long)ss->FirstSeq,
                         (unsigned long long)ss->LastSeq);
            } else {
                snprintf(msgs, sizeof msgs, "%s",
                         i == STREAM_DLQ || i == STREAM_EVENTS || i == STREAM_ROUTE ? "-"
                                                                                    : "MISSING");
                snprintf(bytes, sizeof bytes, "-");
                snprintf(seq, sizeof seq, "%s", st->stream_err[i]);
            }
            const char *row[] = {st->stream_name[i], msgs, bytes, seq};
            if (dwctl_table_add(&t, row)) break;
        }
        printf("\n");
        print_table(&t);
    }

    static const char *const cons_h[] = {"CONSUMER", "PENDING", "ACK_PENDING", "REDELIVERED",
                                         "WAITING"};
    if (dwctl_table_init(&t, 5, cons_h) == 0) {
        size_t rows = 0;
        for (int i = 0; i < NSTREAMS; i++) {
            const jsConsumerInfoList *cl = st->consumers[i];
            for (int c = 0; cl && c < cl->Count; c++) {
                const jsConsumerInfo *ci = cl->List[c];
                char name[160], p[32], ap[32], rd[32], w[32];
                /* The partition consumers are one row, below. */
                if (i == 0 && ci->Name && !strncmp(ci->Name, "dwp-", 4)) continue;
                snprintf(name, sizeof name, "%s/%s", st->stream_name[i], ci->Name);
                snprintf(p, sizeof p, "%llu", (unsigned long long)ci->NumPending);
                snprintf(ap, sizeof ap, "%lld", (long long)ci->NumAckPending);
                snprintf(rd, sizeof rd, "%lld", (long long)ci->NumRedelivered);
                snprintf(w, sizeof w, "%lld", (long long)ci->NumWaiting);
                const char *row[] = {name, p, ap, rd, w};
                if (dwctl_table_add(&t, row)) break;
                rows++;
            }
        }
        if (st->cons_ok) {
            char name[160], p[32], ap[32], rd[32], w[32];
            snprintf(name, sizeof name, "%s/dwp-* (%u of %d partitions)", DW_STREAM_MSG,
                     st->partitions, DW_MSG_PARTITIONS);
            snprintf(p, sizeof p, "%llu", (unsigned long long)st->num_pending);
            snprintf(ap, sizeof ap, "%lld", (long long)st->num_ack_pending);
            snprintf(rd, sizeof rd, "%lld", (long long)st->num_redelivered);
            snprintf(w, sizeof w, "%lld", (long long)st->num_waiting);
            const char *row[] = {name, p, ap, rd, w};
            if (!dwctl_table_add(&t, row)) rows++;
        }
        if (rows) {
            printf("\n");
            dwctl_table_print(&t, stdout);
        }
        dwctl_table_free(&t);
    }
    if (!st->cons_ok)
        printf("dispatcher  MISSING: %s\n", st->cons_err);
    else if (st->partitions < DW_MSG_PARTITIONS)
        printf("dispatcher  %u of %d partitions have a consumer\n", st->partitions,
               DW_MSG_PARTITIONS);

    printf("\n");
    if (st->stream_ok[STREAM_DLQ])
        printf("DLQ         %llu dead letter%s\n",
               (unsigned long long)st->stream_state[STREAM_DLQ].Msgs,
               st->stream_state[STREAM_DLQ].Msgs == 1 ? "" : "s");
    else
        printf("DLQ         none (%s does not exist: nothing was dead-lettered yet)\n",
               DW_STREAM_DLQ);
}

int cmd_status(dwctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"json", no_argument, NULL, 'j'},
                                         {"wait-ms", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    int json = 0, opt, rc;
    long wait_ms = 300;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': status_usage(stdout); return DWCTL_OK;
        case 'j': json = 1; break;
        case 'w': {
            char *end = NULL;
            wait_ms = strtol(optarg, &end, 10);
            if (end == optarg || *end || wait_ms < 0 || wait_ms > 60000) {
                dwctl_err("status: --wait-ms: expected 0..60000, got '%s'", optarg);
                return DWCTL_USAGE;
            }
            break;
        }
        default:
            if ((rc = dwctl_common_option(ctl, "status", opt, argv)) != DWCTL_OK) return rc;
        }
    }
    if (optind < argc) {
        dwctl_err("status: unexpected argument '%s' (see 'dwctl status --help')", argv[optind]);
        return DWCTL_USAGE;
    }
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;

    status_report st;
    memset(&st, 0, sizeof st);
    st.stream_name[0] = DW_STREAM_MSG;
    st.stream_name[1] = DW_STREAM_CONN;
    st.stream_name[STREAM_DLQ] = DW_STREAM_DLQ;
    st.stream_name[STREAM_EVENTS] = DW_STREAM_EVENTS;
    st.stream_name[STREAM_ROUTE] = DW_STREAM_ROUTE;
    routes_report rr;
    memset(&rr, 0, sizeof rr);

    /* Start listening first: the window runs while the other probes do. */
    int64_t deadline = dw_mono_ns() + (int64_t)wait_ms * 1000000;
    natsInbox *inbox = NULL;
    natsSubscription *ping_sub = NULL, *hb_sub = NULL;
    natsStatus s = natsInbox_Create(&inbox);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&ping_sub, ctl->nc, inbox);
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&hb_sub, ctl->nc, DW_SUBJ_EDGE_HEARTBEAT);
    if (s == NATS_OK) s = natsConnection_PublishRequest(ctl->nc, DW_SUBJ_OPS_PING, inbox, NULL, 0);
    if (s == NATS_OK && routes_ask(ctl, &rr)) s = NATS_ERR;
    if (s == NATS_OK) s = natsConnection_Flush(ctl->nc);
    if (s != NATS_OK) {
        dwctl_err("status: cannot ask %s: %s", DW_SUBJ_OPS_PING, natsStatus_GetText(s));
        rc = DWCTL_FAIL;
        goto done;
    }

    probe_registry(ctl, &st);
    for (int i = 0; i < NSTREAMS; i++)
        probe_stream(ctl, &st, i);
    probe_dispatcher(ctl, &st);
    gather(&st, ping_sub, hb_sub, deadline);
    routes_collect(&rr, deadline, st.consumers[STREAM_ROUTE]);

    judge_silent_services(&st);
    if (st.n_svcs) qsort(st.svcs, st.n_svcs, sizeof *st.svcs, cmp_svc);
    if (st.n_edges) qsort(st.edges, st.n_edges, sizeof *st.edges, cmp_edge);

    const char *not_ready = NULL;
    for (size_t i = 0; i < st.n_svcs && !not_ready; i++)
        if (st.svcs[i].ready == 0) not_ready = st.svcs[i].service;
    const char *problem = st.oom             ? "out of memory"
                          : !st.reg_ok       ? st.reg_err
                          : !st.stream_ok[0] ? st.stream_err[0]
                          : !st.stream_ok[1] ? st.stream_err[1]
                          : !st.cons_ok      ? st.cons_err
                                             : NULL;

    char url[512];
    dwctl_url_redacted(ctl->cfg.nats_url, url, sizeof url);
    if (json)
        rc = dwctl_json_print_line(status_json(&st, &rr, url, !problem && !not_ready));
    else {
        status_text(&st, url);
        routes_text(&rr);
        rc = DWCTL_OK;
    }
    if (rc == DWCTL_OK && problem) {
        dwctl_err("not healthy: %s%s", problem == st.reg_err ? "registry: " : "", problem);
        rc = DWCTL_FAIL;
    } else if (rc == DWCTL_OK && not_ready) {
        dwctl_err("not healthy: %s says it is not ready", not_ready);
        rc = DWCTL_FAIL;
    }

done:
    routes_free(&rr);
    natsSubscription_Destroy(hb_sub);
    natsSubscription_Destroy(ping_sub);
    natsInbox_Destroy(inbox);
    for (int i = 0; i < NSTREAMS; i++)
        jsConsumerInfoList_Destroy(st.consumers[i]);
    free(st.edges);
    free(st.svcs);
    return rc;
}
