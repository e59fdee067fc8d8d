/* Configuration: one struct per binary, one table of fields per binary.
 *
 * Order of precedence (last wins): the table's defaults, environment
 * variables DW_<NAME>, command-line flags --<name>=<value> or --<name> <value>.
 * The flag name is the field name in lower case with '_' written as '-':
 * the field "NATS_URL" is DW_NATS_URL and --nats-url.
 *
 * String fields are char * in the caller's struct and owned by it after
 * dw_config_load(); dw_config_free() releases them. */
#ifndef DW_CONFIG_H
#define DW_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { DW_CFG_STR, DW_CFG_INT, DW_CFG_BOOL } dw_cfg_type;

typedef struct dw_cfg_field {
    const char *name; /* upper case, e.g. "PORT" -> DW_PORT, --port */
    dw_cfg_type type;
    size_t offset;    /* offsetof(struct, field): char *, int64_t or int */
    const char *def;  /* default as text ("" for an empty string) */
    int64_t min, max; /* bounds for DW_CFG_INT */
    const char *help;
} dw_cfg_field;

/* Returns 0 when loaded, 1 when --help or --version was printed (the caller
 * exits 0), -1 on a bad value (one line already on stderr; exit 2). */
int dw_config_load(void *cfg, const dw_cfg_field *fields, size_t n, int argc, char **argv,
                   const char *prog, const char *summary);

/* Set one field from text; 0 or -1 (message in err, which may be NULL). */
int dw_config_set(void *cfg, const dw_cfg_field *f, const char *value, char *err, size_t errlen);

void dw_config_free(void *cfg, const dw_cfg_field *fields, size_t n);

/* Print the --help text: summary, then one line per field. */
void dw_config_usage(const dw_cfg_field *fields, size_t n, const char *prog, const char *summary);

#endif
