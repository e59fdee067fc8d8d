/* Room publish requests from backends (services/api/rooms.c): the NATS
 * JSON request, the HTTP body as text and as JSON, the path, and the
 * sender / idempotency-key headers, all of which come from outside.
 * Invariants: a request that passes names a valid room and a sender, keeps
 * its message within the limit and never both refuses and keeps data. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rooms.h"

#define MAX 4096

static void check_ok(const api_publish_req *r)
{
    if (!dw_room_valid(r->room, strlen(r->room)) || !r->from[0] || r->len > MAX) abort();
    if (r->len && !r->data) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    api_publish_req r;
    char err[192];
    memset(&r, 0, sizeof r);
    int rc = api_publish_parse_json(&r, (const char *)data, size, MAX, err, sizeof err);
    if (rc == 0)
        check_ok(&r);
    else if ((rc != 400 && rc != 413 && rc != 500) || r.data)
        abort();
    api_publish_req_clear(&r);

    for (int json = 0; json < 2; json++) {
        memset(&r, 0, sizeof r);
        rc = api_publish_set_body(&r, (const char *)data, size, json, MAX, err, sizeof err);
        if (rc == 0 && (r.len > MAX || (r.data_json && !json))) abort();
        if (rc && r.data) abort();
        api_publish_req_clear(&r);
    }

    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    char room[DW_ROOM_MAX + 1];
    if (api_rooms_route_parse(s, room) == API_ROOMS_OK && !dw_room_valid(room, strlen(room)))
        abort();
    memset(&r, 0, sizeof r);
    if (api_publish_set_from(&r, s, size, err, sizeof err) == 0 &&
        (strlen(r.from) != size || size > API_FROM_MAX))
        abort();
    if (api_publish_set_key(&r, s, size, err, sizeof err) == 0 && strlen(r.key) != size) abort();
    free(s);
    return 0;
}
