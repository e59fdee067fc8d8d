#include "advisory.h"

#include <jansson.h>
#include <string.h>

static int copy_str(char *dst, size_t len, json_t *v)
{
    const char *s = json_string_value(v);
    if (!s || strlen(s) >= len) return -1;
    memcpy(dst, s, strlen(s) + 1);
    return 0;
}

int dlq_advisory_parse(const void *json, size_t len, dlq_advisory *out)
{
    json_error_t err;
    json_t *root = json_loadb(json, len, 0, &err);
    int rc = -1;

    memset(out, 0, sizeof *out);
    if (!json_is_object(root)) goto done;
    const char *type = json_string_value(json_object_get(root, "type"));
    if (!type || strcmp(type, "io.nats.jetstream.advisory.v1.max_deliver")) goto done;
    if (copy_str(out->stream, sizeof out->stream, json_object_get(root, "stream")) ||
        copy_str(out->consumer, sizeof out->consumer, json_object_get(root, "consumer")))
        goto done;
    json_t *seq = json_object_get(root, "stream_seq");
    if (!json_is_integer(seq) || json_integer_value(seq) <= 0) goto done;
    out->stream_seq = (uint64_t)json_integer_value(seq);
    json_t *dc = json_object_get(root, "deliveries");
    if (json_is_integer(dc) && json_integer_value(dc) > 0)
        out->deliveries = (uint64_t)json_integer_value(dc);
    rc = 0;
done:
    json_decref(root);
    return rc;
}
