/* Prometheus metrics: counters, gauges and histograms that any thread may
 * update (relaxed atomics: a scrape sees each value whole, never torn), and
 * the text exposition format for /metrics.
 *
 * Metrics are registered once at start into a process-wide list and live
 * until dw_metrics_free(). Labels are fixed at registration: register one
 * metric per label value (e.g. result="delivered"). */
#ifndef DW_METRICS_H
#define DW_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { DW_METRIC_COUNTER, DW_METRIC_GAUGE, DW_METRIC_HISTOGRAM } dw_metric_type;

#define DW_HIST_MAX_BUCKETS 16

typedef struct dw_metric {
    struct dw_metric *next;
    const char *name;   /* static: e.g. "dw_edge_deliveries_total" */
    const char *help;   /* static */
    const char *labels; /* static, e.g. "result=\"delivered\"", or NULL */
    dw_metric_type type;
    _Atomic int64_t value; /* counter / gauge */
    /* histogram: upper bounds in seconds, cumulative counts by bucket */
    const double *bounds;
    size_t nbounds;
    _Atomic uint64_t buckets[DW_HIST_MAX_BUCKETS];
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
} dw_metric;

/* Register (the returned pointer stays valid until dw_metrics_free). */
dw_metric *dw_counter(const char *name, const char *labels, const char *help);
dw_metric *dw_gauge(const char *name, const char *labels, const char *help);
/* bounds: ascending upper bounds in seconds, at most DW_HIST_MAX_BUCKETS. */
dw_metric *dw_histogram(const char *name, const char *labels, const char *help,
                        const double *bounds, size_t nbounds);

static inline void dw_metric_add(dw_metric *m, int64_t n)
{
    if (m) atomic_fetch_add_explicit(&m->value, n, memory_order_relaxed);
}
static inline void dw_metric_inc(dw_metric *m)
{
    dw_metric_add(m, 1);
}
static inline void dw_metric_set(dw_metric *m, int64_t v)
{
    if (m) atomic_store_explicit(&m->value, v, memory_order_relaxed);
}
void dw_metric_observe_ns(dw_metric *m, int64_t ns);

/* The exposition text of every registered metric (malloc'd; caller frees). */
char *dw_metrics_render(size_t *len);
void dw_metrics_free(void);

#endif
