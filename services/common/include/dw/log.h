/* Structured logs, one logfmt line per event on stderr:
 *   ts=2026-11-25T08:54:27.123Z level=info svc=edge msg="listening" port=8080
 * Callers pass the message and then key=value pairs as a printf format;
 * values with spaces must be quoted by the caller. Thread-safe. */
#ifndef DW_LOG_H
#define DW_LOG_H

typedef enum { DW_LOG_DEBUG = 0, DW_LOG_INFO, DW_LOG_WARN, DW_LOG_ERROR } dw_log_level;

/* Call once at start. level: "debug", "info", "warn", "error". */
void dw_log_init(const char *service, const char *level);

void dw_log(dw_log_level level, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DW_DEBUG(msg, ...) dw_log(DW_LOG_DEBUG, msg, __VA_ARGS__)
#define DW_INFO(msg, ...) dw_log(DW_LOG_INFO, msg, __VA_ARGS__)
#define DW_WARN(msg, ...) dw_log(DW_LOG_WARN, msg, __VA_ARGS__)
#define DW_ERROR(msg, ...) dw_log(DW_LOG_ERROR, msg, __VA_ARGS__)

#endif
