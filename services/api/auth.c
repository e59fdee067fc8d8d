#include "auth.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* A token is a line of text, not a file: anything larger is a mistake. */
#define TOKEN_FILE_MAX 4096

static int sha256(const void *data, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
}

int api_auth_load(api_auth *a, const char *path, char *err, size_t errlen)
{
    char buf[TOKEN_FILE_MAX + 1];
    int rc = -1;
    memset(a, 0, sizeof *a);
    if (!path || !*path) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    size_t n = fread(buf, 1, sizeof buf, f);
    if (ferror(f)) {
        snprintf(err, errlen, "cannot read %s", path);
        goto done;
    }
    if (n > TOKEN_FILE_MAX) {
        snprintf(err, errlen, "%s is larger than %d bytes: not a token", path, TOKEN_FILE_MAX);
        goto done;
    }
    size_t start = 0;
    while (start < n && isspace((unsigned char)buf[start]))
        start++;
    while (n > start && isspace((unsigned char)buf[n - 1]))
        n--;
    if (n == start) {
        snprintf(err, errlen, "%s holds no token", path);
        goto done;
    }
    if (memchr(buf + start, '\0', n - start)) {
        snprintf(err, errlen, "%s holds a NUL byte: not a token", path);
        goto done;
    }
    if (sha256(buf + start, n - start, a->digest)) {
        snprintf(err, errlen, "SHA-256 failed");
        goto done;
    }
    a->enabled = true;
    rc = 0;
done:
    OPENSSL_cleanse(buf, sizeof buf);
    fclose(f);
    return rc;
}

api_auth_result api_auth_check(const api_auth *a, const char *header)
{
    static const char scheme[] = "Bearer";
    if (!a->enabled) return API_AUTH_OK;
    if (!header) return API_AUTH_MISSING;
    while (*header == ' ' || *header == '\t')
        header++;
    /* RFC 7235: the scheme is case-insensitive, then at least one space. */
    if (strncasecmp(header, scheme, sizeof scheme - 1) ||
        (header[sizeof scheme - 1] != ' ' && header[sizeof scheme - 1] != '\t'))
        return API_AUTH_MISSING;
    const char *tok = header + sizeof scheme - 1;
    while (*tok == ' ' || *tok == '\t')
        tok++;
    size_t n = strlen(tok);
    while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    if (!n) return API_AUTH_MISSING;
    unsigned char d[32];
    if (sha256(tok, n, d)) return API_AUTH_WRONG;
    return CRYPTO_memcmp(d, a->digest, sizeof d) == 0 ? API_AUTH_OK : API_AUTH_WRONG;
}

bool api_host_is_loopback(const char *host)
{
    if (!host || !*host) return false;
    if (!strcasecmp(host, "localhost")) return true;
    struct in_addr v4;
    if (inet_pton(AF_INET, host, &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
    struct in6_addr v6;
    if (inet_pton(AF_INET6, host, &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
    return false;
}

void api_auth_clear(api_auth *a)
{
    if (a) OPENSSL_cleanse(a, sizeof *a);
}
