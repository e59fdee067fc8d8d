/* The dynamowave.v1 request parser: every frame a v1 client sends goes
 * through v1_parse(). Checks the parser's promises, then builds the frames
 * the edge would answer with from what was parsed (they echo client text:
 * room, client id, ref, data). */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "proto_v1.h"

/* len is read after the builder ran (not as a second argument beside the
 * call, whose evaluation order C leaves open). */
static void check_frame(char *s, const size_t *len)
{
    if (s && strlen(s) != *len) abort();
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    v1_request r;
    if (v1_parse((const char *)data, size, &r)) return 0; /* out of memory */
    size_t len = 0;
    switch (r.action) {
    case V1_BAD:
        if (!r.error_code || !r.error_msg || r.data) abort();
        check_frame(v1_error(r.error_code, r.error_msg, r.ref, -1, &len), &len);
        break;
    case V1_SEND: {
        if (!r.data || r.data[r.data_len] != '\0' || !dw_room_valid(r.room, strlen(r.room)))
            abort();
        v1_msg m = {r.room, 1, r.client_id, "user", r.data, r.data_len, r.data_json, 0};
        check_frame(v1_message(&m, &len), &len);
        /* v1_message writes the all-ASCII frame itself: jansson's bytes. */
        v1_msg m2 = {r.room, UINT64_MAX >> 1, r.client_id, r.client_id,
                     r.data, r.data_len,      false,       -1};
        size_t l1 = 0, l2 = 0;
        char *a = v1_message(&m2, &l1), *b = v1_message_json(&m2, &l2);
        if (!a != !b || (a && (l1 != l2 || memcmp(a, b, l1)))) abort();
        free(a);
        free(b);
        check_frame(v1_ack(r.client_id, r.room, 1, r.ref, &len), &len);
        break;
    }
    case V1_HISTORY:
        if (r.limit == 0 || r.limit > V1_HISTORY_MAX) abort();
        /* fall through */
    case V1_JOIN:
    case V1_LEAVE:
    case V1_PRESENCE:
        if (!dw_room_valid(r.room, strlen(r.room)) || r.data) abort();
        check_frame(v1_joined(r.room, r.since, r.has_since, r.ref, &len), &len);
        break;
    default: abort();
    }
    v1_request_free(&r);
    return 0;
}
