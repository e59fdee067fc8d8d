/* dwctl dlq: the dead-letter queue, through the deadletter service
 * (dw.ops.dlq.list|show|replay|purge) and JetStream (stats). */
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "dw/util.h"
#include "dw/wire.h"
#include "dwctl.h"

/* The area's entry point (registered in main.c). */
int cmd_dlq(dwctl *ctl, int argc, char **argv);

/* ids per replay / purge request: each is a JetStream round trip or two on
 * the service, so a batch answers well within the request timeout. */
#define DLQ_BATCH 16

static void dlq_usage(FILE *out)
{
    fprintf(out,
            "Usage: dwctl dlq list [--room R] [--reason X] [--since T] [--json]\n"
            "       dwctl dlq show ID [--json]\n"
            "       dwctl dlq replay (ID... | --all [--room R] [--reason X] [--since T])\n"
            "                        [--dry-run] [--rate N]\n"
            "       dwctl dlq purge (ID... | --all [--room R] [--reason X] [--since T]) [--yes]\n"
            "       dwctl dlq stats [--json]\n"
            "\n"
            "The dead-letter queue (stream DW_DLQ) holds the chat messages that could not\n"
            "be delivered after every retry, each with the reason. ID is the entry's\n"
            "DW_DLQ sequence (the first column of list). The deadletter service answers.\n"
            "\n"
            "  list    one row per entry: ID, STORED (ISO-8601 UTC), ROOM, REASON, ATTEMPTS,\n"
            "          SEQ (its DW_MSG sequence), MSG_ID, SOURCE; --json: one JSON object\n"
            "          per entry and line.\n"
            "  show    one entry with everything it records, and the message itself.\n"
            "  replay  republish each entry to its original subject, then remove it. An\n"
            "          entry is removed only after JetStream acknowledged the republish, so\n"
            "          an interrupted replay loses nothing; run it again to finish (a\n"
            "          republish repeated within DW_MSG's duplicate window, 2 min, is\n"
            "          dropped by JetStream). A partial failure (edge_timeout) goes back\n"
            "          only to the edges that never took it. Prints how many were\n"
            "          replayed, skipped (already gone) and failed.\n"
            "  purge   remove entries without replaying them.\n"
            "  stats   entries in DW_DLQ by reason, and the dispatchers' backlog.\n"
            "\n"
            "Options:\n"
            "  --all         replay / purge every entry that matches the filters\n"
            "  --room R      only entries of room R\n"
            "  --reason X    only entries with reason X, or of kind X (edge_timeout\n"
            "                matches edge_timeout:<edge>)\n"
            "  --since T     only entries stored at or after T: an ISO-8601 UTC time\n"
            "                (2026-11-25T08:00:00Z, 2026-11-25) or a duration back from\n"
            "                now (90s, 15m, 2h, 7d)\n"
            "  --dry-run     replay: print what would be replayed, change nothing\n"
            "  --rate N      replay: at most N entries per second (default: as fast as\n"
            "                JetStream acknowledges)\n"
            "  --yes         purge --all: required, there is no undo\n"
            "  --json        list, show, stats: JSON\n"
            "\n"
            "Exit status: 0 all done, 1 something failed (one line each on stderr),\n"
            "2 bad usage.\n");
    dwctl_print_global_help(out);
}

/* --- parsing --- */

static int parse_id(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v == 0) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* --since: ISO-8601 UTC, a date, or a duration back from now. ms since epoch. */
static int parse_since(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (!errno && end != s && v >= 0 && end[0] && !end[1] && strchr("smhd", end[0])) {
        double mult = end[0] == 's' ? 1e3 : end[0] == 'm' ? 60e3 : end[0] == 'h' ? 3600e3 : 86400e3;
        *out = dw_now_ms() - (int64_t)(v * mult);
        return 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    int64_t ms = 0;
    if (rest) {
        if (*rest == '.') {
            /* fraction: up to milliseconds count */
            int digits = 0;
            for (rest++; *rest >= '0' && *rest <= '9'; rest++, digits++)
                if (digits < 3) ms = ms * 10 + (*rest - '0');
            if (!digits) return -1;
            for (; digits < 3; digits++)
                ms *= 10;
        }
        if (*rest == 'Z') rest++;
        if (*rest) return -1;
    } else {
        memset(&tm, 0, sizeof tm);
        rest = strptime(s, "%Y-%m-%d", &tm);
        if (!rest || *rest) return -1;
    }
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    *out = (int64_t)t * 1000 + ms;
    return 0;
}

typedef struct dlq_opts {
    const char *room, *reason;
    int64_t since_ms;
    int has_since, all, dry_run, yes, json;
    double rate;
    uint64_t *ids;
    size_t n_ids;
} dlq_opts;

enum { OPT_ROOM = 0x200, OPT_REASON, OPT_SINCE, OPT_ALL, OPT_DRY_RUN, OPT_RATE, OPT_YES, OPT_JSON };

/* Parse argv (argv[0] = subcommand) into o; positional arguments are ids.
 * allowed: which of the OPT_* a subcommand takes (bit OPT - 0x200). */
static int parse_opts(dwctl *ctl, const char *cmd, int argc, char **argv, unsigned allowed,
                      dlq_opts *o, int *help)
{
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"room", required_argument, NULL, OPT_ROOM},
                                         {"reason", required_argument, NULL, OPT_REASON},
                                         {"since", required_argument, NULL, OPT_SINCE},
                                         {"all", no_argument, NULL, OPT_ALL},
                                         {"dry-run", no_argument, NULL, OPT_DRY_RUN},
                                         {"rate", required_argument, NULL, OPT_RATE},
                                         {"yes", no_argument, NULL, OPT_YES},
                                         {"json", no_argument, NULL, OPT_JSON},
                                         {NULL, 0, NULL, 0}};
    int opt, rc;
    char *end = NULL;

    memset(o, 0, sizeof *o);
    *help = 0;
    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (opt >= OPT_ROOM && opt <= OPT_JSON && !(allowed & (1u << (opt - OPT_ROOM)))) {
            dwctl_err("dlq %s: option '%s' does not apply here (see 'dwctl dlq --help')", cmd,
                      argv[optind - 1]);
            return DWCTL_USAGE;
        }
        switch (opt) {
        case 'h': *help = 1; return DWCTL_OK;
        case OPT_ROOM:
            if (!dw_room_valid(optarg, strlen(optarg))) {
                dwctl_err("dlq %s: --room: '%s' is not a room name", cmd, optarg);
                return DWCTL_USAGE;
            }
            o->room = optarg;
            break;
        case OPT_REASON:
            if (!*optarg) {
                dwctl_err("dlq %s: --reason needs a reason", cmd);
                return DWCTL_USAGE;
            }
            o->reason = optarg;
            break;
        case OPT_SINCE:
            if (parse_since(optarg, &o->since_ms)) {
                dwctl_err("dlq %s: --since: '%s' is neither an ISO-8601 UTC time nor a duration "
                          "like 15m",
                          cmd, optarg);
                return DWCTL_USAGE;
            }
            o->has_since = 1;
            break;
        case OPT_ALL: o->all = 1; break;
        case OPT_DRY_RUN: o->dry_run = 1; break;
        case OPT_YES: o->yes = 1; break;
        case OPT_JSON: o->json = 1; break;
        case OPT_RATE:
            errno = 0;
            o->rate = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(o->rate > 0) || o->rate > 1e6) {
                dwctl_err("dlq %s: --rate: '%s' is not a positive number of entries per second",
                          cmd, optarg);
                return DWCTL_USAGE;
            }
            break;
        default: {
            char name[32];
            snprintf(name, sizeof name, "dlq %s", cmd);
            if ((rc = dwctl_common_option(ctl, name, opt, argv)) != DWCTL_OK) return rc;
        }
        }
    }
    size_t n = argc > optind ? (size_t)(argc - optind) : 0;
    if (n) {
        if (!(o->ids = calloc(n, sizeof *o->ids))) {
            dwctl_err("out of memory");
            return DWCTL_FAIL;
        }
        for (int a = optind; a < argc; a++) {
            if (parse_id(argv[a], &o->ids[o->n_ids])) {
                char buf[128];
                dwctl_err("dlq %s: '%s' is not an entry id (a positive number)", cmd,
                          dwctl_term_safe(argv[a], buf, sizeof buf));
                return DWCTL_USAGE;
            }
            o->n_ids++;
        }
    }
    return DWCTL_OK;
}

#define ALLOW(x) (1u << ((x)-OPT_ROOM))

/* --- requests --- */

/* One request to the deadletter service. On success *out is the caller's
 * (dw__dlq_reply__free_unpacked) and ok; otherwise one line on stderr. */
static int dlq_call(dwctl *ctl, const char *subj, const Dw__DlqRequest *rq, int64_t timeout_ms,
                    Dw__DlqReply **out)
{
    size_t len = 0;
    uint8_t *buf = dw_pb_pack(&rq->base, &len);
    natsMsg *reply = NULL;
    *out = NULL;
    if (!buf) {
        dwctl_err("out of memory");
        return DWCTL_FAIL;
    }
    natsStatus s = natsConnection_Request(&reply, ctl->nc, subj, buf, (int)len, timeout_ms);
    free(buf);
    if (s != NATS_OK) {
        if (s == NATS_NO_RESPONDERS)
            dwctl_err("deadletter: nothing answers on %s (is the deadletter service running?)",
                      subj);
        else if (s == NATS_TIMEOUT)
            dwctl_err("deadletter: no reply on %s within %lld ms", subj, (long long)timeout_ms);
        else
            dwctl_err("deadletter: request on %s failed: %s", subj, natsStatus_GetText(s));
        return DWCTL_FAIL;
    }
    Dw__DlqReply *r = dw_pb_unpack(&dw__dlq_reply__descriptor, reply);
    natsMsg_Destroy(reply);
    if (!r) {
        dwctl_err("deadletter: the reply on %s is not a DlqReply", subj);
        return DWCTL_FAIL;
    }
    if (!r->ok) {
        char b[512];
        dwctl_err("deadletter: %s",
                  dwctl_term_safe(*r->error ? r->error : "request refused", b, sizeof b));
        dw__dlq_reply__free_unpacked(r, NULL);
        return DWCTL_FAIL;
    }
    *out = r;
    return DWCTL_OK;
}

/* Every entry matching o's filters, page by page: calls fn for each.
 * fn returns DWCTL_OK to go on. */
typedef int (*entry_fn)(const Dw__DlqEntry *e, void *arg);

static int for_each_entry(dwctl *ctl, const dlq_opts *o, entry_fn fn, void *arg)
{
    Dw__DlqRequest rq = DW__DLQ_REQUEST__INIT;
    rq.room = (char *)(o->room ? o->room : "");
    rq.reason = (char *)(o->reason ? o->reason : "");
    rq.since_ms = o->has_since ? o->since_ms : 0;
    for (;;) {
        Dw__DlqReply *r = NULL;
        int rc = dlq_call(ctl, DW_SUBJ_DLQ_LIST, &rq, ctl->cfg.timeout_ms, &r);
        if (rc != DWCTL_OK) return rc;
        for (size_t i = 0; i < r->n_entries && rc == DWCTL_OK; i++) {
            rc = fn(r->entries[i], arg);
            rq.after_id = r->entries[i]->id;
        }
        int more = r->more && r->n_entries;
        dw__dlq_reply__free_unpacked(r, NULL);
        if (rc != DWCTL_OK || !more) return rc;
    }
}

/* --- output --- */

static json_t *time_json(int64_t ms)
{
    char ts[32];
    return ms > 0 ? dwctl_json_str(dwctl_time(ms, ts, sizeof ts)) : json_null();
}

static json_t *entry_json(const Dw__DlqEntry *e)
{
    const Dw__DeadLetter *dl = e->letter;
    static const Dw__DeadLetter empty = DW__DEAD_LETTER__INIT;
    if (!dl) dl = &empty;
    json_t *edges = json_array(), *times = json_array();
    if (!edges || !times) {
        json_decref(edges);
        json_decref(times);
        return NULL;
    }
    for (size_t i = 0; i < dl->n_failed_edges; i++)
        json_array_append_new(edges, dwctl_json_str(dl->failed_edges[i]));
    for (size_t i = 0; i < dl->n_attempt_ms; i++)
        json_array_append_new(times, time_json(dl->attempt_ms[i]));
    /* clang-format off */
    return json_pack("{s:I, s:o, s:o, s:o, s:I, s:o, s:o, s:I, s:o, s:o, s:o, s:o, s:o, s:I}",
                     "id", (json_int_t)e->id,
                     "storedAt", time_json(e->stored_ms),
                     "room", dwctl_json_str(dl->room),
                     "subject", dwctl_json_str(dl->subject),
                     "streamSeq", (json_int_t)dl->stream_seq,
                     "msgId", dwctl_json_str(dl->msg_id),
                     "reason", dwctl_json_str(dl->reason),
                     "attempts", (json_int_t)dl->attempts,
                     "firstFailure", time_json(dl->first_failure_ms),
                     "lastFailure", time_json(dl->last_failure_ms),
                     "attemptTimes", times,
                     "failedEdges", edges,
                     "source", dwctl_json_str(dl->source),
                     "payloadBytes", (json_int_t)e->payload_bytes);
    /* clang-format on */
}

typedef struct list_ctx {
    int json;
    dwctl_table t;
    size_t n;
} list_ctx;

static int list_one(const Dw__DlqEntry *e, void *arg)
{
    list_ctx *lc = arg;
    lc->n++;
    if (lc->json) return dwctl_json_print_line(entry_json(e));
    const Dw__DeadLetter *dl = e->letter;
    char id[24], ts[32], att[16], seq[24];
    snprintf(id, sizeof id, "%" PRIu64, e->id);
    snprintf(att, sizeof att, "%u", dl ? dl->attempts : 0);
    snprintf(seq, sizeof seq, "%" PRIu64, dl ? dl->stream_seq : 0);
    const char *row[] = {id,
                         dwctl_time(e->stored_ms, ts, sizeof ts),
                         dl ? dl->room : "",
                         dl ? dl->reason : "",
                         att,
                         seq,
                         dl ? dl->msg_id : "",
                         dl ? dl->source : ""};
    if (dwctl_table_add(&lc->t, row)) {
        dwctl_err("out of memory");
        return DWCTL_FAIL;
    }
    return DWCTL_OK;
}

static int dlq_list(dwctl *ctl, const dlq_opts *o)
{
    static const char *const headers[] = {"ID",       "STORED", "ROOM",   "REASON",
                                          "ATTEMPTS", "SEQ",    "MSG_ID", "SOURCE"};
    list_ctx lc = {.json = o->json};
    if (o->n_ids) {
        dwctl_err("dlq list: takes no ids (use 'dwctl dlq show ID')");
        return DWCTL_USAGE;
    }
    if (!o->json && dwctl_table_init(&lc.t, 8, headers)) {
        dwctl_err("out of memory");
        return DWCTL_FAIL;
    }
    int rc = dwctl_connect(ctl);
    if (rc == DWCTL_OK) rc = for_each_entry(ctl, o, list_one, &lc);
    if (rc == DWCTL_OK && !o->json) dwctl_table_print(&lc.t, stdout);
    dwctl_table_free(&lc.t);
    return rc;
}

static char *base64(const uint8_t *data, size_t len)
{
    if (len > 64 * 1024 * 1024) return NULL;
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (out) EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

static int dlq_show(dwctl *ctl, const dlq_opts *o)
{
    if (o->n_ids != 1) {
        dwctl_err("dlq show: needs exactly one id (usage: dwctl dlq show ID [--json])");
        return DWCTL_USAGE;
    }
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;
    Dw__DlqRequest rq = DW__DLQ_REQUEST__INIT;
    uint64_t id = o->ids[0];
    rq.n_ids = 1;
    rq.ids = &id;
    Dw__DlqReply *r = NULL;
    int rc = dlq_call(ctl, DW_SUBJ_DLQ_SHOW, &rq, ctl->cfg.timeout_ms, &r);
    if (rc != DWCTL_OK) return rc;
    if (r->n_entries != 1) {
        dwctl_err("deadletter: no entry in the reply");
        dw__dlq_reply__free_unpacked(r, NULL);
        return DWCTL_FAIL;
    }
    const Dw__DlqEntry *e = r->entries[0];
    const Dw__DeadLetter *dl = e->letter;
    Dw__ChatMessage *chat = dl && dl->payload.len
                                ? dw__chat_message__unpack(NULL, dl->payload.len, dl->payload.data)
                                : NULL;
    char *b64 = dl ? base64(dl->payload.data, dl->payload.len) : NULL;

    if (o->json) {
        json_t *j = entry_json(e);
        if (j) json_object_set_new(j, "payloadBase64", b64 ? dwctl_json_str(b64) : json_null());
        if (j && chat) {
            /* The text is the client's; JSON-escaped by jansson. */
            char *text = strndup((const char *)chat->data.data, chat->data.len);
            /* clang-format off */
            json_object_set_new(j, "message", json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}",
                "id", dwctl_json_str(chat->id),
                "room", dwctl_json_str(chat->room),
                "userId", dwctl_json_str(chat->user_id),
                "connectionId", dwctl_json_str(chat->conn_id),
                "acceptedAt", time_json(chat->ts_ms),
                "data", dwctl_json_str(text ? text : "")));
            /* clang-format on */
            free(text);
        } else if (j) {
            json_object_set_new(j, "message", json_null());
        }
        rc = dwctl_json_print_line(j);
    } else {
        char b[1024], ts[32];
        printf("id:            %" PRIu64 "\n", e->id);
        printf("storedAt:      %s\n", dwctl_time(e->stored_ms, ts, sizeof ts));
        if (!dl) {
            printf("(not a valid dead letter: purge it)\n");
        } else {
            printf("room:          %s\n", dwctl_term_safe(dl->room, b, sizeof b));
            printf("subject:       %s\n", dwctl_term_safe(dl->subject, b, sizeof b));
            printf("streamSeq:     %" PRIu64 "\n", dl->stream_seq);
            printf("msgId:         %s\n", dwctl_term_safe(dl->msg_id, b, sizeof b));
            printf("reason:        %s\n", dwctl_term_safe(dl->reason, b, sizeof b));
            printf("source:        %s\n", dwctl_term_safe(dl->source, b, sizeof b));
            printf("attempts:      %u\n", dl->attempts);
            printf("firstFailure:  %s\n", dwctl_time(dl->first_failure_ms, ts, sizeof ts));
            printf("lastFailure:   %s\n", dwctl_time(dl->last_failure_ms, ts, sizeof ts));
            for (size_t i = 0; i < dl->n_attempt_ms; i++)
                printf("attempt %-5zu  %s\n", i + 1, dwctl_time(dl->attempt_ms[i], ts, sizeof ts));
            for (size_t i = 0; i < dl->n_failed_edges; i++)
                printf("failedEdge:    %s\n", dwctl_term_safe(dl->failed_edges[i], b, sizeof b));
            printf("payloadBytes:  %zu\n", dl->payload.len);
            if (chat) {
                char text[1024];
                size_t tl = chat->data.len < sizeof text - 1 ? chat->data.len : sizeof text - 1;
                memcpy(text, chat->data.data, tl);
                text[tl] = '\0';
                printf("message.id:    %s\n", dwctl_term_safe(chat->id, b, sizeof b));
                printf("message.user:  %s\n", dwctl_term_safe(chat->user_id, b, sizeof b));
                printf("message.conn:  %s\n", dwctl_term_safe(chat->conn_id, b, sizeof b));
                printf("message.at:    %s\n", dwctl_time(chat->ts_ms, ts, sizeof ts));
                printf("message.data:  %s%s\n", dwctl_term_safe(text, b, sizeof b),
                       chat->data.len > tl ? " ..." : "");
            } else if (dl->payload.len) {
                printf("payload:       (not a chat message) base64 %s\n", b64 ? b64 : "?");
            }
        }
    }
    free(b64);
    if (chat) dw__chat_message__free_unpacked(chat, NULL);
    dw__dlq_reply__free_unpacked(r, NULL);
    return rc;
}

/* --- replay / purge --- */

typedef struct id_list {
    uint64_t *v;
    size_t n, cap;
    dwctl_table *dry; /* replay --dry-run --all: the rows to print */
} id_list;

static int collect_id(const Dw__DlqEntry *e, void *arg)
{
    id_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        uint64_t *g = realloc(l->v, cap * sizeof *g);
        if (!g) {
            dwctl_err("out of memory");
            return DWCTL_FAIL;
        }
        l->v = g;
        l->cap = cap;
    }
    l->v[l->n++] = e->id;
    if (l->dry) {
        char id[24], seq[24];
        snprintf(id, sizeof id, "%" PRIu64, e->id);
        snprintf(seq, sizeof seq, "%" PRIu64, e->letter ? e->letter->stream_seq : 0);
        const char *row[] = {id, e->letter ? e->letter->room : "",
                             e->letter ? e->letter->reason : "", seq};
        if (dwctl_table_add(l->dry, row)) return DWCTL_FAIL;
    }
    return DWCTL_OK;
}

static int64_t mono_ms(void)
{
    return dw_mono_ns() / 1000000;
}

/* Send ids to replay / purge in batches (one id per request with a rate),
 * print failures on stderr and the totals on stdout. */
static int run_each(dwctl *ctl, const char *verb, const char *subj, const uint64_t *ids, size_t n,
                    double rate)
{
    size_t done = 0, skipped = 0, failed = 0;
    size_t batch = rate > 0 ? 1 : DLQ_BATCH;
    int64_t start = mono_ms();
    size_t i = 0;

    while (i < n) {
        if (rate > 0) {
            /* Entry i is due at i / rate seconds after the start. */
            int64_t due = start + (int64_t)((double)i * 1000.0 / rate);
            int64_t now = mono_ms();
            if (due > now) nats_Sleep(due - now);
        }
        size_t k = n - i < batch ? n - i : batch;
        Dw__DlqRequest rq = DW__DLQ_REQUEST__INIT;
        rq.n_ids = k;
        rq.ids = (uint64_t *)&ids[i];
        Dw__DlqReply *r = NULL;
        if (dlq_call(ctl, subj, &rq, ctl->cfg.timeout_ms, &r) != DWCTL_OK) {
            /* The service is gone or stuck: what was not answered counts as
             * failed. Whatever it did before it stopped is safe (an entry
             * goes only after its republish was acked), and a second run
             * finishes the rest. */
            failed += n - i;
            dwctl_err("dlq %s: stopped; %zu entr%s not %s (run the command again)", verb, n - i,
                      n - i == 1 ? "y" : "ies", !strcmp(verb, "replay") ? "replayed" : "purged");
            break;
        }
        for (size_t j = 0; j < r->n_results; j++) {
            const Dw__DlqResult *res = r->results[j];
            char b[512];
            switch (res->outcome) {
            case DW__DLQ_RESULT__OUTCOME__DONE: done++; break;
            case DW__DLQ_RESULT__OUTCOME__SKIPPED:
                skipped++;
                printf("skipped %" PRIu64 ": %s\n", res->id,
                       dwctl_term_safe(res->detail, b, sizeof b));
                break;
            default:
                failed++;
                dwctl_err("dlq %s: %" PRIu64 ": %s", verb, res->id,
                          dwctl_term_safe(res->detail, b, sizeof b));
            }
        }
        if (r->n_results != k) {
            failed += k - (r->n_results < k ? r->n_results : k);
            dwctl_err("dlq %s: the service answered %zu of %zu ids", verb, r->n_results, k);
        }
        dw__dlq_reply__free_unpacked(r, NULL);
        i += k;
    }
    printf("%s %zu, skipped %zu, failed %zu\n", !strcmp(verb, "replay") ? "replayed" : "purged",
           done, skipped, failed);
    return failed ? DWCTL_FAIL : DWCTL_OK;
}

static int check_selection(const char *verb, const dlq_opts *o)
{
    if (o->all && o->n_ids) {
        dwctl_err("dlq %s: give ids or --all, not both", verb);
        return DWCTL_USAGE;
    }
    if (!o->all && !o->n_ids) {
        dwctl_err("dlq %s: which entries? give ids or --all (see 'dwctl dlq --help')", verb);
        return DWCTL_USAGE;
    }
    if (!o->all && (o->room || o->reason || o->has_since)) {
        dwctl_err("dlq %s: --room, --reason and --since select entries with --all", verb);
        return DWCTL_USAGE;
    }
    return DWCTL_OK;
}

static int dlq_replay(dwctl *ctl, const dlq_opts *o)
{
    int rc = check_selection("replay", o);
    if (rc != DWCTL_OK) return rc;
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;

    static const char *const headers[] = {"ID", "ROOM", "REASON", "SEQ"};
    dwctl_table dry;
    id_list l = {0};
    memset(&dry, 0, sizeof dry);
    if (o->dry_run) {
        if (dwctl_table_init(&dry, 4, headers)) return DWCTL_FAIL;
        l.dry = &dry;
    }
    if (o->all) {
        rc = for_each_entry(ctl, o, collect_id, &l);
    } else {
        for (size_t i = 0; i < o->n_ids && rc == DWCTL_OK; i++) {
            if (!o->dry_run) {
                Dw__DlqEntry e = DW__DLQ_ENTRY__INIT;
                e.id = o->ids[i];
                rc = collect_id(&e, &l);
                continue;
            }
            /* Dry run by id: say which exist. */
            Dw__DlqRequest rq = DW__DLQ_REQUEST__INIT;
            uint64_t id = o->ids[i];
            rq.n_ids = 1;
            rq.ids = &id;
            Dw__DlqReply *r = NULL;
            if (dlq_call(ctl, DW_SUBJ_DLQ_SHOW, &rq, ctl->cfg.timeout_ms, &r) == DWCTL_OK) {
                if (r->n_entries) rc = collect_id(r->entries[0], &l);
                dw__dlq_reply__free_unpacked(r, NULL);
            } else {
                rc = DWCTL_FAIL;
            }
        }
    }
    if (rc == DWCTL_OK && o->dry_run) {
        dwctl_table_print(&dry, stdout);
        printf("dry run: %zu entr%s would be replayed\n", l.n, l.n == 1 ? "y" : "ies");
    } else if (rc == DWCTL_OK) {
        rc = run_each(ctl, "replay", DW_SUBJ_DLQ_REPLAY, l.v, l.n, o->rate);
    }
    dwctl_table_free(&dry);
    free(l.v);
    return rc;
}

static int dlq_purge(dwctl *ctl, const dlq_opts *o)
{
    int rc = check_selection("purge", o);
    if (rc != DWCTL_OK) return rc;
    if (o->all && !o->yes) {
        dwctl_err("dlq purge: --all removes entries for good: add --yes to confirm");
        return DWCTL_USAGE;
    }
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;
    id_list l = {0};
    if (o->all) {
        rc = for_each_entry(ctl, o, collect_id, &l);
    } else {
        l.v = o->ids;
        l.n = o->n_ids;
    }
    if (rc == DWCTL_OK) rc = run_each(ctl, "purge", DW_SUBJ_DLQ_PURGE, l.v, l.n, 0);
    if (o->all) free(l.v);
    return rc;
}

/* --- stats --- */

typedef struct reason_count {
    char *kind;
    size_t n;
} reason_count;

typedef struct stats_ctx {
    reason_count *v;
    size_t n, cap, total;
} stats_ctx;

static int count_one(const Dw__DlqEntry *e, void *arg)
{
    stats_ctx *sc = arg;
    const char *reason = e->letter && *e->letter->reason ? e->letter->reason : "invalid_record";
    size_t kl = strcspn(reason, ":");
    sc->total++;
    for (size_t i = 0; i < sc->n; i++)
        if (strlen(sc->v[i].kind) == kl && !strncmp(sc->v[i].kind, reason, kl)) {
            sc->v[i].n++;
            return DWCTL_OK;
        }
    if (sc->n == sc->cap) {
        size_t cap = sc->cap ? sc->cap * 2 : 8;
        reason_count *g = realloc(sc->v, cap * sizeof *g);
        if (!g) return DWCTL_FAIL;
        sc->v = g;
        sc->cap = cap;
    }
    if (!(sc->v[sc->n].kind = strndup(reason, kl))) return DWCTL_FAIL;
    sc->v[sc->n++].n = 1;
    return DWCTL_OK;
}

static int dlq_stats(dwctl *ctl, const dlq_opts *o)
{
    if (o->n_ids) {
        dwctl_err("dlq stats: takes no ids");
        return DWCTL_USAGE;
    }
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;
    int rc = DWCTL_OK;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, ctl->js, DW_STREAM_DLQ, NULL, &jerr);
    int64_t depth = s == NATS_OK ? (int64_t)si->State.Msgs : -1;
    if (s != NATS_OK) {
        dwctl_err("stream %s: %s", DW_STREAM_DLQ,
                  jerr == JSStreamNotFoundErr ? "does not exist (has the deadletter service run?)"
                                              : natsStatus_GetText(s));
        rc = DWCTL_FAIL;
    }
    dwctl_backlog bl;
    int have_bl = dwctl_dispatch_backlog(ctl, &bl) == NATS_OK && bl.partitions;
    if (!have_bl) {
        dwctl_err("no dispatcher partition consumer on %s (has a dispatcher run?)", DW_STREAM_MSG);
        rc = DWCTL_FAIL;
    }
    stats_ctx sc = {0};
    int by_reason = depth > 0 && for_each_entry(ctl, o, count_one, &sc) == DWCTL_OK;
    if (depth > 0 && !by_reason) rc = DWCTL_FAIL;

    if (o->json) {
        json_t *reasons = json_object();
        for (size_t i = 0; reasons && i < sc.n; i++)
            json_object_set_new(reasons, sc.v[i].kind, json_integer((json_int_t)sc.v[i].n));
        /* clang-format off */
        json_t *j = json_pack("{s:o, s:o, s:o}",
            "depth", depth >= 0 ? json_integer(depth) : json_null(),
            "byReason", by_reason ? reasons : (json_decref(reasons), json_null()),
            "dispatcher", have_bl ? json_pack("{s:I, s:I, s:I, s:I}",
                                         "partitions", (json_int_t)bl.partitions,
                                         "numPending", (json_int_t)bl.pending,
                                         "numAckPending", (json_int_t)bl.ack_pending,
                                         "numRedelivered", (json_int_t)bl.redelivered)
                             : json_null());
        /* clang-format on */
        if (dwctl_json_print_line(j) != DWCTL_OK) rc = DWCTL_FAIL;
    } else {
        if (depth >= 0)
            printf("DW_DLQ      %lld entr%s\n", (long long)depth, depth == 1 ? "y" : "ies");
        for (size_t i = 0; i < sc.n; i++)
            printf("  %-24s %zu\n", sc.v[i].kind, sc.v[i].n);
        if (have_bl)
            printf("dispatcher  pending %llu, ack pending %lld, redelivered %lld (%u "
                   "partitions)\n",
                   (unsigned long long)bl.pending, (long long)bl.ack_pending,
                   (long long)bl.redelivered, bl.partitions);
    }
    for (size_t i = 0; i < sc.n; i++)
        free(sc.v[i].kind);
    free(sc.v);
    jsStreamInfo_Destroy(si);
    return rc;
}

int cmd_dlq(dwctl *ctl, int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(dwctl *, const dlq_opts *);
        unsigned allowed;
    } subs[] = {
        {"list", dlq_list,
         ALLOW(OPT_ROOM) | ALLOW(OPT_REASON) | ALLOW(OPT_SINCE) | ALLOW(OPT_JSON)},
        {"show", dlq_show, ALLOW(OPT_JSON)},
        {"replay", dlq_replay,
         ALLOW(OPT_ROOM) | ALLOW(OPT_REASON) | ALLOW(OPT_SINCE) | ALLOW(OPT_ALL) |
             ALLOW(OPT_DRY_RUN) | ALLOW(OPT_RATE)},
        {"purge", dlq_purge,
         ALLOW(OPT_ROOM) | ALLOW(OPT_REASON) | ALLOW(OPT_SINCE) | ALLOW(OPT_ALL) | ALLOW(OPT_YES)},
        {"stats", dlq_stats, ALLOW(OPT_JSON)},
    };
    if (argc < 2) {
        dwctl_err("dlq: missing subcommand: list, show, replay, purge or stats (see 'dwctl dlq "
                  "--help')");
        return DWCTL_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        dlq_usage(stdout);
        return DWCTL_OK;
    }
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        if (strcmp(sub, subs[i].name)) continue;
        dlq_opts o;
        int help = 0;
        int rc = parse_opts(ctl, sub, argc - 1, argv + 1, subs[i].allowed, &o, &help);
        if (rc == DWCTL_OK && help)
            dlq_usage(stdout);
        else if (rc == DWCTL_OK)
            rc = subs[i].run(ctl, &o);
        free(o.ids);
        return rc;
    }
    char b[128];
    dwctl_err("dlq: unknown subcommand '%s': list, show, replay, purge or stats (see 'dwctl dlq "
              "--help')",
              dwctl_term_safe(sub, b, sizeof b));
    return DWCTL_USAGE;
}
