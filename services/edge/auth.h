/* Authentication of WebSocket upgrades with JWTs (DW_AUTH=jwt): HS256 with
 * a shared secret, RS256 and ES256 with the public keys of a JWKS file
 * (DW_JWT_JWKS_FILE, reread on SIGHUP). Signatures are checked by OpenSSL
 * (HMAC, EVP_DigestVerify). The verifier is pure: no sockets, no bus, no
 * clock reads (the caller passes the time), so it is unit-tested and
 * fuzzed; only the key file holder (auth_jwks) reads a file, at start and
 * on its own thread after a SIGHUP. The edge calls auth_token_from_request()
 * on the upgrade's headers, then auth_jwt_verify(), and answers 401 on any
 * refusal. */
#ifndef EDGE_AUTH_H
#define EDGE_AUTH_H

#include <stddef.h>
#include <stdint.h>

/* Longest token accepted, in bytes; anything longer is refused unread. */
#define AUTH_TOKEN_MAX 8192
/* The user id ("sub"): 1..AUTH_USER_MAX bytes, no control characters. */
#define AUTH_USER_MAX 128
/* The "rooms" claim holds at most this many room names. */
#define AUTH_ROOMS_MAX 64
/* Shortest secret accepted: HS256 needs a key of at least 256 bits. */
#define AUTH_SECRET_MIN 32
#define AUTH_LEEWAY_DEFAULT 30
/* The v1 subprotocol name, never taken for a token. */
#define AUTH_SUBPROTOCOL_V1 "dynamowave.v1"

/* Why a token was refused. Every refusal is a 401 for the client; the
 * codes and the `why` strings are for logs and metrics. */
typedef enum {
    AUTH_OK = 0,
    AUTH_ERR_MALFORMED = -1, /* size, parts, base64url, JSON shape */
    AUTH_ERR_ALG = -2,       /* alg is not one configured (none, HS512, RS256 without keys...) */
    AUTH_ERR_SIGNATURE = -3, /* the signature does not match (or no key has its kid) */
    AUTH_ERR_EXPIRED = -4,   /* exp is in the past (beyond the leeway) */
    AUTH_ERR_NOT_YET = -5,   /* nbf is in the future (beyond the leeway) */
    AUTH_ERR_AUDIENCE = -6,  /* aud does not name this service */
    AUTH_ERR_CLAIMS = -7,    /* a claim is missing or has a bad value */
    AUTH_ERR_INTERNAL = -8,  /* out of memory or an OpenSSL failure */
} auth_status;

/* Public keys for RS256 and ES256 (RFC 7517/7518): a JWKS document
 *   {"keys":[{"kty":"RSA","kid":"k1","n":"...","e":"AQAB","alg":"RS256","use":"sig"},
 *            {"kty":"EC","crv":"P-256","kid":"k2","x":"...","y":"...","alg":"ES256"}]}
 * RSA keys of 2048 to 8192 bits, EC keys on P-256. A key whose "use" is not
 * "sig", whose "key_ops" lack "verify", or of another type or curve is
 * skipped (counted); a malformed key of a known type refuses the document.
 * A token's "kid" picks the key; without one every key of its type is
 * tried. A key's "alg", when present, must be the token's. */
#define AUTH_JWKS_MAX_KEYS 32
#define AUTH_JWKS_FILE_MAX (1024 * 1024)
typedef struct auth_keyset auth_keyset;

/* Parse a JWKS document. 0 with *out (auth_keyset_free) and *skipped (may be
 * NULL), or -1 with *why (static text). A document with no usable key is
 * an error: a typo must not look like a working setup. */
int auth_keyset_parse(const char *json, size_t len, auth_keyset **out, size_t *skipped,
                      const char **why);
/* Keys in the set. */
size_t auth_keyset_count(const auth_keyset *k);
/* NULL-safe. */
void auth_keyset_free(auth_keyset *k);

/* The JWKS file in force: a keyset that can be replaced while tokens are
 * verified on another thread (each verification holds a reference to the
 * set it started with). */
typedef struct auth_jwks auth_jwks;
/* Read path (at most AUTH_JWKS_FILE_MAX bytes). 0 with *out, or -1 with *why. */
int auth_jwks_open(auth_jwks **out, const char *path, const char **why);
/* A holder for keys given as text (tests, fuzzing): no file. */
int auth_jwks_from_json(auth_jwks **out, const char *json, size_t len, const char **why);
/* Read the file again: 0 and the new keys are in force, or -1 with *why and
 * the old ones stay. *count (may be NULL): keys in force afterwards. */
int auth_jwks_reload(auth_jwks *j, size_t *count, const char **why);
/* Reread the file on every SIGHUP, on a thread of its own (logged: the
 * keys loaded, or why the old ones stay). At most one holder per process
 * watches. 0 or -1. */
int auth_jwks_watch_sighup(auth_jwks *j);
/* Reloads done since open (successful or not), for tests. Any thread. */
uint64_t auth_jwks_generation(auth_jwks *j);
/* Stop watching and free. NULL-safe. */
void auth_jwks_free(auth_jwks *j);

/* Set up once at start (auth_jwt_config_default, then override); the secret
 * and the key holder are borrowed and must outlive every auth_jwt_verify()
 * call. */
typedef struct auth_jwt_config {
    const uint8_t *secret;
    size_t secret_len;
    /* During a rotation: the previous secret, still accepted (NULL: none). */
    const uint8_t *secret_prev;
    size_t secret_prev_len;
    /* RS256 / ES256 (NULL: those algorithms are refused). */
    auth_jwks *jwks;
    const char *audience; /* NULL or "": aud is not checked */
    int64_t leeway_s;     /* clock skew tolerated on exp and nbf */
    int require_exp;      /* 1: a token without exp is refused */
} auth_jwt_config;

/* Fills the defaults: no secrets, no keys, no audience, 30 s leeway, exp
 * required. HS256 needs a secret, RS256 and ES256 need keys. */
void auth_jwt_config_default(auth_jwt_config *c);

/* Who a verified token says the client is. rooms is malloc'd (each name
 * and the array); release with auth_identity_free(). */
typedef struct auth_identity {
    char user_id[AUTH_USER_MAX + 1];
    int64_t exp;   /* the exp claim in seconds, 0 when absent */
    int has_rooms; /* 1: the token carried a "rooms" claim */
    char **rooms;  /* valid room names (dw_room_valid), NUL-terminated */
    size_t nrooms;
} auth_identity;

/* Verify one token at time now_s (seconds since the epoch). Returns AUTH_OK
 * and fills *out (which the caller frees with auth_identity_free), or a
 * negative auth_status with *out zeroed. *why (may be NULL) always points
 * to a static string: "ok" or the reason for the refusal. */
int auth_jwt_verify(const auth_jwt_config *cfg, const char *token, size_t len, int64_t now_s,
                    auth_identity *out, const char **why);

/* NULL-safe; leaves *id zeroed. */
void auth_identity_free(auth_identity *id);

/* Read the HS256 secret from a file at start. Trailing newlines (what
 * `echo` and editors add) are stripped; the rest is used byte for byte.
 * Returns 0 with *out (malloc'd; free with auth_secret_free) and *len, or
 * -1 with *why set: unreadable, too large, or shorter than AUTH_SECRET_MIN. */
int auth_load_secret(const char *path, uint8_t **out, size_t *len, const char **why);

/* Wipes and frees a secret from auth_load_secret(). NULL-safe. */
void auth_secret_free(uint8_t *secret, size_t len);

/* The token's three places in an upgrade request, as header values
 * (NUL-terminated; NULL when the header or the query is absent). */
typedef struct auth_request_view {
    const char *query;         /* the URL's query string, with or without '?' */
    const char *authorization; /* "Bearer <token>" */
    const char *protocols;     /* Sec-WebSocket-Protocol: "dynamowave.v1, <token>" */
} auth_request_view;

/* Find the token in an upgrade request: the Authorization header first, then
 * Sec-WebSocket-Protocol, then ?token=. Copies it NUL-terminated into out
 * (cap bytes). Returns 1 found, 0 absent, -1 malformed (bad percent-escape,
 * repeated token parameter, token longer than cap - 1) with *why set. */
int auth_token_from_request(const auth_request_view *rq, char *out, size_t cap, size_t *len,
                            const char **why);

/* The pieces of auth_token_from_request(), for callers holding one header.
 * Query: the first token= parameter, URL-decoded into out; same returns. */
int auth_token_from_query(const char *query, size_t qlen, char *out, size_t cap, size_t *len);
/* Authorization value "Bearer <token>" (scheme case-insensitive): 1 with
 * *tok pointing into value, or 0. */
int auth_token_from_bearer(const char *value, size_t vlen, const char **tok, size_t *toklen);
/* Sec-WebSocket-Protocol list: the first entry that is not
 * AUTH_SUBPROTOCOL_V1 and looks like a JWT (two dots, base64url):
 * 1 with *tok pointing into value, or 0. */
int auth_token_from_protocols(const char *value, size_t vlen, const char **tok, size_t *toklen);

#endif
