/* dispatcher: the SendMessage handler. Pulls accepted chat messages from
 * DW_MSG and hands each to every edge holding members of its room. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dispatch.h"
#include "dw/bus.h"
#include "dw/log.h"
#include "dw/service.h"
#include "dw/dlq_streams.h"

typedef struct dispatcher_config {
    dw_service_cfg svc; /* NATS_URL, STATUS_*, LOG_LEVEL, SHUTDOWN_TIMEOUT_MS */
    int64_t fetch_batch;
    int64_t fetch_wait_ms;
    int64_t ack_wait_ms;
    int64_t max_deliver;
    int64_t max_held;
    int64_t registry_timeout_ms;
    int64_t edge_timeout_ms;
    int64_t retry_base_ms;
    int64_t retry_max_ms;
    int64_t absent_retry_ms;
    int64_t edge_dead_ms;
    int64_t lease_ttl_ms;
    int conn_barrier;
} dispatcher_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(dispatcher_config, field), def, min, max, help                        \
    }

static const dw_cfg_field fields[] = {
    DW_SERVICE_ROW_NATS_URL(dispatcher_config, svc),
    F("FETCH_BATCH", DW_CFG_INT, fetch_batch, "256", 1, 4096, "messages per pull request"),
    F("FETCH_WAIT_MS", DW_CFG_INT, fetch_wait_ms, "500", 20, 60000,
      "how long an idle pull request waits at the server (a message never waits for the batch)"),
    F("ACK_WAIT_MS", DW_CFG_INT, ack_wait_ms, "30000", 1000, 3600000,
      "partition consumers' AckWait; messages held longer send in-progress acks, so JetStream "
      "never hands them out again while a dispatcher holds them"),
    F("MAX_DELIVER", DW_CFG_INT, max_deliver, "6", 1, 1000,
      "failed delivery attempts per message and edge (or registry lookups per message) before "
      "the message is dead-lettered with the reason"),
    F("MAX_HELD", DW_CFG_INT, max_held, "64000", 256, 10000000,
      "messages fetched and not yet settled, at most, over all partitions (also each partition "
      "consumer's MaxAckPending share)"),
    F("REGISTRY_TIMEOUT_MS", DW_CFG_INT, registry_timeout_ms, "2000", 10, 60000,
      "wait this long for the registry's room answers"),
    F("EDGE_TIMEOUT_MS", DW_CFG_INT, edge_timeout_ms, "2000", 10, 60000,
      "wait this long for an edge's delivery reply"),
    F("RETRY_BASE_MS", DW_CFG_INT, retry_base_ms, "250", 0, 3600000,
      "retry after this delay, doubling with every further failed attempt"),
    F("RETRY_MAX_MS", DW_CFG_INT, retry_max_ms, "30000", 1, 86400000,
      "the longest delay between two attempts"),
    F("ABSENT_RETRY_MS", DW_CFG_INT, absent_retry_ms, "250", 10, 60000,
      "while an edge has no responders (restarting, reconnecting to NATS), retry at most this "
      "far apart; this is not counted as an attempt"),
    F("EDGE_DEAD_MS", DW_CFG_INT, edge_dead_ms, "10000", 100, 3600000,
      "an edge without heartbeat for this long (while we were connected) is declared down"),
    F("LEASE_TTL_MS", DW_CFG_INT, lease_ttl_ms, "2000", 200, 60000,
      "a dispatcher whose lease heartbeat is older than this loses its DW_MSG partitions to the "
      "others (heartbeat every quarter of it)"),
    F("CONN_BARRIER", DW_CFG_BOOL, conn_barrier, "1", 0, 0,
      "before asking the registry for a round of rooms, read DW_CONN's last sequence and have "
      "the registry apply up to it, so a message reaches every connection whose connect was "
      "acked before the message was fetched, on any edge (0: only the sending edge's own "
      "connects are waited for; one JetStream request less per round)"),
    DW_SERVICE_ROWS_STATUS(dispatcher_config, svc, "9093"),
    DW_SERVICE_ROW_LOG_LEVEL(dispatcher_config, svc),
    DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(dispatcher_config, svc),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

static const char summary[] =
    "DynamoWave dispatcher: delivers each accepted chat message to every edge\n"
    "holding members of its room (the SendMessage handler).";

typedef struct dispatcher_app {
    dispatcher_config cfg;
    dispatch_cfg dc;
    dispatcher *d;
    atomic_bool ready;
} dispatcher_app;

static bool is_ready(void *arg)
{
    dispatcher_app *a = arg;
    return atomic_load(&a->ready);
}

static void on_reconnect(void *arg)
{
    dispatch_reconnected(arg);
}

static int init(dw_service *s)
{
    dispatcher_app *a = s->arg;
    const dispatcher_config *c = &a->cfg;
    a->dc = (dispatch_cfg){
        .instance = s->instance,
        .fetch_batch = c->fetch_batch,
        .fetch_wait_ms = c->fetch_wait_ms,
        .ack_wait_ms = c->ack_wait_ms,
        .max_deliver = c->max_deliver,
        .max_held = c->max_held,
        .registry_timeout_ms = c->registry_timeout_ms,
        .edge_timeout_ms = c->edge_timeout_ms,
        .retry_base_ms = c->retry_base_ms,
        .retry_max_ms = c->retry_max_ms,
        .absent_retry_ms = c->absent_retry_ms,
        .edge_dead_ms = c->edge_dead_ms,
        .lease_ttl_ms = c->lease_ttl_ms,
        .conn_barrier = c->conn_barrier,
    };
    return 0;
}

/* Retried until it works or we are told to stop: the dispatcher may start
 * before NATS or JetStream. */
static int setup(dw_service *s)
{
    dispatcher_app *a = s->arg;
    /* DW_CONN and DW_MSG are the registry's to create; the dispatcher's
     * NATS user may only look (deploy/nats/auth.conf). */
    if (dw_streams_exist(s->js) != NATS_OK) return -1;
    /* The deadletter service owns DW_DLQ; create it if it is not there
     * yet, so that a message given up on has somewhere to go. Not fatal: a
     * dead letter waits (and is retried) until it is. */
    static int dlq_ok;
    dlq_stream_opts dso;
    dlq_stream_opts_default(&dso);
    if (!dlq_ok && !(dlq_ok = dlq_streams_ensure(s->js, &dso, 0) == NATS_OK))
        DW_WARN("dead-letter streams not available yet", "stream=%s", DW_STREAM_DLQ);
    return dispatch_create(&a->d, s->nc, s->js, &a->dc);
}

static int run(dw_service *s)
{
    dispatcher_app *a = s->arg;
    const dispatcher_config *c = &a->cfg;
    DW_INFO("dispatcher ready",
            "instance=%s nats=%s partitions=%d batch=%" PRId64 " max_held=%" PRId64
            " max_deliver=%" PRId64 " retry_base_ms=%" PRId64 " retry_max_ms=%" PRId64
            " lease_ttl_ms=%" PRId64 " nofile=%ld",
            s->instance, c->svc.nats_url, DW_MSG_PARTITIONS, c->fetch_batch, c->max_held,
            c->max_deliver, c->retry_base_ms, c->retry_max_ms, c->lease_ttl_ms, s->nofile);
    atomic_store(&a->ready, true);
    dw_bus_on_reconnect(on_reconnect, a->d);
    int rc = dispatch_run(a->d);
    dw_bus_on_reconnect_remove(on_reconnect, a->d);
    atomic_store(&a->ready, false);
    return rc ? 1 : 0;
}

/* Partitions are given back and the last acks go out while the connection
 * is still open (the skeleton drains it afterwards). */
static void stop(dw_service *s)
{
    dispatcher_app *a = s->arg;
    dispatch_destroy(a->d);
    a->d = NULL;
}

int main(int argc, char **argv)
{
    static dispatcher_app app;
    /* init, setup, run, stop, cleanup, ready */
    static const dw_service_hooks hooks = {init, setup, run, stop, NULL, is_ready};
    dw_service s = DW_SERVICE("dispatcher", summary, fields, &app.cfg, &hooks, &app);
    return dw_service_main(&s, argc, argv);
}
