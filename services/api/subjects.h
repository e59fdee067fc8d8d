/* The management API on the bus: dw.api.connections.post|get|delete
 * (ApiRequest -> ApiReply) and dw.api.rooms.publish (JSON -> JSON, rooms.h),
 * in the queue group "api" so that each request is answered by one
 * instance. The nats.c callbacks only decode and queue:
 * the operation runs on the worker pool, which publishes the reply. */
#ifndef API_SUBJECTS_H
#define API_SUBJECTS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>

#include "pool.h"

#define API_QUEUE "api"

typedef struct api_subjects api_subjects;

/* Subscribe (also while NATS is still away: nats.c subscribes on connect).
 * nc and pool are borrowed and must outlive the subscriptions. 0 or -1. */
int api_subjects_start(api_subjects **out, natsConnection *nc, api_pool *pool, size_t max_message);

/* True once subscribed and NATS is connected. Any thread. */
bool api_subjects_ready(api_subjects *s);

/* Drain the subscriptions: requests already received are still queued,
 * then no callback runs any more. Jobs at the pool keep answering through
 * nc and s: stop the pool next, then api_subjects_free. NULL-safe. */
void api_subjects_stop(api_subjects *s);

/* Free, once the pool has stopped (its jobs point here). NULL-safe. */
void api_subjects_free(api_subjects *s);

#endif
