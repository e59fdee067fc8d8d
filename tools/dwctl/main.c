/* dwctl: DynamoWave's operations CLI.
 *
 *   dwctl [global options] <area> [<subcommand>] [options]
 *
 * One cmd_<area>.c per area; this file loads the configuration, finds the
 * area and hands it the rest of the command line. */
#include <nats/nats.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/config.h"
#include "dwctl.h"

static const dw_cfg_field dwctl_fields[] = {
    {"NATS_URL", DW_CFG_STR, offsetof(dwctl_cfg, nats_url), "nats://127.0.0.1:4222", 0, 0,
     "NATS server URLs, comma-separated: every node of a cluster"},
    {"TIMEOUT_MS", DW_CFG_INT, offsetof(dwctl_cfg, timeout_ms), "2000", 1, 600000,
     "connect timeout and per-request timeout, ms"},
};
#define N_FIELDS (sizeof dwctl_fields / sizeof dwctl_fields[0])

typedef struct dwctl_area {
    const char *name;
    int (*run)(dwctl *ctl, int argc, char **argv);
    const char *synopsis; /* one line per subcommand, for dwctl --help */
} dwctl_area;

int cmd_dlq(dwctl *ctl, int argc, char **argv); /* cmd_dlq.c */

static const dwctl_area areas[] = {
    {"conn", cmd_conn,
     "  conn list [--edge E] [--json]   list connections (all, or those of edge E)\n"
     "  conn get ID [--json]            show one connection\n"
     "  conn post|delete ID [...]       post a message to a connection / close it\n"},
    {"room", cmd_room,
     "  room post ROOM [...]            publish a message to a room, as a backend does\n"},
    {"status", cmd_status,
     "  status [--json]                 services, connections per edge, streams, lag, DLQ\n"},
    {"dlq", cmd_dlq, "  dlq list|show|replay|purge|stats   dead letters: inspect, replay, purge\n"},
    {"registry", cmd_registry,
     "  registry status|checkpoint[s]|restore|resume|rotate-key   checkpoints, restore to a time, "
     "keys\n"},
};

static void usage(FILE *out)
{
    fprintf(out, "Usage: dwctl [global options] <command> [arguments]\n"
                 "\n"
                 "Operations CLI for DynamoWave: inspects the connections table and the health\n"
                 "of the stack over NATS (the services answer on dw.registry.* and JetStream).\n"
                 "\n"
                 "Commands:\n");
    for (size_t i = 0; i < sizeof areas / sizeof areas[0]; i++)
        fputs(areas[i].synopsis, out);
    fprintf(out, "  help [command]                  this text, or a command's help\n\n");
    dwctl_print_global_help(out);
    fprintf(out, "\n"
                 "Exit status: 0 done, 1 failed (NATS or a service unreachable, not found,\n"
                 "not healthy), 2 bad usage. Errors are one line on stderr.\n"
                 "Run 'dwctl <command> --help' for a command's options.\n");
}

void dwctl_print_global_help(FILE *out)
{
    fprintf(out, "Global options (also accepted after the command):\n");
    for (size_t i = 0; i < N_FIELDS; i++) {
        char flag[48], env[48];
        size_t j = 0;
        for (; dwctl_fields[i].name[j] && j + 1 < sizeof flag; j++) {
            char c = dwctl_fields[i].name[j];
            flag[j] = c == '_' ? '-' : (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
        }
        flag[j] = '\0';
        snprintf(env, sizeof env, "DW_%s", dwctl_fields[i].name);
        fprintf(out, "  --%-14s %-15s %s (default: %s)\n", flag, env, dwctl_fields[i].help,
                dwctl_fields[i].def);
    }
    fprintf(out, "  -h, --help                       print help and exit\n");
    fprintf(out, "  --version                        print the version and exit\n");
}

static const dw_cfg_field *field_named(const char *name)
{
    for (size_t i = 0; i < N_FIELDS; i++)
        if (!strcmp(dwctl_fields[i].name, name)) return &dwctl_fields[i];
    return NULL;
}

void dwctl_getopt_reset(void)
{
    /* glibc: optind 0 also resets the permutation state of the last parse. */
    optind = 0;
    opterr = 0;
}

int dwctl_common_option(dwctl *ctl, const char *cmd, int opt, char **argv)
{
    const dw_cfg_field *f = NULL;
    const char *flag = NULL;
    char err[256];
    /* "conn list: " before messages from a command, nothing at the top level */
    const char *sep = *cmd ? ": " : "";
    const char *see = *cmd ? " " : "";

    switch (opt) {
    case DWCTL_OPT_NATS_URL:
        f = field_named("NATS_URL");
        flag = "--nats-url";
        break;
    case DWCTL_OPT_TIMEOUT_MS:
        f = field_named("TIMEOUT_MS");
        flag = "--timeout-ms";
        break;
    case ':':
        dwctl_err("%s%soption '%s' needs a value", cmd, sep, argv[optind - 1]);
        return DWCTL_USAGE;
    default: {
        /* getopt_long leaves the offending argument just before optind. */
        const char *arg = argv[optind - 1];
        if (!strncmp(arg, "--", 2))
            dwctl_err("%s%s%s option '%s' (see 'dwctl%s%s --help')", cmd, sep,
                      strchr(arg, '=') ? "unknown option or unexpected value in" : "unknown", arg,
                      see, cmd);
        else
            dwctl_err("%s%sunknown option '-%c' (see 'dwctl%s%s --help')", cmd, sep,
                      optopt ? optopt : '?', see, cmd);
        return DWCTL_USAGE;
    }
    }
    if (dw_config_set(&ctl->cfg, f, optarg, err, sizeof err)) {
        /* err reads "TIMEOUT_MS: why"; name the flag the user typed instead */
        const char *why = strstr(err, ": ");
        dwctl_err("%s%s%s: %s", cmd, sep, flag, why ? why + 2 : err);
        return DWCTL_USAGE;
    }
    return DWCTL_OK;
}

static int run_help(int argc, char **argv)
{
    if (argc < 2) {
        usage(stdout);
        return DWCTL_OK;
    }
    for (size_t i = 0; i < sizeof areas / sizeof areas[0]; i++) {
        if (!strcmp(argv[1], areas[i].name)) {
            char *help_argv[] = {argv[1], "--help", NULL};
            dwctl ctl = {0};
            return areas[i].run(&ctl, 2, help_argv);
        }
    }
    dwctl_err("unknown command '%s' (see 'dwctl --help')", argv[1]);
    return DWCTL_USAGE;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {DWCTL_GLOBAL_OPTIONS,
                                         {"version", no_argument, NULL, DWCTL_OPT_VERSION},
                                         {NULL, 0, NULL, 0}};
    dwctl ctl = {0};
    int rc = DWCTL_USAGE;

    /* Defaults and environment only; flags are parsed here and per command. */
    char *no_flags[] = {argv[0], NULL};
    if (dw_config_load(&ctl.cfg, dwctl_fields, N_FIELDS, 1, no_flags, "dwctl", "") != 0) goto done;

    dwctl_getopt_reset();
    int opt;
    /* '+': stop at the command name; what follows belongs to the command. */
    while ((opt = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        if (opt == 'h') {
            usage(stdout);
            rc = DWCTL_OK;
            goto done;
        }
        if (opt == DWCTL_OPT_VERSION) {
            printf("dwctl %s\n", DW_VERSION);
            rc = DWCTL_OK;
            goto done;
        }
        if ((rc = dwctl_common_option(&ctl, "", opt, argv)) != DWCTL_OK) goto done;
    }
    if (optind >= argc) {
        dwctl_err("missing command (see 'dwctl --help')");
        rc = DWCTL_USAGE;
        goto done;
    }

    const char *name = argv[optind];
    if (!strcmp(name, "help")) {
        rc = run_help(argc - optind, argv + optind);
        goto done;
    }
    const dwctl_area *area = NULL;
    for (size_t i = 0; i < sizeof areas / sizeof areas[0]; i++)
        if (!strcmp(name, areas[i].name)) area = &areas[i];
    if (!area) {
        dwctl_err("unknown command '%s' (see 'dwctl --help')", name);
        rc = DWCTL_USAGE;
        goto done;
    }
    rc = area->run(&ctl, argc - optind, argv + optind);

done:
    dwctl_close(&ctl);
    dw_config_free(&ctl.cfg, dwctl_fields, N_FIELDS);
    /* Releases nats.c's threads and memory (only if the library was opened). */
    nats_Close();
    if (fflush(stdout) != 0 && rc == DWCTL_OK)
        rc = DWCTL_FAIL; /* e.g. stdout is a full disk: do not claim success */
    return rc;
}
