#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "dw/metrics.h"

static void test_render_exposition_format(void **state)
{
    static const double bounds[] = {0.001, 0.01};
    dw_metric *c1 = dw_counter("dw_x_total", "result=\"ok\"", "things done");
    dw_metric *c2 = dw_counter("dw_x_total", "result=\"failed\"", "things done");
    dw_metric *g = dw_gauge("dw_conns", NULL, "open connections");
    dw_metric *h = dw_histogram("dw_lat_seconds", NULL, "latency", bounds, 2);
    dw_metric_add(c1, 3);
    dw_metric_inc(c2);
    dw_metric_set(g, 42);
    dw_metric_observe_ns(h, 500000);     /* 0.5 ms */
    dw_metric_observe_ns(h, 5000000);    /* 5 ms */
    dw_metric_observe_ns(h, 2000000000); /* 2 s: only in +Inf */

    size_t len;
    char *t = dw_metrics_render(&len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    /* HELP/TYPE once per name, then one line per label set. */
    const char *first = strstr(t, "# TYPE dw_x_total counter\n");
    assert_non_null(first);
    assert_null(strstr(first + 1, "# TYPE dw_x_total counter"));
    assert_non_null(strstr(t, "dw_x_total{result=\"ok\"} 3\n"));
    assert_non_null(strstr(t, "dw_x_total{result=\"failed\"} 1\n"));
    assert_non_null(strstr(t, "dw_conns 42\n"));
    assert_non_null(strstr(t, "dw_lat_seconds_bucket{le=\"0.001\"} 1\n"));
    assert_non_null(strstr(t, "dw_lat_seconds_bucket{le=\"0.01\"} 2\n"));
    assert_non_null(strstr(t, "dw_lat_seconds_bucket{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "dw_lat_seconds_count 3\n"));
    assert_non_null(strstr(t, "dw_lat_seconds_sum 2.005500000\n"));
    free(t);
    dw_metrics_free();
}

typedef struct table_metrics {
    dw_metric *a, *b, *h;
} table_metrics;

static int64_t read_seven(void *arg)
{
    return *(int *)arg + 7;
}

/* A metric table fills the caller's struct; a function gauge is read at
 * render time. */
static void test_table_and_function_gauge(void **state)
{
    static const double bounds[] = {0.1, 1};
    static const dw_metric_def defs[] = {
        DW_METRIC_COUNTER_ROW(table_metrics, a, "dw_t_total", "k=\"a\"", "things"),
        DW_METRIC_COUNTER_ROW(table_metrics, b, "dw_t_total", "k=\"b\"", NULL),
        DW_METRIC_HISTOGRAM_ROW(table_metrics, h, "dw_t_seconds", NULL, "how long", bounds),
    };
    table_metrics tm = {0};
    assert_int_equal(dw_metrics_register(&tm, defs, sizeof defs / sizeof defs[0]), 0);
    assert_non_null(tm.a);
    assert_non_null(tm.b);
    assert_non_null(tm.h);
    dw_metric_inc(tm.b);
    dw_metric_observe_ns(tm.h, 500000000);
    int base = 0;
    dw_gauge_fn("dw_t_ready", NULL, "read at render", read_seven, &base);
    size_t len = 0;
    char *t = dw_metrics_render(&len);
    assert_non_null(t);
    assert_non_null(strstr(t, "# HELP dw_t_total things\n"));
    assert_non_null(strstr(t, "dw_t_total{k=\"a\"} 0\n"));
    assert_non_null(strstr(t, "dw_t_total{k=\"b\"} 1\n"));
    assert_non_null(strstr(t, "dw_t_seconds_bucket{le=\"1\"} 1\n"));
    assert_non_null(strstr(t, "dw_t_ready 7\n"));
    free(t);
    base = 1;
    t = dw_metrics_render(&len);
    assert_non_null(strstr(t, "dw_t_ready 8\n"));
    free(t);
    dw_metrics_free();
}

static void test_null_metric_is_a_noop(void **state)
{
    dw_metric_inc(NULL);
    dw_metric_set(NULL, 1);
    dw_metric_observe_ns(NULL, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exposition_format),
        cmocka_unit_test(test_table_and_function_gauge),
        cmocka_unit_test(test_null_metric_is_a_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
