/* The JWKS parser (services/edge/auth.c): the edge reads the file at start
 * and on SIGHUP, and a key set fetched from an identity provider is outside
 * input. A set that parses holds 1..AUTH_JWKS_MAX_KEYS keys, and verifying
 * a token against it (here an RS256 and an ES256 one signed by keys of the
 * seed jwks_valid) never crashes, whatever the keys are. */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "fuzz.h"

#define NOW 1700000000

/* Tokens signed by the keys of corpus/jwks/jwks_valid (private halves not kept). */
static const char *const TOKENS[] = {
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZ1enotcnNhIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6"
    "MTcwMDAwMDYwMCwicm9vbXMiOlsiZ2VuZXJhbCJdfQ.X85qdge34hwoi4yrTxCKBQ3ORQoLfFiyEKSORiT5a9LGw"
    "OgDIYNcFyxyl4ieuxshrD3B4VWs_ADcXMEzu_v1J9A1FN-t2kKBsVl7pNSlB46wsOZEj8U_vu0cwDiu07T5KOfLD"
    "_6E9fvPS_Wfm3e-6bspxSu1UQGLEBPtUrHZa5XIHuYBJhIiayRXyu-hRUNXeIoy34Rbq-BYTj7nMR7TlWzHm1mdm"
    "7vmN_loD0mRSN9bVPmFsIR4oZucyNSujxPNx6spLTw7lmemNOVFKA3CQ3Mrm6YSE7rnOyLbE12TD7p7HOmLWKReL"
    "1XNmoaqMwZywyeq8_FwG4aeHiHqkNUzrw",
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enotZWMifQ.eyJzdWIiOiJib2IiLCJleHAiOjE3MDAwMDA2MDAsImF1Z"
    "CI6ImR5bmFtb3dhdmUifQ.rRMaZkXkGjDmfyLgy2-ZsMLt1GcpR4VhKJVB0QTzcYjWmg2Vj6tSWeQft9rNifbp6N"
    "8fMYMPQxCFCBSXL1Q7eg",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    auth_keyset *ks = NULL;
    size_t skipped = 0;
    const char *why = NULL;
    if (auth_keyset_parse((const char *)data, size, &ks, &skipped, &why) == 0) {
        size_t n = auth_keyset_count(ks);
        if (n == 0 || n > AUTH_JWKS_MAX_KEYS) abort();
        auth_keyset_free(ks);
        auth_jwks *j = NULL;
        /* Parsing again may refuse what passed: OpenSSL's RSA public key
         * check (EVP_PKEY_public_check, SP 800-56B) tests the modulus with
         * random Miller-Rabin bases, and for a made-up modulus with a small
         * factor the outcome varies. A real key passes every time. */
        if (auth_jwks_from_json(&j, (const char *)data, size, &why)) return 0;
        auth_jwt_config cfg;
        auth_jwt_config_default(&cfg);
        cfg.jwks = j;
        for (size_t i = 0; i < sizeof TOKENS / sizeof TOKENS[0]; i++) {
            auth_identity id;
            int rc = auth_jwt_verify(&cfg, TOKENS[i], strlen(TOKENS[i]), NOW, &id, &why);
            if (!why) abort();
            if (rc == AUTH_OK && !id.user_id[0]) abort();
            auth_identity_free(&id);
        }
        auth_jwks_free(j);
    } else if (ks || !why) {
        abort();
    }
    return 0;
}
