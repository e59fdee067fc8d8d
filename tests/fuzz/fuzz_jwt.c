/* The JWT verifier and the token extraction from upgrade headers, with a
 * fixed secret and a fixed JWKS (an RSA and a P-256 public key: the seeds
 * m0_rs256_* and m0_es256_* were signed with their private halves, which
 * are not kept; a fuzzer that mutates such a token exercises the RS256 and
 * ES256 paths and the claims behind them). A random token never passes the HMAC, so three of the
 * four modes sign what the fuzzer wrote: that is how the header and claims parsers behind the
 * signature check get exercised. data[0]: bits 0-1 mode, bit 2 audience required, bit 3 exp
 * optional. mode 0: the rest is a raw token (and a query / Authorization / Sec-WebSocket-Protocol
 * value); mode 1: the rest is "<header>.<payload>" in base64url, signed here; mode 2: the rest is
 * the payload JSON, with an HS256 header, signed here; mode 3: the rest is "<header JSON>\n<payload
 * JSON>", signed here. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "fuzz.h"

static const char SECRET[] = "fuzzing-secret-0123456789abcdef-0123456789";
static const char JWKS[] =
    "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"fuzz-rsa\",\"alg\":\"RS256\",\"use\":\"sig\",\"n\":"
    "\"teFqN5lKet7Myh9tk4uV"
    "g_cBtXfsCyEsWZHUQrxhYKwqOc4SkHnBqdHQDS8t49MevkY3upkCgERjMMF5Z3lxvfrZhLGtWt_dfgotd9Xb1npPPR"
    "B3hkU_dvhqBECrK9IzKGiwx5Snn7JcO9_EllKgWrI1YtXZ50wkpjBXlEPE_GXEdY6ZfV0HfZSxPdIi2KBFlGw1a52Y"
    "9uTZ0EnvkIZ4tJIew7-WvuV1JHDYNI77QKXVuxKTdOm7wLtm3MaXoucEfm1LDYg6NoFuQ4lEnOajTYG6QGFaUa-ABh"
    "OMgqk4yEGgB8MvgzpRp-NqoX2THtYoVd5p28cvZ8kIdAkO3QtMxQ\",\"e\":\"AQAB\"},{\"kty\":\"EC\","
    "\"crv\":\"P-256"
    "\",\"kid\":\"fuzz-ec\",\"x\":\"D2ihtUKI8xRdNRNV9aaQrVLH_-fTkmnuODV3j5rFHfQ\",\"y\":"
    "\"sb6G1BvkGTd76DV2D"
    "4w80m35Z_cGPzvgWD1ia-XCGfc\"}]}";

static auth_jwks *jwks(void)
{
    static auth_jwks *j;
    if (!j && auth_jwks_from_json(&j, JWKS, sizeof JWKS - 1, NULL)) abort();
    return j;
}
#define NOW 1700000000

/* base64url without padding; out holds 4 * ceil(n / 3) + 1 bytes. */
static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    size_t o = 0;
    for (int i = 0; i < len && out[i] != '='; i++)
        out[o++] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[o] = '\0';
    return o;
}

static void verify(const char *tok, size_t len, int flags)
{
    auth_jwt_config cfg;
    auth_jwt_config_default(&cfg);
    cfg.secret = (const uint8_t *)SECRET;
    cfg.secret_len = sizeof SECRET - 1;
    cfg.jwks = jwks();
    if (flags & 4) cfg.audience = "dynamowave";
    if (flags & 8) cfg.require_exp = 0;
    auth_identity id;
    const char *why = NULL;
    int rc = auth_jwt_verify(&cfg, tok, len, NOW, &id, &why);
    if (!why) abort();
    if (rc == AUTH_OK) {
        size_t n = strlen(id.user_id);
        if (n == 0 || n > AUTH_USER_MAX) abort();
        for (size_t i = 0; i < id.nrooms; i++)
            if (!id.rooms[i] || !id.rooms[i][0]) abort();
        if (id.nrooms && !id.has_rooms) abort();
    } else if (id.user_id[0] || id.rooms || id.nrooms) {
        abort(); /* a refusal leaves nothing behind */
    }
    auth_identity_free(&id);
}

/* Signs "<signing input>" and verifies "<signing input>.<sig>". */
static void sign_and_verify(const char *input, size_t n, int flags)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    char *tok = malloc(n + 1 + 44 + 1);
    if (!tok) return;
    memcpy(tok, input, n);
    tok[n] = '.';
    if (HMAC(EVP_sha256(), SECRET, (int)(sizeof SECRET - 1), (const unsigned char *)input, n, md,
             &mdlen)) {
        size_t sl = b64url(md, mdlen, tok + n + 1);
        verify(tok, n + 1 + sl, flags);
    }
    free(tok);
}

static void headers(const char *s, size_t n)
{
    /* The helpers take NUL-terminated header values. */
    char *v = malloc(n + 1);
    char out[AUTH_TOKEN_MAX + 1];
    if (!v) return;
    memcpy(v, s, n);
    v[n] = '\0';
    size_t len;
    const char *why;
    auth_request_view rq = {.query = v, .authorization = v, .protocols = v};
    int rc = auth_token_from_request(&rq, out, sizeof out, &len, &why);
    if (rc == 1 && (len >= sizeof out || out[len] != '\0')) abort();
    if (rc == 1) verify(out, len, 0);
    rq.authorization = NULL;
    rq.protocols = NULL;
    rc = auth_token_from_request(&rq, out, sizeof out, &len, &why);
    if (rc == 1 && strlen(out) != len) abort();
    free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int flags = data[0];
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    switch (flags & 3) {
    case 0:
        verify(rest, n, flags);
        headers(rest, n);
        break;
    case 1: sign_and_verify(rest, n, flags); break;
    case 2:
    case 3: {
        static const char std_hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
        const char *hdr = std_hdr, *pl = rest;
        size_t hl = sizeof std_hdr - 1, pn = n;
        if ((flags & 3) == 3) {
            const char *nl = memchr(rest, '\n', n);
            if (!nl) return 0;
            hdr = rest;
            hl = (size_t)(nl - rest);
            pl = nl + 1;
            pn = n - hl - 1;
        }
        if (hl > AUTH_TOKEN_MAX || pn > AUTH_TOKEN_MAX) return 0;
        char *in = malloc((hl + 2) / 3 * 4 + (pn + 2) / 3 * 4 + 4);
        if (!in) return 0;
        size_t o = b64url((const uint8_t *)hdr, hl, in);
        in[o++] = '.';
        o += b64url((const uint8_t *)pl, pn, in + o);
        sign_and_verify(in, o, flags);
        free(in);
        break;
    }
    }
    return 0;
}
