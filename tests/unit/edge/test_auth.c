#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"

#define NOW 1700000000
static const char SECRET[] = "0123456789abcdef0123456789abcdef-test";
static const char OTHER[] = "a-different-secret-of-enough-length!!";

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

/* header and payload are JSON text (or anything, for broken cases). */
static char *sign_with(const char *secret, const char *header, const char *payload)
{
    char *buf = malloc(16384);
    b64url(header, strlen(header), buf);
    strcat(buf, ".");
    b64url(payload, strlen(payload), buf + strlen(buf));
    unsigned char md[32];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)buf, strlen(buf), md, &mdlen);
    strcat(buf, ".");
    b64url(md, mdlen, buf + strlen(buf));
    return buf;
}

static char *sign(const char *payload)
{
    return sign_with(SECRET, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload);
}

static auth_jwt_config cfg(void)
{
    auth_jwt_config c;
    auth_jwt_config_default(&c);
    c.secret = (const uint8_t *)SECRET;
    c.secret_len = strlen(SECRET);
    return c;
}

/* Verify tok with c at NOW; returns the status, *why the reason. */
static int verify_c(const auth_jwt_config *c, const char *tok, const char **why, auth_identity *id)
{
    return auth_jwt_verify(c, tok, strlen(tok), NOW, id, why);
}

static int verify(const char *tok, const char **why)
{
    auth_jwt_config c = cfg();
    auth_identity id;
    int rc = verify_c(&c, tok, why, &id);
    auth_identity_free(&id);
    return rc;
}

__attribute__((format(printf, 1, 2))) static char *claims(const char *fmt, ...)
{
    static char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

/* ---- accepted ---- */

static void test_valid_token_gives_sub(void **state)
{
    char *tok = sign(claims("{\"sub\":\"alice\",\"exp\":%d,\"iat\":%d}", NOW + 60, NOW));
    auth_jwt_config c = cfg();
    auth_identity id;
    const char *why = NULL;
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    assert_string_equal(why, "ok");
    assert_string_equal(id.user_id, "alice");
    assert_int_equal(id.exp, NOW + 60);
    assert_int_equal(id.has_rooms, 0);
    assert_null(id.rooms);
    auth_identity_free(&id);
    auth_identity_free(&id); /* idempotent */
    auth_identity_free(NULL);
    free(tok);
}

static void test_typ_is_optional_and_rooms_are_taken(void **state)
{
    char *tok =
        sign_with(SECRET, "{\"alg\":\"HS256\"}",
                  claims("{\"sub\":\"bob\",\"exp\":%d,\"rooms\":[\"lobby\",\"a.b\"]}", NOW + 60));
    auth_jwt_config c = cfg();
    auth_identity id;
    const char *why;
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    assert_int_equal(id.has_rooms, 1);
    assert_int_equal(id.nrooms, 2);
    assert_string_equal(id.rooms[0], "lobby");
    assert_string_equal(id.rooms[1], "a.b");
    auth_identity_free(&id);
    assert_int_equal(id.nrooms, 0);
    free(tok);

    tok = sign(claims("{\"sub\":\"bob\",\"exp\":%d,\"rooms\":[\"ok\",\"bad room\"]}", NOW + 60));
    assert_int_equal(verify(tok, &why), AUTH_ERR_CLAIMS);
    assert_string_equal(why, "bad rooms claim");
    free(tok);
    tok = sign(claims("{\"sub\":\"bob\",\"exp\":%d,\"rooms\":\"lobby\"}", NOW + 60));
    assert_int_equal(verify(tok, &why), AUTH_ERR_CLAIMS);
    free(tok);
}

static void test_leeway_boundaries(void **state)
{
    const char *why;
    /* Valid strictly before exp + leeway (30 s). */
    char *tok = sign(claims("{\"sub\":\"a\",\"exp\":%d}", NOW - 29));
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d}", NOW - 30));
    assert_int_equal(verify(tok, &why), AUTH_ERR_EXPIRED);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"nbf\":%d}", NOW + 600, NOW + 30));
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"nbf\":%d}", NOW + 600, NOW + 31));
    assert_int_equal(verify(tok, &why), AUTH_ERR_NOT_YET);
    free(tok);
    /* Real-valued NumericDates round to the safe side. */
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d.5}", NOW - 30));
    assert_int_equal(verify(tok, &why), AUTH_ERR_EXPIRED);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d.5}", NOW - 29));
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":1e300}"));
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":9223372036854775807}"));
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
}

static void test_exp_requirement_is_configurable(void **state)
{
    char *tok = sign("{\"sub\":\"carol\"}");
    const char *why;
    assert_int_equal(verify(tok, &why), AUTH_ERR_CLAIMS);
    assert_string_equal(why, "missing exp");
    auth_jwt_config c = cfg();
    c.require_exp = 0;
    auth_identity id;
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    assert_string_equal(id.user_id, "carol");
    assert_int_equal(id.exp, 0);
    auth_identity_free(&id);
    free(tok);
}

static void test_audience(void **state)
{
    auth_jwt_config c = cfg();
    c.audience = "dynamowave";
    auth_identity id;
    const char *why;
    char *tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"aud\":\"dynamowave\"}", NOW + 60));
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"aud\":[\"x\",\"dynamowave\"]}", NOW + 60));
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"aud\":\"other\"}", NOW + 60));
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_ERR_AUDIENCE);
    assert_string_equal(why, "audience mismatch");
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"aud\":[]}", NOW + 60));
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_ERR_AUDIENCE);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d}", NOW + 60));
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_ERR_AUDIENCE);
    assert_string_equal(why, "missing aud");
    /* Without a configured audience, aud is not looked at. */
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"exp\":%d,\"aud\":[1]}", NOW + 60));
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_ERR_CLAIMS);
    assert_string_equal(why, "bad aud claim");
    free(tok);
}

static void test_previous_secret_accepted_during_rotation(void **state)
{
    char *tok =
        sign_with(OTHER, "{\"alg\":\"HS256\"}", claims("{\"sub\":\"a\",\"exp\":%d}", NOW + 9));
    const char *why;
    assert_int_equal(verify(tok, &why), AUTH_ERR_SIGNATURE);
    auth_jwt_config c = cfg();
    c.secret_prev = (const uint8_t *)OTHER;
    c.secret_prev_len = strlen(OTHER);
    auth_identity id;
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    auth_identity_free(&id);
    free(tok);
}

/* ---- refused, each with its own reason ---- */

typedef struct refusal {
    const char *name;
    char *token;
    int status;
    const char *why;
} refusal;

static void test_refusals_have_distinct_reasons(void **state)
{
    char exp_ok[64];
    snprintf(exp_ok, sizeof exp_ok, "\"exp\":%d", NOW + 60);
    char *valid = sign(claims("{\"sub\":\"alice\",%s}", exp_ok));
    /* The same token with its payload swapped for another user's. */
    char *forged = strdup(valid);
    {
        char *other = sign(claims("{\"sub\":\"admin\",%s}", exp_ok));
        char *d1 = strchr(forged, '.'), *o1 = strchr(other, '.');
        char *o2 = strchr(o1 + 1, '.');
        char *sig = strdup(strrchr(forged, '.'));
        sprintf(d1, "%.*s%s", (int)(o2 - o1), o1, sig);
        free(sig);
        free(other);
    }
    char hdr_none[256], hdr_bad_json[256], two[64];
    b64url("{\"alg\":\"none\",\"typ\":\"JWT\"}", 26, hdr_none);
    char payload[256];
    const char *pl = claims("{\"sub\":\"alice\",%s}", exp_ok);
    b64url(pl, strlen(pl), payload);
    char *alg_none = malloc(1024);
    sprintf(alg_none, "%s.%s.", hdr_none, payload);
    b64url("not json", 8, hdr_bad_json);
    char *non_json_hdr = malloc(1024);
    sprintf(non_json_hdr, "%s.%s.%s", hdr_bad_json, payload, strrchr(valid, '.') + 1);
    snprintf(two, sizeof two, "abc.def");
    char *bad_b64 = malloc(1024);
    sprintf(bad_b64, "e*J.%s.%s", payload, strrchr(valid, '.') + 1);
    char *sig_short = strdup(valid);
    sig_short[strlen(sig_short) - 2] = '\0';
    char *longtok = malloc(AUTH_TOKEN_MAX + 2);
    memset(longtok, 'a', AUTH_TOKEN_MAX + 1);
    longtok[AUTH_TOKEN_MAX + 1] = '\0';
    longtok[10] = longtok[20] = '.';

    refusal r[] = {
        {"expired", sign(claims("{\"sub\":\"a\",\"exp\":%d}", NOW - 3600)), AUTH_ERR_EXPIRED,
         "token expired"},
        {"not yet valid", sign(claims("{\"sub\":\"a\",%s,\"nbf\":%d}", exp_ok, NOW + 3600)),
         AUTH_ERR_NOT_YET, "token not yet valid"},
        {"wrong secret",
         sign_with(OTHER, "{\"alg\":\"HS256\"}", claims("{\"sub\":\"a\",%s}", exp_ok)),
         AUTH_ERR_SIGNATURE, "bad signature"},
        {"alg none", alg_none, AUTH_ERR_ALG, "alg none refused"},
        {"alg HS512",
         sign_with(SECRET, "{\"alg\":\"HS512\"}", claims("{\"sub\":\"a\",%s}", exp_ok)),
         AUTH_ERR_ALG, "unsupported alg (HS256, RS256 or ES256)"},
        {"RS256 without keys",
         sign_with(SECRET, "{\"alg\":\"RS256\"}", claims("{\"sub\":\"a\",%s}", exp_ok)),
         AUTH_ERR_ALG, "RS256/ES256 are not configured (no JWKS)"},
        {"two parts", strdup(two), AUTH_ERR_MALFORMED, "malformed token (expected 3 parts)"},
        {"bad base64", bad_b64, AUTH_ERR_MALFORMED, "malformed header"},
        {"bad signature encoding", sig_short, AUTH_ERR_MALFORMED, "malformed signature"},
        {"non-JSON payload", sign("this is not json"), AUTH_ERR_MALFORMED, "malformed payload"},
        {"missing sub", sign(claims("{%s}", exp_ok)), AUTH_ERR_CLAIMS, "missing sub"},
        {"missing alg", sign_with(SECRET, "{\"typ\":\"JWT\"}", "{}"), AUTH_ERR_MALFORMED,
         "header without alg"},
        {"too long", longtok, AUTH_ERR_MALFORMED, "token too long"},
    };
    size_t n = sizeof r / sizeof r[0];
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        int rc = verify(r[i].token, &why);
        if (rc != r[i].status || strcmp(why, r[i].why) != 0)
            fail_msg("%s: got %d \"%s\", want %d \"%s\"", r[i].name, rc, why ? why : "(null)",
                     r[i].status, r[i].why);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(r[i].why, r[j].why);
    }
    const char *why;
    assert_int_equal(verify(valid, &why), AUTH_OK);
    assert_int_equal(verify(forged, &why), AUTH_ERR_SIGNATURE);
    assert_int_equal(verify(non_json_hdr, &why), AUTH_ERR_MALFORMED);
    assert_string_equal(why, "malformed header");
    for (size_t i = 0; i < n; i++)
        free(r[i].token);
    free(valid);
    free(forged);
    free(non_json_hdr);
}

static void test_more_malformed(void **state)
{
    const char *why;
    auth_jwt_config c = cfg();
    auth_identity id;
    char exp_ok[64];
    snprintf(exp_ok, sizeof exp_ok, "\"exp\":%d", NOW + 60);
    const char *bad[] = {
        "",
        ".",
        "..",
        "...",
        "a.b.c.d",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.e.x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(auth_jwt_verify(&c, bad[i], strlen(bad[i]), NOW, &id, &why),
                         AUTH_ERR_MALFORMED);
        assert_int_equal(id.user_id[0], 0);
    }
    /* alg none in any case, even with a signature present. */
    char *tok = sign_with(SECRET, "{\"alg\":\"None\"}", claims("{\"sub\":\"a\",%s}", exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_ERR_ALG);
    assert_string_equal(why, "alg none refused");
    free(tok);
    tok = sign_with(SECRET, "{\"alg\":\"HS256\",\"crit\":[\"b64\"]}",
                    claims("{\"sub\":\"a\",%s}", exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_ERR_ALG);
    free(tok);
    tok = sign_with(SECRET, "[\"HS256\"]", claims("{\"sub\":\"a\",%s}", exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_ERR_MALFORMED);
    free(tok);
    /* A JSON array payload, duplicate claims, a standard-alphabet '+' or
     * padding in a part are all malformed. */
    tok = sign("[1,2]");
    assert_int_equal(verify(tok, &why), AUTH_ERR_MALFORMED);
    assert_string_equal(why, "malformed payload");
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",\"sub\":\"b\",%s}", exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_ERR_MALFORMED);
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",%s}", exp_ok));
    char *padded = malloc(strlen(tok) + 3);
    sprintf(padded, "%s=", tok);
    assert_int_equal(verify(padded, &why), AUTH_ERR_MALFORMED);
    /* A non-canonical last character of the signature (unused bits set)
     * decodes to the same bytes but is refused. */
    strcpy(padded, tok);
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *last = padded + strlen(padded) - 1;
    *last = alpha[(strchr(alpha, *last) - alpha) | 1];
    assert_int_equal(verify(padded, &why), AUTH_ERR_MALFORMED);
    assert_string_equal(why, "malformed signature");
    free(padded);
    free(tok);
    /* exp of the wrong type */
    tok = sign("{\"sub\":\"a\",\"exp\":\"tomorrow\"}");
    assert_int_equal(verify(tok, &why), AUTH_ERR_CLAIMS);
    assert_string_equal(why, "bad exp claim");
    free(tok);
    tok = sign(claims("{\"sub\":\"a\",%s,\"nbf\":null}", exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_ERR_CLAIMS);
    assert_string_equal(why, "bad nbf claim");
    free(tok);
    /* No secret configured: an internal error, never an accept. */
    auth_jwt_config none;
    auth_jwt_config_default(&none);
    tok = sign(claims("{\"sub\":\"a\",%s}", exp_ok));
    assert_int_equal(verify_c(&none, tok, &why, &id), AUTH_ERR_INTERNAL);
    /* why may be NULL. */
    assert_int_equal(auth_jwt_verify(&c, tok, strlen(tok), NOW, &id, NULL), AUTH_OK);
    auth_identity_free(&id);
    free(tok);
}

static void test_sub_validation(void **state)
{
    const char *why;
    char exp_ok[64];
    snprintf(exp_ok, sizeof exp_ok, "\"exp\":%d", NOW + 60);
    char long_sub[200];
    memset(long_sub, 'x', 128);
    long_sub[128] = '\0';
    char *tok = sign(claims("{\"sub\":\"%s\",%s}", long_sub, exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_OK);
    free(tok);
    long_sub[128] = 'x';
    long_sub[129] = '\0';
    tok = sign(claims("{\"sub\":\"%s\",%s}", long_sub, exp_ok));
    assert_int_equal(verify(tok, &why), AUTH_ERR_CLAIMS);
    assert_string_equal(why, "bad sub claim");
    free(tok);
    const char *bad[] = {"\"\"",          "42",
                         "null",          "\"a\\u0001b\"",
                         "\"a\\nb\"",     "\"a\\u007fb\"",
                         "\"a\\u0085b\"", "\"a\\u0000b\"",
                         "[\"a\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tok = sign(claims("{\"sub\":%s,%s}", bad[i], exp_ok));
        int rc = verify(tok, &why);
        if (rc == AUTH_OK) fail_msg("sub %s accepted", bad[i]);
        free(tok);
    }
    /* Non-ASCII printable text is a fine user id. */
    tok = sign(claims("{\"sub\":\"j\\u00fcrgen@example.com\",%s}", exp_ok));
    auth_jwt_config c = cfg();
    auth_identity id;
    assert_int_equal(verify_c(&c, tok, &why, &id), AUTH_OK);
    assert_string_equal(id.user_id, "j\xc3\xbcrgen@example.com");
    auth_identity_free(&id);
    free(tok);
}

/* ---- secret files ---- */

static char *write_temp(const char *content)
{
    char *path = strdup("/tmp/dw_test_secret_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

static void test_load_secret(void **state)
{
    uint8_t *s;
    size_t n;
    const char *why = NULL;
    char *p = write_temp("0123456789abcdef0123456789abcdefXYZ\n");
    assert_int_equal(auth_load_secret(p, &s, &n, &why), 0);
    assert_int_equal(n, 35);
    assert_memory_equal(s, "0123456789abcdef0123456789abcdefXYZ", 35);
    auth_secret_free(s, n);
    unlink(p);
    free(p);

    p = write_temp("too-short-secret\r\n");
    assert_int_equal(auth_load_secret(p, &s, &n, &why), -1);
    assert_null(s);
    assert_non_null(strstr(why, "shorter than 32 bytes"));
    unlink(p);
    free(p);

    /* 31 bytes plus newlines is still too short. */
    p = write_temp("0123456789abcdef0123456789abcde\n\n");
    assert_int_equal(auth_load_secret(p, &s, &n, &why), -1);
    unlink(p);
    free(p);

    assert_int_equal(auth_load_secret("/nonexistent/dw/secret", &s, &n, &why), -1);
    assert_non_null(strstr(why, "cannot open"));
    assert_int_equal(auth_load_secret("/tmp", &s, &n, &why), -1);
    auth_secret_free(NULL, 0);
}

/* ---- finding the token in a request ---- */

static void test_token_from_query(void **state)
{
    char out[256];
    size_t n;
    const char *q = "room=lobby&token=aa.bb.cc&x=1";
    assert_int_equal(auth_token_from_query(q, strlen(q), out, sizeof out, &n), 1);
    assert_string_equal(out, "aa.bb.cc");
    assert_int_equal(n, 8);
    q = "?token=a%2Eb%2ec";
    assert_int_equal(auth_token_from_query(q, strlen(q), out, sizeof out, &n), 1);
    assert_string_equal(out, "a.b.c");
    q = "tokens=x&mytoken=y&token";
    assert_int_equal(auth_token_from_query(q, strlen(q), out, sizeof out, &n), 1);
    assert_int_equal(n, 0);
    q = "a=1&b=2";
    assert_int_equal(auth_token_from_query(q, strlen(q), out, sizeof out, &n), 0);
    assert_int_equal(auth_token_from_query("", 0, out, sizeof out, &n), 0);
    const char *bad[] = {"token=a%G1", "token=a%4", "token=a%", "token=a%00b", "token=a&token=b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(auth_token_from_query(bad[i], strlen(bad[i]), out, sizeof out, &n), -1);
    q = "token=0123456789";
    assert_int_equal(auth_token_from_query(q, strlen(q), out, 10, &n), -1);
    assert_int_equal(auth_token_from_query(q, strlen(q), out, 11, &n), 1);
}

static void test_token_from_headers(void **state)
{
    const char *tok;
    size_t n;
    const char *v = "Bearer aa.bb.cc";
    assert_int_equal(auth_token_from_bearer(v, strlen(v), &tok, &n), 1);
    assert_int_equal(n, 8);
    assert_memory_equal(tok, "aa.bb.cc", 8);
    v = "  bearer \t aa.bb.cc  ";
    assert_int_equal(auth_token_from_bearer(v, strlen(v), &tok, &n), 1);
    assert_int_equal(n, 8);
    const char *no[] = {"Basic dXNlcjpwYXNz", "Bearer",     "Bearer   ",
                        "Bearerx a.b.c",      "Bearer a b", ""};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        assert_int_equal(auth_token_from_bearer(no[i], strlen(no[i]), &tok, &n), 0);

    v = "dynamowave.v1, aa.bb.cc";
    assert_int_equal(auth_token_from_protocols(v, strlen(v), &tok, &n), 1);
    assert_memory_equal(tok, "aa.bb.cc", n);
    v = "aa.bb.cc,dynamowave.v1";
    assert_int_equal(auth_token_from_protocols(v, strlen(v), &tok, &n), 1);
    assert_int_equal(n, 8);
    const char *none[] = {"dynamowave.v1", "dynamowave.v1, chat", "", " , ", "a.b", "a.b.c.d",
                          "a b.c.d"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        assert_int_equal(auth_token_from_protocols(none[i], strlen(none[i]), &tok, &n), 0);
}

static void test_token_from_request_precedence(void **state)
{
    char out[64];
    size_t n;
    const char *why;
    auth_request_view rq = {.query = "token=q.q.q",
                            .authorization = "Bearer h.h.h",
                            .protocols = "dynamowave.v1, p.p.p"};
    assert_int_equal(auth_token_from_request(&rq, out, sizeof out, &n, &why), 1);
    assert_string_equal(out, "h.h.h");
    rq.authorization = "Basic abc";
    assert_int_equal(auth_token_from_request(&rq, out, sizeof out, &n, &why), 1);
    assert_string_equal(out, "p.p.p");
    rq.protocols = "dynamowave.v1";
    assert_int_equal(auth_token_from_request(&rq, out, sizeof out, &n, &why), 1);
    assert_string_equal(out, "q.q.q");
    rq.query = "token=%zz";
    assert_int_equal(auth_token_from_request(&rq, out, sizeof out, &n, &why), -1);
    assert_string_equal(why, "malformed token parameter");
    auth_request_view empty = {0};
    assert_int_equal(auth_token_from_request(&empty, out, sizeof out, &n, &why), 0);
    assert_string_equal(why, "no token");
    auth_request_view big = {.authorization = "Bearer 0123456789.0123456789.0123456789"};
    assert_int_equal(auth_token_from_request(&big, out, 16, &n, &why), -1);
    assert_string_equal(why, "token too long");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_token_gives_sub),
        cmocka_unit_test(test_typ_is_optional_and_rooms_are_taken),
        cmocka_unit_test(test_leeway_boundaries),
        cmocka_unit_test(test_exp_requirement_is_configurable),
        cmocka_unit_test(test_audience),
        cmocka_unit_test(test_previous_secret_accepted_during_rotation),
        cmocka_unit_test(test_refusals_have_distinct_reasons),
        cmocka_unit_test(test_more_malformed),
        cmocka_unit_test(test_sub_validation),
        cmocka_unit_test(test_load_secret),
        cmocka_unit_test(test_token_from_query),
        cmocka_unit_test(test_token_from_headers),
        cmocka_unit_test(test_token_from_request_precedence),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
