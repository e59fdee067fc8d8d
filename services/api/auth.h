/* The management API's bearer token. The token is read once at start from
 * a file (DW_ADMIN_TOKEN_FILE); a request's token is compared through the
 * SHA-256 digests of both with CRYPTO_memcmp, so that neither the token nor
 * its length shows in the response time. */
#ifndef API_AUTH_H
#define API_AUTH_H

#include <stdbool.h>
#include <stddef.h>

typedef struct api_auth {
    bool enabled;             /* false: no token configured, no check */
    unsigned char digest[32]; /* SHA-256 of the token */
} api_auth;

/* Load the token from path; "" disables authentication. Surrounding white
 * space (the file's newline) is not part of the token; a file that holds
 * nothing else is an error. 0, or -1 with the reason in err. */
int api_auth_load(api_auth *a, const char *path, char *err, size_t errlen);

typedef enum {
    API_AUTH_OK,      /* the right token, or authentication is off */
    API_AUTH_MISSING, /* no "Authorization: Bearer ..." header: 401 */
    API_AUTH_WRONG,   /* a bearer token, but not the configured one: 403 */
} api_auth_result;

/* Check an Authorization header value (NULL when the request has none). */
api_auth_result api_auth_check(const api_auth *a, const char *header);

/* True when host only accepts local connections: "localhost", 127.0.0.0/8
 * or ::1. "" (every address) is not. Decides whether the listener may run
 * without a token. */
bool api_host_is_loopback(const char *host);

/* Wipe the digest. */
void api_auth_clear(api_auth *a);

#endif
