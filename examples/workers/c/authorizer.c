/* dw-authorizer: a connect authorizer for DynamoWave (docs/integrations.md).
 *
 * The edge, started with DW_AUTHORIZER=<subject>, asks before it accepts a
 * WebSocket upgrade: a NATS request with {"sourceIp", "userAgent", "path",
 * "query": {...}, "headers": {...}}. This one looks for a token in the query
 * (?token=...) or in "Authorization: Bearer ..." and looks it up in a file;
 * it answers {"allow": true, "user", "rooms", "context"} for a known token,
 * {"allow": false, "status": 401} when there is none and 403 for an unknown
 * one. Copies share the work (queue group "authorizer").
 *
 *   DW_AUTHZ_TOKENS_FILE=examples/workers/authz-tokens.txt dw-authorizer
 *
 * The tokens file, one per line ('#' starts a comment):
 *   <token> <user> [<rooms, comma-separated> | *] [<delay in ms>]
 * rooms "*" (or none) lets the user join any room; a delay answers that
 * token late, from a thread of its own (a slow identity provider: the edge
 * keeps serving everyone else meanwhile, and refuses with 503 once
 * DW_AUTHORIZER_TIMEOUT_MS has passed).
 *
 * Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.h),
 *   DW_AUTHORIZER         the subject to serve [dw.authz.connect]
 *   DW_AUTHZ_TOKENS_FILE  the tokens [examples/workers/authz-tokens.txt] */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "worker.h"

typedef struct token {
    char *token, *user, *rooms; /* rooms: NULL for any */
    long delay_ms;
} token;

static token *tokens;
static size_t ntokens;
static natsConnection *conn;

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static void usage(void)
{
    printf("Usage: dw-authorizer [--help]\n"
           "\n"
           "A connect authorizer for DynamoWave: answers the edge's DW_AUTHORIZER requests,\n"
           "allowing tokens listed in a file (?token=... or Authorization: Bearer ...).\n"
           "\n"
           "Environment:\n"
           "  DW_NATS_URL            NATS URLs, comma-separated [nats://127.0.0.1:4222]\n"
           "  DW_NATS_USER           NATS user [worker]\n"
           "  DW_NATS_PASSWORD_FILE  its password [var/secrets/nats_worker, from make up]\n"
           "  DW_AUTHORIZER          subject to serve, under dw.authz. [dw.authz.connect]\n"
           "  DW_AUTHZ_TOKENS_FILE   lines of: token user [rooms|*] [delay_ms]\n"
           "                         [examples/workers/authz-tokens.txt]\n");
}

static int load_tokens(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "authorizer: cannot read %s (DW_AUTHZ_TOKENS_FILE)\n", path);
        return -1;
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *save = NULL, *t = strtok_r(line, " \t\r\n", &save);
        char *u = t ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        if (!t) continue;
        if (!u) {
            fprintf(stderr, "authorizer: %s: a token without a user\n", path);
            fclose(f);
            return -1;
        }
        char *r = strtok_r(NULL, " \t\r\n", &save);
        char *d = r ? strtok_r(NULL, " \t\r\n", &save) : NULL;
        token *n = realloc(tokens, (ntokens + 1) * sizeof *n);
        if (!n) break;
        tokens = n;
        tokens[ntokens].token = strdup(t);
        tokens[ntokens].user = strdup(u);
        tokens[ntokens].rooms = r && strcmp(r, "*") ? strdup(r) : NULL;
        tokens[ntokens].delay_ms = d ? strtol(d, NULL, 10) : 0;
        ntokens++;
    }
    fclose(f);
    return 0;
}

static const token *lookup(const char *t)
{
    for (size_t i = 0; t && i < ntokens; i++)
        if (!strcmp(tokens[i].token, t)) return &tokens[i];
    return NULL;
}

/* The answer to one request (malloc'd JSON), and how long to wait with it. */
static char *decide(const char *req, int len, long *delay_ms, char *who, size_t wholen)
{
    json_t *rq = json_loadb(req, (size_t)len, 0, NULL);
    json_t *query = json_object_get(rq, "query"), *headers = json_object_get(rq, "headers");
    const char *t = json_string_value(json_object_get(query, "token")), *source = "query";
    const char *auth = json_string_value(json_object_get(headers, "authorization"));
    if (!t && auth && !strncmp(auth, "Bearer ", 7)) {
        t = auth + 7;
        source = "header";
    }
    const token *k = lookup(t);
    json_t *reply;
    *delay_ms = 0;
    if (!t) {
        reply = json_pack("{s:b, s:i}", "allow", 0, "status", 401);
        snprintf(who, wholen, "(no token): 401");
    } else if (!k) {
        reply = json_pack("{s:b, s:i}", "allow", 0, "status", 403);
        snprintf(who, wholen, "(unknown token): 403");
    } else {
        const char *ip = json_string_value(json_object_get(rq, "sourceIp"));
        reply = json_pack("{s:b, s:s, s:{s:s, s:s, s:s}}", "allow", 1, "user", k->user, "context",
                          "tokenSource", source, "sourceIp", ip ? ip : "", "authorizer",
                          "dw-authorizer");
        if (reply && k->rooms) {
            json_t *rooms = json_array();
            char *copy = strdup(k->rooms), *save = NULL;
            for (char *r = copy ? strtok_r(copy, ",", &save) : NULL; r;
                 r = strtok_r(NULL, ",", &save))
                json_array_append_new(rooms, json_string(r));
            free(copy);
            json_object_set_new(reply, "rooms", rooms);
        }
        *delay_ms = k->delay_ms;
        snprintf(who, wholen, "%s: allowed", k->user);
    }
    char *out = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
    json_decref(reply);
    json_decref(rq);
    return out;
}

typedef struct late {
    char *reply_to, *answer;
    long delay_ms;
} late;

static void *answer_late(void *arg)
{
    late *l = arg;
    struct timespec ts = {l->delay_ms / 1000, (l->delay_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    natsConnection_PublishString(conn, l->reply_to, l->answer);
    free(l->reply_to);
    free(l->answer);
    free(l);
    return NULL;
}

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    (void)closure;
    const char *reply_to = natsMsg_GetReply(msg);
    long delay = 0;
    char who[200];
    char *answer =
        decide(natsMsg_GetData(msg), natsMsg_GetDataLength(msg), &delay, who, sizeof who);
    if (reply_to && answer) {
        printf("authorizer: %s%s\n", who, delay ? " (late)" : "");
        fflush(stdout);
        late *l = delay ? calloc(1, sizeof *l) : NULL;
        pthread_t th;
        if (l && (l->reply_to = strdup(reply_to)) && (l->answer = strdup(answer))) {
            l->delay_ms = delay;
            /* Late answers come from threads of their own: the others are
             * not held up behind them. */
            if (!pthread_create(&th, NULL, answer_late, l)) {
                pthread_detach(th);
                l = NULL;
                delay = -1;
            }
        }
        if (l) {
            free(l->reply_to);
            free(l->answer);
            free(l);
        }
        if (delay >= 0) natsConnection_PublishString(nc, reply_to, answer);
    }
    free(answer);
    natsMsg_Destroy(msg);
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage();
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "authorizer: no arguments (see --help): the settings are DW_* variables\n");
        return 2;
    }
    const char *subject = env_or("DW_AUTHORIZER", "dw.authz.connect");
    if (load_tokens(env_or("DW_AUTHZ_TOKENS_FILE", "examples/workers/authz-tokens.txt"))) return 2;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    int rc = 1;
    if (wk_connect("dw-authorizer", &conn, &js) != NATS_OK) goto done;
    if (natsConnection_QueueSubscribe(&sub, conn, subject, "authorizer", on_request, NULL) !=
            NATS_OK ||
        natsConnection_FlushTimeout(conn, 5000) != NATS_OK) {
        fprintf(stderr, "authorizer: cannot serve %s (is the worker user allowed to?)\n", subject);
        goto done;
    }
    printf("authorizer: serving %s (%zu tokens)\n", subject, ntokens);
    fflush(stdout);
    while (!wk_stop) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    rc = 0;
done:
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(conn);
    nats_Close();
    for (size_t i = 0; i < ntokens; i++) {
        free(tokens[i].token);
        free(tokens[i].user);
        free(tokens[i].rooms);
    }
    free(tokens);
    return rc;
}
