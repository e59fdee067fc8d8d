#include "counters.h"

#include <stddef.h>

#include "dw/metrics.h"
#include "dw/util.h"

static const unsigned codes[] = {200, 204, 400, 401, 403, 404, 405, 410, 411, 413, 500, 503, 0};
#define NCODES (sizeof codes / sizeof codes[0])

/* Label sets must be static strings: one row per op, one column per code. */
#define L(op, code) "op=\"" op "\",code=\"" code "\""
#define ROW(op)                                                                                    \
    {                                                                                              \
        L(op, "200"), L(op, "204"), L(op, "400"), L(op, "401"), L(op, "403"), L(op, "404"),        \
            L(op, "405"), L(op, "410"), L(op, "411"), L(op, "413"), L(op, "500"), L(op, "503"),    \
            L(op, "other")                                                                         \
    }
static const char *const labels[API_OP_COUNT + 1][NCODES] = {ROW("post"), ROW("get"), ROW("delete"),
                                                             ROW("publish"), ROW("other")};
static const char *const op_labels[API_OP_COUNT + 1] = {
    "op=\"post\"", "op=\"get\"", "op=\"delete\"", "op=\"publish\"", "op=\"other\""};

static dw_metric *requests[API_OP_COUNT + 1][NCODES];
static dw_metric *latency[API_OP_COUNT + 1];

void api_counters_init(void)
{
    static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,   0.25,   0.5,   1,    2.5,   5};
    for (size_t op = 0; op <= API_OP_COUNT; op++) {
        for (size_t c = 0; c < NCODES; c++)
            requests[op][c] = dw_counter(
                "dw_api_requests_total", labels[op][c],
                "management API requests answered (@connections, room publish), by operation and "
                "status");
        latency[op] = dw_histogram("dw_api_request_duration_seconds", op_labels[op],
                                   "management API requests: arrival to answer", bounds,
                                   sizeof bounds / sizeof bounds[0]);
    }
}

void api_counters_answer(api_op op, unsigned code, int64_t start_ns)
{
    size_t o = (unsigned)op < API_OP_COUNT ? (size_t)op : API_OP_COUNT;
    size_t c = 0;
    while (codes[c] && codes[c] != code)
        c++;
    dw_metric_inc(requests[o][c]);
    if (start_ns) dw_metric_observe_ns(latency[o], dw_mono_ns() - start_ns);
}
