/* The inbound frame router: every text frame a client sends goes through
 * routes_parse() (JSON, action, fields). Also feeds the bytes to the
 * $default reply as a user agent and connection id, which the client
 * controls too. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "routes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    edge_request req, ref;
    int rc = routes_parse((const char *)data, size, &req);
    /* The fast path for the common form must agree with jansson's. */
    if (routes_parse_json((const char *)data, size, &ref) == 0 && rc == 0) {
        if (req.route != ref.route || req.data_len != ref.data_len || !req.data != !ref.data ||
            (req.data && memcmp(req.data, ref.data, req.data_len)) || !req.error != !ref.error ||
            (req.error && strcmp(req.error, ref.error)))
            abort();
    }
    routes_request_free(&ref);
    if (rc == 0) {
        switch (req.route) {
        case ROUTE_SENDMESSAGE:
            /* The text is NUL-terminated at data_len (it goes to sockets
             * and onto the bus with that length). */
            if (!req.data || req.data[req.data_len] != '\0' || req.error) abort();
            break;
        case ROUTE_BAD_REQUEST:
            if (!req.error || req.data) abort();
            break;
        case ROUTE_DEFAULT:
            if (req.data) abort();
            break;
        default: abort();
        }
    }
    routes_request_free(&req);
    if (req.data) abort();

    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    edge_conn_info ci = {.conn_id = s,
                         .source_ip = s,
                         .user_agent = s,
                         .connected_at_ms = 1700000000000,
                         .last_active_ms = 1700000000123};
    size_t len = 0;
    char *reply = routes_default_reply(&ci, &len);
    if (reply && strlen(reply) != len) abort();
    free(reply);
    free(s);
    return 0;
}
