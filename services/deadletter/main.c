/* deadletter: the dead-letter queue (the SQS DLQ of the AWS design). Owns
 * DW_DLQ, captures the messages JetStream stopped redelivering that the
 * dispatcher did not dead-letter itself, and lists, shows, replays and
 * purges entries for dwctl. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/bus.h"
#include "dw/dlq.h"
#include "dw/log.h"
#include "dw/metrics.h"
#include "dw/service.h"
#include "dw/dlq_streams.h"
#include "svc.h"

typedef struct deadletter_config {
    dw_service_cfg svc; /* NATS_URL, STATUS_*, LOG_LEVEL, SHUTDOWN_TIMEOUT_MS */
    int64_t stream_replicas;
    int64_t dedup_window_s;
    int64_t advisory_max_age_s;
    int64_t publish_wait_ms;
    int64_t list_page;
    int64_t fetch_wait_ms;
    int64_t test_crash_after_replays;
} deadletter_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(deadletter_config, field), def, min, max, help                        \
    }

static const dw_cfg_field fields[] = {
    DW_SERVICE_ROW_NATS_URL(deadletter_config, svc),
    DW_SERVICE_ROWS_STATUS(deadletter_config, svc, "9092"),
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
    DW_SERVICE_ROW_LOG_LEVEL(deadletter_config, svc),
    DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(deadletter_config, svc),
};
#define N_FIELDS (sizeof fields / sizeof fields[0])

static const char summary[] =
    "DynamoWave deadletter: keeps what could not be delivered after its retries\n"
    "(DW_DLQ), captures what JetStream stopped redelivering (max-deliveries\n"
    "advisories), and lists, shows, replays and purges entries for dwctl dlq.";

#define DEPTH_EVERY_MS 2000
/* The depth gauge's question waits at most this: the loop that asks it
 * also notices a stop (it took 5 s, PUBLISH_WAIT_MS, while NATS hung). */
#define DEPTH_WAIT_MS 1000
/* Stop: how long ops requests being answered may take to finish, while
 * connected and while NATS is away (both within the stop's budget). */
#define DRAIN_MS 10000
#define DRAIN_AWAY_MS 500

typedef struct deadletter_app {
    deadletter_config cfg;
    dlq_svc svc;
    dlq_stream_opts so;
    int mu_ok;
    int undrained; /* stop: a callback may still use svc */
    atomic_bool ready;
} deadletter_app;

static bool is_ready(void *arg)
{
    deadletter_app *a = arg;
    return atomic_load(&a->ready);
}

static void metrics_register(dlq_svc *svc)
{
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

static int init(dw_service *s)
{
    deadletter_app *a = s->arg;
    const deadletter_config *c = &a->cfg;
    dlq_svc *svc = &a->svc;
    svc->cfg.publish_wait_ms = c->publish_wait_ms;
    svc->cfg.list_page = c->list_page;
    svc->cfg.fetch_wait_ms = c->fetch_wait_ms;
    svc->cfg.crash_after_replays = c->test_crash_after_replays;
    if (c->test_crash_after_replays)
        DW_WARN("TEST_CRASH_AFTER_REPLAYS is set: this process will kill itself", "after=%" PRId64,
                c->test_crash_after_replays);
    atomic_init(&svc->caught_up, 0);
    if (pthread_mutex_init(&svc->mu, NULL)) return 1;
    a->mu_ok = 1;
    if (dlq_index_create(&svc->ix)) return 1;
    metrics_register(svc);
    dlq_stream_opts_default(&a->so);
    a->so.replicas = (int)c->stream_replicas;
    a->so.dedup_window_s = c->dedup_window_s;
    a->so.advisory_max_age_s = c->advisory_max_age_s;
    s->js_wait_ms = c->publish_wait_ms;
    return 0;
}

/* Streams, the index feed, the advisory consumer and the ops subjects;
 * retried until they work or we are told to stop (NATS or JetStream may
 * come up after us). */
static int setup(dw_service *s)
{
    deadletter_app *a = s->arg;
    dlq_svc *svc = &a->svc;
    svc->nc = s->nc;
    svc->js = s->js;
    return dlq_streams_ensure(svc->js, &a->so, 1) == NATS_OK &&
                   (svc->dlq_sub || capture_index_start(svc) == 0) &&
                   (svc->adv_pull || capture_advisories_start(svc) == 0) &&
                   (svc->ops_sub || ops_start(svc) == 0)
               ? 0
               : -1;
}

static int run(dw_service *s)
{
    deadletter_app *a = s->arg;
    dlq_svc *svc = &a->svc;
    DW_INFO("deadletter started", "nats=%s dedup_window_s=%" PRId64, a->cfg.svc.nats_url,
            a->cfg.dedup_window_s);
    int64_t next_depth = 0, backoff = 0;
    while (!dw_stop) {
        int64_t now = dw_mono_ns() / 1000000;
        if (now >= next_depth) {
            /* (While NATS is away the question would only wait.) */
            if (natsConnection_Status(svc->nc) == NATS_CONN_STATUS_CONNECTED)
                svc_depth(svc, DEPTH_WAIT_MS);
            next_depth = now + DEPTH_EVERY_MS;
        }
        if (!atomic_load(&svc->caught_up)) {
            /* Advisories wait until the index can tell what is there. */
            nats_Sleep(20);
            continue;
        }
        if (!atomic_load(&a->ready)) {
            pthread_mutex_lock(&svc->mu);
            size_t n = dlq_index_count(svc->ix);
            pthread_mutex_unlock(&svc->mu);
            atomic_store(&a->ready, true);
            DW_INFO("deadletter ready", "entries=%zu", n);
        }
        if (capture_advisories_poll(svc) < 0) {
            backoff = backoff ? (backoff < 2000 ? backoff * 2 : 2000) : 100;
            nats_Sleep(backoff);
        } else {
            backoff = 0;
        }
    }
    atomic_store(&a->ready, false);
    return 0;
}

static void stop(dw_service *s)
{
    deadletter_app *a = s->arg;
    /* Drained: an ops request being answered (a replay) finishes first;
     * one deadline for both, short while NATS is away (it stopped in 22 s
     * then: two drains waiting out 10 s each). */
    natsSubscription *subs[] = {a->svc.ops_sub, a->svc.dlq_sub};
    if (dw_subs_drain(s->nc, subs, 2, DRAIN_MS, DRAIN_AWAY_MS)) {
        /* A callback may still run: what it uses is left to the exit. */
        a->undrained = 1;
        DW_WARN("ops and index subscriptions not drained in time: a request still being "
                "answered is cut short",
                "%s", "");
    }
    a->svc.ops_sub = a->svc.dlq_sub = NULL;
    dw_pull_close(a->svc.adv_pull); /* the durable stays */
    a->svc.adv_pull = NULL;
}

static void cleanup(dw_service *s)
{
    deadletter_app *a = s->arg;
    if (a->undrained) return;
    dlq_index_destroy(a->svc.ix);
    if (a->mu_ok) pthread_mutex_destroy(&a->svc.mu);
}

int main(int argc, char **argv)
{
    static deadletter_app app;
    /* init, setup, run, stop, cleanup, ready */
    static const dw_service_hooks hooks = {init, setup, run, stop, cleanup, is_ready};
    dw_service s = DW_SERVICE("deadletter", summary, fields, &app.cfg, &hooks, &app);
    return dw_service_main(&s, argc, argv);
}
