#include "dw/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/bus.h"

static void flag_name(const char *name, char *out, size_t len)
{
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        out[i] = name[i] == '_' ? '-' : (char)tolower((unsigned char)name[i]);
    out[i] = '\0';
}

int dw_config_set(void *cfg, const dw_cfg_field *f, const char *value, char *err, size_t errlen)
{
    char *base = cfg;
    switch (f->type) {
    case DW_CFG_STR: {
        char **slot = (char **)(base + f->offset);
        char *copy = strdup(value);
        if (!copy) {
            if (err) snprintf(err, errlen, "out of memory");
            return -1;
        }
        free(*slot);
        *slot = copy;
        return 0;
    }
    case DW_CFG_INT: {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end != '\0') {
            if (err) snprintf(err, errlen, "%s: '%s' is not a whole number", f->name, value);
            return -1;
        }
        if (v < f->min || v > f->max) {
            if (err)
                snprintf(err, errlen, "%s: %lld is outside %lld..%lld", f->name, v,
                         (long long)f->min, (long long)f->max);
            return -1;
        }
        *(int64_t *)(base + f->offset) = v;
        return 0;
    }
    case DW_CFG_BOOL: {
        int v;
        if (!strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes") ||
            !strcasecmp(value, "on"))
            v = 1;
        else if (!strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no") ||
                 !strcasecmp(value, "off") || !*value)
            v = 0;
        else {
            if (err)
                snprintf(err, errlen, "%s: '%s' is not a boolean (1/0, true/false)", f->name,
                         value);
            return -1;
        }
        *(int *)(base + f->offset) = v;
        return 0;
    }
    }
    return -1;
}

void dw_config_usage(const dw_cfg_field *fields, size_t n, const char *prog, const char *summary)
{
    printf("Usage: %s [--option=value ...]\n\n%s\n\n", prog, summary);
    printf("Every option can also be set with its environment variable.\n"
           "Flags override the environment, which overrides the default.\n\n");
    for (size_t i = 0; i < n; i++) {
        char flag[64];
        flag_name(fields[i].name, flag, sizeof flag);
        printf("  --%-22s DW_%-22s %s", flag, fields[i].name, fields[i].help);
        if (fields[i].def && *fields[i].def) printf(" (default: %s)", fields[i].def);
        printf("\n");
    }
    printf("  --%-22s %-25s %s\n", "help", "", "print this help and exit");
    printf("  --%-22s %-25s %s\n", "version", "", "print the version and exit");
    /* Binaries on the bus also read their NATS credentials and TLS files. */
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(fields[i].name, "NATS_URL")) {
            fflush(stdout);
            dw_bus_env_help(stdout);
            break;
        }
    }
}

static const dw_cfg_field *find_flag(const dw_cfg_field *fields, size_t n, const char *flag,
                                     size_t flen)
{
    for (size_t i = 0; i < n; i++) {
        char name[64];
        flag_name(fields[i].name, name, sizeof name);
        if (strlen(name) == flen && !strncmp(name, flag, flen)) return &fields[i];
    }
    return NULL;
}

int dw_config_load(void *cfg, const dw_cfg_field *fields, size_t n, int argc, char **argv,
                   const char *prog, const char *summary)
{
    char err[256];

    for (size_t i = 0; i < n; i++) {
        if (dw_config_set(cfg, &fields[i], fields[i].def ? fields[i].def : "", err, sizeof err)) {
            fprintf(stderr, "%s: bad default: %s\n", prog, err);
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        char env[96];
        snprintf(env, sizeof env, "DW_%s", fields[i].name);
        const char *v = getenv(env);
        if (v && dw_config_set(cfg, &fields[i], v, err, sizeof err)) {
            fprintf(stderr, "%s: %s: %s\n", prog, env, err);
            return -1;
        }
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            dw_config_usage(fields, n, prog, summary);
            return 1;
        }
        if (!strcmp(arg, "--version")) {
            printf("%s %s\n", prog, DW_VERSION);
            return 1;
        }
        if (strncmp(arg, "--", 2)) {
            fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", prog, arg);
            return -1;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const dw_cfg_field *f = find_flag(fields, n, name, nlen);
        if (!f) {
            fprintf(stderr, "%s: unknown option '--%.*s' (see --help)\n", prog, (int)nlen, name);
            return -1;
        }
        const char *value;
        if (eq)
            value = eq + 1;
        else if (f->type == DW_CFG_BOOL)
            value = "1";
        else if (a + 1 < argc)
            value = argv[++a];
        else {
            fprintf(stderr, "%s: option '--%.*s' needs a value\n", prog, (int)nlen, name);
            return -1;
        }
        if (dw_config_set(cfg, f, value, err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", prog, err);
            return -1;
        }
    }
    return 0;
}

void dw_config_free(void *cfg, const dw_cfg_field *fields, size_t n)
{
    char *base = cfg;
    for (size_t i = 0; i < n; i++) {
        if (fields[i].type == DW_CFG_STR) {
            char **slot = (char **)(base + fields[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
}
