/* The api service's Prometheus metrics:
 *   dw_api_requests_total{op,code}      every answered request, HTTP and NATS
 *                                       (op: post, get, delete, publish, other)
 *   dw_api_request_duration_seconds{op} from arrival to answer
 * Registered once by api_counters_init; any thread may count. (dw_ready is
 * the service skeleton's, dw/service.h.) */
#ifndef API_COUNTERS_H
#define API_COUNTERS_H

#include <stdbool.h>
#include <stdint.h>

#include "ops.h"

void api_counters_init(void);

/* Count one answer. op may be API_OP_COUNT for requests that are no
 * operation (404, 405); a code outside the known set counts as "other". */
void api_counters_answer(api_op op, unsigned code, int64_t start_ns);

#endif
