#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dw/bus.h"
#include "dw/log.h"
#include "auth_int.h"

void auth_jwt_config_default(auth_jwt_config *c)
{
    memset(c, 0, sizeof *c);
    c->leeway_s = AUTH_LEEWAY_DEFAULT;
    c->require_exp = 1;
}

static int is_b64url_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Decode unpadded base64url through OpenSSL: translate to the standard
 * alphabet, pad, decode, then re-encode and compare so that only the one
 * canonical spelling of each value is accepted (no malleable signatures). */
int auth__b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
    unsigned char std[AUTH_TOKEN_MAX + 4];
    unsigned char again[AUTH_TOKEN_MAX + 5];
    if (n > AUTH_TOKEN_MAX || n % 4 == 1) return -1;
    size_t pad = (4 - n % 4) % 4;
    size_t total = n + pad;
    if (total / 4 * 3 > cap) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (!is_b64url_char(c)) return -1;
        std[i] = c == '-' ? '+' : c == '_' ? '/' : c;
    }
    memset(std + n, '=', pad);
    if (total == 0) {
        *outlen = 0;
        return 0;
    }
    int got = EVP_DecodeBlock(out, std, (int)total);
    if (got < 0 || (size_t)got < pad) return -1;
    size_t dl = (size_t)got - pad;
    int elen = EVP_EncodeBlock(again, out, (int)dl);
    if (elen < 0 || (size_t)elen != total || memcmp(again, std, total) != 0) return -1;
    *outlen = dl;
    return 0;
}

static json_t *decode_json_object(const char *in, size_t n)
{
    uint8_t buf[AUTH_TOKEN_MAX / 4 * 3 + 3];
    size_t len;
    if (auth__b64url_decode(in, n, buf, sizeof buf, &len)) return NULL;
    /* Duplicate claims are refused: two "sub"s must not mean two things to
     * two parsers. Without JSON_ALLOW_NUL jansson also refuses "\u0000". */
    json_t *o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (o && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b) return INT64_MIN;
    return a + b;
}

/* NumericDate: an integer or a real number of seconds. round_up picks the
 * conservative side for a fractional value (nbf rounds up, exp down). */
static int numeric_date(json_t *v, int round_up, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_real(v)) return -1;
    double d = json_real_value(v);
    if (d >= 9.2e18) {
        *out = INT64_MAX;
    } else if (d <= -9.2e18) {
        *out = INT64_MIN;
    } else {
        int64_t t = (int64_t)d;
        if (round_up && (double)t < d)
            t++;
        else if (!round_up && (double)t > d)
            t--;
        *out = t;
    }
    return 0;
}

/* A user id goes into the registry, logs and other clients' frames: no
 * control characters (C0, DEL, or C1 in UTF-8), no NUL. jansson has
 * already checked that it is valid UTF-8. */
static int user_id_valid(const char *s, size_t n)
{
    if (n == 0 || n > AUTH_USER_MAX || strlen(s) != n) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
        if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
            (unsigned char)s[i + 1] <= 0x9f)
            return 0;
    }
    return 1;
}

static int audience_ok(json_t *aud, const char *want, const char **why)
{
    if (json_is_string(aud)) {
        if (strcmp(json_string_value(aud), want) == 0) return AUTH_OK;
        *why = "audience mismatch";
        return AUTH_ERR_AUDIENCE;
    }
    if (!json_is_array(aud)) {
        *why = "bad aud claim";
        return AUTH_ERR_CLAIMS;
    }
    size_t i;
    json_t *v;
    int found = 0;
    json_array_foreach(aud, i, v)
    {
        if (!json_is_string(v)) {
            *why = "bad aud claim";
            return AUTH_ERR_CLAIMS;
        }
        if (strcmp(json_string_value(v), want) == 0) found = 1;
    }
    if (found) return AUTH_OK;
    *why = "audience mismatch";
    return AUTH_ERR_AUDIENCE;
}

static int take_rooms(json_t *rooms, auth_identity *out, const char **why)
{
    if (!json_is_array(rooms) || json_array_size(rooms) > AUTH_ROOMS_MAX) {
        *why = "bad rooms claim";
        return AUTH_ERR_CLAIMS;
    }
    size_t n = json_array_size(rooms);
    out->has_rooms = 1;
    if (n == 0) return AUTH_OK;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(rooms, i);
        if (!json_is_string(v) || !dw_room_valid(json_string_value(v), json_string_length(v))) {
            *why = "bad rooms claim";
            return AUTH_ERR_CLAIMS;
        }
    }
    out->rooms = calloc(n, sizeof *out->rooms);
    if (!out->rooms) goto oom;
    for (size_t i = 0; i < n; i++) {
        out->rooms[i] = strdup(json_string_value(json_array_get(rooms, i)));
        if (!out->rooms[i]) goto oom;
        out->nrooms = i + 1;
    }
    return AUTH_OK;
oom:
    *why = "out of memory";
    return AUTH_ERR_INTERNAL;
}

static int check_claims(const auth_jwt_config *cfg, json_t *claims, int64_t now_s,
                        auth_identity *out, const char **why)
{
    int64_t leeway = cfg->leeway_s > 0 ? cfg->leeway_s : 0;
    json_t *v = json_object_get(claims, "exp");
    if (v) {
        int64_t exp;
        if (numeric_date(v, 0, &exp)) {
            *why = "bad exp claim";
            return AUTH_ERR_CLAIMS;
        }
        /* RFC 7519 4.1.4: valid only strictly before exp. */
        if (now_s >= sat_add(exp, leeway)) {
            *why = "token expired";
            return AUTH_ERR_EXPIRED;
        }
        out->exp = exp;
    } else if (cfg->require_exp) {
        *why = "missing exp";
        return AUTH_ERR_CLAIMS;
    }
    v = json_object_get(claims, "nbf");
    if (v) {
        int64_t nbf;
        if (numeric_date(v, 1, &nbf)) {
            *why = "bad nbf claim";
            return AUTH_ERR_CLAIMS;
        }
        if (sat_add(now_s, leeway) < nbf) {
            *why = "token not yet valid";
            return AUTH_ERR_NOT_YET;
        }
    }
    if (cfg->audience && cfg->audience[0]) {
        v = json_object_get(claims, "aud");
        if (!v) {
            *why = "missing aud";
            return AUTH_ERR_AUDIENCE;
        }
        int rc = audience_ok(v, cfg->audience, why);
        if (rc) return rc;
    }
    v = json_object_get(claims, "sub");
    if (!v) {
        *why = "missing sub";
        return AUTH_ERR_CLAIMS;
    }
    if (!json_is_string(v) || !user_id_valid(json_string_value(v), json_string_length(v))) {
        *why = "bad sub claim";
        return AUTH_ERR_CLAIMS;
    }
    memcpy(out->user_id, json_string_value(v), json_string_length(v) + 1);
    v = json_object_get(claims, "rooms");
    if (v) return take_rooms(v, out, why);
    return AUTH_OK;
}

static int check_header(json_t *hdr, jwt_alg *alg_out, const char **kid, const char **why)
{
    json_t *alg = json_object_get(hdr, "alg");
    if (!json_is_string(alg)) {
        *why = "header without alg";
        return AUTH_ERR_MALFORMED;
    }
    const char *a = json_string_value(alg);
    if (strcasecmp(a, "none") == 0) {
        *why = "alg none refused";
        return AUTH_ERR_ALG;
    }
    /* Exact names only: "hs256" or "RS256 " are no algorithm of ours. */
    if (!strcmp(a, "HS256"))
        *alg_out = ALG_HS256;
    else if (!strcmp(a, "RS256"))
        *alg_out = ALG_RS256;
    else if (!strcmp(a, "ES256"))
        *alg_out = ALG_ES256;
    else {
        *why = "unsupported alg (HS256, RS256 or ES256)";
        return AUTH_ERR_ALG;
    }
    json_t *typ = json_object_get(hdr, "typ");
    if (typ && !json_is_string(typ)) {
        *why = "bad typ header";
        return AUTH_ERR_MALFORMED;
    }
    json_t *k = json_object_get(hdr, "kid");
    *kid = NULL;
    if (k) {
        if (!json_is_string(k) || json_string_length(k) > KID_MAX) {
            *why = "bad kid header";
            return AUTH_ERR_MALFORMED;
        }
        *kid = json_string_value(k);
    }
    /* RFC 7515 4.1.11: extensions we do not understand must not be ignored. */
    if (json_object_get(hdr, "crit")) {
        *why = "crit header not supported";
        return AUTH_ERR_ALG;
    }
    return AUTH_OK;
}

/* 1 when sig is HMAC-SHA256(key, data); the compare is constant-time. */
static int hmac_matches(const uint8_t *key, size_t klen, const char *data, size_t n,
                        const uint8_t sig[SHA256_LEN], int *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, n, md, &mdlen) ||
        mdlen != SHA256_LEN) {
        *err = 1;
        return 0;
    }
    int ok = CRYPTO_memcmp(md, sig, SHA256_LEN) == 0;
    OPENSSL_cleanse(md, sizeof md);
    return ok;
}

/* ---- verification --------------------------------------------------------- */

int auth_jwt_verify(const auth_jwt_config *cfg, const char *token, size_t len, int64_t now_s,
                    auth_identity *out, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    memset(out, 0, sizeof *out);
    json_t *hdr = NULL, *claims = NULL;
    int rc = AUTH_ERR_MALFORMED;
    int have_secret = cfg->secret && cfg->secret_len > 0 && cfg->secret_len <= INT32_MAX;

    if (!have_secret && !cfg->jwks) {
        *why = "no secret or keys configured";
        return AUTH_ERR_INTERNAL;
    }
    if (!token || len == 0) {
        *why = "token empty";
        return AUTH_ERR_MALFORMED;
    }
    if (len > AUTH_TOKEN_MAX) {
        *why = "token too long";
        return AUTH_ERR_MALFORMED;
    }
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token))) {
        *why = "malformed token (expected 3 parts)";
        return AUTH_ERR_MALFORMED;
    }
    size_t hlen = (size_t)(dot1 - token);
    size_t plen = (size_t)(dot2 - dot1 - 1);
    size_t slen = len - (size_t)(dot2 + 1 - token);

    hdr = decode_json_object(token, hlen);
    if (!hdr) {
        *why = "malformed header";
        goto error;
    }
    jwt_alg alg = 0;
    const char *kid = NULL;
    rc = check_header(hdr, &alg, &kid, why);
    if (rc) goto error;
    /* An algorithm needs its own kind of key: a public key is never taken
     * for an HMAC secret, nor the secret for a public key. */
    if ((alg == ALG_HS256 && !have_secret) || (alg != ALG_HS256 && !cfg->jwks)) {
        *why = alg == ALG_HS256 ? "HS256 is not configured (no secret)"
                                : "RS256/ES256 are not configured (no JWKS)";
        rc = AUTH_ERR_ALG;
        goto error;
    }

    uint8_t sig[SIG_MAX + 3];
    size_t siglen = 0;
    if (slen > (SIG_MAX * 4 + 2) / 3 ||
        auth__b64url_decode(dot2 + 1, slen, sig, sizeof sig, &siglen) ||
        (alg == ALG_HS256 && (slen != SIG_B64_LEN || siglen != SHA256_LEN))) {
        *why = "malformed signature";
        rc = AUTH_ERR_MALFORMED;
        goto error;
    }
    /* The signature covers the header and payload exactly as sent. */
    int err = 0, ok = 0;
    size_t signed_len = (size_t)(dot2 - token);
    if (alg == ALG_HS256) {
        ok = hmac_matches(cfg->secret, cfg->secret_len, token, signed_len, sig, &err);
        if (cfg->secret_prev && cfg->secret_prev_len > 0 && cfg->secret_prev_len <= INT32_MAX)
            ok |=
                hmac_matches(cfg->secret_prev, cfg->secret_prev_len, token, signed_len, sig, &err);
        if (!ok) *why = "bad signature";
    } else {
        ok = auth__keys_verify(cfg->jwks, alg, kid, token, signed_len, sig, siglen, why);
        if (ok < 0) err = 1;
    }
    if (err) {
        *why = "signature check failed (OpenSSL)";
        rc = AUTH_ERR_INTERNAL;
        goto error;
    }
    if (ok != 1) {
        rc = AUTH_ERR_SIGNATURE;
        goto error;
    }

    claims = decode_json_object(dot1 + 1, plen);
    if (!claims) {
        *why = "malformed payload";
        rc = AUTH_ERR_MALFORMED;
        goto error;
    }
    rc = check_claims(cfg, claims, now_s, out, why);
    if (rc) goto error;
    json_decref(claims);
    json_decref(hdr);
    *why = "ok";
    return AUTH_OK;

error:
    json_decref(claims);
    json_decref(hdr);
    auth_identity_free(out);
    return rc;
}

void auth_identity_free(auth_identity *id)
{
    if (!id) return;
    for (size_t i = 0; i < id->nrooms; i++)
        free(id->rooms[i]);
    free(id->rooms);
    memset(id, 0, sizeof *id);
}

int auth_load_secret(const char *path, uint8_t **out, size_t *len, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    *out = NULL;
    *len = 0;
    uint8_t *buf = NULL;
    size_t n = 0;
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0) {
        *why = "cannot open the JWT secret file";
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        *why = "the JWT secret file is not a regular file";
        goto error;
    }
    if (st.st_size > SECRET_FILE_MAX) {
        *why = "the JWT secret file is larger than 64 KB";
        goto error;
    }
    buf = malloc(SECRET_FILE_MAX + 1);
    if (!buf) {
        *why = "out of memory";
        goto error;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, SECRET_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            *why = "cannot read the JWT secret file";
            goto error;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > SECRET_FILE_MAX) {
            *why = "the JWT secret file is larger than 64 KB";
            goto error;
        }
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n < AUTH_SECRET_MIN) {
        *why = "the JWT secret is shorter than 32 bytes (HS256 needs 256 bits; "
               "make one with: openssl rand -base64 48)";
        goto error;
    }
    close(fd);
    *out = buf;
    *len = n;
    return 0;

error:
    if (buf) auth_secret_free(buf, SECRET_FILE_MAX + 1);
    close(fd);
    return -1;
}

void auth_secret_free(uint8_t *secret, size_t len)
{
    if (!secret) return;
    OPENSSL_cleanse(secret, len);
    free(secret);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* URL-decode (form rules: %XX and '+') into out; -1 on a bad escape, a NUL,
 * or when it does not fit with its terminator. */
static int url_decode(const char *in, size_t n, char *out, size_t cap, size_t *len)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '%') {
            if (n - i < 3) return -1;
            int hi = hexval(in[i + 1]), lo = hexval(in[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == '\0' || o + 1 >= cap) return -1;
        out[o++] = c;
    }
    if (cap == 0) return -1;
    out[o] = '\0';
    *len = o;
    return 0;
}

int auth_token_from_query(const char *query, size_t qlen, char *out, size_t cap, size_t *len)
{
    static const char name[] = "token";
    const size_t nlen = sizeof name - 1;
    int found = 0;
    size_t i = 0;
    if (qlen > 0 && query[0] == '?') i = 1;
    while (i <= qlen) {
        const char *amp = i < qlen ? memchr(query + i, '&', qlen - i) : NULL;
        size_t end = amp ? (size_t)(amp - query) : qlen;
        const char *p = query + i;
        size_t plen = end - i;
        int is_token =
            (plen == nlen || (plen > nlen && p[nlen] == '=')) && memcmp(p, name, nlen) == 0;
        if (is_token) {
            /* Two tokens could mean two things to two parsers: refuse. */
            if (found) return -1;
            found = 1;
            size_t vstart = plen > nlen ? nlen + 1 : plen;
            if (url_decode(p + vstart, plen - vstart, out, cap, len)) return -1;
        }
        if (!amp) break;
        i = end + 1;
    }
    return found;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

int auth_token_from_bearer(const char *value, size_t vlen, const char **tok, size_t *toklen)
{
    size_t i = 0;
    while (i < vlen && is_space(value[i]))
        i++;
    if (vlen - i < 7 || strncasecmp(value + i, "bearer", 6) != 0 || !is_space(value[i + 6]))
        return 0;
    i += 6;
    while (i < vlen && is_space(value[i]))
        i++;
    size_t end = vlen;
    while (end > i && is_space(value[end - 1]))
        end--;
    if (end == i) return 0;
    for (size_t j = i; j < end; j++)
        if (is_space(value[j])) return 0;
    *tok = value + i;
    *toklen = end - i;
    return 1;
}

static int looks_like_jwt(const char *s, size_t n)
{
    int dots = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.')
            dots++;
        else if (!is_b64url_char((unsigned char)s[i]))
            return 0;
    }
    return dots == 2;
}

int auth_token_from_protocols(const char *value, size_t vlen, const char **tok, size_t *toklen)
{
    static const char v1[] = AUTH_SUBPROTOCOL_V1;
    size_t i = 0;
    while (i < vlen) {
        const char *comma = memchr(value + i, ',', vlen - i);
        size_t end = comma ? (size_t)(comma - value) : vlen;
        size_t s = i, e = end;
        while (s < e && is_space(value[s]))
            s++;
        while (e > s && is_space(value[e - 1]))
            e--;
        size_t n = e - s;
        int is_v1 = n == sizeof v1 - 1 && memcmp(value + s, v1, n) == 0;
        if (n > 0 && !is_v1 && looks_like_jwt(value + s, n)) {
            *tok = value + s;
            *toklen = n;
            return 1;
        }
        i = end + 1;
    }
    return 0;
}

static int copy_token(const char *tok, size_t n, char *out, size_t cap, size_t *len,
                      const char **why)
{
    if (n + 1 > cap) {
        *why = "token too long";
        return -1;
    }
    memcpy(out, tok, n);
    out[n] = '\0';
    *len = n;
    return 1;
}

int auth_token_from_request(const auth_request_view *rq, char *out, size_t cap, size_t *len,
                            const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    const char *tok;
    size_t n;
    *why = "no token";
    if (rq->authorization &&
        auth_token_from_bearer(rq->authorization, strlen(rq->authorization), &tok, &n))
        return copy_token(tok, n, out, cap, len, why);
    if (rq->protocols && auth_token_from_protocols(rq->protocols, strlen(rq->protocols), &tok, &n))
        return copy_token(tok, n, out, cap, len, why);
    if (rq->query) {
        int rc = auth_token_from_query(rq->query, strlen(rq->query), out, cap, len);
        if (rc < 0) *why = "malformed token parameter";
        return rc;
    }
    return 0;
}
