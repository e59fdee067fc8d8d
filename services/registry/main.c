/* registry: the connections table. Applies DW_CONN into RocksDB and answers
 * dw.registry.* queries; takes checkpoints, restores to a point in time,
 * rotates its encryption key (node.c, ops.c). Crash-only: the table and its
 * applied_seq are written together, checkpoints and restores are built
 * under temporary names and renamed into place, so kill -9 at any moment
 * leaves a replica that restarts consistent.
 *
 *   registry                         run the replica
 *   registry --restore-to T          offline: rebuild this (stopped) replica's
 *                                    table as it was at T, then exit; the next
 *                                    start serves T, held, until
 *                                    'dwctl registry resume'
 *   registry --bootstrap-from DIR    a new replica starts from a copied checkpoint */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "checkpoint.h"
#include "dw/bus.h"
#include "dw/config.h"
#include "dw/crypto.h"
#include "dw/log.h"
#include "dw/service.h"
#include "dw/util.h"
#include "fsutil.h"
#include "node.h"
#include "ops.h"
#include "reconcile.h"
#include "restore.h"
#include "store.h"

typedef struct reg_config {
    dw_service_cfg svc; /* NATS_URL, STATUS_*, LOG_LEVEL, SHUTDOWN_TIMEOUT_MS */
    char *data_dir;
    char *replica_id;
    int64_t query_wait_ms;
    int64_t stream_replicas;
    char *checkpoint_dir;
    int64_t checkpoint_interval_s;
    int64_t checkpoint_keep;
    int64_t checkpoint_max_age_s;
    char *registry_key_file;
    char *registry_old_key_files;
    char *bootstrap_from;
    char *restore_to;
    int full_replay;
    int dry_run;
    int64_t reconcile_edge_ttl_ms;
    int64_t reconcile_timeout_ms;
    int events;
    int64_t events_max_age_s;
} reg_config;

#define F(name, type, field, def, min, max, help)                                                  \
    {                                                                                              \
        name, type, offsetof(reg_config, field), def, min, max, help                               \
    }
static const dw_cfg_field reg_fields[] = {
    DW_SERVICE_ROW_NATS_URL(reg_config, svc),
    F("DATA_DIR", DW_CFG_STR, data_dir, "var", 0, 0,
      "data directory; the table is <DATA_DIR>/registry/<REPLICA_ID>/db"),
    F("REPLICA_ID", DW_CFG_STR, replica_id, "r0", 0, 0,
      "this replica's name ([A-Za-z0-9_-]{1,32}); its DW_CONN durable is registry-<REPLICA_ID>"),
    F("STREAM_REPLICAS", DW_CFG_INT, stream_replicas, "1", 1, 5,
      "replicas of DW_CONN, DW_MSG and DW_EVENTS, which the registry creates (3 in a cluster)"),
    F("QUERY_WAIT_MS", DW_CFG_INT, query_wait_ms, "2000", 0, 60000,
      "how long a room query waits for the table to reach its min_seq"),
    DW_SERVICE_ROWS_STATUS(reg_config, svc, "9090"),
    F("CHECKPOINT_DIR", DW_CFG_STR, checkpoint_dir, "", 0, 0,
      "checkpoints directory (empty: <DATA_DIR>/registry/<REPLICA_ID>/checkpoints); on the "
      "table's filesystem checkpoints are hard links"),
    F("CHECKPOINT_INTERVAL_S", DW_CFG_INT, checkpoint_interval_s, "300", 0, 31 * 86400,
      "seconds between checkpoints (0: only on request)"),
    F("CHECKPOINT_KEEP", DW_CFG_INT, checkpoint_keep, "24", 0, 100000,
      "checkpoints kept, newest first (0: no count limit)"),
    F("CHECKPOINT_MAX_AGE_S", DW_CFG_INT, checkpoint_max_age_s, "3024000", 0, 3650LL * 86400,
      "checkpoints older than this are deleted (default 35 days, DW_CONN's retention; 0: no "
      "age limit)"),
    F("REGISTRY_KEY_FILE", DW_CFG_STR, registry_key_file, "", 0, 0,
      "AES-256 key (32 raw bytes or 64 hex digits) sealing the table's values; empty: data at "
      "rest is NOT encrypted"),
    F("REGISTRY_OLD_KEY_FILES", DW_CFG_STR, registry_old_key_files, "", 0, 0,
      "comma-separated older key files, still read (key rotation)"),
    F("BOOTSTRAP_FROM", DW_CFG_STR, bootstrap_from, "", 0, 0,
      "a new replica (no table yet) starts from this checkpoint directory, copied from another "
      "replica, and catches up from its sequence"),
    F("RESTORE_TO", DW_CFG_STR, restore_to, "", 0, 0,
      "offline point-in-time restore: rebuild the table as it was at this RFC 3339 time and "
      "exit (the replica must be stopped); it then serves that time until 'dwctl registry "
      "resume'"),
    F("FULL_REPLAY", DW_CFG_BOOL, full_replay, "0", 0, 0,
      "with --restore-to: ignore checkpoints, replay DW_CONN from its start"),
    F("RECONCILE_EDGE_TTL_MS", DW_CFG_INT, reconcile_edge_ttl_ms, "6000", 100, 600000,
      "reconciliation asks every edge heard from (heartbeat) within this long, and every edge "
      "the table names"),
    F("RECONCILE_TIMEOUT_MS", DW_CFG_INT, reconcile_timeout_ms, "5000", 100, 60000,
      "reconciliation: how long one request to an edge may take (an edge that does not answer "
      "in time is left as it is)"),
    F("EVENTS", DW_CFG_BOOL, events, "1", 0, 0,
      "publish lifecycle events (connect, disconnect, join, leave) to DW_EVENTS for user code "
      "(docs/integrations.md); every replica may, each event is stored once"),
    F("EVENTS_MAX_AGE_S", DW_CFG_INT, events_max_age_s, "604800", 60, 3650LL * 86400,
      "DW_EVENTS retention (default 7 days): how far behind a worker may fall"),
    F("DRY_RUN", DW_CFG_BOOL, dry_run, "0", 0, 0,
      "with --restore-to: print the plan, change nothing"),
    DW_SERVICE_ROW_LOG_LEVEL(reg_config, svc),
    DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(reg_config, svc),
};
#undef F
#define REG_NFIELDS (sizeof reg_fields / sizeof reg_fields[0])

static int replica_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 32) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* One process per replica directory: a second one (or an offline restore
 * next to a running replica) would swap tables under the first. The lock
 * goes away with the process, kill -9 included. Returns the fd or -1. */
static int replica_lock(const char *replica_dir)
{
    char path[4200];
    if (reg_fs_join(path, sizeof path, replica_dir, "registry.lock")) return -1;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        DW_ERROR("cannot open the replica lock", "file=\"%s\" err=\"%s\"", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        DW_ERROR("another registry process uses this replica directory (same REPLICA_ID and "
                 "DATA_DIR?)",
                 "dir=\"%s\"", replica_dir);
        close(fd);
        return -1;
    }
    return fd;
}

/* The keyring from REGISTRY_KEY_FILE and REGISTRY_OLD_KEY_FILES. 0 or -1. */
static int keys_load(const reg_config *c, dw_keyring **out)
{
    char err[512], hex[16];
    int warned = 0;
    uint32_t id = 0;
    if (dw_keyring_create(out)) return -1;
    if (!*c->registry_key_file) {
        if (*c->registry_old_key_files) {
            DW_ERROR("REGISTRY_OLD_KEY_FILES needs REGISTRY_KEY_FILE (the key to write with)", "%s",
                     "");
            return -1;
        }
        DW_WARN("data at rest is NOT encrypted: connection records (user ids, source IPs, user "
                "agents) are written in plaintext; set DW_REGISTRY_KEY_FILE",
                "%s", "");
        return 0;
    }
    if (dw_keyring_add_file(*out, c->registry_key_file, 1, &id, err, sizeof err, &warned)) {
        DW_ERROR("cannot load the encryption key", "err=\"%s\"", err);
        return -1;
    }
    if (warned)
        DW_WARN("the key file can be read by others than its owner: chmod 600 it", "file=\"%s\"",
                c->registry_key_file);
    DW_INFO("data at rest is encrypted (AES-256-GCM)", "key_id=%s file=\"%s\"",
            dw_key_id_hex(id, hex, sizeof hex), c->registry_key_file);

    char *list = strdup(c->registry_old_key_files), *save = NULL;
    if (!list) return -1;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t n = strlen(tok);
        while (n && tok[n - 1] == ' ')
            tok[--n] = '\0';
        if (!n) continue;
        if (dw_keyring_add_file(*out, tok, 0, &id, err, sizeof err, &warned)) {
            DW_ERROR("cannot load an old encryption key", "err=\"%s\"", err);
            free(list);
            return -1;
        }
        DW_INFO("old key loaded (read only)", "key_id=%s file=\"%s\"",
                dw_key_id_hex(id, hex, sizeof hex), tok);
    }
    free(list);
    return 0;
}

/* --restore-to: rebuild the stopped replica's table and exit. */
static int restore_offline(const reg_config *c, jsCtx *js, const char *replica_dir,
                           const char *ckpt_dir, const dw_keyring *keys)
{
    int64_t to_ms;
    reg_restore_plan plan;
    reg_restore_result res;
    char *err = NULL, when[32];
    if (dw_time_parse(c->restore_to, DW_TIME_RFC3339, &to_ms, NULL)) {
        fprintf(stderr,
                "registry: --restore-to '%s' is not an RFC 3339 time with a zone "
                "(e.g. 2026-11-25T08:54:27Z)\n",
                c->restore_to);
        return 2;
    }
    dw_iso8601_ms(to_ms, when, sizeof when);
    if (reg_restore_plan_make(js, ckpt_dir, keys, to_ms, c->full_replay, &plan, &err)) {
        DW_ERROR("cannot plan the restore", "err=\"%s\"", err ? err : "?");
        free(err);
        return 1;
    }
    DW_INFO(c->dry_run ? "restore plan (dry run: nothing changes)" : "restore plan",
            "to=%s checkpoint=%s checkpoint_seq=%llu replay_from=%llu replay_until=%llu "
            "stream_first_seq=%llu checkpoints_seen=%zu skipped_for_keys=%zu gap=%d",
            when, plan.has_ckpt ? plan.ckpt.name : "none",
            (unsigned long long)(plan.has_ckpt ? plan.ckpt.applied_seq : 0),
            (unsigned long long)plan.from_seq, (unsigned long long)plan.until_seq,
            (unsigned long long)plan.stream_first_seq, plan.n_ckpts, plan.skipped_keys, plan.gap);
    if (plan.gap)
        DW_WARN("events after the checkpoint have expired from DW_CONN: the restore misses them",
                "checkpoint_seq=%llu stream_first_seq=%llu",
                (unsigned long long)plan.ckpt.applied_seq,
                (unsigned long long)plan.stream_first_seq);
    if (c->dry_run) return 0;
    /* No emitter runs here: the rebuilt table keeps every event it derives
     * in its outbox, and the next start publishes those DW_EVENTS lacks. */
    plan.events = c->events;
    if (reg_restore_build(js, replica_dir, &plan, keys, &dw_stop, &res, &err) ||
        reg_restore_recover(replica_dir) < 0) {
        DW_ERROR("restore failed; the table is unchanged", "err=\"%s\"",
                 err ? err : strerror(errno));
        free(err);
        return 1;
    }
    DW_INFO("restored: the next start serves this state, held, until 'dwctl registry resume'",
            "to=%s applied_seq=%llu connections=%llu replayed=%llu", when,
            (unsigned long long)res.applied_seq, (unsigned long long)res.connections,
            (unsigned long long)res.replayed);
    return 0;
}

typedef struct reg_app {
    reg_config cfg;
    char replica_dir[4096], ckpt_dir[4096], dbdir[4200];
    int lock_fd;
    dw_keyring *keys;
    reg_store *st;
    _Atomic(reg_node *) node;
    reg_ops *ops;
    reg_reconcile *recon;
} reg_app;

static bool is_ready(void *arg)
{
    reg_app *a = arg;
    reg_node *n = atomic_load(&a->node);
    return n && reg_node_ready(n);
}

/* Before NATS: the replica directory, its lock, the keys, and whatever a
 * kill -9 interrupted. */
static int init(dw_service *s)
{
    reg_app *a = s->arg;
    const reg_config *c = &a->cfg;
    char *err = NULL;
    a->lock_fd = -1;
    if (!replica_id_valid(c->replica_id)) {
        fprintf(stderr, "registry: REPLICA_ID must be 1-32 of [A-Za-z0-9_-]\n");
        return 2;
    }
    snprintf(s->instance, sizeof s->instance, "%s", c->replica_id);
    snprintf(s->conn_name, sizeof s->conn_name, "registry-%s", c->replica_id);
    s->offline = *c->restore_to != '\0';

    int n = snprintf(a->replica_dir, sizeof a->replica_dir, "%s/registry/%s", c->data_dir,
                     c->replica_id);
    if (n < 0 || (size_t)n >= sizeof a->replica_dir || reg_fs_mkdir_p(a->replica_dir)) {
        DW_ERROR("cannot create the data directory", "dir=\"%s\" err=\"%s\"", a->replica_dir,
                 strerror(errno));
        return 1;
    }
    if (*c->checkpoint_dir)
        n = snprintf(a->ckpt_dir, sizeof a->ckpt_dir, "%s", c->checkpoint_dir);
    else
        n = snprintf(a->ckpt_dir, sizeof a->ckpt_dir, "%s/checkpoints", a->replica_dir);
    if (n < 0 || (size_t)n >= sizeof a->ckpt_dir ||
        reg_fs_join(a->dbdir, sizeof a->dbdir, a->replica_dir, "db")) {
        DW_ERROR("directory name too long", "dir=\"%s\"", a->replica_dir);
        return 1;
    }
    if ((a->lock_fd = replica_lock(a->replica_dir)) < 0) return 1;
    if (keys_load(c, &a->keys)) return 1;

    /* Whatever a kill -9 interrupted: finish a swap, drop a half build,
     * drop a half checkpoint. */
    int rec = reg_restore_recover(a->replica_dir);
    if (rec < 0) {
        DW_ERROR("cannot repair the replica directory", "dir=\"%s\" err=\"%s\"", a->replica_dir,
                 strerror(errno));
        return 1;
    }
    if (rec > 0)
        DW_WARN("finished swapping in a restored table after a crash", "dir=\"%s\"",
                a->replica_dir);
    reg_ckpt_cleanup_tmp(a->ckpt_dir);

    if (*c->bootstrap_from) {
        reg_ckpt ck;
        int b = reg_bootstrap(a->replica_dir, c->bootstrap_from, a->keys, &ck, &err);
        if (b < 0) {
            DW_ERROR("bootstrap failed", "from=\"%s\" err=\"%s\"", c->bootstrap_from,
                     err ? err : "?");
            free(err);
            return 1;
        }
        if (b == 0)
            DW_INFO("the replica has a table already; BOOTSTRAP_FROM ignored", "dir=\"%s\"",
                    a->dbdir);
        else
            DW_INFO("bootstrapped from a checkpoint; catching up from its sequence",
                    "from=\"%s\" applied_seq=%llu connections=%llu", c->bootstrap_from,
                    (unsigned long long)ck.applied_seq, (unsigned long long)ck.connections);
    }
    return 0;
}

/* Streams must exist before the consumer; NATS may still be coming up.
 * The registry owns DW_CONN, DW_MSG, DW_EVENTS and DW_ROUTE: it creates or updates
 * them. */
static int setup(dw_service *s)
{
    reg_app *a = s->arg;
    dw_stream_opts so;
    dw_stream_opts_default(&so);
    so.replicas = (int)a->cfg.stream_replicas;
    so.events_max_age_s = a->cfg.events_max_age_s;
    so.events = a->cfg.events;
    return dw_streams_ensure(s->js, &so) == NATS_OK ? 0 : -1;
}

static int run(dw_service *s)
{
    reg_app *a = s->arg;
    const reg_config *c = &a->cfg;
    char *err = NULL;
    if (*c->restore_to) return restore_offline(c, s->js, a->replica_dir, a->ckpt_dir, a->keys);

    reg_store_opts so = {.keys = a->keys, .events = c->events};
    if (reg_store_open_opts(&a->st, a->dbdir, &so, &err)) {
        DW_ERROR("cannot open the table", "dir=\"%s\" err=\"%s\"", a->dbdir, err ? err : "?");
        free(err);
        return 1;
    }
    DW_INFO("table opened", "dir=\"%s\" applied_seq=%llu connections=%llu", a->dbdir,
            (unsigned long long)reg_store_applied_seq(a->st),
            (unsigned long long)reg_store_count(a->st));

    reg_reconcile_opts ro;
    reg_reconcile_opts_default(&ro);
    ro.edge_ttl_ms = c->reconcile_edge_ttl_ms;
    ro.request_timeout_ms = c->reconcile_timeout_ms;
    if (reg_reconcile_start(&a->recon, s->nc, s->js, &ro)) return 1;

    reg_node_cfg nc_cfg = {
        .replica_id = c->replica_id,
        .replica_dir = a->replica_dir,
        .ckpt_dir = a->ckpt_dir,
        .query_wait_ms = c->query_wait_ms,
        .ckpt_interval_s = c->checkpoint_interval_s,
        .ckpt_keep = c->checkpoint_keep,
        .ckpt_max_age_s = c->checkpoint_max_age_s,
        .keys = a->keys,
        .reconcile = a->recon,
        .events = c->events,
    };
    reg_emit_opts_default(&nc_cfg.emit);
    nc_cfg.emit.nats_url = s->common->nats_url;
    reg_node *node = NULL;
    int node_rc = reg_node_create(&node, &nc_cfg, a->st, s->nc, s->js);
    a->st = NULL; /* the node owns it now */
    if (node_rc) return 1;
    atomic_store(&a->node, node);
    if (reg_ops_start(&a->ops, s->nc, node, c->replica_id)) return 1;
    return reg_node_run(node) ? 1 : 0;
}

static void stop(dw_service *s)
{
    reg_app *a = s->arg;
    reg_node *node = atomic_load(&a->node);
    if (reg_ops_stop(a->ops)) { /* an operation may still use them: leave them to the exit */
        node = NULL;
        a->recon = NULL;
    }
    a->ops = NULL;
    atomic_store(&a->node, NULL);
    reg_node_free(node);
    reg_reconcile_free(a->recon);
    a->recon = NULL;
    reg_store_close(a->st);
    a->st = NULL;
}

static void cleanup(dw_service *s)
{
    reg_app *a = s->arg;
    dw_keyring_free(a->keys);
    if (a->lock_fd >= 0) close(a->lock_fd);
}

static const char summary[] =
    "DynamoWave registry: the connections table (DW_CONN -> RocksDB), its "
    "checkpoints, point-in-time restore and encryption at rest.";

int main(int argc, char **argv)
{
    static reg_app app;
    /* init, setup, run, stop, cleanup, ready */
    static const dw_service_hooks hooks = {init, setup, run, stop, cleanup, is_ready};
    dw_service s = DW_SERVICE("registry", summary, reg_fields, &app.cfg, &hooks, &app);
    return dw_service_main(&s, argc, argv);
}
