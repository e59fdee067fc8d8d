/* deadletter: the dead-letter queue (the SQS DLQ of the AWS design). Owns
 * DW_DLQ, captures the messages JetStream stopped redelivering that the
 * dispatcher did not dead-letter itself, and lists, shows, replays and
 * purges entries for dwctl. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "dw/bus.h"
#include "dw/config.h"
#include "dw/dlq.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/ping.h"
#include "dw/status.h"
#include "dw/util.h"
#include "streams.h"
#include "svc.h"

typedef struct deadletter_config {
    char *nats_url;
    char *status_host;
    int64_t status_port;
    int64_t stream_replicas;
    int64_t dedup_window_s;
    int64_t advisory_max_age_s;
    int64_t publish_wait_ms;
    int64_t list_page;
    int64_t fetch_wait_ms;
    int64_t test_crash_after_replays;
    char *log_level;
} deadletter_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(deadletter_config, field), def, min, max, help                        \
    }

static const dw_cfg_field fields[] = {
    F("NATS_URL", DW_CFG_STR, nats_url, "nats://127.0.0.1:4222", 0, 0, "NATS server URLs, comma-separated: every node of a cluster"),
    F("STATUS_HOST", DW_CFG_STR, status_host, "127.0.0.1", 0, 0,
      "address of the status port (empty: every address; containers set 0.0.0.0)"),
    F("STATUS_PORT", DW_CFG_INT, status_port, "9092", 0, 65535,
      "port of /healthz, /readyz and /metrics (0 = off)"),
    F("STREAM_REPLICAS", DW_CFG_INT, stream_replicas, "1", 1, 5,
      "replicas of DW_DLQ and DW_DLQ_ADVISORIES (3 in a cluster)"),
    F("DEDUP_WINDOW_S", DW_CFG_INT, dedup_window_s, "3600", 1, 7 * 86400,
      "DW_DLQ duplicate window: the dispatcher's dead letter and an advisory for the same "
      "message further apart than this could make two entries"),
    F("ADVISORY_MAX_AGE_S", DW_CFG_INT, advisory_max_age_s, "604800", 60, 365 * 86400,
      "keep max-deliveries advisories this long while the service is not there to handle them"),
    F("PUBLISH_WAIT_MS", DW_CFG_INT, publish_wait_ms, "5000", 100, 600000,
      "wait this long for JetStream to acknowledge a write or answer a request"),
    F("LIST_PAGE", DW_CFG_INT, list_page, "500", 1, 100000, "entries per list reply at most"),
    F("FETCH_WAIT_MS", DW_CFG_INT, fetch_wait_ms, "500", 20, 60000,
      "how long an idle advisory pull waits"),
    F("TEST_CRASH_AFTER_REPLAYS", DW_CFG_INT, test_crash_after_replays, "0", 0, 1000000000,
      "testing only: kill the process (SIGKILL) after this many replay republishes, before the "
      "entry is removed (0 = never)"),
    F("LOG_LEVEL", DW_CFG_STR, log_level, "info", 0, 0, "debug, info, warn or error"),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

static const char summary[] =
    "DynamoWave deadletter: keeps what could not be delivered after its retries\n"
    "(DW_DLQ), captures what JetStream stopped redelivering (max-deliveries\n"
    "advisories), and lists, shows, replays and purges entries for dwctl dlq.";

#define DEPTH_EVERY_MS 2000

static volatile sig_atomic_t connecting;
static atomic_bool ready;
static dw_metric *ready_gauge;

static void on_stop(void *arg)
{
    /* dw_bus_connect cannot be interrupted; nothing is in flight yet. */
    if (connecting) _exit(0);
}

static bool is_ready(void *arg)
{
    return atomic_load(&ready);
}

static void set_ready(bool v)
{
    atomic_store(&ready, v);
    dw_metric_set(ready_gauge, v ? 1 : 0);
}

static void metrics_register(dlq_svc *svc)
{
    ready_gauge = dw_gauge("dw_ready", "service=\"deadletter\"", "1 when the service is ready");
    svc->m.captured_dispatcher =
        dw_counter("dw_deadletter_captured_total", "source=\"dispatcher\"",
                   "Dead letters that entered DW_DLQ while this process ran, by who wrote them: "
                   "the dispatcher after its last attempt, or this service from a "
                   "max-deliveries advisory");
    svc->m.captured_advisory =
        dw_counter("dw_deadletter_captured_total", "source=\"advisory\"", NULL);
    svc->m.replayed = dw_counter("dw_deadletter_replayed_total", NULL,
                                 "Entries republished to their original subject and removed");
    svc->m.purged = dw_counter("dw_deadletter_purged_total", NULL, "Entries purged");
    svc->m.depth = dw_gauge("dw_deadletter_depth", NULL, "Entries in DW_DLQ");
    svc->m.advisories =
        dw_counter("dw_deadletter_advisories_total", NULL,
                   "Max-deliveries advisories of the dispatcher's consumer handled");
    svc->m.advisory_dups =
        dw_counter("dw_deadletter_advisory_duplicates_total", NULL,
                   "Advisories for messages already in DW_DLQ (the dispatcher wrote them)");
}

static void sub_close(natsSubscription *sub)
{
    if (!sub) return;
    /* Drain: an ops request being answered (a replay) finishes first. */
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, 10000);
    else
        natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}

/* Streams, the index feed, the advisory consumer and the ops subjects;
 * retried until they work or we are told to stop (NATS or JetStream may
 * come up after us). */
static int setup(dlq_svc *svc, const dlq_stream_opts *so)
{
    int64_t wait = 250;
    while (!dw_stop) {
        if (dlq_streams_ensure(svc->js, so, 1) == NATS_OK &&
            (svc->dlq_sub || capture_index_start(svc) == 0) &&
            (svc->adv_pull || capture_advisories_start(svc) == 0) &&
            (svc->ops_sub || ops_start(svc) == 0))
            return 0;
        DW_WARN("setup failed, retrying", "retry_ms=%" PRId64, wait);
        nats_Sleep(wait);
        if (wait < 4000) wait *= 2;
    }
    return -1;
}

static void run(dlq_svc *svc)
{
    int64_t next_depth = 0, backoff = 0;
    while (!dw_stop) {
        int64_t now = dw_mono_ns() / 1000000;
        if (now >= next_depth) {
            svc_depth(svc);
            next_depth = now + DEPTH_EVERY_MS;
        }
        if (!atomic_load(&svc->caught_up)) {
            /* Advisories wait until the index can tell what is there. */
            nats_Sleep(20);
            continue;
        }
        if (!atomic_load(&ready)) {
            pthread_mutex_lock(&svc->mu);
            size_t n = dlq_index_count(svc->ix);
            pthread_mutex_unlock(&svc->mu);
            set_ready(true);
            DW_INFO("deadletter ready", "entries=%zu", n);
        }
        if (capture_advisories_poll(svc) < 0) {
            backoff = backoff ? (backoff < 2000 ? backoff * 2 : 2000) : 100;
            nats_Sleep(backoff);
        } else {
            backoff = 0;
        }
    }
}

int main(int argc, char **argv)
{
    deadletter_config cfg = {0};
    dlq_svc svc = {0};
    dw_status *status = NULL;
    dw_ping *ping = NULL;
    char instance[DW_ID_LEN + 1] = "";
    int rc = 1, mu_ok = 0;

    int lr = dw_config_load(&cfg, fields, N_FIELDS, argc, argv, "deadletter", summary);
    if (lr != 0) {
        dw_config_free(&cfg, fields, N_FIELDS);
        return lr > 0 ? 0 : 2;
    }
    dw_log_init("deadletter", cfg.log_level);
    dw_signals_install(on_stop, NULL);
    dw_raise_nofile();

    svc.cfg.publish_wait_ms = cfg.publish_wait_ms;
    svc.cfg.list_page = cfg.list_page;
    svc.cfg.fetch_wait_ms = cfg.fetch_wait_ms;
    svc.cfg.crash_after_replays = cfg.test_crash_after_replays;
    if (cfg.test_crash_after_replays)
        DW_WARN("TEST_CRASH_AFTER_REPLAYS is set: this process will kill itself", "after=%" PRId64,
                cfg.test_crash_after_replays);
    atomic_init(&svc.caught_up, 0);
    if (pthread_mutex_init(&svc.mu, NULL) || dlq_index_create(&svc.ix)) goto done;
    mu_ok = 1;
    metrics_register(&svc);
    if (dw_status_start(&status, cfg.status_host, (int)cfg.status_port, is_ready, NULL))
        DW_ERROR("status port not available, running without it", "port=%" PRId64, cfg.status_port);

    dlq_stream_opts so;
    dlq_stream_opts_default(&so);
    so.replicas = (int)cfg.stream_replicas;
    so.dedup_window_s = cfg.dedup_window_s;
    so.advisory_max_age_s = cfg.advisory_max_age_s;

    connecting = 1;
    natsStatus s = dw_bus_connect(&svc.nc, cfg.nats_url, "deadletter");
    connecting = 0;
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = cfg.publish_wait_ms;
    if (s == NATS_OK) s = natsConnection_JetStream(&svc.js, svc.nc, &jo);
    if (s != NATS_OK) {
        DW_ERROR("nats connect failed", "url=%s status=%s", cfg.nats_url, natsStatus_GetText(s));
        goto done;
    }
    if (dw_id_random(instance) ||
        dw_ping_start(&ping, svc.nc, "deadletter", instance, is_ready, NULL))
        DW_WARN("not answering dw.ops.ping", "%s", "");
    if (setup(&svc, &so)) {
        rc = 0; /* stopped before we were ready: still a clean stop */
        goto done;
    }
    DW_INFO("deadletter started", "nats=%s dedup_window_s=%" PRId64, cfg.nats_url,
            cfg.dedup_window_s);
    run(&svc);
    set_ready(false);
    DW_INFO("stopping", "%s", "");
    rc = 0;

done:
    dw_ping_stop(ping);
    sub_close(svc.ops_sub);
    sub_close(svc.dlq_sub);
    dw_pull_close(svc.adv_pull); /* the durable stays */
    if (svc.nc) {
        if (natsConnection_DrainTimeout(svc.nc, 5000) == NATS_OK) {
            int64_t deadline = dw_mono_ns() + 6000000000LL;
            while (!natsConnection_IsClosed(svc.nc) && dw_mono_ns() < deadline)
                nats_Sleep(10);
        }
        jsCtx_Destroy(svc.js);
        natsConnection_Destroy(svc.nc);
    }
    nats_Close();
    dw_status_stop(status);
    dlq_index_destroy(svc.ix);
    if (mu_ok) pthread_mutex_destroy(&svc.mu);
    if (rc == 0) DW_INFO("stopped", "%s", "");
    dw_config_free(&cfg, fields, N_FIELDS);
    dw_metrics_free();
    return rc;
}
