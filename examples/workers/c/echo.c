/* dw-echo: a sync route worker for DynamoWave (docs/integrations.md).
 *
 * Serves the route "echo" (DW_ROUTES=echo:sync on the edge): every frame a
 * client sends with "action":"echo" comes as a NATS request on
 * dw.rpc.echo; the answer {"reply": ...} goes back to that client as one
 * frame. It echoes the frame's "data" (or, without one, the whole frame).
 * Run several: they share the work (queue group "echo").
 *
 *   dw-echo                      (after `make up`, from the repository root)
 *   dw-echo --delay-ms 3000      answer late (try DW_ROUTE_TIMEOUT_MS)
 *   dw-echo --error              answer {"error": ...} (the client gets an error frame)
 *   dw-echo --request            answer with the whole request (what a worker gets)
 *
 * Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.h),
 *   DW_ECHO_ACTION  the route [echo]
 *   DW_ECHO_QUEUE   the queue group [the action] */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

static int64_t delay_ms;
static int answer_error, answer_request;

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static void usage(void)
{
    printf("Usage: dw-echo [--delay-ms N] [--error] [--request] [--help]\n"
           "\n"
           "A sync route worker: answers each request on dw.rpc.<action> with\n"
           "{\"reply\": <the client frame's data, or the whole frame>}.\n"
           "\n"
           "  --delay-ms N   wait N ms before answering (a slow worker)\n"
           "  --error        answer {\"error\": \"...\"} instead\n"
           "  --request      answer with the whole request (identity and all)\n"
           "\n"
           "Environment:\n"
           "  DW_NATS_URL            NATS URLs, comma-separated [nats://127.0.0.1:4222]\n"
           "  DW_NATS_USER           NATS user [worker]\n"
           "  DW_NATS_PASSWORD_FILE  its password [var/secrets/nats_worker, from make up]\n"
           "  DW_ECHO_ACTION         the route's action [echo]\n"
           "  DW_ECHO_QUEUE          queue group shared by the copies [the action]\n");
}

/* One request: {"action","connectionId","requestId","identity","body"}. */
static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    const char *reply = natsMsg_GetReply(msg);
    json_t *rq = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *body = json_object_get(rq, "body");
    json_t *data = json_object_get(body, "data");
    json_t *answer;
    if (answer_error)
        answer = json_pack("{s:s}", "error", "echo was started with --error");
    else if (answer_request)
        answer = json_pack("{s:O}", "reply", rq ? rq : json_null());
    else
        answer = json_pack("{s:O}", "reply", data ? data : body ? body : json_null());
    char *text = answer ? json_dumps(answer, JSON_COMPACT) : NULL;
    if (delay_ms > 0) nats_Sleep(delay_ms);
    if (reply && text) natsConnection_PublishString(nc, reply, text);
    const char *rid = json_string_value(json_object_get(rq, "requestId"));
    const char *conn = json_string_value(json_object_get(rq, "connectionId"));
    printf("echo: request %s from %s answered\n", rid ? rid : "?", conn ? conn : "?");
    fflush(stdout);
    free(text);
    json_decref(answer);
    json_decref(rq);
    natsMsg_Destroy(msg);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            return 0;
        } else if (!strcmp(argv[i], "--delay-ms") && i + 1 < argc) {
            delay_ms = strtoll(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--error")) {
            answer_error = 1;
        } else if (!strcmp(argv[i], "--request")) {
            answer_request = 1;
        } else {
            fprintf(stderr, "echo: unknown argument %s (see --help)\n", argv[i]);
            return 2;
        }
    }
    const char *action = env_or("DW_ECHO_ACTION", "echo");
    const char *queue = env_or("DW_ECHO_QUEUE", action);
    char subject[128];
    snprintf(subject, sizeof subject, "dw.rpc.%s", action);
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    int rc = 1;

    if (wk_connect("dw-echo", &nc, &js) != NATS_OK) goto done;
    natsStatus s = natsConnection_QueueSubscribe(&sub, nc, subject, queue, on_request, NULL);
    /* Subscribed at the server before we say so. */
    if (s == NATS_OK) s = natsConnection_Flush(nc);
    if (s != NATS_OK) {
        fprintf(stderr, "echo: cannot subscribe to %s: %s (%s)\n", subject, natsStatus_GetText(s),
                nats_GetLastError(NULL));
        goto done;
    }
    printf("echo: serving %s (queue %s)\n", subject, queue);
    fflush(stdout);
    while (!wk_stop)
        nats_Sleep(100);
    rc = 0;
done:
    if (sub) natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
