/* Per-stage latency from the services' own histograms: dwbench reads
 * /metrics of each --metrics endpoint (an edge's public port, the
 * dispatcher's status port) when the measurement starts and when it ends,
 * and reports, per stage, what happened in between: how many messages, the
 * mean, and p50/p99 read from the histogram buckets (the bucket's upper
 * bound, as Prometheus' histogram_quantile would interpolate it coarsely).
 *
 * Stages: every "<name>_stage_seconds" histogram with a stage label
 * (dw_edge_stage_seconds{stage="stored"}, dw_dispatcher_stage_seconds{...}),
 * named "<service>.<stage>"; the same stage of several endpoints (two
 * edges) is summed. One thread; loopback only (the caller checks URLs). */
#ifndef DWBENCH_STAGES_H
#define DWBENCH_STAGES_H

#include <jansson.h>
#include <stddef.h>

#define STAGES_MAX 32
#define STAGES_BUCKETS 32

typedef struct stage_hist {
    char name[64]; /* "edge.stored" */
    double le[STAGES_BUCKETS];
    double cum[STAGES_BUCKETS]; /* cumulative counts, as exposed */
    size_t nb;
    double sum, count;
} stage_hist;

typedef struct stage_set {
    stage_hist h[STAGES_MAX];
    size_t n;
    int errors; /* endpoints that could not be read */
} stage_set;

/* Parse Prometheus text and add its stage histograms into set. */
void stages_parse(stage_set *set, const char *text);
/* GET url (http://127.x.x.x:port/path) and stages_parse it. 0 or -1. */
int stages_scrape(stage_set *set, const char *url);
/* after - before, per stage, as a JSON object {"edge.stored": {"count",
 * "mean_ms", "p50_ms", "p99_ms"}, ...} (new reference). */
json_t *stages_json(const stage_set *before, const stage_set *after);

#endif
