#include "dw/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static dw_metric *metrics_head, *metrics_tail;

static dw_metric *add(const char *name, const char *labels, const char *help, dw_metric_type t)
{
    dw_metric *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->name = name;
    m->labels = labels;
    m->help = help;
    m->type = t;
    pthread_mutex_lock(&metrics_lock);
    if (metrics_tail)
        metrics_tail->next = m;
    else
        metrics_head = m;
    metrics_tail = m;
    pthread_mutex_unlock(&metrics_lock);
    return m;
}

dw_metric *dw_counter(const char *name, const char *labels, const char *help)
{
    return add(name, labels, help, DW_METRIC_COUNTER);
}

dw_metric *dw_gauge(const char *name, const char *labels, const char *help)
{
    return add(name, labels, help, DW_METRIC_GAUGE);
}

dw_metric *dw_histogram(const char *name, const char *labels, const char *help,
                        const double *bounds, size_t nbounds)
{
    if (nbounds > DW_HIST_MAX_BUCKETS) nbounds = DW_HIST_MAX_BUCKETS;
    dw_metric *m = add(name, labels, help, DW_METRIC_HISTOGRAM);
    if (m) {
        m->bounds = bounds;
        m->nbounds = nbounds;
    }
    return m;
}

dw_metric *dw_gauge_fn(const char *name, const char *labels, const char *help,
                       int64_t (*read)(void *arg), void *arg)
{
    dw_metric *m = add(name, labels, help, DW_METRIC_GAUGE);
    if (m) {
        m->read = read;
        m->read_arg = arg;
    }
    return m;
}

int dw_metrics_register(void *base, const dw_metric_def *defs, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const dw_metric_def *d = &defs[i];
        dw_metric *m = d->type == DW_METRIC_HISTOGRAM
                           ? dw_histogram(d->name, d->labels, d->help, d->bounds, d->nbounds)
                           : add(d->name, d->labels, d->help, d->type);
        if (!m) rc = -1;
        *(dw_metric **)((char *)base + d->offset) = m;
    }
    return rc;
}

void dw_metric_observe_ns(dw_metric *m, int64_t ns)
{
    if (!m) return;
    double s = (double)ns / 1e9;
    for (size_t i = 0; i < m->nbounds; i++)
        if (s <= m->bounds[i]) {
            atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_ns, (uint64_t)(ns > 0 ? ns : 0), memory_order_relaxed);
}

typedef struct sbuf {
    char *p;
    size_t len, cap;
    int failed;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

static const char *type_name(dw_metric_type t)
{
    return t == DW_METRIC_COUNTER ? "counter" : t == DW_METRIC_GAUGE ? "gauge" : "histogram";
}

/* HELP/TYPE once per metric name, however many label sets it has. */
static int seen_before(const dw_metric *head, const dw_metric *m)
{
    for (const dw_metric *o = head; o != m; o = o->next)
        if (!strcmp(o->name, m->name)) return 1;
    return 0;
}

char *dw_metrics_render(size_t *len)
{
    sbuf b = {malloc(4096), 0, 4096, 0};
    if (!b.p) return NULL;
    b.p[0] = '\0';
    pthread_mutex_lock(&metrics_lock);
    for (dw_metric *m = metrics_head; m; m = m->next) {
        if (!seen_before(metrics_head, m))
            put(&b, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help ? m->help : "", m->name,
                type_name(m->type));
        const char *l = m->labels ? m->labels : "";
        if (m->type != DW_METRIC_HISTOGRAM) {
            int64_t v = m->read ? m->read(m->read_arg)
                                : atomic_load_explicit(&m->value, memory_order_relaxed);
            put(&b, "%s%s%s%s %lld\n", m->name, *l ? "{" : "", l, *l ? "}" : "", (long long)v);
            continue;
        }
        uint64_t cum = 0;
        for (size_t i = 0; i < m->nbounds; i++) {
            cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
            put(&b, "%s_bucket{%s%sle=\"%g\"} %llu\n", m->name, l, *l ? "," : "", m->bounds[i],
                (unsigned long long)cum);
        }
        uint64_t count = atomic_load_explicit(&m->count, memory_order_relaxed);
        put(&b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", m->name, l, *l ? "," : "",
            (unsigned long long)(count > cum ? count : cum));
        put(&b, "%s_sum%s%s%s %.9f\n", m->name, *l ? "{" : "", l, *l ? "}" : "",
            (double)atomic_load_explicit(&m->sum_ns, memory_order_relaxed) / 1e9);
        put(&b, "%s_count%s%s%s %llu\n", m->name, *l ? "{" : "", l, *l ? "}" : "",
            (unsigned long long)(count > cum ? count : cum));
    }
    pthread_mutex_unlock(&metrics_lock);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

void dw_metrics_free(void)
{
    pthread_mutex_lock(&metrics_lock);
    dw_metric *m = metrics_head;
    metrics_head = metrics_tail = NULL;
    pthread_mutex_unlock(&metrics_lock);
    while (m) {
        dw_metric *n = m->next;
        free(m);
        m = n;
    }
}
