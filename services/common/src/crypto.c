#include "dw/crypto.h"
#include "dw/util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Domain separation: the id of a key is not a hash anyone else computes. */
#define KEY_ID_LABEL "dynamowave key id v1"
/* Longest key file we read: 64 hex digits and a CRLF, with room to spare. */
#define KEY_FILE_MAX 128

typedef struct keyslot {
    uint32_t id;
    uint8_t key[DW_KEY_LEN];
} keyslot;

struct dw_keyring {
    keyslot slots[DW_KEYRING_MAX];
    size_t n;
    uint32_t current;
};

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

int dw_keyring_create(dw_keyring **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : DW_CRYPTO_EINTERNAL;
}

void dw_keyring_free(dw_keyring *kr)
{
    if (!kr) return;
    OPENSSL_cleanse(kr, sizeof *kr);
    free(kr);
}

uint32_t dw_key_id(const uint8_t key[DW_KEY_LEN])
{
    uint8_t in[sizeof KEY_ID_LABEL - 1 + DW_KEY_LEN], md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    memcpy(in, KEY_ID_LABEL, sizeof KEY_ID_LABEL - 1);
    memcpy(in + sizeof KEY_ID_LABEL - 1, key, DW_KEY_LEN);
    uint32_t id = 1;
    if (EVP_Digest(in, sizeof in, md, &mdlen, EVP_sha256(), NULL) == 1 && mdlen >= 4)
        id = get_be32(md);
    OPENSSL_cleanse(in, sizeof in);
    /* 0 means "no key / plaintext" everywhere. */
    return id ? id : 1;
}

static const keyslot *slot_find(const dw_keyring *kr, uint32_t id)
{
    for (size_t i = 0; kr && i < kr->n; i++)
        if (kr->slots[i].id == id) return &kr->slots[i];
    return NULL;
}

int dw_keyring_add(dw_keyring *kr, const uint8_t key[DW_KEY_LEN], int current, uint32_t *id)
{
    uint32_t kid = dw_key_id(key);
    if (!slot_find(kr, kid)) {
        if (kr->n >= DW_KEYRING_MAX) return DW_CRYPTO_EINVAL;
        kr->slots[kr->n].id = kid;
        memcpy(kr->slots[kr->n].key, key, DW_KEY_LEN);
        kr->n++;
    }
    if (current) kr->current = kid;
    if (id) *id = kid;
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int dw_key_parse(const void *text, size_t len, uint8_t key[DW_KEY_LEN])
{
    const uint8_t *p = text;
    /* Exactly 32 bytes is a raw key, whatever the bytes (a newline too). */
    if (len == DW_KEY_LEN) {
        memcpy(key, p, DW_KEY_LEN);
        return 0;
    }
    if (len >= 1 && p[len - 1] == '\n') len--;
    if (len >= 1 && p[len - 1] == '\r') len--;
    if (len != 2 * DW_KEY_LEN) return DW_CRYPTO_EINVAL;
    for (size_t i = 0; i < DW_KEY_LEN; i++) {
        int hi = hexval(p[2 * i]), lo = hexval(p[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(key, DW_KEY_LEN);
            return DW_CRYPTO_EINVAL;
        }
        key[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int dw_keyring_add_file(dw_keyring *kr, const char *path, int current, uint32_t *id, char *err,
                        size_t errlen, int *warned)
{
    uint8_t buf[KEY_FILE_MAX + 1], key[DW_KEY_LEN];
    char dummy[8];
    struct stat sb;
    ssize_t n = 0;
    size_t len = 0;
    int rc = DW_CRYPTO_EINVAL;

    if (!err) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (warned) *warned = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open key file %s: %s", path, strerror(errno));
        return DW_CRYPTO_EINVAL;
    }
    if (fstat(fd, &sb) == 0 && (sb.st_mode & (S_IRWXG | S_IRWXO)) && warned) *warned = 1;
    while (len < sizeof buf && (n = read(fd, buf + len, sizeof buf - len)) > 0)
        len += (size_t)n;
    close(fd);
    if (n < 0) {
        snprintf(err, errlen, "cannot read key file %s: %s", path, strerror(errno));
        goto done;
    }
    if (dw_key_parse(buf, len, key)) {
        snprintf(err, errlen,
                 "key file %s must hold 32 raw bytes or 64 hex digits (it has %zu bytes)", path,
                 len);
        goto done;
    }
    rc = dw_keyring_add(kr, key, current, id);
    if (rc)
        snprintf(err, errlen, "key file %s: the keyring is full (%d keys)", path, DW_KEYRING_MAX);
done:
    OPENSSL_cleanse(buf, sizeof buf);
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

uint32_t dw_keyring_current(const dw_keyring *kr)
{
    return kr ? kr->current : 0;
}

int dw_keyring_has(const dw_keyring *kr, uint32_t id)
{
    return slot_find(kr, id) != NULL;
}

int dw_crypto_is_sealed(const void *buf, size_t len, uint32_t *key_id)
{
    const uint8_t *p = buf;
    if (!p || len < DW_SEAL_OVERHEAD || p[0] != DW_SEAL_VERSION) return 0;
    if (key_id) *key_id = get_be32(p + 1);
    return 1;
}

/* One GCM pass; enc = 1 seals, 0 opens. tag is written (enc) or checked. */
static int gcm(int enc, const uint8_t *key, const uint8_t *nonce, const uint8_t *hdr,
               const void *aad, size_t aadlen, const uint8_t *in, size_t len, uint8_t *out,
               uint8_t *tag)
{
    int rc = DW_CRYPTO_EINTERNAL, outl = 0;
    if (len > INT32_MAX || aadlen > INT32_MAX) return DW_CRYPTO_EINVAL;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx) return DW_CRYPTO_EINTERNAL;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, DW_SEAL_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) != 1)
        goto done;
    /* The version and key id are authenticated: neither can be swapped. */
    if (EVP_CipherUpdate(ctx, NULL, &outl, hdr, 5) != 1) goto done;
    if (aadlen && EVP_CipherUpdate(ctx, NULL, &outl, aad, (int)aadlen) != 1) goto done;
    if (len && EVP_CipherUpdate(ctx, out, &outl, in, (int)len) != 1) goto done;
    if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, DW_SEAL_TAG_LEN, tag) != 1)
        goto done;
    /* GCM gives everything out in the updates: nothing is written here. */
    if (EVP_CipherFinal_ex(ctx, out + len, &outl) != 1) {
        rc = enc ? DW_CRYPTO_EINTERNAL : DW_CRYPTO_EAUTH;
        goto done;
    }
    if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, DW_SEAL_TAG_LEN, tag) != 1) goto done;
    rc = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int dw_crypto_seal(const dw_keyring *kr, const void *aad, size_t aadlen, const void *pt,
                   size_t ptlen, uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    const keyslot *k = kr && kr->current ? slot_find(kr, kr->current) : NULL;
    if (!k) return DW_CRYPTO_ENOKEY;
    if (ptlen > SIZE_MAX - DW_SEAL_OVERHEAD) return DW_CRYPTO_EINVAL;
    uint8_t *buf = malloc(DW_SEAL_OVERHEAD + ptlen);
    if (!buf) return DW_CRYPTO_EINTERNAL;
    buf[0] = DW_SEAL_VERSION;
    put_be32(buf + 1, k->id);
    if (dw_random_bytes(buf + 5, DW_SEAL_NONCE_LEN)) {
        free(buf);
        return DW_CRYPTO_EINTERNAL;
    }
    int rc = gcm(1, k->key, buf + 5, buf, aad, aadlen, pt, ptlen, buf + DW_SEAL_HEADER_LEN,
                 buf + DW_SEAL_HEADER_LEN + ptlen);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    *outlen = DW_SEAL_OVERHEAD + ptlen;
    return 0;
}

int dw_crypto_open(const dw_keyring *kr, const void *aad, size_t aadlen, const void *sealed,
                   size_t len, uint8_t **out, size_t *outlen, uint32_t *key_id)
{
    const uint8_t *p = sealed;
    uint32_t id;
    *out = NULL;
    *outlen = 0;
    if (!dw_crypto_is_sealed(sealed, len, &id)) return DW_CRYPTO_EFORMAT;
    if (key_id) *key_id = id;
    const keyslot *k = slot_find(kr, id);
    if (!k) return DW_CRYPTO_ENOKEY;
    size_t ptlen = len - DW_SEAL_OVERHEAD;
    uint8_t *buf = malloc(ptlen ? ptlen : 1);
    if (!buf) return DW_CRYPTO_EINTERNAL;
    uint8_t tag[DW_SEAL_TAG_LEN];
    memcpy(tag, p + DW_SEAL_HEADER_LEN + ptlen, DW_SEAL_TAG_LEN);
    int rc = gcm(0, k->key, p + 5, p, aad, aadlen, p + DW_SEAL_HEADER_LEN, ptlen, buf, tag);
    if (rc) {
        /* Never hand out plaintext whose tag did not verify. */
        OPENSSL_cleanse(buf, ptlen ? ptlen : 1);
        free(buf);
        return rc;
    }
    *out = buf;
    *outlen = ptlen;
    return 0;
}

const char *dw_crypto_strerror(int rc)
{
    switch (rc) {
    case 0: return "ok";
    case DW_CRYPTO_EINVAL: return "invalid argument";
    case DW_CRYPTO_EFORMAT: return "not a sealed value";
    case DW_CRYPTO_ENOKEY: return "key id not in the keyring";
    case DW_CRYPTO_EAUTH: return "authentication failed (tampered, or other associated data)";
    case DW_CRYPTO_EINTERNAL: return "internal error (OpenSSL, CSPRNG or memory)";
    default: return "unknown error";
    }
}

const char *dw_key_id_hex(uint32_t id, char *buf, size_t len)
{
    snprintf(buf, len, "%08x", (unsigned)id);
    return buf;
}
