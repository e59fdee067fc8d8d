#include "wsclose.h"

#include "utf8.h"

bool wsclose_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
           (code >= 3000 && code <= 4999);
}

uint16_t wsclose_check(const uint8_t *payload, size_t len)
{
    if (len == 0) return 0; /* no code at all is allowed */
    if (len == 1) return 1002;
    if (!wsclose_code_valid((unsigned)payload[0] << 8 | payload[1])) return 1002;
    if (!utf8_valid(payload + 2, len - 2)) return 1007;
    return 0;
}
