/* A route worker's answer: integ_reply_decode() reads whatever a worker
 * (user code, any language) publishes to the edge's reply inbox, and the
 * sender's frame is built from it. The same bytes also go through the
 * DW_ROUTES parser and, as a client frame, through the request builder. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "integ_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    integ_reply r;
    if (integ_reply_decode((const char *)data, size, &r) == 0) {
        /* Every kind carries a text, NUL-terminated at its length. */
        if (!r.text || r.text[r.text_len] != '\0') abort();
        if (r.kind != INTEG_REPLY_OK && r.text_json) abort();
        if (r.kind == INTEG_REPLY_OK) {
            /* JSON text must load back; the v1 frame must be built. */
            if (r.text_json) {
                json_t *v = json_loadb(r.text, r.text_len, JSON_DECODE_ANY, NULL);
                if (!v) abort();
                json_decref(v);
            }
            size_t len = 0;
            char *f = integ_v1_reply("echo", "1", r.text, r.text_len, r.text_json, &len);
            if (f && strlen(f) != len) abort();
            free(f);
        }
        integ_reply_free(&r);
        if (r.text) abort();
    }

    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    integ_route_spec *v = NULL;
    size_t n = 0;
    char err[256];
    if (integ_routes_parse(s, &v, &n, err, sizeof err) == 0) {
        for (size_t i = 0; i < n; i++)
            if (!dw_action_valid(v[i].action, strlen(v[i].action)) ||
                integ_action_builtin(v[i].action))
                abort();
    } else if (v || n) {
        abort();
    }
    free(v);

    json_t *frame = NULL;
    const char *action = NULL;
    if (integ_frame_parse((const char *)data, size, &frame, &action) == 0) {
        integ_identity id = {"127.0.0.1", s, s, s};
        size_t len = 0;
        char *body = integ_request_body(action, "c", "r", &id, frame, &len);
        if (body) {
            json_t *back = json_loadb(body, len, 0, NULL);
            if (!back || !json_equal(json_object_get(back, "body"), frame)) abort();
            json_decref(back);
        }
        free(body);
        json_decref(frame);
    }
    free(s);
    return 0;
}
