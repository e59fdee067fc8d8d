/* dwctl conn: the connections table, read through the registry
 * (dw.registry.list), and the @connections operations through the api
 * service (dw.api.connections.post|delete). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dw/wire.h"
#include "dwctl.h"

static void conn_usage(FILE *out)
{
    fprintf(out,
            "Usage: dwctl conn list [--edge EDGE_ID] [--user USER_ID] [--json]\n"
            "       dwctl conn get CONNECTION_ID [--json]\n"
            "       dwctl conn post CONNECTION_ID (--data TEXT | --file FILE | -)\n"
            "       dwctl conn delete CONNECTION_ID\n"
            "\n"
            "list and get read the connections table from the registry (dw.registry.list);\n"
            "post and delete go through the api service (dw.api.connections.post|delete),\n"
            "which asks the edge holding the connection: the same operations as\n"
            "POST and DELETE /@connections/{id} over HTTP.\n"
            "\n"
            "  list    one row per connection: ID, EDGE, USER, SOURCE_IP, CONNECTED_AT\n"
            "          (ISO-8601 UTC) and ROOMS; --edge keeps those held by one edge,\n"
            "          --user those of one user.\n"
            "  get     the connection with this id; exit status 1 if there is none.\n"
            "  post    send the message to the connection as one text frame; it is\n"
            "          written to the socket when the command returns 0.\n"
            "  delete  close the connection (close code 1000).\n"
            "  post and delete exit with 1 and \"connection ID is gone\" when the\n"
            "  connection no longer exists (the registry then forgets it too).\n"
            "\n"
            "Options:\n"
            "  --edge EDGE_ID   list: only connections held by this edge\n"
            "  --user USER_ID   list: only connections of this user\n"
            "  --data TEXT      post: the message\n"
            "  --file FILE      post: the message is the content of FILE ('-' or a lone\n"
            "                   '-' argument: standard input)\n"
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
    Dw__ListReply *reply = dw_pb_unpack(&dw__list_reply__descriptor, msg);
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
                                         {"user", required_argument, NULL, 'u'},
                                         {"json", no_argument, NULL, 'j'},
                                         {NULL, 0, NULL, 0}};
    const char *edge = NULL, *user = NULL;
    int json = 0, opt, rc;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': conn_usage(stdout); return DWCTL_OK;
        case 'e': edge = optarg; break;
        case 'u': user = optarg; break;
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
    if (user) {
        /* The registry has no user index: keep the user's rows here. */
        size_t kept = 0;
        for (size_t i = 0; i < reply->n_conns; i++) {
            if (!strcmp(reply->conns[i]->user_id, user))
                reply->conns[kept++] = reply->conns[i];
            else
                dw__conn_record__free_unpacked(reply->conns[i], NULL);
        }
        reply->n_conns = kept;
    }
    if (json) {
        for (size_t i = 0; i < reply->n_conns && rc == DWCTL_OK; i++)
            rc = dwctl_json_print_line(conn_json(reply->conns[i]));
    } else {
        rc = print_table(reply);
    }
    /* A capped reply must not pass for the whole table. */
    if (rc == DWCTL_OK && !edge && !user && reply->total > reply->n_conns)
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

static int read_all(FILE *f, const char *cmd, const char *name, size_t max, uint8_t **out,
                    size_t *outlen)
{
    size_t cap = 64 * 1024, len = 0;
    uint8_t *buf = malloc(cap);
    *out = NULL;
    *outlen = 0;
    if (!buf) {
        dwctl_err("out of memory");
        return DWCTL_FAIL;
    }
    for (;;) {
        if (len == cap) {
            if (cap >= max) {
                dwctl_err("%s: %s is larger than %zu bytes", cmd, name, max);
                free(buf);
                return DWCTL_FAIL;
            }
            uint8_t *grown = realloc(buf, cap * 2);
            if (!grown) {
                dwctl_err("out of memory");
                free(buf);
                return DWCTL_FAIL;
            }
            buf = grown;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    if (ferror(f)) {
        dwctl_err("%s: cannot read %s", cmd, name);
        free(buf);
        return DWCTL_FAIL;
    }
    *out = buf;
    *outlen = len;
    return DWCTL_OK;
}

int dwctl_post_message(int argc, char **argv, const char *cmd, const char *usage, const char *text,
                       const char *file, int sources, uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (optind < argc && !strcmp(argv[optind], "-")) {
        file = "-";
        sources++;
        optind++;
    }
    if (optind < argc) {
        dwctl_err("%s: unexpected argument '%s' (usage: %s)", cmd, argv[optind], usage);
        return DWCTL_USAGE;
    }
    if (sources != 1) {
        dwctl_err("%s: %s (usage: %s)", cmd, sources ? "give the message once" : "missing message",
                  usage);
        return DWCTL_USAGE;
    }
    if (!file) {
        size_t len = strlen(text);
        if (!(*out = malloc(len ? len : 1))) {
            dwctl_err("out of memory");
            return DWCTL_FAIL;
        }
        memcpy(*out, text, len);
        *outlen = len;
        return DWCTL_OK;
    }
    /* NATS caps a message well below this; the api service caps it lower. */
    const size_t max = 64u * 1024 * 1024;
    bool in = !strcmp(file, "-");
    FILE *f = in ? stdin : fopen(file, "rb");
    if (!f) {
        dwctl_err("%s: cannot open %s: %s", cmd, file, strerror(errno));
        return DWCTL_FAIL;
    }
    int rc = read_all(f, cmd, in ? "standard input" : file, max, out, outlen);
    if (!in) fclose(f);
    return rc;
}

/* One @connections operation through the api service; prints what went
 * wrong and returns the exit status. */
static int api_call(dwctl *ctl, const char *cmd, const char *subj, const char *id,
                    const uint8_t *data, size_t len)
{
    Dw__ApiRequest rq = DW__API_REQUEST__INIT;
    natsMsg *msg = NULL;
    char err[512], safe[256];

    rq.conn_id = (char *)id;
    rq.data.data = (uint8_t *)data;
    rq.data.len = len;
    if (dwctl_connect(ctl) != DWCTL_OK) return DWCTL_FAIL;
    if (dwctl_request(ctl, subj, &rq.base, &msg, err, sizeof err) != DWCTL_OK) {
        dwctl_err("api: %s", err);
        return DWCTL_FAIL;
    }
    Dw__ApiReply *reply = dw_pb_unpack(&dw__api_reply__descriptor, msg);
    natsMsg_Destroy(msg);
    if (!reply) {
        dwctl_err("api: the reply on %s is not an ApiReply", subj);
        return DWCTL_FAIL;
    }
    int rc = DWCTL_FAIL;
    dwctl_term_safe(id, safe, sizeof safe);
    switch (reply->status) {
    case 200:
    case 204: rc = DWCTL_OK; break;
    case 410: dwctl_err("connection %s is gone", safe); break;
    case 413: dwctl_err("%s: message too large: %s", cmd, reply->error); break;
    default:
        dwctl_err("%s: %s (status %u)", cmd, *reply->error ? reply->error : "failed",
                  reply->status);
        break;
    }
    dw__api_reply__free_unpacked(reply, NULL);
    return rc;
}

/* The id argument of post/delete: exactly one, and a source for post. */
static int one_id(int argc, char **argv, const char *cmd, const char *usage, const char **id)
{
    if (optind >= argc || !*argv[optind]) {
        dwctl_err("%s: missing connection id (usage: %s)", cmd, usage);
        return DWCTL_USAGE;
    }
    *id = argv[optind++];
    return DWCTL_OK;
}

static int conn_post(dwctl *ctl, int argc, char **argv)
{
    static const char usage[] = "dwctl conn post ID (--data TEXT | --file FILE | -)";
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"data", required_argument, NULL, 'd'},
                                         {"file", required_argument, NULL, 'f'},
                                         {NULL, 0, NULL, 0}};
    const char *text = NULL, *file = NULL, *id = NULL;
    int opt, rc, sources = 0;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":hd:f:", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': conn_usage(stdout); return DWCTL_OK;
        case 'd':
            text = optarg;
            sources++;
            break;
        case 'f':
            file = optarg;
            sources++;
            break;
        default:
            if ((rc = dwctl_common_option(ctl, "conn post", opt, argv)) != DWCTL_OK) return rc;
        }
    }
    if ((rc = one_id(argc, argv, "conn post", usage, &id)) != DWCTL_OK) return rc;
    uint8_t *data = NULL;
    size_t len = 0;
    rc = dwctl_post_message(argc, argv, "conn post", usage, text, file, sources, &data, &len);
    if (rc == DWCTL_OK) rc = api_call(ctl, "conn post", DW_SUBJ_API_POST, id, data, len);
    free(data);
    return rc;
}

static int conn_delete(dwctl *ctl, int argc, char **argv)
{
    static const char usage[] = "dwctl conn delete ID";
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS, {NULL, 0, NULL, 0}};
    const char *id = NULL;
    int opt, rc;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (opt == 'h') {
            conn_usage(stdout);
            return DWCTL_OK;
        }
        if ((rc = dwctl_common_option(ctl, "conn delete", opt, argv)) != DWCTL_OK) return rc;
    }
    if ((rc = one_id(argc, argv, "conn delete", usage, &id)) != DWCTL_OK) return rc;
    if (optind < argc) {
        dwctl_err("conn delete: unexpected argument '%s' (one connection id at a time)",
                  argv[optind]);
        return DWCTL_USAGE;
    }
    return api_call(ctl, "conn delete", DW_SUBJ_API_DELETE, id, NULL, 0);
}

int cmd_conn(dwctl *ctl, int argc, char **argv)
{
    if (argc < 2) {
        dwctl_err("conn: missing subcommand: list, get, post or delete (see 'dwctl conn --help')");
        return DWCTL_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        conn_usage(stdout);
        return DWCTL_OK;
    }
    if (!strcmp(sub, "list")) return conn_list(ctl, argc - 1, argv + 1);
    if (!strcmp(sub, "get")) return conn_get(ctl, argc - 1, argv + 1);
    if (!strcmp(sub, "post")) return conn_post(ctl, argc - 1, argv + 1);
    if (!strcmp(sub, "delete")) return conn_delete(ctl, argc - 1, argv + 1);
    dwctl_err("conn: unknown subcommand '%s': list, get, post or delete (see 'dwctl conn --help')",
              sub);
    return DWCTL_USAGE;
}
