/* What the registry store's unit tests share (test_store.c, test_outbox.c):
 * a store directory made fresh for each test and removed after it, the
 * event kinds by short names, two keys and keyrings of them, and a search
 * of a directory's files for a plaintext. Header-only (static inline):
 * each test file takes what it uses. */
#ifndef TEST_REGISTRY_STORE_FIXTURE_H
#define TEST_REGISTRY_STORE_FIXTURE_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dw/crypto.h"
#include "store.h"

typedef struct fixture {
    char dir[64];
    reg_store *st;
    uint64_t seq;
} fixture;

#define CONNECT DW__CONN_EVENT__KIND__CONNECT
#define DISCONNECT DW__CONN_EVENT__KIND__DISCONNECT
#define JOIN DW__CONN_EVENT__KIND__JOIN
#define LEAVE DW__CONN_EVENT__KIND__LEAVE
#define EDGE_DOWN DW__CONN_EVENT__KIND__EDGE_DOWN
#define ROOMS(...) ((const char *const[]){__VA_ARGS__, NULL})

static const uint8_t K1[DW_KEY_LEN] = "0123456789abcdef0123456789abcde";
static const uint8_t K2[DW_KEY_LEN] = "fedcba9876543210fedcba987654321";

static inline int fixture_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Remove dir and everything under it. */
static inline void fixture_rm_dir(const char *dir)
{
    nftw(dir, fixture_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fixture with a new empty directory /tmp/<prefix>XXXXXX (no store open
 * yet); NULL when the directory cannot be made. */
static inline fixture *fixture_new(const char *prefix)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    snprintf(f->dir, sizeof f->dir, "/tmp/%sXXXXXX", prefix);
    if (!mkdtemp(f->dir)) {
        free(f);
        return NULL;
    }
    return f;
}

/* cmocka teardown: close the store, remove its directory. */
static inline int fixture_teardown(void **state)
{
    fixture *f = *state;
    reg_store_close(f->st);
    fixture_rm_dir(f->dir);
    free(f);
    return 0;
}

/* A keyring with current (id 1) and old (id 0), each optional. */
static inline dw_keyring *fixture_ring(const uint8_t *current, const uint8_t *old)
{
    dw_keyring *kr = NULL;
    if (dw_keyring_create(&kr)) return NULL;
    if (old) dw_keyring_add(kr, old, 0, NULL);
    if (current) dw_keyring_add(kr, current, 1, NULL);
    return kr;
}

static const char *fixture_needle;
static int fixture_found;

static inline int fixture_grep_one(const char *path, const struct stat *sb, int flag,
                                   struct FTW *ftw)
{
    (void)ftw;
    if (flag != FTW_F) return 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    char *buf = malloc((size_t)sb->st_size + 1);
    size_t n = buf ? fread(buf, 1, (size_t)sb->st_size, fp) : 0;
    fclose(fp);
    if (buf && memmem(buf, n, fixture_needle, strlen(fixture_needle))) fixture_found = 1;
    free(buf);
    return 0;
}

/* 1 when any file under dir holds needle. */
static inline int fixture_grep_dir(const char *dir, const char *needle)
{
    fixture_needle = needle;
    fixture_found = 0;
    nftw(dir, fixture_grep_one, 16, FTW_PHYS);
    return fixture_found;
}

#endif
