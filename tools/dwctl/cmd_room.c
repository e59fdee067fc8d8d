/* dwctl room: publish to a room the way a backend does, through the api
 * service (dw.api.rooms.publish, JSON: docs/integrations.md). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"
#include "dwctl.h"

static void room_usage(FILE *out)
{
    fprintf(out, "Usage: dwctl room post ROOM (--data TEXT | --file FILE | -) [--from NAME]\n"
                 "                            [--key KEY] [--json-data] [--json]\n"
                 "\n"
                 "post stores a message in the room (DW_MSG) through the api service\n"
                 "(dw.api.rooms.publish): the same as POST /@rooms/{room}/messages over HTTP.\n"
                 "Members get it as a chat message: plain (AWS) clients in the room lobby as\n"
                 "the text itself, dynamowave.v1 members as a \"message\" from NAME. It prints\n"
                 "the message's sequence in the room once it is stored.\n"
                 "\n"
                 "Options:\n"
                 "  --data TEXT      the message\n"
                 "  --file FILE      the message is the content of FILE ('-' or a lone '-'\n"
                 "                   argument: standard input)\n"
                 "  --from NAME      the sender members see (default: server)\n"
                 "  --key KEY        idempotency key (1-64 of A-Z a-z 0-9 . _ : -): a retry\n"
                 "                   with the same key within 2 minutes is stored once, and\n"
                 "                   answers with the first one's sequence\n"
                 "  --json-data      the message is a JSON value, sent to v1 members as such\n"
                 "  --json           print the api's answer: {\"room\",\"seq\"[,\"duplicate\"]}\n");
    dwctl_print_global_help(out);
}

/* The request's "data": the text as a JSON string, or the JSON value. */
static json_t *data_value(const uint8_t *data, size_t len, int as_json)
{
    if (!as_json) return json_stringn((const char *)data, len);
    json_error_t je;
    json_t *v = json_loadb((const char *)data, len, JSON_DECODE_ANY, &je);
    if (!v) dwctl_err("room post: --json-data: the message is not JSON: %s", je.text);
    return v;
}

static int room_post(dwctl *ctl, int argc, char **argv)
{
    static const char usage[] = "dwctl room post ROOM (--data TEXT | --file FILE | -)";
    enum { OPT_FROM = 0x200, OPT_KEY, OPT_JSON_DATA, OPT_JSON };
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"data", required_argument, NULL, 'd'},
                                         {"file", required_argument, NULL, 'f'},
                                         {"from", required_argument, NULL, OPT_FROM},
                                         {"key", required_argument, NULL, OPT_KEY},
                                         {"json-data", no_argument, NULL, OPT_JSON_DATA},
                                         {"json", no_argument, NULL, OPT_JSON},
                                         {NULL, 0, NULL, 0}};
    const char *text = NULL, *file = NULL, *room = NULL, *from = NULL, *key = NULL;
    int opt, rc, sources = 0, as_json = 0, print_json = 0;

    dwctl_getopt_reset();
    while ((opt = getopt_long(argc, argv, ":hd:f:", opts, NULL)) != -1) {
        switch (opt) {
        case 'h': room_usage(stdout); return DWCTL_OK;
        case 'd':
            text = optarg;
            sources++;
            break;
        case 'f':
            file = optarg;
            sources++;
            break;
        case OPT_FROM: from = optarg; break;
        case OPT_KEY: key = optarg; break;
        case OPT_JSON_DATA: as_json = 1; break;
        case OPT_JSON: print_json = 1; break;
        default:
            if ((rc = dwctl_common_option(ctl, "room post", opt, argv)) != DWCTL_OK) return rc;
        }
    }
    if (optind >= argc || !*argv[optind]) {
        dwctl_err("room post: missing room (usage: %s)", usage);
        return DWCTL_USAGE;
    }
    room = argv[optind++];
    if (!dw_room_valid(room, strlen(room))) {
        dwctl_err("room post: '%s' is not a room name (1-%d of A-Z a-z 0-9 - _ ., a '.' may "
                  "not start, end or repeat)",
                  room, DW_ROOM_MAX);
        return DWCTL_USAGE;
    }
    uint8_t *data = NULL;
    size_t len = 0;
    if ((rc = dwctl_post_message(argc, argv, "room post", usage, text, file, sources, &data,
                                 &len)) != DWCTL_OK)
        return rc;
    json_t *value = data_value(data, len, as_json);
    free(data);
    if (!value) {
        if (!as_json) dwctl_err("room post: the message is not UTF-8 text (try --json-data)");
        return DWCTL_FAIL;
    }
    json_t *req = json_pack("{s:s, s:o}", "room", room, "data", value);
    if (req && from) json_object_set_new(req, "from", json_string(from));
    if (req && key) json_object_set_new(req, "idempotencyKey", json_string(key));
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body) {
        dwctl_err("room post: cannot build the request (is --from UTF-8?)");
        return DWCTL_FAIL;
    }

    natsMsg *msg = NULL;
    char err[512];
    rc = dwctl_connect(ctl);
    if (rc == DWCTL_OK && dwctl_request_raw(ctl, DW_SUBJ_API_ROOMS_PUBLISH, body, strlen(body),
                                            &msg, err, sizeof err) != DWCTL_OK) {
        dwctl_err("api: %s", err);
        rc = DWCTL_FAIL;
    }
    free(body);
    if (rc != DWCTL_OK) return rc;

    json_error_t je;
    json_t *answer = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &je);
    natsMsg_Destroy(msg);
    json_t *seq = answer ? json_object_get(answer, "seq") : NULL;
    if (json_is_integer(seq)) {
        if (print_json) return dwctl_json_print_line(answer);
        printf("stored in %s as seq %lld%s\n", room, (long long)json_integer_value(seq),
               json_is_true(json_object_get(answer, "duplicate"))
                   ? " (a retry: the key was stored before)"
                   : "");
        json_decref(answer);
        return DWCTL_OK;
    }
    const char *why = answer ? json_string_value(json_object_get(answer, "error")) : NULL;
    json_t *status = answer ? json_object_get(answer, "status") : NULL;
    if (why)
        dwctl_err("room post: %s (status %lld)", why,
                  json_is_integer(status) ? (long long)json_integer_value(status) : 0LL);
    else
        dwctl_err("room post: the api's answer is not understood");
    json_decref(answer);
    return DWCTL_FAIL;
}

int cmd_room(dwctl *ctl, int argc, char **argv)
{
    if (argc < 2) {
        dwctl_err("room: missing subcommand: post (see 'dwctl room --help')");
        return DWCTL_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        room_usage(stdout);
        return DWCTL_OK;
    }
    if (!strcmp(sub, "post")) return room_post(ctl, argc - 1, argv + 1);
    dwctl_err("room: unknown subcommand '%s': post (see 'dwctl room --help')", sub);
    return DWCTL_USAGE;
}
