/* dwctl registry: checkpoints, point-in-time restore, resume, key rotation,
 * reconciliation with the edges and the state of a registry replica.
 *
 * Talks to the registry's operations subjects (services/registry/ops.h):
 * dw.registry.<op> reaches any one replica, dw.registry.<op>.<replica> the
 * one named by --replica. Requests and replies there are JSON objects (the
 * operator's control plane, not a data path between services). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dwctl.h"

/* Work that takes as long as the table is big (restore, key rotation,
 * checkpoint) is waited for this long by default (--wait-ms); an absent
 * registry still fails at once (no responders). */
#define REGISTRY_SLOW_TIMEOUT_MS 600000

static void registry_usage(FILE *out)
{
    fprintf(
        out,
        "Usage: dwctl registry status       [--replica ID] [--json]\n"
        "       dwctl registry checkpoint   [--replica ID] [--json]\n"
        "       dwctl registry checkpoints  [--replica ID] [--json]\n"
        "       dwctl registry restore --to TIME [--dry-run] [--full-replay] [--replica ID] "
        "[--json]\n"
        "       dwctl registry resume       [--replica ID] [--json]\n"
        "       dwctl registry rotate-key   [--replica ID] [--json]\n"
        "       dwctl registry reconcile    [--dry-run] [--replica ID] [--json]\n"
        "\n"
        "  status       the replica's state (catching_up, live, held, restoring), the DW_CONN\n"
        "               sequence it applied and when that event was stored, connections,\n"
        "               encryption keys, newest checkpoint\n"
        "  checkpoint   take a checkpoint now (a RocksDB checkpoint: hard links) and print it\n"
        "  checkpoints  list the checkpoints, newest first\n"
        "  restore      rebuild the table as it was at TIME (RFC 3339 with a zone, e.g.\n"
        "               2026-11-25T08:54:27Z): the newest checkpoint whose last event is at or\n"
        "               before TIME, then DW_CONN replayed up to the last event at or before\n"
        "               TIME. The replica then serves that state and applies nothing newer\n"
        "               (state held, kept across restarts) until 'resume'.\n"
        "               --dry-run prints the plan only; --full-replay ignores checkpoints.\n"
        "  resume       lift the hold: apply DW_CONN from the restored point to now, then\n"
        "               reconcile (below) once the table has caught up\n"
        "  rotate-key   re-seal every value with the replica's current key\n"
        "               (DW_REGISTRY_KEY_FILE), then take a checkpoint; afterwards the old\n"
        "               key is only needed by older checkpoints\n"
        "  reconcile    ask every live edge which connections it holds and correct the\n"
        "               table through DW_CONN: ids no edge holds are disconnected, ids an\n"
        "               edge holds but the table lacks are announced again, edges that are\n"
        "               gone are declared down. --dry-run counts without correcting.\n"
        "\n"
        "Options:\n"
        "  --replica ID  the replica to ask (default: any one; name it when there are several)\n"
        "  --json        print the registry's reply as one JSON object\n"
        "  --wait-ms MS  restore, checkpoint, rotate-key, reconcile: how long to wait for the work "
        "to\n"
        "                finish (default %d, 10 min); other requests use --timeout-ms\n",
        REGISTRY_SLOW_TIMEOUT_MS);
    dwctl_print_global_help(out);
}

/* Send body to dw.registry.<op>[.<replica>] and parse the JSON reply. On
 * success *out is the caller's (json_decref). Exit status otherwise. */
static int registry_call(dwctl *ctl, const char *op, const char *replica, const char *body,
                         int64_t wait_ms, json_t **out)
{
    char subj[160];
    natsMsg *msg = NULL;
    json_error_t jerr;
    int64_t timeout = wait_ms > 0 ? wait_ms : ctl->cfg.timeout_ms;

    *out = NULL;
    if (replica)
        snprintf(subj, sizeof subj, "dw.registry.%s.%s", op, replica);
    else
        snprintf(subj, sizeof subj, "dw.registry.%s", op);
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;
    natsStatus s = natsConnection_RequestString(&msg, ctl->nc, subj, body, timeout);
    if (s == NATS_NO_RESPONDERS) {
        dwctl_err("registry: nothing answers on %s (is %s running?)", subj,
                  replica ? "that replica" : "a registry");
        return DWCTL_FAIL;
    }
    if (s == NATS_TIMEOUT) {
        dwctl_err("registry: no reply on %s within %lld ms", subj, (long long)timeout);
        return DWCTL_FAIL;
    }
    if (s != NATS_OK) {
        dwctl_err("registry: request on %s failed: %s", subj, natsStatus_GetText(s));
        return DWCTL_FAIL;
    }
    json_t *reply = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &jerr);
    natsMsg_Destroy(msg);
    if (!json_is_object(reply)) {
        json_decref(reply);
        dwctl_err("registry: the reply on %s is not a JSON object", subj);
        return DWCTL_FAIL;
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        const char *e = json_string_value(json_object_get(reply, "error"));
        char buf[512];
        dwctl_err("registry %s: %s", json_string_value(json_object_get(reply, "replica")) ?: "?",
                  dwctl_term_safe(e ? e : "request refused", buf, sizeof buf));
        int usage = e && !strncmp(e, "bad_request", 11);
        json_decref(reply);
        return usage ? DWCTL_USAGE : DWCTL_FAIL;
    }
    *out = reply;
    return DWCTL_OK;
}

static const char *str(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static long long num(const json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

/* "a,b,c" of a JSON array of strings into buf. */
static const char *joined(const json_t *a, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < json_array_size(a) && off + 1 < len; i++) {
        const char *s = json_string_value(json_array_get(a, i));
        int n = snprintf(buf + off, len - off, "%s%s", i ? "," : "", s ? s : "?");
        if (n < 0) break;
        off += (size_t)n;
    }
    return *buf ? buf : "-";
}

static void print_ckpt_line(const char *label, const json_t *c)
{
    printf("%-13s %s (last event seq %lld at %s, %lld connections)\n", label, str(c, "name"),
           num(c, "applied_seq"), str(c, "applied_ts"), num(c, "connections"));
}

static void print_status(const json_t *r)
{
    char keys[256];
    const json_t *last = json_object_get(r, "last_checkpoint");
    printf("replica       %s\n", str(r, "replica"));
    printf("state         %s%s\n", str(r, "state"),
           json_is_true(json_object_get(r, "serving")) ? " (serving queries)"
                                                       : " (not serving queries yet)");
    printf("applied_seq   %lld (event stored at %s)\n", num(r, "applied_seq"),
           str(r, "applied_ts"));
    if (!strcmp(str(r, "state"), "catching_up"))
        printf("catching up   to seq %lld\n", num(r, "catch_up_target"));
    printf("connections   %lld\n", num(r, "connections"));
    if (json_is_string(json_object_get(r, "restored_to")))
        printf("held at       %s (run 'dwctl registry resume' to apply newer events)\n",
               str(r, "restored_to"));
    if (json_is_true(json_object_get(r, "encrypted")))
        printf("encryption    AES-256-GCM, current key %s (the table needs: %s)\n",
               str(r, "key_id"), joined(json_object_get(r, "key_ids"), keys, sizeof keys));
    else
        printf("encryption    NONE: data at rest is not encrypted\n");
    if (json_is_object(last))
        print_ckpt_line("checkpoint", last);
    else
        printf("checkpoint    none yet\n");
    printf("checkpoints   %s\n", str(r, "checkpoint_dir"));
}

static int print_checkpoints(const json_t *r)
{
    static const char *const headers[] = {"NAME",        "TAKEN", "APPLIED_SEQ", "LAST_EVENT",
                                          "CONNECTIONS", "KEYS",  "HELD_AT"};
    const json_t *a = json_object_get(r, "checkpoints");
    dwctl_table t;
    int rc = DWCTL_FAIL;
    if (dwctl_table_init(&t, 7, headers)) goto error;
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *c = json_array_get(a, i);
        char seq[32], conns[32], keys[256];
        snprintf(seq, sizeof seq, "%lld", num(c, "applied_seq"));
        snprintf(conns, sizeof conns, "%lld", num(c, "connections"));
        const char *row[] = {str(c, "name"),
                             str(c, "time"),
                             seq,
                             str(c, "applied_ts"),
                             conns,
                             joined(json_object_get(c, "key_ids"), keys, sizeof keys),
                             str(c, "restored_to")};
        if (dwctl_table_add(&t, row)) goto error;
    }
    dwctl_table_print(&t, stdout);
    printf("(%zu in %s)\n", json_array_size(a), str(r, "dir"));
    rc = DWCTL_OK;
error:
    if (rc != DWCTL_OK) dwctl_err("out of memory");
    dwctl_table_free(&t);
    return rc;
}

static void print_restore(const json_t *r)
{
    const json_t *p = json_object_get(r, "plan"), *c = json_object_get(p, "checkpoint");
    const json_t *res = json_object_get(r, "result");
    int dry = json_is_true(json_object_get(r, "dry_run"));
    printf("%s replica %s to %s\n", dry ? "plan: restore" : "restored", str(r, "replica"),
           str(p, "to"));
    if (json_is_object(c))
        printf("  from checkpoint %s (seq %lld, last event at %s)\n", str(c, "name"),
               num(c, "applied_seq"), str(c, "applied_ts"));
    else
        printf("  from an empty table (no usable checkpoint%s)\n",
               num(p, "checkpoints_seen") ? " at or before that time" : "");
    printf("  replay DW_CONN from seq %lld, up to the last event at or before %s (stream ends "
           "at seq %lld)\n",
           num(p, "from_seq"), str(p, "to"), num(p, "until_seq"));
    if (num(p, "skipped_for_keys"))
        printf("  %lld newer checkpoint(s) skipped: their key is not configured\n",
               num(p, "skipped_for_keys"));
    if (json_is_true(json_object_get(p, "gap")))
        printf("  WARNING: events after the checkpoint expired from DW_CONN (it starts at seq "
               "%lld): the result misses them\n",
               num(p, "stream_first_seq"));
    if (json_is_object(res)) {
        printf("  replayed %lld events: %lld connections, applied_seq %lld (event at %s)\n",
               num(res, "replayed"), num(res, "connections"), num(res, "applied_seq"),
               str(res, "applied_ts"));
        printf("The replica serves this state and applies nothing newer until\n"
               "'dwctl registry resume%s%s'.\n",
               *str(r, "replica") ? " --replica " : "", str(r, "replica"));
    }
}

int cmd_registry(dwctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"replica", required_argument, NULL, 'r'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"to", required_argument, NULL, 't'},
                                         {"dry-run", no_argument, NULL, 'd'},
                                         {"full-replay", no_argument, NULL, 'f'},
                                         {"wait-ms", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    const char *replica = NULL, *to = NULL, *sub = NULL;
    int json = 0, dry = 0, full = 0, opt, rc;
    int64_t wait_ms = REGISTRY_SLOW_TIMEOUT_MS;
    char cmd[64], *end;

    if (argc >= 2 && argv[1][0] != '-') sub = argv[1];
    snprintf(cmd, sizeof cmd, "registry%s%s", sub ? " " : "", sub ? sub : "");
    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': registry_usage(stdout); return DWCTL_OK;
        case 'r': replica = optarg; break;
        case 'j': json = 1; break;
        case 't': to = optarg; break;
        case 'd': dry = 1; break;
        case 'f': full = 1; break;
        case 'w':
            wait_ms = strtoll(optarg, &end, 10);
            if (end == optarg || *end || wait_ms < 1 || wait_ms > 86400000) {
                dwctl_err("%s: --wait-ms must be 1..86400000", cmd);
                return DWCTL_USAGE;
            }
            break;
        default:
            if ((rc = dwctl_common_option(ctl, cmd, opt, argv)) != DWCTL_OK) return rc;
        }
    }
    /* getopt moved the operands to the end: the subcommand is the first. */
    if (optind >= argc) {
        dwctl_err("registry: missing subcommand (see 'dwctl registry --help')");
        return DWCTL_USAGE;
    }
    sub = argv[optind];
    if (optind + 1 < argc) {
        dwctl_err("%s: unexpected argument '%s' (see 'dwctl registry --help')", cmd,
                  argv[optind + 1]);
        return DWCTL_USAGE;
    }
    if (replica) {
        /* The replica names a subject token. */
        size_t n = strlen(replica);
        int ok = n >= 1 && n <= 32;
        for (size_t i = 0; ok && i < n; i++)
            ok = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
                        replica[i]) != NULL;
        if (!ok) {
            dwctl_err("%s: --replica must be 1-32 of [A-Za-z0-9_-]", cmd);
            return DWCTL_USAGE;
        }
    }
    int is_restore = !strcmp(sub, "restore"), is_reconcile = !strcmp(sub, "reconcile");
    if (!is_restore && (to || full || (dry && !is_reconcile))) {
        dwctl_err("%s: --to, --dry-run and --full-replay belong to 'registry restore' "
                  "(--dry-run also to 'registry reconcile')",
                  cmd);
        return DWCTL_USAGE;
    }

    json_t *reply = NULL;
    const char *op = NULL;
    char *body = NULL;
    int slow = 0;
    if (!strcmp(sub, "status")) {
        op = "status";
    } else if (!strcmp(sub, "checkpoint")) {
        op = "checkpoint";
        slow = 1;
    } else if (!strcmp(sub, "checkpoints")) {
        op = "checkpoints";
    } else if (is_restore) {
        if (!to || !*to) {
            dwctl_err(
                "registry restore: --to TIME is required (RFC 3339, e.g. 2026-11-25T08:54:27Z)");
            return DWCTL_USAGE;
        }
        op = "restore";
        slow = !dry;
        json_t *req = json_pack("{s:s, s:b, s:b}", "to", to, "dry_run", dry, "full_replay", full);
        body = req ? json_dumps(req, JSON_COMPACT) : NULL;
        json_decref(req);
        if (!body) {
            dwctl_err("out of memory");
            return DWCTL_FAIL;
        }
    } else if (!strcmp(sub, "resume")) {
        op = "resume";
    } else if (!strcmp(sub, "rotate-key")) {
        op = "rotate";
        slow = 1;
    } else if (is_reconcile) {
        op = "reconcile";
        slow = 1;
        body = strdup(dry ? "{\"dry_run\":true}" : "{}");
        if (!body) {
            dwctl_err("out of memory");
            return DWCTL_FAIL;
        }
    } else {
        dwctl_err("registry: unknown subcommand '%s' (see 'dwctl registry --help')", sub);
        return DWCTL_USAGE;
    }

    rc = registry_call(ctl, op, replica, body ? body : "{}", slow ? wait_ms : 0, &reply);
    free(body);
    if (rc != DWCTL_OK) return rc;
    if (json) return dwctl_json_print_line(reply);

    if (!strcmp(op, "status")) {
        print_status(reply);
    } else if (!strcmp(op, "checkpoint")) {
        const json_t *c = json_object_get(reply, "checkpoint");
        print_ckpt_line("checkpoint", c);
        printf("%-13s %s\n", "path", str(c, "path"));
    } else if (!strcmp(op, "checkpoints")) {
        rc = print_checkpoints(reply);
    } else if (!strcmp(op, "restore")) {
        print_restore(reply);
    } else if (!strcmp(op, "resume")) {
        if (json_is_true(json_object_get(reply, "was_held")))
            printf("replica %s resumed from seq %lld: applying DW_CONN up to now (state %s)\n",
                   str(reply, "replica"), num(reply, "applied_seq"), str(reply, "state"));
        else
            printf("replica %s was not held (state %s)\n", str(reply, "replica"),
                   str(reply, "state"));
    } else if (!strcmp(op, "reconcile")) {
        printf("replica %s%s: %lld edges asked (%lld gone, %lld not answering), %lld connections "
               "held\n"
               "  in the table but not on their edge: %lld (disconnect events: %lld)\n"
               "  on an edge but not in the table:    %lld (connect events: %lld)\n",
               str(reply, "replica"),
               json_is_true(json_object_get(reply, "dry_run")) ? " (dry run)" : "",
               num(reply, "edges"), num(reply, "edges_down"), num(reply, "edges_unreachable"),
               num(reply, "held"), num(reply, "ghosts"), num(reply, "dropped"),
               num(reply, "missing"), num(reply, "announced"));
    } else {
        const json_t *c = json_object_get(reply, "checkpoint");
        printf("replica %s: %lld values re-sealed with key %s; checkpoint %s taken.\n"
               "The old key is still needed by checkpoints taken before it, and by restores\n"
               "from them; older checkpoints are skipped (replayed from DW_CONN) without it.\n",
               str(reply, "replica"), num(reply, "rewritten"), str(reply, "key_id"),
               str(c, "name"));
    }
    json_decref(reply);
    return rc;
}
