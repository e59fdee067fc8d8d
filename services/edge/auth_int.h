/* The JWT verifier's insides, shared by auth.c (tokens, claims, HS256)
 * and jwks.c (RS256/ES256 keys and the JWKS file): not an API, auth.h is. */
#ifndef EDGE_AUTH_INT_H
#define EDGE_AUTH_INT_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"

#define SHA256_LEN 32
/* base64url of 32 bytes without padding. */
#define SIG_B64_LEN 43
/* RSA keys: 2048 bits at least (NIST), 8192 at most (verification cost). */
#define RSA_BITS_MIN 2048
#define RSA_BITS_MAX 8192
#define SIG_MAX (RSA_BITS_MAX / 8)
/* ES256: R and S, 32 bytes each (RFC 7518 3.4). */
#define ES256_SIG_LEN 64
#define P256_COORD_LEN 32
#define KID_MAX 128

typedef enum { ALG_HS256 = 1, ALG_RS256, ALG_ES256 } jwt_alg;
/* A secret file is a key, not a document: anything bigger is a mistake. */
#define SECRET_FILE_MAX 65536

/* auth.c: decode unpadded base64url (only the canonical spelling). 0 or -1. */
int auth__b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen);

/* jwks.c: 1 when a key of the set (the one named by kid, or any of the
 * algorithm's type without a kid) verifies the signature; 0 with *why, or
 * -1 when OpenSSL failed. */
int auth__keys_verify(auth_jwks *jwks, jwt_alg alg, const char *kid, const char *data, size_t n,
                      const uint8_t *sig, size_t siglen, const char **why);

#endif
