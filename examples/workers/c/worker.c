#include "worker.h"

#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int wk_stop;

static void on_signal(int sig)
{
    (void)sig;
    wk_stop = 1;
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

/* The password: the file's first line. */
static char *read_password(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "worker: cannot open the password file %s\n", path);
        return NULL;
    }
    char buf[1024];
    char *line = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!line) return NULL;
    buf[strcspn(buf, "\r\n")] = '\0';
    return strdup(buf);
}

natsStatus wk_connect(const char *name, natsConnection **nc, jsCtx **js)
{
    const char *url = env_or("DW_NATS_URL", "nats://127.0.0.1:4222");
    const char *user = env_or("DW_NATS_USER", "worker");
    /* `make up` in this checkout writes it there. */
    const char *pwfile = env_or("DW_NATS_PASSWORD_FILE", "var/secrets/nats_worker");
    const char *urls[16];
    char *list = strdup(url), *save = NULL, *pass = NULL;
    int n = 0;
    natsOptions *o = NULL;
    natsStatus s = NATS_NO_MEMORY;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    *nc = NULL;
    *js = NULL;
    if (!list) return NATS_NO_MEMORY;
    for (char *u = strtok_r(list, ", ", &save); u && n < 16; u = strtok_r(NULL, ", ", &save))
        urls[n++] = u;
    if (!(pass = read_password(pwfile))) {
        free(list);
        return NATS_INVALID_ARG;
    }
    char prefix[160];
    snprintf(prefix, sizeof prefix, "_INBOX.%s", user);
    if ((s = natsOptions_Create(&o)) == NATS_OK &&
        (s = natsOptions_SetServers(o, urls, n)) == NATS_OK &&
        (s = natsOptions_SetName(o, name)) == NATS_OK &&
        (s = natsOptions_SetUserInfo(o, user, pass)) == NATS_OK &&
        /* Replies come to _INBOX.<user>.>: the worker user may read no other. */
        (s = natsOptions_SetCustomInboxPrefix(o, prefix)) == NATS_OK &&
        (s = natsOptions_SetMaxReconnect(o, -1)) == NATS_OK &&
        (s = natsOptions_SetReconnectWait(o, 250)) == NATS_OK &&
        /* Keep trying while NATS is not up yet (this blocks until it is). */
        (s = natsOptions_SetRetryOnFailedConnect(o, true, NULL, NULL)) == NATS_OK)
        s = natsConnection_Connect(nc, o);
    if (s == NATS_OK) s = natsConnection_JetStream(js, *nc, NULL);
    if (s != NATS_OK)
        fprintf(stderr, "worker: cannot connect to %s as %s: %s (%s)\n", url, user,
                natsStatus_GetText(s), nats_GetLastError(NULL));
    natsOptions_Destroy(o);
    memset(pass, 0, strlen(pass));
    free(pass);
    free(list);
    return s;
}

/* ---- a durable pull consumer, read by hand ------------------------------
 *
 * nats.c 3.4's natsSubscription_Fetch mishandles deliveries that arrive
 * after an earlier fetch stopped waiting (it can overrun its array). So a
 * pull request is published here to $JS.API.CONSUMER.MSG.NEXT.<stream>.
 * <durable> with our own reply inbox, and what comes back is read from a
 * plain subscription: deliveries (reply subject $JS.ACK...) are handed out,
 * status messages (404/408: nothing more for this request) end a request. */

struct wk_consumer {
    natsConnection *nc;
    natsSubscription *sub;
    char inbox[160];
    char next[256];
    bool waiting;    /* a pull request is open at the server */
    int left;        /* deliveries it may still bring */
    int64_t open_ms; /* until when it is (monotonic) */
};

#define PULL_EXPIRES_MS 5000
#define PULL_BATCH 16

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

natsStatus wk_consumer_open(wk_consumer **out, natsConnection *nc, jsCtx *js, const char *stream,
                            const char *durable, const char *filter, bool deliver_new)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    *out = NULL;
    natsStatus s = js_GetConsumerInfo(&ci, js, stream, durable, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = durable;
        cc.FilterSubject = filter;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = 30LL * 1000000000LL;
        cc.MaxDeliver = 20;
        cc.DeliverPolicy = deliver_new ? js_DeliverNew : js_DeliverAll;
        jerr = 0;
        s = js_AddConsumer(&ci, js, stream, &cc, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        fprintf(stderr, "worker: consumer %s on %s: %s (JetStream error %d)\n", durable, stream,
                natsStatus_GetText(s), (int)jerr);
        return s;
    }
    wk_consumer *c = calloc(1, sizeof *c);
    if (!c) return NATS_NO_MEMORY;
    c->nc = nc;
    natsInbox *ib = NULL;
    const char *user = env_or("DW_NATS_USER", "worker");
    if (natsInbox_Create(&ib) != NATS_OK) {
        free(c);
        return NATS_NO_MEMORY;
    }
    /* natsInbox_Create ignores the custom prefix: "_INBOX.<nuid>". */
    snprintf(c->inbox, sizeof c->inbox, "_INBOX.%s.%s", user, strchr(ib, '.') + 1);
    natsInbox_Destroy(ib);
    snprintf(c->next, sizeof c->next, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream, durable);
    s = natsConnection_SubscribeSync(&c->sub, nc, c->inbox);
    if (s != NATS_OK) {
        free(c);
        return s;
    }
    *out = c;
    return NATS_OK;
}

static natsStatus pull(wk_consumer *c)
{
    char body[64];
    int n = snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%lld}", PULL_BATCH,
                     (long long)PULL_EXPIRES_MS * 1000000LL);
    natsStatus s = natsConnection_PublishRequest(c->nc, c->next, c->inbox, body, n);
    if (s == NATS_OK) {
        c->waiting = true;
        c->left = PULL_BATCH;
        c->open_ms = now_ms() + PULL_EXPIRES_MS + 1000;
    }
    return s;
}

natsStatus wk_consumer_next(wk_consumer *c, natsMsg **msg, int64_t wait_ms)
{
    int64_t deadline = now_ms() + wait_ms;
    *msg = NULL;
    for (;;) {
        int64_t now = now_ms();
        /* A request the server answered in full or let expire without a
         * word (a reconnect in between) is over: ask again. */
        if (c->waiting && now > c->open_ms) c->waiting = false;
        if (!c->waiting && pull(c) != NATS_OK) return NATS_TIMEOUT;
        if (now >= deadline) return NATS_TIMEOUT;
        natsMsg *m = NULL;
        natsStatus s = natsSubscription_NextMsg(&m, c->sub, deadline - now);
        if (s == NATS_TIMEOUT) return s;
        if (s != NATS_OK) {
            c->waiting = false;
            return NATS_TIMEOUT;
        }
        const char *reply = natsMsg_GetReply(m);
        if (reply && !strncmp(reply, "$JS.ACK.", 8)) {
            if (--c->left <= 0) c->waiting = false; /* the request is answered in full */
            *msg = m;
            return NATS_OK;
        }
        /* A status: 404 / 408 end the request, 100 is a heartbeat, others
         * (409: the consumer was deleted...) are worth a line. */
        const char *code = NULL, *desc = NULL;
        natsMsgHeader_Get(m, "Status", &code);
        natsMsgHeader_Get(m, "Description", &desc);
        if (code && strcmp(code, "100")) {
            c->waiting = false;
            if (strcmp(code, "404") && strcmp(code, "408"))
                fprintf(stderr, "worker: pull request refused: %s %s\n", code, desc ? desc : "");
        }
        natsMsg_Destroy(m);
    }
}

void wk_consumer_close(wk_consumer *c)
{
    if (!c) return;
    natsSubscription_Unsubscribe(c->sub);
    natsSubscription_Destroy(c->sub);
    free(c);
}

natsStatus wk_ack(natsConnection *nc, natsMsg *msg)
{
    return natsConnection_PublishString(nc, natsMsg_GetReply(msg), "+ACK");
}

natsStatus wk_nak(natsConnection *nc, natsMsg *msg, int64_t delay_ms)
{
    char body[64];
    snprintf(body, sizeof body, "-NAK {\"delay\":%lld}", (long long)delay_ms * 1000000LL);
    return natsConnection_PublishString(nc, natsMsg_GetReply(msg), body);
}

uint64_t wk_stream_seq(natsMsg *msg)
{
    jsMsgMetaData *meta = NULL;
    uint64_t seq = 0;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) seq = meta->Sequence.Stream;
    jsMsgMetaData_Destroy(meta);
    return seq;
}

int wk_room_publish(natsConnection *nc, const char *room, const char *data, const char *from,
                    const char *key, uint64_t *seq, char *err, size_t errlen)
{
    json_t *req = json_pack("{s:s, s:s, s:s}", "room", room, "data", data, "from", from);
    if (req && key) json_object_set_new(req, "idempotencyKey", json_string(key));
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body) {
        snprintf(err, errlen, "cannot build the request (UTF-8 text only)");
        return -1;
    }
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_RequestString(&reply, nc, "dw.api.rooms.publish", body, 5000);
    free(body);
    if (s != NATS_OK) {
        snprintf(err, errlen, "dw.api.rooms.publish: %s",
                 s == NATS_NO_RESPONDERS ? "no api service answers" : natsStatus_GetText(s));
        return -1;
    }
    json_t *ans = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
    natsMsg_Destroy(reply);
    json_t *sq = ans ? json_object_get(ans, "seq") : NULL;
    int rc = 0;
    if (json_is_integer(sq)) {
        if (seq) *seq = (uint64_t)json_integer_value(sq);
    } else {
        const char *why = ans ? json_string_value(json_object_get(ans, "error")) : NULL;
        snprintf(err, errlen, "refused: %s", why ? why : "an answer without seq");
        rc = -1;
    }
    json_decref(ans);
    return rc;
}
