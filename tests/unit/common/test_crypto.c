/* dw/crypto.h: keys, keyrings, sealing and opening, and every way a sealed
 * value can be wrong. (Here rather than in tests/unit/common: the registry
 * is what seals with it.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "dw/crypto.h"

static const uint8_t K1[DW_KEY_LEN] = "0123456789abcdef0123456789abcde";
static const uint8_t K2[DW_KEY_LEN] = "fedcba9876543210fedcba987654321";

static dw_keyring *ring(const uint8_t *current, const uint8_t *old)
{
    dw_keyring *kr = NULL;
    assert_int_equal(dw_keyring_create(&kr), 0);
    if (old) assert_int_equal(dw_keyring_add(kr, old, 0, NULL), 0);
    if (current) assert_int_equal(dw_keyring_add(kr, current, 1, NULL), 0);
    return kr;
}

static void test_key_parse(void **state)
{
    uint8_t key[DW_KEY_LEN];
    char hex[2 * DW_KEY_LEN + 3];
    for (int i = 0; i < DW_KEY_LEN; i++)
        sprintf(hex + 2 * i, "%02x", K1[i]);

    assert_int_equal(dw_key_parse(K1, DW_KEY_LEN, key), 0);
    assert_memory_equal(key, K1, DW_KEY_LEN);
    memset(key, 0, sizeof key);
    assert_int_equal(dw_key_parse(hex, 2 * DW_KEY_LEN, key), 0);
    assert_memory_equal(key, K1, DW_KEY_LEN);
    strcat(hex, "\n");
    assert_int_equal(dw_key_parse(hex, strlen(hex), key), 0);
    assert_memory_equal(key, K1, DW_KEY_LEN);
    hex[2 * DW_KEY_LEN] = '\0';
    strcat(hex, "\r\n");
    assert_int_equal(dw_key_parse(hex, strlen(hex), key), 0);

    /* Upper case hex is hex too. */
    char upper[2 * DW_KEY_LEN + 1];
    for (int i = 0; i < 2 * DW_KEY_LEN; i++)
        upper[i] = (char)(hex[i] >= 'a' ? hex[i] - 'a' + 'A' : hex[i]);
    assert_int_equal(dw_key_parse(upper, 2 * DW_KEY_LEN, key), 0);
    assert_memory_equal(key, K1, DW_KEY_LEN);

    assert_int_equal(dw_key_parse(hex, 2 * DW_KEY_LEN - 2, key), DW_CRYPTO_EINVAL);
    assert_int_equal(dw_key_parse(K1, 16, key), DW_CRYPTO_EINVAL);
    hex[5] = 'g';
    assert_int_equal(dw_key_parse(hex, 2 * DW_KEY_LEN, key), DW_CRYPTO_EINVAL);
}

static void test_key_ids(void **state)
{
    uint32_t a = dw_key_id(K1), b = dw_key_id(K2), id = 0;
    assert_int_not_equal(a, 0);
    assert_int_not_equal(b, 0);
    assert_int_not_equal(a, b);
    assert_int_equal(dw_key_id(K1), a); /* stable */

    dw_keyring *kr = ring(K1, NULL);
    assert_int_equal(dw_keyring_current(kr), a);
    assert_true(dw_keyring_has(kr, a));
    assert_false(dw_keyring_has(kr, b));
    assert_int_equal(dw_keyring_add(kr, K2, 0, &id), 0);
    assert_int_equal(id, b);
    assert_int_equal(dw_keyring_current(kr), a); /* an old key does not become current */
    assert_int_equal(dw_keyring_add(kr, K2, 1, NULL), 0);
    assert_int_equal(dw_keyring_current(kr), b);
    dw_keyring_free(kr);

    assert_int_equal(dw_keyring_current(NULL), 0);
    assert_false(dw_keyring_has(NULL, a));
    dw_keyring_free(NULL);

    char hex[16];
    assert_string_equal(dw_key_id_hex(0x1a2b3c, hex, sizeof hex), "001a2b3c");
}

static void test_round_trip(void **state)
{
    dw_keyring *kr = ring(K1, NULL);
    const char *msgs[] = {"", "x", "user-42 at 203.0.113.7 with a longer user agent string"};
    for (size_t i = 0; i < 3; i++) {
        uint8_t *sealed = NULL, *pt = NULL;
        size_t slen = 0, plen = 0;
        uint32_t kid = 0;
        size_t n = strlen(msgs[i]);
        assert_int_equal(dw_crypto_seal(kr, "c/id", 4, msgs[i], n, &sealed, &slen), 0);
        assert_int_equal(slen, n + DW_SEAL_OVERHEAD);
        assert_int_equal(sealed[0], DW_SEAL_VERSION);
        assert_true(dw_crypto_is_sealed(sealed, slen, &kid));
        assert_int_equal(kid, dw_key_id(K1));
        if (n > 4) /* the plaintext is nowhere in the output */
            assert_null(memmem(sealed, slen, msgs[i], n));
        assert_int_equal(dw_crypto_open(kr, "c/id", 4, sealed, slen, &pt, &plen, &kid), 0);
        assert_non_null(pt);
        assert_int_equal(plen, n);
        assert_memory_equal(pt, msgs[i], n);
        free(pt);
        free(sealed);
    }
    /* Two seals of the same text differ (random nonces). */
    uint8_t *a = NULL, *b = NULL;
    size_t alen, blen;
    assert_int_equal(dw_crypto_seal(kr, NULL, 0, "same", 4, &a, &alen), 0);
    assert_int_equal(dw_crypto_seal(kr, NULL, 0, "same", 4, &b, &blen), 0);
    assert_memory_not_equal(a, b, alen);
    free(a);
    free(b);
    dw_keyring_free(kr);
}

static void test_tamper(void **state)
{
    dw_keyring *kr = ring(K1, NULL);
    uint8_t *sealed = NULL, *pt = NULL;
    size_t slen = 0, plen = 0;
    const char *msg = "the user id and the source ip";
    assert_int_equal(dw_crypto_seal(kr, "c/a", 3, msg, strlen(msg), &sealed, &slen), 0);

    /* Every byte counts: flip one anywhere and the value does not open. */
    for (size_t i = 0; i < slen; i++) {
        sealed[i] ^= 0x01;
        int rc = dw_crypto_open(kr, "c/a", 3, sealed, slen, &pt, &plen, NULL);
        if (i == 0)
            assert_int_equal(rc, DW_CRYPTO_EFORMAT); /* version */
        else if (i < 5)
            assert_int_equal(rc, DW_CRYPTO_ENOKEY); /* key id */
        else
            assert_int_equal(rc, DW_CRYPTO_EAUTH);
        assert_null(pt);
        sealed[i] ^= 0x01;
    }
    /* Other associated data: a value moved to another key. */
    assert_int_equal(dw_crypto_open(kr, "c/b", 3, sealed, slen, &pt, &plen, NULL), DW_CRYPTO_EAUTH);
    assert_int_equal(dw_crypto_open(kr, NULL, 0, sealed, slen, &pt, &plen, NULL), DW_CRYPTO_EAUTH);
    /* Truncated. */
    assert_int_equal(dw_crypto_open(kr, "c/a", 3, sealed, slen - 1, &pt, &plen, NULL),
                     DW_CRYPTO_EAUTH);
    assert_int_equal(dw_crypto_open(kr, "c/a", 3, sealed, DW_SEAL_OVERHEAD - 1, &pt, &plen, NULL),
                     DW_CRYPTO_EFORMAT);
    assert_false(dw_crypto_is_sealed("\x0a\x03"
                                     "abc",
                                     5, NULL)); /* a protobuf record */
    assert_int_equal(dw_crypto_open(kr, NULL, 0,
                                    "\x0a\x03"
                                    "abc",
                                    5, &pt, &plen, NULL),
                     DW_CRYPTO_EFORMAT);
    assert_string_equal(dw_crypto_strerror(DW_CRYPTO_EAUTH),
                        "authentication failed (tampered, or other associated data)");
    free(sealed);
    dw_keyring_free(kr);
}

static void test_wrong_key(void **state)
{
    dw_keyring *k1 = ring(K1, NULL), *k2 = ring(K2, NULL), *both = ring(K2, K1);
    dw_keyring *none = ring(NULL, NULL);
    uint8_t *sealed = NULL, *pt = NULL;
    size_t slen = 0, plen = 0;
    uint32_t kid = 0;
    assert_int_equal(dw_crypto_seal(k1, "k", 1, "secret", 6, &sealed, &slen), 0);

    /* A keyring without key 1 names the key it lacks. */
    assert_int_equal(dw_crypto_open(k2, "k", 1, sealed, slen, &pt, &plen, &kid), DW_CRYPTO_ENOKEY);
    assert_int_equal(kid, dw_key_id(K1));
    assert_int_equal(dw_crypto_open(none, "k", 1, sealed, slen, &pt, &plen, NULL),
                     DW_CRYPTO_ENOKEY);
    /* After rotating to key 2, key 1 still opens its values... */
    assert_int_equal(dw_crypto_open(both, "k", 1, sealed, slen, &pt, &plen, &kid), 0);
    assert_memory_equal(pt, "secret", 6);
    free(pt);
    free(sealed);
    /* ... and new seals use key 2. */
    assert_int_equal(dw_crypto_seal(both, "k", 1, "new", 3, &sealed, &slen), 0);
    assert_true(dw_crypto_is_sealed(sealed, slen, &kid));
    assert_int_equal(kid, dw_key_id(K2));
    free(sealed);
    /* No current key: nothing to seal with. */
    assert_int_equal(dw_crypto_seal(none, NULL, 0, "x", 1, &sealed, &slen), DW_CRYPTO_ENOKEY);
    assert_null(sealed);
    dw_keyring_free(k1);
    dw_keyring_free(k2);
    dw_keyring_free(both);
    dw_keyring_free(none);
}

static void test_key_files(void **state)
{
    char dir[] = "/tmp/dw-crypto-test-XXXXXX", path[128], err[256];
    uint32_t id = 0;
    int warned = -1;
    assert_non_null(mkdtemp(dir));
    dw_keyring *kr = ring(NULL, NULL);

    snprintf(path, sizeof path, "%s/raw", dir);
    FILE *f = fopen(path, "wb");
    fwrite(K1, 1, DW_KEY_LEN, f);
    fclose(f);
    chmod(path, 0600);
    assert_int_equal(dw_keyring_add_file(kr, path, 1, &id, err, sizeof err, &warned), 0);
    assert_int_equal(id, dw_key_id(K1));
    assert_int_equal(warned, 0);
    unlink(path);

    snprintf(path, sizeof path, "%s/hex", dir);
    f = fopen(path, "w");
    for (int i = 0; i < DW_KEY_LEN; i++)
        fprintf(f, "%02x", K2[i]);
    fputs("\n", f);
    fclose(f);
    chmod(path, 0644);
    assert_int_equal(dw_keyring_add_file(kr, path, 0, &id, err, sizeof err, &warned), 0);
    assert_int_equal(id, dw_key_id(K2));
    assert_int_equal(warned, 1); /* world-readable: accepted, with a warning */
    assert_int_equal(dw_keyring_current(kr), dw_key_id(K1));
    unlink(path);

    snprintf(path, sizeof path, "%s/short", dir);
    f = fopen(path, "w");
    fputs("abcdef\n", f);
    fclose(f);
    assert_int_equal(dw_keyring_add_file(kr, path, 1, &id, err, sizeof err, NULL),
                     DW_CRYPTO_EINVAL);
    assert_non_null(strstr(err, "32 raw bytes or 64 hex digits"));
    unlink(path);

    assert_int_equal(dw_keyring_add_file(kr, path, 1, &id, err, sizeof err, NULL),
                     DW_CRYPTO_EINVAL);
    assert_non_null(strstr(err, "cannot open key file"));
    rmdir(dir);
    dw_keyring_free(kr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_parse),  cmocka_unit_test(test_key_ids),
        cmocka_unit_test(test_round_trip), cmocka_unit_test(test_tamper),
        cmocka_unit_test(test_wrong_key),  cmocka_unit_test(test_key_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
