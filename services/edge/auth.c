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
static int b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
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
    if (b64url_decode(in, n, buf, sizeof buf, &len)) return NULL;
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

/* ---- public keys (JWKS) ------------------------------------------------- */

typedef struct jwk {
    jwt_alg alg;           /* ALG_RS256 (kty RSA) or ALG_ES256 (kty EC, P-256) */
    char kid[KID_MAX + 1]; /* "" when the key has none */
    EVP_PKEY *pkey;
} jwk;

struct auth_keyset {
    atomic_int refs;
    size_t n;
    jwk keys[AUTH_JWKS_MAX_KEYS];
};

size_t auth_keyset_count(const auth_keyset *k)
{
    return k ? k->n : 0;
}

void auth_keyset_free(auth_keyset *k)
{
    if (!k || atomic_fetch_sub(&k->refs, 1) != 1) return;
    for (size_t i = 0; i < k->n; i++)
        EVP_PKEY_free(k->keys[i].pkey);
    free(k);
}

/* A base64url member of a JWK as a big-endian number: *out (malloc'd). */
static int jwk_bytes(json_t *key, const char *name, uint8_t **out, size_t *len)
{
    json_t *v = json_object_get(key, name);
    *out = NULL;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > (SIG_MAX * 4 + 2) / 3)
        return -1;
    size_t cap = json_string_length(v) / 4 * 3 + 3;
    *out = malloc(cap);
    if (!*out) return -1;
    if (b64url_decode(json_string_value(v), json_string_length(v), *out, cap, len)) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* EVP_PKEY from OSSL_PARAMs (type "RSA" or "EC"), checked as a public key. */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    if (!ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    if (pkey) {
        /* A point off the curve, an even exponent: never a key to trust. */
        ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (!ctx || EVP_PKEY_public_check(ctx) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(ctx);
    }
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *rsa_key(json_t *key, const char **why)
{
    uint8_t *n = NULL, *e = NULL;
    size_t nlen = 0, elen = 0;
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = NULL, *be = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    if (jwk_bytes(key, "n", &n, &nlen) || jwk_bytes(key, "e", &e, &elen) || elen > 8) {
        *why = "RSA key: bad n or e";
        goto done;
    }
    bn = BN_bin2bn(n, (int)nlen, NULL);
    be = BN_bin2bn(e, (int)elen, NULL);
    if (!bn || !be) {
        *why = "out of memory";
        goto done;
    }
    if (BN_num_bits(bn) < RSA_BITS_MIN || BN_num_bits(bn) > RSA_BITS_MAX) {
        *why = "RSA key: the modulus must have 2048 to 8192 bits";
        goto done;
    }
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        !(pkey = pkey_from_params("RSA", bld)))
        *why = "RSA key: not a valid public key";
done:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

static EVP_PKEY *ec_key(json_t *key, const char **why)
{
    uint8_t *x = NULL, *y = NULL, point[1 + 2 * P256_COORD_LEN];
    size_t xlen = 0, ylen = 0;
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    /* RFC 7518 6.2.1.2: the full length of a coordinate, leading zeros kept. */
    if (jwk_bytes(key, "x", &x, &xlen) || jwk_bytes(key, "y", &y, &ylen) ||
        xlen != P256_COORD_LEN || ylen != P256_COORD_LEN) {
        *why = "EC key: x and y must be 32 bytes each";
        goto done;
    }
    point[0] = POINT_CONVERSION_UNCOMPRESSED;
    memcpy(point + 1, x, P256_COORD_LEN);
    memcpy(point + 1 + P256_COORD_LEN, y, P256_COORD_LEN);
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point) ||
        !(pkey = pkey_from_params("EC", bld)))
        *why = "EC key: not a point on P-256";
done:
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

/* 1 when the optional string member name is absent or equals want. */
static int member_is(json_t *key, const char *name, const char *want)
{
    json_t *v = json_object_get(key, name);
    return !v || (json_is_string(v) && !strcmp(json_string_value(v), want));
}

/* One JWK: 1 taken into *out, 0 skipped (not ours to use), -1 refused. */
static int jwk_parse(json_t *key, jwk *out, const char **why)
{
    if (!json_is_object(key)) {
        *why = "a key is not a JSON object";
        return -1;
    }
    /* A JWKS is published; a private key in it is a leak and a mistake. */
    static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"};
    for (size_t i = 0; i < sizeof private_members / sizeof private_members[0]; i++)
        if (json_object_get(key, private_members[i])) {
            *why = "a key holds private or secret material: publish only public keys";
            return -1;
        }
    json_t *kty = json_object_get(key, "kty");
    if (!json_is_string(kty)) {
        *why = "a key has no kty";
        return -1;
    }
    if (!member_is(key, "use", "sig")) return 0;
    json_t *ops = json_object_get(key, "key_ops");
    if (ops) {
        size_t i;
        json_t *op;
        int verify = 0;
        if (!json_is_array(ops)) return 0;
        json_array_foreach(ops, i, op)
        {
            if (json_is_string(op) && !strcmp(json_string_value(op), "verify")) verify = 1;
        }
        if (!verify) return 0;
    }
    json_t *kid = json_object_get(key, "kid");
    if (kid && (!json_is_string(kid) || json_string_length(kid) > KID_MAX)) {
        *why = "a key has a bad kid";
        return -1;
    }
    memset(out, 0, sizeof *out);
    if (kid) memcpy(out->kid, json_string_value(kid), json_string_length(kid) + 1);
    if (!strcmp(json_string_value(kty), "RSA")) {
        if (!member_is(key, "alg", "RS256")) return 0; /* RS512, PS256...: not ours */
        out->alg = ALG_RS256;
        out->pkey = rsa_key(key, why);
    } else if (!strcmp(json_string_value(kty), "EC")) {
        if (!member_is(key, "crv", "P-256") || !member_is(key, "alg", "ES256")) return 0;
        if (!json_object_get(key, "crv")) {
            *why = "EC key: no crv";
            return -1;
        }
        out->alg = ALG_ES256;
        out->pkey = ec_key(key, why);
    } else {
        return 0; /* oct, OKP...: HS256's secret is never a JWK here */
    }
    return out->pkey ? 1 : -1;
}

int auth_keyset_parse(const char *json, size_t len, auth_keyset **out, size_t *skipped,
                      const char **why)
{
    const char *dummy;
    size_t skip = 0;
    if (!why) why = &dummy;
    *out = NULL;
    json_t *doc = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, NULL);
    json_t *keys = doc ? json_object_get(doc, "keys") : NULL;
    auth_keyset *ks = NULL;
    int rc = -1;
    if (!json_is_object(doc) || !json_is_array(keys)) {
        *why = "not a JWKS document ({\"keys\": [...]})";
        goto done;
    }
    ks = calloc(1, sizeof *ks);
    if (!ks) {
        *why = "out of memory";
        goto done;
    }
    atomic_init(&ks->refs, 1);
    size_t i;
    json_t *key;
    json_array_foreach(keys, i, key)
    {
        if (ks->n == AUTH_JWKS_MAX_KEYS) {
            *why = "more than 32 usable keys";
            goto done;
        }
        int r = jwk_parse(key, &ks->keys[ks->n], why);
        if (r < 0) goto done;
        if (r == 0)
            skip++;
        else
            ks->n++;
    }
    if (!ks->n) {
        *why = "no usable key (RS256 with RSA, ES256 with EC P-256)";
        goto done;
    }
    *out = ks;
    ks = NULL;
    rc = 0;
    if (skipped) *skipped = skip;
done:
    auth_keyset_free(ks);
    json_decref(doc);
    return rc;
}

/* ES256's R || S as the DER ECDSA-Sig-Value EVP_DigestVerify takes.
 * *der is OpenSSL's (OPENSSL_free). */
static int es256_der(const uint8_t *sig, uint8_t **der, size_t *len)
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, ES256_SIG_LEN / 2, NULL);
    BIGNUM *s = BN_bin2bn(sig + ES256_SIG_LEN / 2, ES256_SIG_LEN / 2, NULL);
    int n = -1;
    *der = NULL;
    if (es && r && s && ECDSA_SIG_set0(es, r, s)) {
        r = s = NULL; /* es owns them now */
        n = i2d_ECDSA_SIG(es, der);
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    if (n <= 0) return -1;
    *len = (size_t)n;
    return 0;
}

/* 1 when sig verifies data under key, 0 when not, -1 on an OpenSSL failure. */
static int pkey_verifies(const jwk *key, const char *data, size_t n, const uint8_t *sig,
                         size_t siglen)
{
    uint8_t *der = NULL;
    size_t derlen = 0;
    if (key->alg == ALG_RS256) {
        /* RFC 7518 3.3: the signature is exactly as long as the modulus. */
        if ((int)siglen != EVP_PKEY_get_size(key->pkey)) return 0;
    } else {
        if (siglen != ES256_SIG_LEN) return 0;
        if (es256_der(sig, &der, &derlen)) return -1;
        sig = der;
        siglen = derlen;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = -1;
    /* RSA keys verify RSASSA-PKCS1-v1_5, their default padding. */
    if (md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key->pkey) == 1) {
        int v = EVP_DigestVerify(md, sig, siglen, (const unsigned char *)data, n);
        rc = v == 1 ? 1 : 0; /* 0 and negative: it does not verify */
    }
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return rc;
}

/* ---- the key file holder ------------------------------------------------ */

struct auth_jwks {
    pthread_mutex_t mu; /* cur */
    auth_keyset *cur;
    char *path; /* NULL: keys from text */
    atomic_uint_least64_t generation;
    pthread_t thread;
    bool watching;
};

/* SIGHUP wakes the one watching holder (sem_post is async-signal-safe). */
static sem_t hup_sem;
static atomic_bool hup_stop;
static atomic_int hup_users;
static struct sigaction hup_old;

static auth_keyset *jwks_acquire(auth_jwks *j)
{
    pthread_mutex_lock(&j->mu);
    auth_keyset *k = j->cur;
    if (k) atomic_fetch_add(&k->refs, 1);
    pthread_mutex_unlock(&j->mu);
    return k;
}

static void jwks_install(auth_jwks *j, auth_keyset *k)
{
    pthread_mutex_lock(&j->mu);
    auth_keyset *old = j->cur;
    j->cur = k;
    pthread_mutex_unlock(&j->mu);
    auth_keyset_free(old);
}

static char *read_small_file(const char *path, size_t max, size_t *len, const char **why)
{
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    char *buf = NULL;
    size_t n = 0;
    struct stat st;
    if (fd < 0) {
        *why = "cannot open the JWKS file";
        return NULL;
    }
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        *why = "the JWKS file is not a regular file of at most 1 MB";
        goto error;
    }
    buf = malloc(max + 1);
    if (!buf) {
        *why = "out of memory";
        goto error;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            *why = "cannot read the JWKS file";
            goto error;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > max) {
            *why = "the JWKS file is larger than 1 MB";
            goto error;
        }
    }
    close(fd);
    *len = n;
    return buf;
error:
    free(buf);
    close(fd);
    return NULL;
}

static int jwks_load_path(auth_jwks *j, size_t *count, const char **why)
{
    size_t len = 0;
    char *text = read_small_file(j->path, AUTH_JWKS_FILE_MAX, &len, why);
    if (!text) return -1;
    auth_keyset *k = NULL;
    int rc = auth_keyset_parse(text, len, &k, NULL, why);
    free(text);
    if (rc) return -1;
    if (count) *count = k->n;
    jwks_install(j, k);
    return 0;
}

static int jwks_new(auth_jwks **out, const char *path)
{
    auth_jwks *j = calloc(1, sizeof *j);
    *out = NULL;
    if (!j) return -1;
    pthread_mutex_init(&j->mu, NULL);
    if (path && !(j->path = strdup(path))) {
        auth_jwks_free(j);
        return -1;
    }
    *out = j;
    return 0;
}

int auth_jwks_open(auth_jwks **out, const char *path, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    if (!path || jwks_new(out, path)) {
        *why = "out of memory";
        return -1;
    }
    size_t n = 0;
    if (jwks_load_path(*out, &n, why)) {
        auth_jwks_free(*out);
        *out = NULL;
        return -1;
    }
    DW_INFO("JWKS loaded", "file=\"%s\" keys=%zu", path, n);
    return 0;
}

int auth_jwks_from_json(auth_jwks **out, const char *json, size_t len, const char **why)
{
    const char *dummy;
    auth_keyset *k = NULL;
    if (!why) why = &dummy;
    *out = NULL;
    if (auth_keyset_parse(json, len, &k, NULL, why)) return -1;
    if (jwks_new(out, NULL)) {
        auth_keyset_free(k);
        *why = "out of memory";
        return -1;
    }
    jwks_install(*out, k);
    return 0;
}

int auth_jwks_reload(auth_jwks *j, size_t *count, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    int rc = -1;
    if (!j->path)
        *why = "no JWKS file to reload";
    else
        rc = jwks_load_path(j, count, why);
    atomic_fetch_add(&j->generation, 1);
    return rc;
}

uint64_t auth_jwks_generation(auth_jwks *j)
{
    return atomic_load(&j->generation);
}

static void on_sighup(int sig)
{
    (void)sig;
    sem_post(&hup_sem);
}

static void *watch_main(void *arg)
{
    auth_jwks *j = arg;
    for (;;) {
        while (sem_wait(&hup_sem) && errno == EINTR)
            ;
        if (atomic_load(&hup_stop)) break;
        size_t n = 0;
        const char *why = NULL;
        if (auth_jwks_reload(j, &n, &why) == 0)
            DW_INFO("JWKS reloaded", "file=\"%s\" keys=%zu", j->path, n);
        else
            DW_ERROR("JWKS not reloaded: the keys loaded before stay in force",
                     "file=\"%s\" err=\"%s\"", j->path, why);
    }
    return NULL;
}

int auth_jwks_watch_sighup(auth_jwks *j)
{
    if (!j->path || atomic_fetch_add(&hup_users, 1) != 0) {
        if (j->path) atomic_fetch_sub(&hup_users, 1);
        return -1;
    }
    atomic_store(&hup_stop, false);
    if (sem_init(&hup_sem, 0, 0)) goto error;
    if (pthread_create(&j->thread, NULL, watch_main, j)) {
        sem_destroy(&hup_sem);
        goto error;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sighup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, &hup_old);
    j->watching = true;
    return 0;
error:
    atomic_fetch_sub(&hup_users, 1);
    return -1;
}

void auth_jwks_free(auth_jwks *j)
{
    if (!j) return;
    if (j->watching) {
        sigaction(SIGHUP, &hup_old, NULL);
        atomic_store(&hup_stop, true);
        sem_post(&hup_sem);
        pthread_join(j->thread, NULL);
        sem_destroy(&hup_sem);
        atomic_fetch_sub(&hup_users, 1);
    }
    auth_keyset_free(j->cur);
    pthread_mutex_destroy(&j->mu);
    free(j->path);
    free(j);
}

/* ---- verification --------------------------------------------------------- */

/* 1 when a key of the set (the one named by kid, or any of the algorithm's
 * type without a kid) verifies the signature; 0 with *why, or -1 when
 * OpenSSL failed. */
static int keys_verify(auth_jwks *jwks, jwt_alg alg, const char *kid, const char *data, size_t n,
                       const uint8_t *sig, size_t siglen, const char **why)
{
    auth_keyset *ks = jwks_acquire(jwks);
    int ok = 0, tried = 0;
    for (size_t i = 0; ks && i < ks->n && ok == 0; i++) {
        const jwk *k = &ks->keys[i];
        if (k->alg != alg || (kid && strcmp(k->kid, kid))) continue;
        tried++;
        ok = pkey_verifies(k, data, n, sig, siglen);
    }
    auth_keyset_free(ks);
    if (ok == 0) *why = tried ? "bad signature" : "no key for this token (kid or alg)";
    return ok;
}

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
    if (slen > (SIG_MAX * 4 + 2) / 3 || b64url_decode(dot2 + 1, slen, sig, sizeof sig, &siglen) ||
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
        ok = keys_verify(cfg->jwks, alg, kid, token, signed_len, sig, siglen, why);
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
