#include "dw/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dw/util.h"

static const char *log_service = "dw";
static dw_log_level log_min = DW_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void dw_log_init(const char *service, const char *level)
{
    log_service = service;
    for (int i = 0; level && i < 4; i++)
        if (!strcasecmp(level, level_names[i])) log_min = (dw_log_level)i;
}

void dw_log(dw_log_level level, const char *msg, const char *kvfmt, ...)
{
    if (level < log_min) return;
    char ts[32], kv[1024];
    dw_iso8601_ms(dw_now_ms(), ts, sizeof ts);
    kv[0] = '\0';
    if (kvfmt && *kvfmt) {
        va_list ap;
        va_start(ap, kvfmt);
        vsnprintf(kv, sizeof kv, kvfmt, ap);
        va_end(ap);
    }
    /* One fprintf per line: stdio locks the stream, so lines never interleave. */
    fprintf(stderr, "ts=%s level=%s svc=%s msg=\"%s\"%s%s\n", ts, level_names[level], log_service,
            msg, *kv ? " " : "", kv);
}
