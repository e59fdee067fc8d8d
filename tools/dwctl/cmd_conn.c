/* dwctl conn: the connections table, read through the registry
 * (dw.registry.list). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dwctl.h"

static void conn_usage(FILE *out)
{
    fprintf(out,
            "Usage: dwctl conn list [--edge EDGE_ID] [--json]\n"
            "       dwctl conn get CONNECTION_ID [--json]\n"
            "\n"
            "Reads the connections table from the registry (dw.registry.list).\n"
            "\n"
            "  list   one row per connection: ID, EDGE, USER, SOURCE_IP, CONNECTED_AT\n"
            "         (ISO-8601 UTC) and ROOMS; --edge keeps those held by one edge.\n"
            "  get    the connection with this id; exit status 1 if there is none.\n"
            "\n"
            "Options:\n"
            "  --edge EDGE_ID   list: only connections held by this edge\n"
            "  --json           one JSON object per connection and line:\n"
            "                   {\"connectionId\",\"edgeId\",\"userId\",\"sourceIp\",\n"
            "                    \"userAgent\" (null when unknown),\"connectedAt\",\"rooms\"}\n");
    dwctl_print_global_help(out);
}

/* The AWS @connections field names, so scripts written for one read the other. */
static json_t *conn_json(const Dw__ConnRecord *r)
{
    char ts[32];
    json_t *rooms = json_array();
    if (!rooms) return NULL;
    for (size_t i = 0; i < r->n_rooms; i++)
        json_array_append_new(rooms, dwctl_json_str(r->rooms[i]));
    json_t *connected_at = r->connected_at_ms > 0
                               ? dwctl_json_str(dwctl_time(r->connected_at_ms, ts, sizeof ts))
                               : json_null();
    /* clang-format off */
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                     "connectionId", dwctl_json_str(r->conn_id),
                     "edgeId", dwctl_json_str(r->edge_id),
                     "userId", dwctl_json_str(r->user_id),
                     "sourceIp", dwctl_json_str(r->source_ip),
                     "userAgent", dwctl_json_str(r->has_user_agent ? r->user_agent : NULL),
                     "connectedAt", connected_at,
                     "rooms", rooms);
    /* clang-format on */
}

/* "a,b,c" (malloc'd) */
static char *rooms_joined(const Dw__ConnRecord *r)
{
    size_t len = 1;
    for (size_t i = 0; i < r->n_rooms; i++)
        len += strlen(r->rooms[i]) + 1;
    char *out = malloc(len);
    if (!out) return NULL;
    out[0] = '\0';
    for (size_t i = 0; i < r->n_rooms; i++) {
        if (i) strcat(out, ",");
        strcat(out, r->rooms[i]);
    }
    return out;
}

/* Ask the registry; on success *out is the caller's (free_unpacked). */
static int conn_query(dwctl *ctl, const char *edge_id, const char *conn_id, Dw__ListReply **out)
{
    Dw__ListQuery q = DW__LIST_QUERY__INIT;
    natsMsg *msg = NULL;
    char err[512];

    q.edge_id = (char *)(edge_id ? edge_id : "");
    q.conn_id = (char *)(conn_id ? conn_id : "");
    *out = NULL;
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;
    if (dwctl_request(ctl, DW_SUBJ_REG_LIST, &q.base, &msg, err, sizeof err) != DWCTL_OK) {
        dwctl_err("registry: %s", err);
        return DWCTL_FAIL;
    }
    Dw__ListReply *reply = dw__list_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                  (const uint8_t *)natsMsg_GetData(msg));
    natsMsg_Destroy(msg);
    if (!reply) {
        dwctl_err("registry: the reply on %s is not a ListReply", DW_SUBJ_REG_LIST);
        return DWCTL_FAIL;
    }
    if (!reply->ok) {
        dwctl_err("registry: %s", *reply->error ? reply->error : "request refused");
        dw__list_reply__free_unpacked(reply, NULL);
        return DWCTL_FAIL;
    }
    *out = reply;
    return DWCTL_OK;
}

static int print_table(const Dw__ListReply *reply)
{
    static const char *const headers[] = {"ID",        "EDGE",         "USER",
                                          "SOURCE_IP", "CONNECTED_AT", "ROOMS"};
    dwctl_table t;
    int rc = DWCTL_FAIL;
    if (dwctl_table_init(&t, 6, headers)) goto error;
    for (size_t i = 0; i < reply->n_conns; i++) {
        const Dw__ConnRecord *r = reply->conns[i];
        char ts[32];
        char *rooms = rooms_joined(r);
        if (!rooms) goto error;
        const char *row[] = {r->conn_id,
                             r->edge_id,
                             r->user_id,
                             r->source_ip,
                             dwctl_time(r->connected_at_ms, ts, sizeof ts),
                             rooms};
        int bad = dwctl_table_add(&t, row);
        free(rooms);
        if (bad) goto error;
    }
    dwctl_table_print(&t, stdout);
    rc = DWCTL_OK;
error:
    if (rc != DWCTL_OK) dwctl_err("out of memory");
    dwctl_table_free(&t);
    return rc;
}

static void print_one(const Dw__ConnRecord *r)
{
    char buf[1024], ts[32];
    char *rooms = rooms_joined(r);
    printf("connectionId:  %s\n", dwctl_term_safe(r->conn_id, buf, sizeof buf));
    printf("edgeId:        %s\n", dwctl_term_safe(r->edge_id, buf, sizeof buf));
    printf("userId:        %s\n", dwctl_term_safe(r->user_id, buf, sizeof buf));
    printf("sourceIp:      %s\n", dwctl_term_safe(r->source_ip, buf, sizeof buf));
    printf("userAgent:     %s\n",
           r->has_user_agent ? dwctl_term_safe(r->user_agent, buf, sizeof buf) : "(none)");
    printf("connectedAt:   %s\n",
           dwctl_term_safe(dwctl_time(r->connected_at_ms, ts, sizeof ts), buf, sizeof buf));
    printf("rooms:         %s\n", dwctl_term_safe(rooms ? rooms : "", buf, sizeof buf));
    printf("connSeq:       %llu\n", (unsigned long long)r->conn_seq);
    free(rooms);
}

static int conn_list(dwctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"edge", required_argument, NULL, 'e'},
                                         {"json", no_argument, NULL, 'j'},
                                         {NULL, 0, NULL, 0}};
    const char *edge = NULL;
    int json = 0, opt, rc;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': conn_usage(stdout); return DWCTL_OK;
        case 'e': edge = optarg; break;
        case 'j': json = 1; break;
        default:
            if ((rc = dwctl_common_option(ctl, "conn list", opt, argv)) != DWCTL_OK) return rc;
        }
    }
    if (optind < argc) {
        dwctl_err("conn list: unexpected argument '%s' (see 'dwctl conn --help')", argv[optind]);
        return DWCTL_USAGE;
    }
    if (edge && !*edge) {
        dwctl_err("conn list: --edge needs an edge id");
        return DWCTL_USAGE;
    }

    Dw__ListReply *reply = NULL;
    if ((rc = conn_query(ctl, edge, NULL, &reply)) != DWCTL_OK) return rc;
    if (json) {
        for (size_t i = 0; i < reply->n_conns && rc == DWCTL_OK; i++)
            rc = dwctl_json_print_line(conn_json(reply->conns[i]));
    } else {
        rc = print_table(reply);
    }
    /* A capped reply must not pass for the whole table. */
    if (rc == DWCTL_OK && !edge && reply->total > reply->n_conns)
        dwctl_err("showing %zu of %llu connections (the registry capped the reply)", reply->n_conns,
                  (unsigned long long)reply->total);
    dw__list_reply__free_unpacked(reply, NULL);
    return rc;
}

static int conn_get(dwctl *ctl, int argc, char **argv)
{
    static const struct option opts[] = {
        DWCTL_GLOBAL_OPTIONS, {"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
    int json = 0, opt, rc;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': conn_usage(stdout); return DWCTL_OK;
        case 'j': json = 1; break;
        default:
            if ((rc = dwctl_common_option(ctl, "conn get", opt, argv)) != DWCTL_OK) return rc;
        }
    }
    if (optind >= argc || !*argv[optind]) {
        dwctl_err("conn get: missing connection id (usage: dwctl conn get ID [--json])");
        return DWCTL_USAGE;
    }
    if (optind + 1 < argc) {
        dwctl_err("conn get: unexpected argument '%s' (one connection id at a time)",
                  argv[optind + 1]);
        return DWCTL_USAGE;
    }
    const char *id = argv[optind];

    Dw__ListReply *reply = NULL;
    if ((rc = conn_query(ctl, NULL, id, &reply)) != DWCTL_OK) return rc;
    const Dw__ConnRecord *found = NULL;
    for (size_t i = 0; i < reply->n_conns && !found; i++)
        if (!strcmp(reply->conns[i]->conn_id, id)) found = reply->conns[i];
    if (!found) {
        char buf[256];
        dwctl_err("connection %s not found", dwctl_term_safe(id, buf, sizeof buf));
        rc = DWCTL_FAIL;
    } else if (json) {
        rc = dwctl_json_print_line(conn_json(found));
    } else {
        print_one(found);
    }
    dw__list_reply__free_unpacked(reply, NULL);
    return rc;
}

int cmd_conn(dwctl *ctl, int argc, char **argv)
{
    if (argc < 2) {
        dwctl_err("conn: missing subcommand: list or get (see 'dwctl conn --help')");
        return DWCTL_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        conn_usage(stdout);
        return DWCTL_OK;
    }
    if (!strcmp(sub, "list")) return conn_list(ctl, argc - 1, argv + 1);
    if (!strcmp(sub, "get")) return conn_get(ctl, argc - 1, argv + 1);
    dwctl_err("conn: unknown subcommand '%s': list or get (see 'dwctl conn --help')", sub);
    return DWCTL_USAGE;
}
