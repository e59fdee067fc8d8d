/* dwctl status: is the stack healthy, and how far behind is it?
 *
 * Registry: answers dw.registry.list? applied DW_CONN seq, connections in
 * total and per edge. JetStream: DW_MSG and DW_CONN message counts, the
 * dispatcher consumer's backlog (pending, unacked, redelivered). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dwctl.h"

typedef struct edge_count {
    const char *edge_id; /* points into the ListReply */
    uint64_t n;
} edge_count;

typedef struct status_report {
    /* registry: reachable = it replied; ok = with a usable answer */
    int reg_reachable, reg_ok;
    char reg_err[512];
    uint64_t applied_seq, total;
    edge_count *edges;
    size_t n_edges;
    Dw__ListReply *list;
    /* streams: [0] DW_MSG, [1] DW_CONN */
    const char *stream_name[2];
    int stream_ok[2];
    char stream_err[2][256];
    jsStreamState stream_state[2];
    /* dispatcher consumer on DW_MSG */
    int cons_ok;
    char cons_err[256];
    uint64_t num_pending;
    int64_t num_ack_pending, num_redelivered, num_waiting;
} status_report;

static void status_usage(FILE *out)
{
    fprintf(out, "Usage: dwctl status [--json]\n"
                 "\n"
                 "One look at the stack:\n"
                 "  registry    does it answer dw.registry.list; the DW_CONN sequence it has\n"
                 "              applied; connections in total and per edge\n"
                 "  streams     messages held by DW_MSG and DW_CONN\n"
                 "  dispatcher  its DW_MSG consumer: messages not yet delivered (pending),\n"
                 "              delivered but not acknowledged, redelivered\n"
                 "\n"
                 "Exit status 0 when everything answers, 1 when something does not (the\n"
                 "report is still printed; the reason is also one line on stderr).\n"
                 "\n"
                 "Options:\n"
                 "  --json   one JSON object instead of text\n");
    dwctl_print_global_help(out);
}

static int cmp_conn_edge(const void *a, const void *b)
{
    const Dw__ConnRecord *x = *(const Dw__ConnRecord *const *)a;
    const Dw__ConnRecord *y = *(const Dw__ConnRecord *const *)b;
    return strcmp(x->edge_id, y->edge_id);
}

static void probe_registry(dwctl *ctl, status_report *st)
{
    Dw__ListQuery q = DW__LIST_QUERY__INIT;
    natsMsg *msg = NULL;

    if (dwctl_request(ctl, DW_SUBJ_REG_LIST, &q.base, &msg, st->reg_err, sizeof st->reg_err))
        return;
    st->reg_reachable = 1;
    st->list = dw__list_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                      (const uint8_t *)natsMsg_GetData(msg));
    natsMsg_Destroy(msg);
    if (!st->list) {
        snprintf(st->reg_err, sizeof st->reg_err, "the reply on %s is not a ListReply",
                 DW_SUBJ_REG_LIST);
        return;
    }
    if (!st->list->ok) {
        snprintf(st->reg_err, sizeof st->reg_err, "%s",
                 *st->list->error ? st->list->error : "request refused");
        return;
    }
    st->applied_seq = st->list->applied_seq;
    st->total = st->list->total;

    /* Group by edge: sort the records, count the runs. */
    size_t n = st->list->n_conns;
    if (n) {
        qsort(st->list->conns, n, sizeof *st->list->conns, cmp_conn_edge);
        st->edges = calloc(n, sizeof *st->edges);
        if (!st->edges) {
            snprintf(st->reg_err, sizeof st->reg_err, "out of memory");
            return;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const char *e = st->list->conns[i]->edge_id;
        if (!st->n_edges || strcmp(st->edges[st->n_edges - 1].edge_id, e))
            st->edges[st->n_edges++].edge_id = e;
        st->edges[st->n_edges - 1].n++;
    }
    st->reg_ok = 1;
}

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
}

static void probe_dispatcher(dwctl *ctl, status_report *st)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s =
        js_GetConsumerInfo(&ci, ctl->js, DW_STREAM_MSG, DW_DISPATCHER_DURABLE, NULL, &jerr);
    if (s == NATS_OK) {
        st->num_pending = ci->NumPending;
        st->num_ack_pending = ci->NumAckPending;
        st->num_redelivered = ci->NumRedelivered;
        st->num_waiting = ci->NumWaiting;
        st->cons_ok = 1;
    } else if (jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr) {
        snprintf(st->cons_err, sizeof st->cons_err,
                 "consumer %s/%s does not exist (has the dispatcher ever run?)", DW_STREAM_MSG,
                 DW_DISPATCHER_DURABLE);
    } else {
        snprintf(st->cons_err, sizeof st->cons_err, "consumer %s/%s: %s", DW_STREAM_MSG,
                 DW_DISPATCHER_DURABLE,
                 s == NATS_TIMEOUT ? "JetStream did not answer" : natsStatus_GetText(s));
    }
    jsConsumerInfo_Destroy(ci);
}

static json_t *json_u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *status_json(const status_report *st, const char *url)
{
    /* clang-format off */
    json_t *registry;
    if (st->reg_ok) {
        json_t *per_edge = json_object();
        for (size_t i = 0; per_edge && i < st->n_edges; i++)
            json_object_set_new(per_edge, st->edges[i].edge_id, json_u64(st->edges[i].n));
        /* connectionsListed < totalConnections: the registry capped its
         * reply and the per-edge counts cover only the listed ones */
        registry = json_pack("{s:b, s:n, s:o, s:o, s:o, s:o}",
                             "reachable", 1,
                             "error",
                             "appliedSeq", json_u64(st->applied_seq),
                             "totalConnections", json_u64(st->total),
                             "connectionsListed", json_u64(st->list->n_conns),
                             "connectionsPerEdge", per_edge);
    } else {
        registry = json_pack("{s:b, s:o, s:n, s:n, s:n, s:n}",
                             "reachable", st->reg_reachable,
                             "error", dwctl_json_str(st->reg_err),
                             "appliedSeq",
                             "totalConnections",
                             "connectionsListed",
                             "connectionsPerEdge");
    }

    json_t *streams = json_object();
    for (int i = 0; streams && i < 2; i++) {
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
    }

    json_t *disp;
    if (st->cons_ok)
        disp = json_pack("{s:s, s:b, s:n, s:o, s:I, s:I, s:I}",
                         "consumer", DW_DISPATCHER_DURABLE,
                         "exists", 1,
                         "error",
                         "numPending", json_u64(st->num_pending),
                         "numAckPending", (json_int_t)st->num_ack_pending,
                         "numRedelivered", (json_int_t)st->num_redelivered,
                         "numWaiting", (json_int_t)st->num_waiting);
    else
        disp = json_pack("{s:s, s:b, s:o, s:n, s:n, s:n, s:n}",
                         "consumer", DW_DISPATCHER_DURABLE,
                         "exists", 0,
                         "error", dwctl_json_str(st->cons_err),
                         "numPending", "numAckPending", "numRedelivered", "numWaiting");

    int healthy = st->reg_ok && st->stream_ok[0] && st->stream_ok[1] && st->cons_ok;
    return json_pack("{s:b, s:s, s:o, s:o, s:o}",
                     "healthy", healthy,
                     "natsUrl", url,
                     "registry", registry,
                     "streams", streams,
                     "dispatcher", disp);
    /* clang-format on */
}

static void status_text(const status_report *st, const char *url)
{
    char buf[1024];
    printf("NATS        %s (connected)\n", dwctl_term_safe(url, buf, sizeof buf));
    if (st->reg_ok) {
        printf("registry    reachable, applied seq %llu, %llu connection%s\n",
               (unsigned long long)st->applied_seq, (unsigned long long)st->total,
               st->total == 1 ? "" : "s");
    } else {
        printf("registry    %s: %s\n", st->reg_reachable ? "ERROR" : "UNREACHABLE",
               dwctl_term_safe(st->reg_err, buf, sizeof buf));
    }
    for (int i = 0; i < 2; i++) {
        const jsStreamState *ss = &st->stream_state[i];
        if (st->stream_ok[i])
            printf("%-11s %llu messages, %llu bytes, seq %llu..%llu\n", st->stream_name[i],
                   (unsigned long long)ss->Msgs, (unsigned long long)ss->Bytes,
                   (unsigned long long)ss->FirstSeq, (unsigned long long)ss->LastSeq);
        else
            printf("%-11s MISSING: %s\n", st->stream_name[i], st->stream_err[i]);
    }
    if (st->cons_ok)
        printf("dispatcher  pending %llu, ack pending %lld, redelivered %lld, waiting pulls %lld\n",
               (unsigned long long)st->num_pending, (long long)st->num_ack_pending,
               (long long)st->num_redelivered, (long long)st->num_waiting);
    else
        printf("dispatcher  MISSING: %s\n", st->cons_err);

    if (st->reg_ok && st->n_edges) {
        static const char *const headers[] = {"EDGE", "CONNECTIONS"};
        dwctl_table t;
        if (dwctl_table_init(&t, 2, headers) == 0) {
            for (size_t i = 0; i < st->n_edges; i++) {
                char n[32];
                snprintf(n, sizeof n, "%llu", (unsigned long long)st->edges[i].n);
                const char *row[] = {st->edges[i].edge_id, n};
                if (dwctl_table_add(&t, row)) break;
            }
            printf("\n");
            dwctl_table_print(&t, stdout);
            if (st->list->n_conns < st->total)
                printf("(per edge: the first %zu of %llu connections; the registry capped "
                       "its reply)\n",
                       st->list->n_conns, (unsigned long long)st->total);
        }
        dwctl_table_free(&t);
    }
}

int cmd_status(dwctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        DWCTL_GLOBAL_OPTIONS, {"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
    int json = 0, opt, rc;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': status_usage(stdout); return DWCTL_OK;
        case 'j': json = 1; break;
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
    probe_registry(ctl, &st);
    probe_stream(ctl, &st, 0);
    probe_stream(ctl, &st, 1);
    probe_dispatcher(ctl, &st);

    char url[512];
    dwctl_url_redacted(ctl->cfg.nats_url, url, sizeof url);
    if (json)
        rc = dwctl_json_print_line(status_json(&st, url));
    else {
        status_text(&st, url);
        rc = DWCTL_OK;
    }

    if (rc == DWCTL_OK) {
        const char *problem = !st.reg_ok         ? st.reg_err
                              : !st.stream_ok[0] ? st.stream_err[0]
                              : !st.stream_ok[1] ? st.stream_err[1]
                              : !st.cons_ok      ? st.cons_err
                                                 : NULL;
        if (problem) {
            dwctl_err("not healthy: %s%s", problem == st.reg_err ? "registry: " : "", problem);
            rc = DWCTL_FAIL;
        }
    }
    free(st.edges);
    dw__list_reply__free_unpacked(st.list, NULL);
    return rc;
}
