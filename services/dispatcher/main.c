/* dispatcher: the SendMessage handler. Pulls accepted chat messages from
 * DW_MSG and hands each to every edge holding members of its room. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "dispatch.h"
#include "dw/bus.h"
#include "dw/config.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/ping.h"
#include "dw/status.h"
#include "dw/util.h"
#include "streams.h"

typedef struct dispatcher_config {
    char *nats_url;
    int64_t fetch_batch;
    int64_t fetch_wait_ms;
    int64_t ack_wait_ms;
    int64_t max_deliver;
    int64_t max_ack_pending;
    int64_t registry_timeout_ms;
    int64_t edge_timeout_ms;
    int64_t retry_base_ms;
    int64_t retry_max_ms;
    int64_t retry_state_max;
    int64_t edge_dead_ms;
    int64_t max_inflight;
    int conn_barrier;
    char *status_host;
    int64_t status_port;
    char *log_level;
} dispatcher_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(dispatcher_config, field), def, min, max, help                        \
    }

static const dw_cfg_field fields[] = {
    F("NATS_URL", DW_CFG_STR, nats_url, "nats://127.0.0.1:4222", 0, 0, "NATS server URLs, comma-separated: every node of a cluster"),
    F("FETCH_BATCH", DW_CFG_INT, fetch_batch, "256", 1, 4096, "messages per pull"),
    F("FETCH_WAIT_MS", DW_CFG_INT, fetch_wait_ms, "500", 20, 60000,
      "how long an idle pull waits for the first message (a message never waits for the batch)"),
    F("ACK_WAIT_MS", DW_CFG_INT, ack_wait_ms, "30000", 1000, 3600000,
      "redeliver a message not acked within this time (consumer AckWait)"),
    F("MAX_DELIVER", DW_CFG_INT, max_deliver, "6", 1, 1000,
      "delivery attempts per message (consumer MaxDeliver); after the last one the message "
      "is dead-lettered"),
    F("MAX_ACK_PENDING", DW_CFG_INT, max_ack_pending, "20000", 1, 10000000,
      "messages in flight across all dispatchers (consumer MaxAckPending)"),
    F("REGISTRY_TIMEOUT_MS", DW_CFG_INT, registry_timeout_ms, "2000", 10, 60000,
      "wait this long for the registry's room answers"),
    F("EDGE_TIMEOUT_MS", DW_CFG_INT, edge_timeout_ms, "2000", 10, 60000,
      "wait this long for the edges' delivery replies"),
    F("RETRY_BASE_MS", DW_CFG_INT, retry_base_ms, "250", 0, 3600000,
      "retry a failed message after this delay, doubling with every further attempt"),
    F("RETRY_MAX_MS", DW_CFG_INT, retry_max_ms, "30000", 1, 86400000,
      "the longest delay between two attempts"),
    F("RETRY_STATE_MAX", DW_CFG_INT, retry_state_max, "100000", 1, 100000000,
      "failing messages whose per-edge progress is remembered (retries go only to the edges "
      "that did not take them)"),
    F("EDGE_DEAD_MS", DW_CFG_INT, edge_dead_ms, "10000", 100, 3600000,
      "an edge without heartbeat for this long is declared down"),
    F("MAX_INFLIGHT", DW_CFG_INT, max_inflight, "2", 1, 64,
      "batches sent to the edges and not yet settled: the next batch is fetched and sent while "
      "the edges still work on earlier ones (requests to one edge keep their order)"),
    F("CONN_BARRIER", DW_CFG_BOOL, conn_barrier, "1", 0, 0,
      "before asking the registry for a batch's rooms, read DW_CONN's last sequence and have "
      "the registry apply up to it, so a message reaches every connection whose connect was "
      "acked before the message was fetched, on any edge (0: only the sending edge's own "
      "connects are waited for; one JetStream request less per batch)"),
    F("STATUS_HOST", DW_CFG_STR, status_host, "127.0.0.1", 0, 0,
      "address of the status port (empty: every address; containers set 0.0.0.0)"),
    F("STATUS_PORT", DW_CFG_INT, status_port, "9093", 0, 65535,
      "port of /healthz, /readyz and /metrics (0 = off)"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

static const char summary[] =
    "DynamoWave dispatcher: delivers each accepted chat message to every edge\n"
    "holding members of its room (the SendMessage handler).";

/* Until we are connected nothing is in flight, so a stop request may end
 * the process at once: dw_bus_connect blocks for as long as NATS is
 * unreachable, and a signal handler cannot interrupt it. _exit is
 * async-signal-safe. */
static volatile sig_atomic_t connecting;

static void on_stop(void *arg)
{
    if (connecting) _exit(0);
}

static atomic_bool ready;
static dw_metric *ready_gauge;

static bool is_ready(void *arg)
{
    return atomic_load(&ready);
}

static void set_ready(bool v)
{
    atomic_store(&ready, v);
    dw_metric_set(ready_gauge, v ? 1 : 0);
}

/* Connecting, streams and consumer setup are retried until they work or we
 * are told to stop: the dispatcher may start before NATS or JetStream. */
static int setup(natsConnection *nc, jsCtx *js, const dispatch_cfg *dc, dispatcher **out)
{
    dlq_stream_opts dso;
    dlq_stream_opts_default(&dso);
    int64_t wait = 250;
    int dlq_ok = 0;
    while (!dw_stop) {
        /* DW_CONN and DW_MSG are the registry's to create; the
         * dispatcher's NATS user may only look (deploy/nats/auth.conf). */
        if (dw_streams_exist(js) == NATS_OK) {
            /* The deadletter service owns DW_DLQ; create it if it is not
             * there yet, so that a message given up on has somewhere to go.
             * Not fatal: without it, dead letters take the advisory path. */
            if (!dlq_ok && !(dlq_ok = dlq_streams_ensure(js, &dso, 0) == NATS_OK))
                DW_WARN("dead-letter streams not available yet", "stream=%s", DW_STREAM_DLQ);
            if (dispatch_create(out, nc, js, dc) == 0) return 0;
        }
        DW_WARN("setup failed, retrying", "retry_ms=%" PRId64, wait);
        nats_Sleep(wait);
        if (wait < 4000) wait *= 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    dispatcher_config cfg = {0};
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    dispatcher *d = NULL;
    dw_status *status = NULL;
    dw_ping *ping = NULL;
    char instance[DW_ID_LEN + 1] = "";
    int rc = 1;

    int lr = dw_config_load(&cfg, fields, N_FIELDS, argc, argv, "dispatcher", summary);
    if (lr != 0) {
        dw_config_free(&cfg, fields, N_FIELDS);
        return lr > 0 ? 0 : 2;
    }
    dw_log_init("dispatcher", cfg.log_level);
    dw_signals_install(on_stop, NULL);
    long nofile = dw_raise_nofile();

    if (cfg.registry_timeout_ms + cfg.edge_timeout_ms >= cfg.ack_wait_ms)
        DW_WARN("ack wait shorter than one batch can take: expect redeliveries",
                "ack_wait_ms=%" PRId64 " registry_timeout_ms=%" PRId64 " edge_timeout_ms=%" PRId64,
                cfg.ack_wait_ms, cfg.registry_timeout_ms, cfg.edge_timeout_ms);

    dispatch_cfg dc = {
        .fetch_batch = cfg.fetch_batch,
        .fetch_wait_ms = cfg.fetch_wait_ms,
        .ack_wait_ms = cfg.ack_wait_ms,
        .max_deliver = cfg.max_deliver,
        .max_ack_pending = cfg.max_ack_pending,
        .registry_timeout_ms = cfg.registry_timeout_ms,
        .edge_timeout_ms = cfg.edge_timeout_ms,
        .retry_base_ms = cfg.retry_base_ms,
        .retry_max_ms = cfg.retry_max_ms,
        .retry_state_max = cfg.retry_state_max,
        .edge_dead_ms = cfg.edge_dead_ms,
        .max_inflight = cfg.max_inflight,
        .conn_barrier = cfg.conn_barrier,
    };

    ready_gauge = dw_gauge("dw_ready", "service=\"dispatcher\"", "1 when the service is ready");
    /* Metrics are a side show: a port in use must not stop deliveries. */
    if (dw_status_start(&status, cfg.status_host, (int)cfg.status_port, is_ready, NULL))
        DW_ERROR("status port not available, running without it", "port=%" PRId64, cfg.status_port);

    connecting = 1;
    natsStatus s = dw_bus_connect(&nc, cfg.nats_url, "dispatcher");
    connecting = 0;
    if (s == NATS_OK) s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        DW_ERROR("nats connect failed", "url=%s status=%s", cfg.nats_url, natsStatus_GetText(s));
        goto done;
    }
    /* dwctl status lists who runs (dw.ops.ping); not being listed must not
     * stop deliveries, so a failure here is only logged. */
    if (dw_id_random(instance) || dw_ping_start(&ping, nc, "dispatcher", instance, is_ready, NULL))
        DW_WARN("not answering dw.ops.ping", "%s", "");
    if (setup(nc, js, &dc, &d)) {
        rc = 0; /* stopped before we were ready: still a clean stop */
        goto done;
    }
    DW_INFO("dispatcher ready",
            "nats=%s batch=%" PRId64 " max_inflight=%" PRId64 " max_deliver=%" PRId64
            " retry_base_ms=%" PRId64 " retry_max_ms=%" PRId64 " nofile=%ld",
            cfg.nats_url, cfg.fetch_batch, cfg.max_inflight, cfg.max_deliver, cfg.retry_base_ms,
            cfg.retry_max_ms, nofile);
    set_ready(true);

    int run_rc = dispatch_run(d);
    set_ready(false);
    DW_INFO("stopping", "%s", "");
    rc = run_rc ? 1 : 0;

done:
    dw_ping_stop(ping);
    dispatch_destroy(d);
    dw_status_stop(status);
    if (nc) {
        /* Drain: the acks of the last batch are on the wire before we close. */
        if (natsConnection_DrainTimeout(nc, 5000) == NATS_OK) {
            int64_t deadline = dw_mono_ns() + 6000000000LL;
            while (!natsConnection_IsClosed(nc) && dw_mono_ns() < deadline)
                nats_Sleep(10);
        }
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
    }
    nats_Close();
    if (rc == 0) DW_INFO("stopped", "%s", "");
    dw_config_free(&cfg, fields, N_FIELDS);
    dw_metrics_free();
    return rc;
}
