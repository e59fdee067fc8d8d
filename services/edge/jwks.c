/* The public keys of RS256 and ES256 tokens (auth.h): parsing a JWKS
 * document into OpenSSL keys, checking a signature against them, and the
 * holder of the file in force (reread on SIGHUP on its own thread). The
 * token itself is parsed and its claims checked in auth.c. */
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

#include "auth_int.h"
#include "dw/log.h"

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
    if (auth__b64url_decode(json_string_value(v), json_string_length(v), *out, cap, len)) {
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

/* 1 when a key of the set (the one named by kid, or any of the algorithm's
 * type without a kid) verifies the signature; 0 with *why, or -1 when
 * OpenSSL failed. */
int auth__keys_verify(auth_jwks *jwks, jwt_alg alg, const char *kid, const char *data, size_t n,
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
