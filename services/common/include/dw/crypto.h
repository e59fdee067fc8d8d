/* Encryption at rest: AES-256-GCM (OpenSSL EVP) for small values that a
 * service stores on disk (the registry's connection records).
 *
 * A sealed value is
 *   version (1 byte, DW_SEAL_VERSION) | key id (4 bytes, big-endian)
 *   | nonce (12 random bytes) | ciphertext (as long as the plaintext)
 *   | tag (16 bytes)
 * and the first 5 bytes (version and key id) are authenticated along with
 * the caller's associated data (e.g. the database key the value is stored
 * under, so that a value moved to another key no longer opens).
 *
 * Keys live in a keyring: key id -> 32-byte key. One key is current (new
 * seals use it); the others only open what was sealed with them, which is
 * how keys are rotated. A key id is derived from the key itself (the first
 * 4 bytes of SHA-256 over a label and the key, never 0), so a value names
 * the key it needs and a wrong key file is told apart from tampering.
 *
 * Nonces are random: keep one key below ~2^32 seals (rotate long before).
 * Thread-safe: a keyring is read-only once built. */
#ifndef DW_CRYPTO_H
#define DW_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define DW_KEY_LEN 32
#define DW_SEAL_VERSION 0x01
#define DW_SEAL_NONCE_LEN 12
#define DW_SEAL_TAG_LEN 16
#define DW_SEAL_HEADER_LEN (1 + 4 + DW_SEAL_NONCE_LEN)
#define DW_SEAL_OVERHEAD (DW_SEAL_HEADER_LEN + DW_SEAL_TAG_LEN)
/* Keys in one keyring: the current one and the old ones still read. */
#define DW_KEYRING_MAX 16

/* Error codes (negative); dw_crypto_strerror names them. */
enum {
    DW_CRYPTO_EINVAL = -1,    /* bad argument, bad key text, keyring full */
    DW_CRYPTO_EFORMAT = -2,   /* not a sealed value (too short, other version) */
    DW_CRYPTO_ENOKEY = -3,    /* sealed with a key id the keyring lacks */
    DW_CRYPTO_EAUTH = -4,     /* the tag does not verify: tampered or wrong data */
    DW_CRYPTO_EINTERNAL = -5, /* OpenSSL or the OS CSPRNG failed, out of memory */
};

typedef struct dw_keyring dw_keyring;

/* An empty keyring (no current key). 0 or DW_CRYPTO_EINTERNAL. Owned by the
 * caller: dw_keyring_free. */
int dw_keyring_create(dw_keyring **out);

/* Wipe the keys and free. NULL-safe. */
void dw_keyring_free(dw_keyring *kr);

/* Add a 32-byte key (copied). current != 0 makes it the key new seals use.
 * Adding a key that is already there only updates "current". *id (may be
 * NULL) receives its id. 0 or DW_CRYPTO_EINVAL (keyring full). */
int dw_keyring_add(dw_keyring *kr, const uint8_t key[DW_KEY_LEN], int current, uint32_t *id);

/* Read a key file (32 raw bytes, or 64 hex digits with an optional trailing
 * newline) and add it as dw_keyring_add does. On failure a one-line reason
 * naming the file goes to err (may be NULL) and a negative code is
 * returned. A file that others than its owner may read is accepted, with a
 * warning in err's place: *warned (may be NULL) is set to 1. */
int dw_keyring_add_file(dw_keyring *kr, const char *path, int current, uint32_t *id, char *err,
                        size_t errlen, int *warned);

/* Parse key text (32 raw bytes, or 64 hex digits, optional "\n" / "\r\n"
 * after them). 0 or DW_CRYPTO_EINVAL. */
int dw_key_parse(const void *text, size_t len, uint8_t key[DW_KEY_LEN]);

/* The id of a key (never 0). */
uint32_t dw_key_id(const uint8_t key[DW_KEY_LEN]);

/* The current key's id, 0 when the keyring has none (nothing is sealed). */
uint32_t dw_keyring_current(const dw_keyring *kr);

/* 1 when the keyring holds the key with this id. NULL kr holds nothing. */
int dw_keyring_has(const dw_keyring *kr, uint32_t id);

/* Seal pt with the current key. *out (malloc'd, caller frees) holds
 * DW_SEAL_OVERHEAD + ptlen bytes. aad may be NULL when aadlen is 0.
 * 0, DW_CRYPTO_ENOKEY (no current key) or DW_CRYPTO_EINTERNAL. */
int dw_crypto_seal(const dw_keyring *kr, const void *aad, size_t aadlen, const void *pt,
                   size_t ptlen, uint8_t **out, size_t *outlen);

/* Open a sealed value with the same aad it was sealed with. *out is
 * malloc'd (caller frees; never NULL on success, even for an empty
 * plaintext); *key_id (may be NULL) receives the id it was sealed with.
 * 0, DW_CRYPTO_EFORMAT, DW_CRYPTO_ENOKEY, DW_CRYPTO_EAUTH or
 * DW_CRYPTO_EINTERNAL. */
int dw_crypto_open(const dw_keyring *kr, const void *aad, size_t aadlen, const void *sealed,
                   size_t len, uint8_t **out, size_t *outlen, uint32_t *key_id);

/* 1 when buf has the shape of a sealed value (version byte, long enough),
 * with its key id in *key_id (may be NULL); 0 otherwise. Does not verify. */
int dw_crypto_is_sealed(const void *buf, size_t len, uint32_t *key_id);

/* "unknown key id", "authentication failed", ... for an error code. */
const char *dw_crypto_strerror(int rc);

/* A key id as the 8 hex digits people see in logs and dwctl: buf >= 9. */
const char *dw_key_id_hex(uint32_t id, char *buf, size_t len);

#endif
