/* dw-audit: an async route worker for DynamoWave (docs/integrations.md).
 *
 * Serves the route "audit" (DW_ROUTES=audit:async on the edge): every frame
 * a client sends with "action":"audit" is stored in the stream DW_ROUTE
 * (dw.route.audit) before the client is told; this worker reads it through
 * the durable consumer route-audit (the edge makes it), appends one JSON
 * line per frame to a file (or stdout), and acks it. A frame that is not
 * acked comes again (exponential backoff); after DW_ROUTE_MAX_DELIVER
 * attempts it goes to DW_DLQ (`dwctl dlq list`, `dwctl dlq replay`).
 * Several copies share the consumer and split the work.
 *
 *   dw-audit                          (after `make up`, from the repository root)
 *   dw-audit --file audit.log         append there instead of stdout
 *   dw-audit --fail                   never ack (nak): watch the redeliveries, then DW_DLQ
 *   dw-audit --exit-on-receive        exit at the first frame, before acking (a crash)
 *   dw-audit --hold-ms N              wait N ms before writing and acking (a slow job)
 *
 * Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.h),
 *   DW_AUDIT_ACTION  the route [audit] (consumer route-<action>) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker.h"

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static void usage(void)
{
    printf("Usage: dw-audit [--file PATH] [--fail] [--exit-on-receive] [--hold-ms N] [--help]\n"
           "\n"
           "An async route worker: reads DW_ROUTE through the consumer route-<action>,\n"
           "appends each frame as one JSON line to PATH (default: stdout), acks it.\n"
           "\n"
           "  --file PATH         append the records to PATH\n"
           "  --fail              nak every frame instead (redeliveries, then DW_DLQ)\n"
           "  --exit-on-receive   exit(1) at the first frame, before acking it\n"
           "  --hold-ms N         wait N ms before recording and acking each frame\n"
           "\n"
           "Environment:\n"
           "  DW_NATS_URL            NATS URLs, comma-separated [nats://127.0.0.1:4222]\n"
           "  DW_NATS_USER           NATS user [worker]\n"
           "  DW_NATS_PASSWORD_FILE  its password [var/secrets/nats_worker, from make up]\n"
           "  DW_AUDIT_ACTION        the route's action [audit]\n");
}

/* {"seq","deliveries","action","connectionId","requestId","user","body"}
 * as one line; 0 when written (and flushed). */
static int record(FILE *out, natsMsg *m, uint64_t seq, uint64_t deliveries)
{
    json_t *rq = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    json_t *line = json_pack(
        "{s:I, s:I, s:O?, s:O?, s:O?, s:O?, s:O?}", "seq", (json_int_t)seq, "deliveries",
        (json_int_t)deliveries, "action", json_object_get(rq, "action"), "connectionId",
        json_object_get(rq, "connectionId"), "requestId", json_object_get(rq, "requestId"), "user",
        json_object_get(json_object_get(rq, "identity"), "user"), "body",
        json_object_get(rq, "body"));
    char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
    int rc = text && fprintf(out, "%s\n", text) > 0 && fflush(out) == 0 ? 0 : -1;
    /* On disk before the ack: a crash after it cannot lose the record. */
    if (!rc && out != stdout) rc = fsync(fileno(out));
    free(text);
    json_decref(line);
    json_decref(rq);
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int fail = 0, exit_on_receive = 0;
    int64_t hold_ms = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            return 0;
        } else if (!strcmp(argv[i], "--file") && i + 1 < argc) {
            path = argv[++i];
        } else if (!strcmp(argv[i], "--fail")) {
            fail = 1;
        } else if (!strcmp(argv[i], "--exit-on-receive")) {
            exit_on_receive = 1;
        } else if (!strcmp(argv[i], "--hold-ms") && i + 1 < argc) {
            hold_ms = strtoll(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "audit: unknown argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    const char *action = env_or("DW_AUDIT_ACTION", "audit");
    char durable[128], filter[128];
    snprintf(durable, sizeof durable, "route-%s", action);
    snprintf(filter, sizeof filter, "dw.route.%s", action);
    FILE *out = stdout;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    wk_consumer *c = NULL;
    int rc = 1;

    if (path && !(out = fopen(path, "a"))) {
        perror(path);
        return 1;
    }
    if (wk_connect("dw-audit", &nc, &js) != NATS_OK) goto done;
    /* The edge makes route-<action> at its start (the worker user may not):
     * wait for it rather than try to create it. */
    for (int said = 0; !wk_stop; said = 1) {
        jsConsumerInfo *ci = NULL;
        natsStatus s = js_GetConsumerInfo(&ci, js, "DW_ROUTE", durable, NULL, NULL);
        jsConsumerInfo_Destroy(ci);
        if (s == NATS_OK) break;
        if (!said)
            fprintf(stderr,
                    "audit: waiting for the consumer %s on DW_ROUTE (an edge with "
                    "DW_ROUTES=%s:async makes it)\n",
                    durable, action);
        nats_Sleep(1000);
    }
    if (wk_stop || wk_consumer_open(&c, nc, js, "DW_ROUTE", durable, filter, false) != NATS_OK)
        goto done;
    fprintf(stderr, "audit: reading DW_ROUTE (consumer %s)\n", durable);
    while (!wk_stop) {
        natsMsg *m = NULL;
        if (wk_consumer_next(c, &m, 1000) != NATS_OK) continue;
        jsMsgMetaData *meta = NULL;
        uint64_t seq = 0, deliveries = 0;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            seq = meta->Sequence.Stream;
            deliveries = meta->NumDelivered;
        }
        jsMsgMetaData_Destroy(meta);
        fprintf(stderr, "audit: received seq %llu (delivery %llu)\n", (unsigned long long)seq,
                (unsigned long long)deliveries);
        if (exit_on_receive) {
            fprintf(stderr, "audit: --exit-on-receive: exiting without an ack\n");
            _exit(1);
        }
        if (hold_ms > 0) nats_Sleep(hold_ms);
        if (fail) {
            fprintf(stderr, "audit: --fail: nak seq %llu\n", (unsigned long long)seq);
            wk_nak(nc, m, 0);
        } else if (record(out, m, seq, deliveries)) {
            fprintf(stderr, "audit: seq %llu not recorded; it comes again\n",
                    (unsigned long long)seq);
            wk_nak(nc, m, 1000);
        } else {
            wk_ack(nc, m);
            fprintf(stderr, "audit: acked seq %llu\n", (unsigned long long)seq);
        }
        natsMsg_Destroy(m);
    }
    natsConnection_FlushTimeout(nc, 1000); /* the last acks */
    rc = 0;
done:
    wk_consumer_close(c);
    if (out && out != stdout) fclose(out);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
