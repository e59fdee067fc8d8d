/* One skeleton for every service's main(): each service fills a
 * dw_service with its config table and its hooks, and dw_service_main
 * runs the part they all share, in this order:
 *
 *   config (table, environment, flags)  -> logging -> init hook
 *   -> instance id, signals (SIGINT/SIGTERM set dw_stop), file limit
 *   -> dw_ready{service="<name>"} gauge, status port (/healthz, /readyz,
 *      /metrics; failing to open it is logged, not fatal)
 *   -> NATS connection (retried in the background, dw_bus_connect) and a
 *      JetStream context -> dw.ops.ping
 *   -> setup hook, retried with a backoff until it succeeds or a stop
 *   -> run hook (until dw_stop) -> ping and status off -> stop hook
 *   -> drain the connection (when connected: what was published goes out)
 *   -> cleanup hook -> exit status
 *
 * A stop at any point before run ends the process cleanly (exit 0): the
 * connection never blocks (dw_bus_connect retries in the background), so
 * no service needs to _exit from its signal handler.
 *
 * A stop is bounded: from the signal (or the end of run) everything above
 * shares one budget, DW_SHUTDOWN_TIMEOUT_MS (dw/util.h: each step waits at
 * most dw_stop_left_ms). A watchdog thread enforces it for steps that
 * cannot be told: DW_STOP_RESERVE_MS before the end it closes the NATS
 * connection (every call still waiting for NATS returns; what was not
 * finished is logged as given up), and at the end it logs the step the
 * stop was in and exits with status 1. A stop that kept to its budget
 * exits 0, also while NATS is away.
 *
 * Threads: dw_service_main and every hook run on the main thread, except
 * ready, which the status port, dw.ops.ping and the metrics render call on
 * their threads: it must be thread-safe (read an atomic). */
#ifndef DW_SERVICE_H
#define DW_SERVICE_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dw/config.h"
#include "dw/util.h"

/* The config rows every service shares, in its config struct. */
typedef struct dw_service_cfg {
    char *nats_url;
    char *status_host;
    int64_t status_port; /* 0: no status port (the edge serves its own) */
    char *log_level;
    int64_t shutdown_timeout_ms; /* the stop's budget (0: the default) */
} dw_service_cfg;

/* The shared rows, declared once: put them in the binary's table with the
 * struct type and the dw_service_cfg member's name. */
#define DW_SERVICE_ROW_NATS_URL(type, member)                                                      \
    {                                                                                              \
        "NATS_URL", DW_CFG_STR, offsetof(type, member.nats_url), "nats://127.0.0.1:4222", 0, 0,    \
            "NATS server URLs, comma-separated: every node of a cluster"                           \
    }
#define DW_SERVICE_ROWS_STATUS(type, member, default_port)                                         \
    {"STATUS_HOST",                                                                                \
     DW_CFG_STR,                                                                                   \
     offsetof(type, member.status_host),                                                           \
     "127.0.0.1",                                                                                  \
     0,                                                                                            \
     0,                                                                                            \
     "address of the status port (empty: every address; containers set 0.0.0.0)"},                 \
    {                                                                                              \
        "STATUS_PORT", DW_CFG_INT, offsetof(type, member.status_port), default_port, 0, 65535,     \
            "port of /healthz, /readyz and /metrics (0: none)"                                     \
    }
#define DW_SERVICE_ROW_LOG_LEVEL(type, member)                                                     \
    {                                                                                              \
        "LOG_LEVEL", DW_CFG_STR, offsetof(type, member.log_level), "info", 0, 0,                   \
            "debug, info, warn or error"                                                           \
    }
/* Keep it below the orchestrator's grace period (docker-compose.yml
 * stop_grace_period, k8s terminationGracePeriodSeconds), or the stop ends
 * in a SIGKILL. */
#define DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(type, member)                                              \
    {                                                                                              \
        "SHUTDOWN_TIMEOUT_MS", DW_CFG_INT, offsetof(type, member.shutdown_timeout_ms), "10000",    \
            2000, 600000,                                                                          \
            "on SIGTERM, the most the whole stop may take, from the signal to the exit (the "      \
            "steps share it; whatever is left unfinished then is logged)"                          \
    }

typedef struct dw_service dw_service;

/* What a service does at each step; NULL: nothing. */
typedef struct dw_service_hooks {
    /* After config and logging: check what the table cannot, open local
     * files. 0, or the exit status (2: a bad setting). */
    int (*init)(dw_service *s);
    /* Connected (or still connecting): streams, subscriptions, threads. 0
     * when done; -1 to be called again after a backoff (100 ms doubling to
     * 2 s), until it succeeds or the service is told to stop. */
    int (*setup)(dw_service *s);
    /* The service's work, until dw_stop: the exit status (0 clean). */
    int (*run)(dw_service *s);
    /* After run, or after a setup that never finished: stop threads and
     * close subscriptions; the connection is still open (publishes made
     * here are drained). */
    void (*stop)(dw_service *s);
    /* Last, the connection closed: free what init and the rest made. Also
     * after a failed init. */
    void (*cleanup)(dw_service *s);
    /* Ready to serve: /readyz, dw.ops.ping, dw_ready. Thread-safe. NULL:
     * ready once run has started. */
    bool (*ready)(void *arg);
} dw_service_hooks;

struct dw_service {
    /* ---- set by the service before dw_service_main (DW_SERVICE) ---- */
    const char *name;           /* "dispatcher": logs, ping, dw_ready, the connection */
    const char *summary;        /* --help */
    const dw_cfg_field *fields; /* the binary's one config table */
    size_t n_fields;
    void *cfg;                     /* its config struct, zeroed */
    dw_service_cfg *common;        /* the shared rows, inside cfg */
    const dw_service_hooks *hooks; /* borrowed */
    void *arg;                     /* the service's state, for the hooks and ready */

    /* ---- may be set by init ---- */
    char instance[DW_ID_LEN + 64]; /* this process's id in dw.ops.ping ("": random) */
    char conn_name[64];            /* the NATS connection's name ("": name) */
    bool offline;                  /* a one-shot job (a restore): no status port, no ping */
    int64_t js_wait_ms;            /* the JetStream context's default wait (0: nats.c's) */

    /* ---- set by dw_service_main ---- */
    natsConnection *nc; /* valid from setup until cleanup */
    jsCtx *js;
    long nofile; /* the file limit after lifting it */
    /* internal */
    char ready_labels[64];
    atomic_bool running;
    pthread_t watchdog;
    pthread_mutex_t wd_mu; /* guards nc against the watchdog's close */
    pthread_cond_t wd_cv;
    bool wd_started, wd_done;
};

/* A dw_service for the service called name: its --help summary, its config
 * table (an array), the config struct it fills (cfg_ points to it; the
 * shared rows are its member svc), its hooks and its state. */
#define DW_SERVICE(name_, summary_, fields_, cfg_, hooks_, arg_)                                   \
    {                                                                                              \
        .name = name_, .summary = summary_, .fields = fields_,                                     \
        .n_fields = sizeof fields_ / sizeof fields_[0], .cfg = cfg_, .common = &(cfg_)->svc,       \
        .hooks = hooks_, .arg = arg_                                                               \
    }

/* Run the service; returns the exit status for main. */
int dw_service_main(dw_service *s, int argc, char **argv);

#endif
