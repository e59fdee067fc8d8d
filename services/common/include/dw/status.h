/* The status port of a service that has no HTTP of its own (registry,
 * dispatcher, deadletter): GET /healthz (the process runs), /readyz (the
 * service says it is ready) and /metrics (dw_metrics_render). It runs its
 * own libwebsockets context on its own thread and never touches the
 * service's state except through the ready callback, which must be
 * thread-safe (read an atomic). */
#ifndef DW_STATUS_H
#define DW_STATUS_H

#include <stdbool.h>

typedef struct dw_status dw_status;

/* Listen on host:port (host NULL or "" = all; port 0 = do not start, *out
 * stays NULL and 0 is returned). ready(arg) decides /readyz. 0 or -1. */
int dw_status_start(dw_status **out, const char *host, int port, bool (*ready)(void *), void *arg);

/* Stop the thread and free. NULL-safe. */
void dw_status_stop(dw_status *st);

#endif
