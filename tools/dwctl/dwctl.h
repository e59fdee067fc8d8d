/* dwctl internals shared by main.c, the helpers and the cmd_<area>.c files.
 *
 * Every command returns an exit status: DWCTL_OK, DWCTL_FAIL (something
 * could not be done; one line already on stderr) or DWCTL_USAGE (the
 * command line was wrong; one line already on stderr). */
#ifndef DWCTL_H
#define DWCTL_H

#include <getopt.h>
#include <jansson.h>
#include <nats/nats.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum { DWCTL_OK = 0, DWCTL_FAIL = 1, DWCTL_USAGE = 2 };

/* Loaded by dw_config (defaults, then DW_NATS_URL / DW_TIMEOUT_MS), then
 * overridden by --nats-url / --timeout-ms wherever they appear. */
typedef struct dwctl_cfg {
    char *nats_url;
    int64_t timeout_ms;
} dwctl_cfg;

typedef struct dwctl {
    dwctl_cfg cfg;
    natsConnection *nc; /* set by dwctl_connect, released by dwctl_close */
    jsCtx *js;
} dwctl;

/* getopt_long codes of the options every command accepts, so that
 * `dwctl conn list --nats-url X` works as well as `dwctl --nats-url X conn list`. */
#define DWCTL_OPT_NATS_URL 0x100
#define DWCTL_OPT_TIMEOUT_MS 0x101
#define DWCTL_OPT_VERSION 0x102
/* clang-format off */
#define DWCTL_GLOBAL_OPTIONS                                       \
    {"nats-url", required_argument, NULL, DWCTL_OPT_NATS_URL},     \
    {"timeout-ms", required_argument, NULL, DWCTL_OPT_TIMEOUT_MS}, \
    {"help", no_argument, NULL, 'h'}
/* clang-format on */

/* main.c: command-line plumbing. */

/* Call from a command's getopt loop for the codes it does not know itself:
 * applies a global option (DWCTL_OK), or reports a bad value, an unknown
 * option or a missing argument as one line and returns DWCTL_USAGE. cmd is
 * the command's name for the message ("conn list"; "" at the top level). */
int dwctl_common_option(dwctl *ctl, const char *cmd, int opt, char **argv);
/* Prime getopt_long for a fresh parse of argv (argv[0] is the command name).
 * Call before each command's getopt loop. */
void dwctl_getopt_reset(void);
/* The "Global options" help block, generated from the config table. */
void dwctl_print_global_help(FILE *out);

/* client.c: NATS. */

/* Connect once, without retrying: a CLI must fail fast. On failure prints
 * "dwctl: cannot reach NATS at URL: reason" and returns DWCTL_FAIL. */
int dwctl_connect(dwctl *ctl);
/* Close the connection and JetStream context (safe when never connected). */
void dwctl_close(dwctl *ctl);
/* Request/reply with a protobuf payload and the configured timeout. On
 * success *reply is the caller's (natsMsg_Destroy); on failure a one-line
 * reason is written to err and DWCTL_FAIL returned. */
int dwctl_request(dwctl *ctl, const char *subj, const ProtobufCMessage *req, natsMsg **reply,
                  char *err, size_t errlen);
/* The same with a payload as it is (the JSON requests of dw.api.rooms.*). */
int dwctl_request_raw(dwctl *ctl, const char *subj, const void *data, size_t len, natsMsg **reply,
                      char *err, size_t errlen);
/* The URL without its user:password part, for messages. */
void dwctl_url_redacted(const char *url, char *buf, size_t len);

/* The dispatchers' backlog: their partition consumers on DW_MSG
 * (dwp-<partition>-<instance>-<gen>) summed, and how many partitions have
 * one. NATS_OK, or the status of the consumer listing (err says why). */
typedef struct dwctl_backlog {
    unsigned partitions;
    uint64_t pending;
    int64_t ack_pending, redelivered, waiting;
} dwctl_backlog;
natsStatus dwctl_dispatch_backlog(dwctl *ctl, dwctl_backlog *b);

/* output.c: printing. */

/* "dwctl: <message>\n" on stderr. */
void dwctl_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A JSON string for s (NULL gives JSON null). Bytes that are not UTF-8 are
 * replaced by '?' rather than failing: the text comes from clients. */
json_t *dwctl_json_str(const char *s);
/* Print obj compactly on one line of stdout and release it (steals the
 * reference). Returns DWCTL_OK, or DWCTL_FAIL when obj is NULL. */
int dwctl_json_print_line(json_t *obj);
/* s with control characters replaced by '?', so that client-supplied text
 * cannot drive the operator's terminal; "-" for empty. Writes into buf. */
const char *dwctl_term_safe(const char *s, char *buf, size_t len);
/* ISO-8601 UTC with milliseconds, or "" for 0 (unknown). buf >= 32 bytes. */
const char *dwctl_time(int64_t ms, char *buf, size_t len);

/* A text table with columns sized to their widest cell. */
typedef struct dwctl_table {
    size_t ncols, nrows, cap; /* nrows includes the header */
    char **cells;             /* nrows * ncols, owned */
} dwctl_table;
/* headers: ncols strings. Returns 0 or -1 (out of memory). */
int dwctl_table_init(dwctl_table *t, size_t ncols, const char *const *headers);
/* Copies the ncols cells (made terminal-safe). 0 or -1. */
int dwctl_table_add(dwctl_table *t, const char *const *cells);
void dwctl_table_print(const dwctl_table *t, FILE *out);
/* NULL-safe; leaves t empty. */
void dwctl_table_free(dwctl_table *t);

/* The command areas: argv[0] is the area name. */
int cmd_conn(dwctl *ctl, int argc, char **argv);
int cmd_status(dwctl *ctl, int argc, char **argv);
int cmd_registry(dwctl *ctl, int argc, char **argv);
int cmd_room(dwctl *ctl, int argc, char **argv);
/* cmd_conn.c: the message of a post command (`conn post`, `room post`),
 * once its options and its target were taken from argv: text (--data) or
 * file (--file; a lone "-" left in argv means standard input), given
 * exactly once (sources counts them), nothing after it. *out: the bytes
 * (malloc'd, the caller frees), at most 64 MiB. cmd and usage name the
 * command in messages. DWCTL_OK, DWCTL_USAGE or DWCTL_FAIL. */
int dwctl_post_message(int argc, char **argv, const char *cmd, const char *usage, const char *text,
                       const char *file, int sources, uint8_t **out, size_t *outlen);

#endif
