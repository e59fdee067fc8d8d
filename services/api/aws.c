#include "aws.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "dw/util.h"

#define SEGMENT "@connections/"

int api_route_parse(const char *path, char *id)
{
    if (!path || path[0] != '/') return API_ROUTE_NOT_FOUND;
    const char *p = path + 1;
    if (strncmp(p, SEGMENT, strlen(SEGMENT))) {
        /* one stage segment: "/<stage>/@connections/..." */
        const char *slash = strchr(p, '/');
        if (!slash || slash == p || strncmp(slash + 1, SEGMENT, strlen(SEGMENT)))
            return API_ROUTE_NOT_FOUND;
        p = slash + 1;
    }
    p += strlen(SEGMENT);
    size_t n = strlen(p);
    if (n == 0) return API_ROUTE_NOT_FOUND;
    if (n > API_CONN_ID_MAX) return API_ROUTE_TOO_LONG;
    memcpy(id, p, n + 1);
    return API_ROUTE_OK;
}

/* What clients sent (user agent, ids) may be anything: text that is not
 * UTF-8 (which jansson refuses) is sent as printable ASCII instead. */
static json_t *safe_str(const char *s)
{
    char buf[512];
    size_t i = 0;
    for (; s[i] && i + 1 < sizeof buf; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    buf[i] = '\0';
    json_t *j = json_string(s);
    return j ? j : json_string(buf);
}

static json_t *iso_or_null(int64_t ms)
{
    char ts[32];
    if (ms <= 0) return json_null();
    dw_iso8601_ms(ms, ts, sizeof ts);
    return json_string(ts);
}

static char *dump(json_t *obj, size_t *len)
{
    if (!obj) return NULL;
    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (text && len) *len = strlen(text);
    return text;
}

char *api_info_json(const Dw__ConnReply *info, size_t *len)
{
    /* clang-format off */
    json_t *obj = json_pack("{s:o, s:{s:o, s:o}, s:o}",
                            "ConnectedAt", iso_or_null(info->connected_at_ms),
                            "Identity",
                              "SourceIp", safe_str(info->source_ip ? info->source_ip : ""),
                              "UserAgent", info->has_user_agent && info->user_agent
                                               ? safe_str(info->user_agent) : json_null(),
                            "LastActiveAt", iso_or_null(info->last_active_ms ? info->last_active_ms
                                                                              : info->connected_at_ms));
    /* clang-format on */
    return dump(obj, len);
}

char *api_error_json(const char *message, const char *conn_id, size_t *len)
{
    json_t *obj = json_object();
    if (!obj) return NULL;
    json_object_set_new(obj, "message", safe_str(message ? message : ""));
    if (conn_id) json_object_set_new(obj, "connectionId", safe_str(conn_id));
    return dump(obj, len);
}

const char *api_error_type(unsigned status)
{
    switch (status) {
    case 400: return "BadRequestException";
    case 401: return "UnauthorizedException";
    case 403: return "ForbiddenException";
    case 404: return "NotFoundException";
    case 410: return "GoneException";
    case 413: return "PayloadTooLargeException";
    case 429: return "LimitExceededException";
    default: return NULL;
    }
}
