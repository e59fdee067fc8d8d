/* Prometheus metrics: counters, gauges and histograms that any thread may
 * update (relaxed atomics: a scrape sees each value whole, never torn), and
 * the text exposition format for /metrics.
 *
 * Metrics are registered once at start into a process-wide list and live
 * until dw_metrics_free(). Labels are fixed at registration: register one
 * metric per label value (e.g. result="delivered"). A service registers
 * its metrics as one table (dw_metric_def rows, dw_metrics_register). */
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
    /* a gauge read at each render (dw_gauge_fn) */
    int64_t (*read)(void *arg);
    void *read_arg;
} dw_metric;

/* Register (the returned pointer stays valid until dw_metrics_free). */
dw_metric *dw_counter(const char *name, const char *labels, const char *help);
dw_metric *dw_gauge(const char *name, const char *labels, const char *help);
/* bounds: ascending upper bounds in seconds, at most DW_HIST_MAX_BUCKETS. */
dw_metric *dw_histogram(const char *name, const char *labels, const char *help,
                        const double *bounds, size_t nbounds);
/* A gauge whose value is read(arg) at each render (on the thread that
 * renders: read must be thread-safe), e.g. whether the service is ready. */
dw_metric *dw_gauge_fn(const char *name, const char *labels, const char *help,
                       int64_t (*read)(void *arg), void *arg);

/* One row of a service's metric table: the metric is stored in the
 * dw_metric * field at offset in the caller's struct. help may be NULL for
 * a further label set of a name already described. */
typedef struct dw_metric_def {
    size_t offset;
    dw_metric_type type;
    const char *name, *labels, *help;
    const double *bounds; /* histograms */
    size_t nbounds;
} dw_metric_def;
#define DW_METRIC_COUNTER_ROW(type, field, name, labels, help)                                     \
    {                                                                                              \
        offsetof(type, field), DW_METRIC_COUNTER, name, labels, help, NULL, 0                      \
    }
#define DW_METRIC_GAUGE_ROW(type, field, name, labels, help)                                       \
    {                                                                                              \
        offsetof(type, field), DW_METRIC_GAUGE, name, labels, help, NULL, 0                        \
    }
#define DW_METRIC_HISTOGRAM_ROW(type, field, name, labels, help, bounds)                           \
    {                                                                                              \
        offsetof(type, field), DW_METRIC_HISTOGRAM, name, labels, help, bounds,                    \
            sizeof bounds / sizeof bounds[0]                                                       \
    }
/* Register every row, storing each metric into base + its offset. 0, or -1
 * when out of memory (a metric that failed is NULL; updates to it do
 * nothing). */
int dw_metrics_register(void *base, const dw_metric_def *defs, size_t n);

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
