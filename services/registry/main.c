/* registry: the connections table. Applies DW_CONN into RocksDB and answers
 * dw.registry.* queries. Crash-only: the table and its applied_seq are
 * written together, so kill -9 at any moment loses nothing that the
 * stream cannot give back. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "apply.h"
#include "dw/bus.h"
#include "dw/config.h"
#include "dw/log.h"
#include "dw/util.h"
#include "query.h"
#include "store.h"

typedef struct reg_config {
    char *nats_url;
    char *data_dir;
    char *replica_id;
    int64_t query_wait_ms;
    char *log_level;
} reg_config;

static const dw_cfg_field reg_fields[] = {
    {"NATS_URL", DW_CFG_STR, offsetof(reg_config, nats_url), "nats://127.0.0.1:4222", 0, 0,
     "NATS server URL"},
    {"DATA_DIR", DW_CFG_STR, offsetof(reg_config, data_dir), "var", 0, 0,
     "data directory; the table is <DATA_DIR>/registry/<REPLICA_ID>/db"},
    {"REPLICA_ID", DW_CFG_STR, offsetof(reg_config, replica_id), "r0", 0, 0,
     "this replica's name ([A-Za-z0-9_-]{1,32}); its DW_CONN durable is registry-<REPLICA_ID>"},
    {"QUERY_WAIT_MS", DW_CFG_INT, offsetof(reg_config, query_wait_ms), "2000", 0, 60000,
     "how long a room query waits for the table to reach its min_seq"},
    {"LOG_LEVEL", DW_CFG_STR, offsetof(reg_config, log_level), "info", 0, 0,
     "debug, info, warn or error"},
};
#define REG_NFIELDS (sizeof reg_fields / sizeof reg_fields[0])

static int replica_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 32)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* mkdir -p: create path and its parents (mode 0750). 0 or -1 with errno. */
static int mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0750) && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, 0750) && errno != EEXIST)
        return -1;
    return 0;
}

/* Streams must exist before the consumer; NATS may still be coming up. */
static int streams_ensure_retry(jsCtx *js)
{
    dw_stream_opts so;
    dw_stream_opts_default(&so);
    int64_t backoff = 100;
    while (!dw_stop) {
        if (dw_streams_ensure(js, &so) == NATS_OK)
            return 0;
        nats_Sleep(backoff);
        if (backoff < 2000)
            backoff *= 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    reg_config cfg = {0};
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    reg_store *st = NULL;
    reg_query *q = NULL;
    char *err = NULL;
    char dbdir[4096];
    int rc = 1;

    int lr = dw_config_load(&cfg, reg_fields, REG_NFIELDS, argc, argv, "registry",
                            "DynamoWave registry: the connections table (DW_CONN -> RocksDB).");
    if (lr != 0) {
        dw_config_free(&cfg, reg_fields, REG_NFIELDS);
        return lr > 0 ? 0 : 2;
    }
    dw_log_init("registry", cfg.log_level);
    if (!replica_id_valid(cfg.replica_id)) {
        fprintf(stderr, "registry: REPLICA_ID must be 1-32 of [A-Za-z0-9_-]\n");
        dw_config_free(&cfg, reg_fields, REG_NFIELDS);
        return 2;
    }
    dw_signals_install(NULL, NULL);
    dw_raise_nofile();

    int n = snprintf(dbdir, sizeof dbdir, "%s/registry/%s/db", cfg.data_dir, cfg.replica_id);
    if (n < 0 || (size_t)n >= sizeof dbdir || mkdir_p(dbdir)) {
        DW_ERROR("cannot create the data directory", "dir=\"%s\" err=\"%s\"", dbdir, strerror(errno));
        goto done;
    }
    if (reg_store_open(&st, dbdir, &err)) {
        DW_ERROR("cannot open the table", "dir=\"%s\" err=\"%s\"", dbdir, err ? err : "?");
        goto done;
    }
    DW_INFO("table opened", "dir=\"%s\" applied_seq=%llu connections=%llu", dbdir,
            (unsigned long long)reg_store_applied_seq(st), (unsigned long long)reg_store_count(st));

    char name[64];
    snprintf(name, sizeof name, "registry-%s", cfg.replica_id);
    natsStatus s = dw_bus_connect(&nc, cfg.nats_url, name);
    if (s == NATS_OK)
        s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        DW_ERROR("nats connect failed", "url=%s status=%s", cfg.nats_url, natsStatus_GetText(s));
        goto done;
    }
    if (streams_ensure_retry(js)) {
        rc = 0; /* stopped while waiting for NATS */
        goto done;
    }
    if (reg_query_start(&q, nc, st, cfg.query_wait_ms))
        goto done;
    DW_INFO("registry ready", "replica=%s applied_seq=%llu connections=%llu", cfg.replica_id,
            (unsigned long long)reg_store_applied_seq(st), (unsigned long long)reg_store_count(st));

    reg_apply_opts ao;
    reg_apply_opts_default(&ao);
    ao.replica_id = cfg.replica_id;
    ao.on_progress = reg_query_notify;
    ao.progress_arg = q;
    if (reg_apply_run(nc, js, st, &ao) == 0) {
        rc = 0;
        DW_INFO("stopping", "applied_seq=%llu", (unsigned long long)reg_store_applied_seq(st));
    } else {
        DW_ERROR("apply failed; exiting to resume from the table's applied_seq",
                 "applied_seq=%llu", (unsigned long long)reg_store_applied_seq(st));
    }

done:
    reg_query_stop(q);
    reg_query_free(q);
    reg_store_close(st);
    free(err);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_CloseAndWait(2000);
    dw_config_free(&cfg, reg_fields, REG_NFIELDS);
    return rc;
}
