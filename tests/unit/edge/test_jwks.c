/* RS256 and ES256 tokens against a JWKS (auth.c): keys made by OpenSSL at
 * test time, tokens signed here with them (EVP_DigestSign), independent of
 * the verifier. Good, expired, wrong key, unknown kid, algorithm confusion,
 * tampered signatures, malformed key sets, reload and SIGHUP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"

#define NOW 1700000000

static EVP_PKEY *rsa1, *rsa2, *ec1, *ec2, *rsa_small;

/* ---- a tiny signer, independent of the code under test ---- */

static void b64url(const void *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    int o = 0;
    for (int i = 0; i < len; i++) {
        char c = out[i];
        if (c == '=') break;
        out[o++] = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    out[o] = '\0';
}

static void bn_b64url(const BIGNUM *bn, int pad, char *out)
{
    unsigned char buf[1100];
    int n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    b64url(buf, (size_t)n, out);
}

/* A JWK for key's public half; extra is more members ("" or ",\"x\":1"). */
static char *jwk(EVP_PKEY *key, const char *kid, const char *extra)
{
    char *out = malloc(4096), a[1500], b[1500];
    BIGNUM *x = NULL, *y = NULL;
    if (EVP_PKEY_is_a(key, "RSA")) {
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &x);
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &y);
        bn_b64url(x, 0, a);
        bn_b64url(y, 0, b);
        snprintf(out, 4096, "{\"kty\":\"RSA\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"%s}", kid, a,
                 b, extra);
    } else {
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x);
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y);
        bn_b64url(x, 32, a);
        bn_b64url(y, 32, b);
        snprintf(out, 4096,
                 "{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}",
                 kid, a, b, extra);
    }
    BN_free(x);
    BN_free(y);
    return out;
}

/* "<header>.<payload>.<signature>" signed with key: RS256 for RSA, ES256 for
 * EC (DER turned into R || S). */
static char *sign_key(EVP_PKEY *key, const char *header, const char *payload)
{
    char *tok = malloc(16384);
    b64url(header, strlen(header), tok);
    strcat(tok, ".");
    b64url(payload, strlen(payload), tok + strlen(tok));
    unsigned char sig[1024], rs[64];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &siglen, (const unsigned char *)tok, strlen(tok)), 1);
    EVP_MD_CTX_free(md);
    strcat(tok, ".");
    if (EVP_PKEY_is_a(key, "EC")) {
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
        assert_non_null(es);
        BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + 32, 32);
        ECDSA_SIG_free(es);
        b64url(rs, 64, tok + strlen(tok));
    } else {
        b64url(sig, siglen, tok + strlen(tok));
    }
    return tok;
}

static char *claims(int64_t exp)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "{\"sub\":\"alice\",\"exp\":%lld}", (long long)exp);
    return buf;
}

static char *rs(EVP_PKEY *k, const char *kid, int64_t exp)
{
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"RS256\",\"typ\":\"JWT\"%s%s%s}", kid ? ",\"kid\":\"" : "",
             kid ? kid : "", kid ? "\"" : "");
    return sign_key(k, hdr, claims(exp));
}

static char *es(EVP_PKEY *k, const char *kid, int64_t exp)
{
    char hdr[128];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\"%s%s%s}", kid ? ",\"kid\":\"" : "", kid ? kid : "",
             kid ? "\"" : "");
    return sign_key(k, hdr, claims(exp));
}

static char *jwks_of(const char *a, const char *b, const char *c)
{
    char *out = malloc(16384);
    snprintf(out, 16384, "{\"keys\":[%s%s%s%s%s]}", a, b ? "," : "", b ? b : "", c ? "," : "",
             c ? c : "");
    return out;
}

static int verify(auth_jwks *j, const char *tok, const char **why)
{
    auth_jwt_config c;
    auth_identity id;
    auth_jwt_config_default(&c);
    c.jwks = j;
    int rc = auth_jwt_verify(&c, tok, strlen(tok), NOW, &id, why);
    if (rc == AUTH_OK) assert_string_equal(id.user_id, "alice");
    auth_identity_free(&id);
    return rc;
}

static int setup_keys(void **state)
{
    rsa1 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa_small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    ec1 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    return rsa1 && rsa2 && rsa_small && ec1 && ec2 ? 0 : -1;
}

static int teardown_keys(void **state)
{
    EVP_PKEY_free(rsa1);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(rsa_small);
    EVP_PKEY_free(ec1);
    EVP_PKEY_free(ec2);
    return 0;
}

static auth_jwks *holder(const char *json)
{
    auth_jwks *j = NULL;
    const char *why = NULL;
    if (auth_jwks_from_json(&j, json, strlen(json), &why)) fail_msg("JWKS refused: %s", why);
    return j;
}

static void test_good_expired_wrong(void **state)
{
    char *k1 = jwk(rsa1, "r1", ",\"alg\":\"RS256\",\"use\":\"sig\"");
    char *k2 = jwk(ec1, "e1", ",\"key_ops\":[\"verify\"]");
    char *k3 = jwk(rsa2, "enc-only", ",\"use\":\"enc\""); /* skipped: not for signatures */
    char *json = jwks_of(k1, k2, k3);
    auth_keyset *ks = NULL;
    size_t skipped = 9;
    assert_int_equal(auth_keyset_parse(json, strlen(json), &ks, &skipped, NULL), 0);
    assert_int_equal(auth_keyset_count(ks), 2);
    assert_int_equal(skipped, 1);
    auth_keyset_free(ks);
    auth_jwks *j = holder(json);
    const char *why = NULL;
    char *t;

    /* Good: with the kid, and without one (every key of the type tried). */
    assert_int_equal(verify(j, t = rs(rsa1, "r1", NOW + 600), &why), AUTH_OK);
    free(t);
    assert_int_equal(verify(j, t = rs(rsa1, NULL, NOW + 600), &why), AUTH_OK);
    free(t);
    assert_int_equal(verify(j, t = es(ec1, "e1", NOW + 600), &why), AUTH_OK);
    free(t);
    assert_int_equal(verify(j, t = es(ec1, NULL, NOW + 600), &why), AUTH_OK);
    free(t);
    /* Expired: the signature is good, the claims are not. */
    assert_int_equal(verify(j, t = rs(rsa1, "r1", NOW - 3600), &why), AUTH_ERR_EXPIRED);
    free(t);
    assert_int_equal(verify(j, t = es(ec1, "e1", NOW - 3600), &why), AUTH_ERR_EXPIRED);
    free(t);
    /* Wrong key: another key pair under the same kid, or with none. */
    assert_int_equal(verify(j, t = rs(rsa2, "r1", NOW + 600), &why), AUTH_ERR_SIGNATURE);
    assert_string_equal(why, "bad signature");
    free(t);
    assert_int_equal(verify(j, t = es(ec2, NULL, NOW + 600), &why), AUTH_ERR_SIGNATURE);
    free(t);
    /* The enc-only key is not used, even when the token names it. */
    assert_int_equal(verify(j, t = rs(rsa2, "enc-only", NOW + 600), &why), AUTH_ERR_SIGNATURE);
    assert_string_equal(why, "no key for this token (kid or alg)");
    free(t);
    assert_int_equal(verify(j, t = rs(rsa1, "nope", NOW + 600), &why), AUTH_ERR_SIGNATURE);
    free(t);
    auth_jwks_free(j);
    free(k1);
    free(k2);
    free(k3);
    free(json);
}

static void test_algorithm_confusion(void **state)
{
    char *k1 = jwk(rsa1, "r1", ""), *k2 = jwk(ec1, "e1", ",\"alg\":\"ES256\"");
    char *json = jwks_of(k1, k2, NULL);
    auth_jwks *j = holder(json);
    const char *why = NULL;
    char *t;
    /* An RS256 token pointing at the EC key, an ES256 one at the RSA key. */
    char hdr[64];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"RS256\",\"kid\":\"e1\"}");
    assert_int_equal(verify(j, t = sign_key(rsa1, hdr, claims(NOW + 600)), &why),
                     AUTH_ERR_SIGNATURE);
    free(t);
    snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"kid\":\"r1\"}");
    assert_int_equal(verify(j, t = sign_key(ec1, hdr, claims(NOW + 600)), &why),
                     AUTH_ERR_SIGNATURE);
    free(t);
    /* HS256 signed with the public key's bytes as the HMAC secret: there is
     * no secret configured, so HS256 is no algorithm here at all. */
    char body[256], sig[64];
    unsigned char md[32];
    unsigned int mdlen = 0;
    b64url("{\"alg\":\"HS256\"}", 15, body);
    strcat(body, ".");
    b64url(claims(NOW + 600), strlen(claims(NOW + 600)), body + strlen(body));
    HMAC(EVP_sha256(), k1, (int)strlen(k1), (unsigned char *)body, strlen(body), md, &mdlen);
    b64url(md, mdlen, sig);
    strcat(body, ".");
    strcat(body, sig);
    assert_int_equal(verify(j, body, &why), AUTH_ERR_ALG);
    assert_string_equal(why, "HS256 is not configured (no secret)");
    /* Case games with alg are no algorithm either. */
    assert_int_equal(verify(j, t = sign_key(rsa1, "{\"alg\":\"rs256\"}", claims(NOW + 600)), &why),
                     AUTH_ERR_ALG);
    free(t);
    assert_int_equal(verify(j, t = sign_key(rsa1, "{\"alg\":\"PS256\"}", claims(NOW + 600)), &why),
                     AUTH_ERR_ALG);
    free(t);
    /* A key whose alg is set answers only that alg. */
    char *k3 = jwk(rsa2, "r2", ",\"alg\":\"RS512\""), *only = jwks_of(k1, k3, NULL);
    auth_keyset *ks = NULL;
    size_t skipped = 0;
    assert_int_equal(auth_keyset_parse(only, strlen(only), &ks, &skipped, NULL), 0);
    assert_int_equal(auth_keyset_count(ks), 1);
    assert_int_equal(skipped, 1);
    auth_keyset_free(ks);
    auth_jwks_free(j);
    free(k1);
    free(k2);
    free(k3);
    free(only);
    free(json);
}

/* Flip a byte in the signature part (decoded), keep the length; or cut it. */
static void test_tampered_signatures(void **state)
{
    char *k1 = jwk(rsa1, "r1", ""), *k2 = jwk(ec1, "e1", "");
    char *json = jwks_of(k1, k2, NULL);
    auth_jwks *j = holder(json);
    const char *why = NULL;
    char *toks[2] = {rs(rsa1, "r1", NOW + 600), es(ec1, "e1", NOW + 600)};
    for (int i = 0; i < 2; i++) {
        char *t = toks[i], *s = strrchr(t, '.') + 1, keep = s[5];
        s[5] = keep == 'A' ? 'B' : 'A';
        assert_int_equal(verify(j, t, &why), AUTH_ERR_SIGNATURE);
        s[5] = keep;
        assert_int_equal(verify(j, t, &why), AUTH_OK);
        s[strlen(s) - 4] = '\0'; /* 3 bytes short: malformed or a bad signature */
        int rc = verify(j, t, &why);
        assert_true(rc == AUTH_ERR_SIGNATURE || rc == AUTH_ERR_MALFORMED);
        free(t);
    }
    /* The payload changed under a good signature. */
    char *t = es(ec1, "e1", NOW + 600);
    char *payload = strchr(t, '.') + 1;
    payload[2] = payload[2] == 'a' ? 'b' : 'a';
    assert_int_equal(verify(j, t, &why), AUTH_ERR_SIGNATURE);
    free(t);
    auth_jwks_free(j);
    free(k1);
    free(k2);
    free(json);
}

static void test_bad_key_sets(void **state)
{
    char *good = jwk(ec1, "e1", "");
    char *small = jwk(rsa_small, "s", "");
    char *priv = jwk(ec1, "p", ",\"d\":\"AAAA\"");
    char *kidnum = jwk(ec1, "k", ",\"kid\":7");
    char *enc = jwk(ec1, "x", ",\"use\":\"enc\"");
    /* A point off the curve: y of another key. */
    char *off = strdup(good), *other = jwk(ec2, "e1", "");
    memcpy(strstr(off, "\"y\":\""), strstr(other, "\"y\":\""), 4 + 43);
    char *x31 = strdup(good);
    char *xs = strstr(x31, "\"x\":\"") + 5;
    memmove(xs, xs + 2, strlen(xs + 2) + 1); /* 41 characters: 30 bytes */
    struct {
        const char *name;
        char *json;
        const char *why;
    } bad[] = {
        {"not JSON", strdup("{"), "not a JWKS document ({\"keys\": [...]})"},
        {"no keys member", strdup("{\"k\":[]}"), "not a JWKS document ({\"keys\": [...]})"},
        {"empty", strdup("{\"keys\":[]}"), "no usable key (RS256 with RSA, ES256 with EC P-256)"},
        {"only enc keys", jwks_of(enc, NULL, NULL),
         "no usable key (RS256 with RSA, ES256 with EC P-256)"},
        {"RSA 1024", jwks_of(small, NULL, NULL),
         "RSA key: the modulus must have 2048 to 8192 bits"},
        {"private key", jwks_of(good, priv, NULL),
         "a key holds private or secret material: publish only public keys"},
        {"kid not a string", jwks_of(kidnum, NULL, NULL), NULL},
        {"off the curve", jwks_of(off, NULL, NULL), "EC key: not a point on P-256"},
        {"short x", jwks_of(x31, NULL, NULL), "EC key: x and y must be 32 bytes each"},
        {"key not an object", strdup("{\"keys\":[1]}"), "a key is not a JSON object"},
        {"no kty", strdup("{\"keys\":[{\"kid\":\"a\"}]}"), "a key has no kty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        auth_keyset *ks = NULL;
        const char *why = NULL;
        if (auth_keyset_parse(bad[i].json, strlen(bad[i].json), &ks, NULL, &why) != -1 || ks)
            fail_msg("%s: accepted", bad[i].name);
        if (bad[i].why && strcmp(why, bad[i].why))
            fail_msg("%s: \"%s\", want \"%s\"", bad[i].name, why, bad[i].why);
        free(bad[i].json);
    }
    /* At most 32 keys. */
    char *many = malloc(40 * 512 + 64);
    strcpy(many, "{\"keys\":[");
    for (int i = 0; i < 33; i++) {
        if (i) strcat(many, ",");
        strcat(many, good);
    }
    strcat(many, "]}");
    auth_keyset *ks = NULL;
    const char *why = NULL;
    assert_int_equal(auth_keyset_parse(many, strlen(many), &ks, NULL, &why), -1);
    many[strlen(many) - 2 - strlen(good) - 1] = '\0';
    strcat(many, "]}");
    assert_int_equal(auth_keyset_parse(many, strlen(many), &ks, NULL, &why), 0);
    assert_int_equal(auth_keyset_count(ks), 32);
    auth_keyset_free(ks);
    free(many);
    free(good);
    free(small);
    free(priv);
    free(kidnum);
    free(enc);
    free(off);
    free(other);
    free(x31);
}

static void write_file(const char *path, const char *text)
{
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, path), 0);
}

/* The file is reread on request and on SIGHUP; a broken file keeps the
 * keys in force. */
static void test_reload_and_sighup(void **state)
{
    char dir[] = "/tmp/dw-jwks-XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/jwks.json", dir);
    char *k1 = jwk(rsa1, "r1", ""), *k2 = jwk(ec1, "e1", "");
    char *one = jwks_of(k1, NULL, NULL), *two = jwks_of(k2, NULL, NULL);
    write_file(path, one);
    auth_jwks *j = NULL;
    const char *why = NULL;
    assert_int_equal(auth_jwks_open(&j, "/nonexistent/jwks.json", &why), -1);
    assert_int_equal(auth_jwks_open(&j, path, &why), 0);
    char *t1 = rs(rsa1, "r1", NOW + 600), *t2 = es(ec1, "e1", NOW + 600);
    assert_int_equal(verify(j, t1, &why), AUTH_OK);
    assert_int_equal(verify(j, t2, &why), AUTH_ERR_SIGNATURE);

    write_file(path, two);
    size_t n = 0;
    assert_int_equal(auth_jwks_reload(j, &n, &why), 0);
    assert_int_equal(n, 1);
    assert_int_equal(verify(j, t1, &why), AUTH_ERR_SIGNATURE);
    assert_int_equal(verify(j, t2, &why), AUTH_OK);
    write_file(path, "{\"keys\": [oops");
    assert_int_equal(auth_jwks_reload(j, &n, &why), -1);
    assert_int_equal(verify(j, t2, &why), AUTH_OK);

    /* SIGHUP: a thread rereads it (one watcher per process). */
    assert_int_equal(auth_jwks_watch_sighup(j), 0);
    auth_jwks *other = NULL;
    assert_int_equal(auth_jwks_open(&other, path, &why), -1); /* the file is broken now */
    write_file(path, one);
    assert_int_equal(auth_jwks_open(&other, path, &why), 0);
    assert_int_equal(auth_jwks_watch_sighup(other), -1);
    auth_jwks_free(other);
    uint64_t gen = auth_jwks_generation(j);
    raise(SIGHUP);
    for (int i = 0; i < 500 && auth_jwks_generation(j) == gen; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(auth_jwks_generation(j) > gen);
    assert_int_equal(verify(j, t1, &why), AUTH_OK);
    assert_int_equal(verify(j, t2, &why), AUTH_ERR_SIGNATURE);
    auth_jwks_free(j);

    unlink(path);
    rmdir(dir);
    free(k1);
    free(k2);
    free(one);
    free(two);
    free(t1);
    free(t2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_expired_wrong),  cmocka_unit_test(test_algorithm_confusion),
        cmocka_unit_test(test_tampered_signatures), cmocka_unit_test(test_bad_key_sets),
        cmocka_unit_test(test_reload_and_sighup),
    };
    return cmocka_run_group_tests(tests, setup_keys, teardown_keys);
}
