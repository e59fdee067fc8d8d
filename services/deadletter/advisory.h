/* JetStream's max-deliveries advisory, as the deadletter service reads it
 * (capture.c): which message of which consumer ran out of deliveries. No
 * NATS I/O in here. */
#ifndef DEADLETTER_ADVISORY_H
#define DEADLETTER_ADVISORY_H

#include <stddef.h>
#include <stdint.h>

/* Read JetStream's max-deliveries advisory (JSON): the stream, consumer and
 * stream_seq of the message. 0, or -1 when it is not such an advisory. */
typedef struct dlq_advisory {
    char stream[64];
    char consumer[128]; /* route-<action>: up to 70 */
    uint64_t stream_seq;
    uint64_t deliveries;
} dlq_advisory;
int dlq_advisory_parse(const void *json, size_t len, dlq_advisory *out);

#endif
