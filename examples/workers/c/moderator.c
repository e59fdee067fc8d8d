/* dw-moderator: a moderation bot for DynamoWave (docs/integrations.md).
 *
 * It reads the lifecycle events (stream DW_EVENTS) with a durable consumer
 * of its own, and greets everyone who joins a room with a message from
 * "moderator", through the management API's room publish. A join is acked
 * only once its greeting is stored; the greeting's idempotency key is the
 * event's stream sequence, so a redelivery (the bot crashed after
 * publishing, before acking) is stored once. Several copies share the
 * consumer and split the work.
 *
 *   dw-moderator            (after `make up`, from the repository root)
 *
 * Environment: DW_NATS_URL, DW_NATS_USER, DW_NATS_PASSWORD_FILE (worker.h),
 *   DW_BOT_CONSUMER  the durable consumer's name [moderator]
 *   DW_BOT_FROM      the sender members see [moderator]
 *   DW_BOT_GREETING  the text; {user} and {room} are replaced
 *                    [Welcome to {room}, {user}!]
 *   DW_BOT_ROOMS     comma-separated rooms to greet in (empty: all but lobby) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static void usage(void)
{
    printf("Usage: dw-moderator [--help]\n"
           "\n"
           "Greets everyone who joins a room of DynamoWave: reads DW_EVENTS (dw.events.join)\n"
           "with its own durable consumer and publishes through dw.api.rooms.publish.\n"
           "\n"
           "Environment:\n"
           "  DW_NATS_URL            NATS URLs, comma-separated [nats://127.0.0.1:4222]\n"
           "  DW_NATS_USER           NATS user [worker]\n"
           "  DW_NATS_PASSWORD_FILE  its password [var/secrets/nats_worker, from make up]\n"
           "  DW_BOT_CONSUMER        durable consumer on DW_EVENTS [moderator]\n"
           "  DW_BOT_FROM            sender shown to members [moderator]\n"
           "  DW_BOT_GREETING        text; {user} and {room} are replaced\n"
           "                         [Welcome to {room}, {user}!]\n"
           "  DW_BOT_ROOMS           rooms to greet in, comma-separated [all but lobby]\n");
}

/* The greeting with {user} and {room} replaced (malloc'd). */
static char *greeting(const char *tmpl, const char *user, const char *room)
{
    size_t cap = strlen(tmpl) + 1, n = 0;
    for (const char *p = tmpl; (p = strchr(p, '{')); p++)
        cap += strlen(user) + strlen(room);
    char *out = malloc(cap);
    if (!out) return NULL;
    for (const char *p = tmpl; *p;) {
        const char *with = !strncmp(p, "{user}", 6) ? user : !strncmp(p, "{room}", 6) ? room : NULL;
        if (with) {
            memcpy(out + n, with, strlen(with));
            n += strlen(with);
            p += 6;
        } else {
            out[n++] = *p++;
        }
    }
    out[n] = '\0';
    return out;
}

/* Is room one to greet in? rooms: comma-separated, or "" for all but lobby
 * (where every plain client is: greeting each of those is noise). */
static int wanted(const char *rooms, const char *room)
{
    if (!*rooms) return strcmp(room, "lobby") != 0;
    size_t n = strlen(room);
    for (const char *p = rooms; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, room, n)) return 1;
        p += len + (end ? 1 : 0);
    }
    return 0;
}

/* One delivery: 1 done (ack), 0 try again later (nak). */
static int handle(natsConnection *nc, natsMsg *m, const char *from, const char *tmpl,
                  const char *rooms)
{
    json_t *ev = json_loadb(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), 0, NULL);
    const char *type = ev ? json_string_value(json_object_get(ev, "type")) : NULL;
    const char *room = ev ? json_string_value(json_object_get(ev, "room")) : NULL;
    const char *user = ev ? json_string_value(json_object_get(ev, "user")) : NULL;
    int rc = 1;
    if (!type || strcmp(type, "join") || !room || !wanted(rooms, room)) goto done;
    char *text = greeting(tmpl, user ? user : "someone", room);
    char key[64], err[256];
    uint64_t seq = 0;
    /* The event's position is the idempotency key: one greeting per join. */
    snprintf(key, sizeof key, "greet-%llu", (unsigned long long)wk_stream_seq(m));
    if (!text) {
        rc = 0;
    } else if (wk_room_publish(nc, room, text, from, key, &seq, err, sizeof err)) {
        fprintf(stderr, "moderator: greeting %s in %s not stored: %s\n", user ? user : "?", room,
                err);
        rc = 0;
    } else {
        printf("moderator: greeted %s in %s (seq %llu)\n", user ? user : "?", room,
               (unsigned long long)seq);
        fflush(stdout);
    }
    free(text);
done:
    json_decref(ev);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage();
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "moderator: no arguments (see --help): the settings are DW_* variables\n");
        return 2;
    }
    const char *durable = env_or("DW_BOT_CONSUMER", "moderator");
    const char *from = env_or("DW_BOT_FROM", "moderator");
    const char *tmpl = env_or("DW_BOT_GREETING", "Welcome to {room}, {user}!");
    const char *rooms = env_or("DW_BOT_ROOMS", "");
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    wk_consumer *c = NULL;
    int rc = 1;

    if (wk_connect("dw-moderator", &nc, &js) != NATS_OK) goto done;
    /* Only joins, and only those from the bot's first start on. */
    if (wk_consumer_open(&c, nc, js, "DW_EVENTS", durable, "dw.events.join", true) != NATS_OK)
        goto done;
    printf("moderator: reading DW_EVENTS (consumer %s)\n", durable);
    fflush(stdout);
    while (!wk_stop) {
        natsMsg *m = NULL;
        if (wk_consumer_next(c, &m, 1000) != NATS_OK) continue;
        if (handle(nc, m, from, tmpl, rooms))
            wk_ack(nc, m);
        else
            wk_nak(nc, m, 2000);
        natsMsg_Destroy(m);
    }
    natsConnection_FlushTimeout(nc, 1000); /* the last acks */
    rc = 0;
done:
    wk_consumer_close(c);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
