/* Checkpoints and restores: names, tags, retention, which checkpoint a
 * restore starts from, times, and what is on disk after each step (or a
 * crash between two). */
#include <ftw.h>
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

#include "checkpoint.h"
#include "dw/crypto.h"
#include "fsutil.h"
#include "restore.h"
#include "store.h"

#define DAY_MS (86400LL * 1000)

static reg_ckpt ck(int64_t time_ms, uint64_t seq, int64_t ts_ms)
{
    reg_ckpt c;
    memset(&c, 0, sizeof c);
    c.time_ms = time_ms;
    c.applied_seq = seq;
    c.applied_ts_ms = ts_ms;
    reg_ckpt_name(c.name, sizeof c.name, time_ms, seq);
    return c;
}

/* ---- names and tags ---------------------------------------------------- */

static void test_names(void **state)
{
    char name[REG_CKPT_NAME_MAX];
    int64_t t;
    uint64_t seq;
    /* 2026-11-25T08:54:27.123Z */
    int64_t when = 1795596867123LL;
    assert_int_equal(reg_ckpt_name(name, sizeof name, when, 4711), 0);
    assert_string_equal(name, "20261125T085427.123Z-4711");
    assert_int_equal(reg_ckpt_name_parse(name, &t, &seq), 0);
    assert_int_equal(t, when);
    assert_int_equal(seq, 4711);

    assert_int_equal(reg_ckpt_name(name, sizeof name, 0, 0), 0);
    assert_string_equal(name, "19700101T000000.000Z-0");
    assert_int_equal(reg_ckpt_name(name, sizeof name, when, UINT64_MAX), 0);
    assert_int_equal(reg_ckpt_name_parse(name, &t, &seq), 0);
    assert_true(seq == UINT64_MAX);
    assert_int_equal(reg_ckpt_name(name, 10, when, 1), -1);

    const char *bad[] = {".tmp-1795596867123-42",  "20261125T085427.123Z-",
                         "20261125T085427.123Z",   "20261125T085427.123Z-12x",
                         "20261125T085427Z-12",    "20261325T085427.123Z-1",
                         "20261125T245427.123Z-1", "20261125T085427.123Z-99999999999999999999999",
                         "DW_CHECKPOINT",          "",
                         "x20261125T085427.123Z-1", "20260231T085427.123Z-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(reg_ckpt_name_parse(bad[i], &t, &seq), -1);
}

static void test_meta(void **state)
{
    reg_ckpt c = ck(1795596867123LL, 99, 1795596866000LL), back;
    char text[1024];
    c.connections = 7;
    c.restored_to_ms = 1795596000000LL;
    c.key_ids[0] = 0;
    c.key_ids[1] = 0xdeadbeef;
    c.n_key_ids = 2;
    size_t n = reg_ckpt_meta_format(&c, text, sizeof text);
    assert_true(n > 0);
    assert_non_null(strstr(text, "key_ids=00000000,deadbeef\n"));
    assert_int_equal(reg_ckpt_meta_parse(text, &back), 0);
    assert_string_equal(back.name, c.name);
    assert_int_equal(back.time_ms, c.time_ms);
    assert_int_equal(back.applied_seq, 99);
    assert_int_equal(back.applied_ts_ms, c.applied_ts_ms);
    assert_int_equal(back.connections, 7);
    assert_int_equal(back.restored_to_ms, c.restored_to_ms);
    assert_int_equal(back.n_key_ids, 2);
    assert_int_equal(back.key_ids[1], 0xdeadbeef);
    assert_int_equal(reg_ckpt_meta_format(&c, text, 20), 0);

    /* A tag cut short (kill -9 while writing it) does not parse. */
    reg_ckpt_meta_format(&c, text, sizeof text);
    text[strlen(text) / 2] = '\0';
    assert_int_equal(reg_ckpt_meta_parse(text, &back), -1);
    assert_int_equal(reg_ckpt_meta_parse("", &back), -1);
    assert_int_equal(reg_ckpt_meta_parse("version=2\nname=a\ntime_ms=1\napplied_seq=1\n"
                                         "applied_ts_ms=1\nkey_ids=\n",
                                         &back),
                     -1);
    assert_int_equal(reg_ckpt_meta_parse("version=1\nname=a\ntime_ms=1\napplied_seq=-1\n"
                                         "applied_ts_ms=1\nkey_ids=\n",
                                         &back),
                     -1);
    assert_int_equal(reg_ckpt_meta_parse("version=1\nname=a\ntime_ms=1\napplied_seq=1\n"
                                         "applied_ts_ms=1\nkey_ids=12\n",
                                         &back),
                     -1);
    /* Unknown keys are fine (a newer writer), empty key_ids means none. */
    assert_int_equal(reg_ckpt_meta_parse("version=1\nname=a\ntime_ms=1\napplied_seq=1\n"
                                         "applied_ts_ms=1\nkey_ids=\nfuture=x\n",
                                         &back),
                     0);
    assert_int_equal(back.n_key_ids, 0);
}

/* ---- retention and choice ---------------------------------------------- */

static void test_retention(void **state)
{
    int64_t now = 100 * DAY_MS;
    reg_ckpt v[6];
    int del[6];
    /* Deliberately out of order: sort puts the newest first. */
    v[0] = ck(now - 40 * DAY_MS, 10, 0);
    v[1] = ck(now - 1000, 60, 0);
    v[2] = ck(now - 34 * DAY_MS, 20, 0);
    v[3] = ck(now - 2 * DAY_MS, 50, 0);
    v[4] = ck(now - 36 * DAY_MS, 15, 0);
    v[5] = ck(now - 2 * DAY_MS, 40, 0); /* same time as v[3]: the higher seq is newer */
    reg_ckpt_sort(v, 6);
    uint64_t order[] = {60, 50, 40, 20, 15, 10};
    for (int i = 0; i < 6; i++)
        assert_int_equal(v[i].applied_seq, order[i]);

    /* 35 days: the two older ones go. */
    assert_int_equal(reg_ckpt_retention(v, 6, now, 24, 35 * DAY_MS, del), 2);
    int want_age[] = {0, 0, 0, 0, 1, 1};
    assert_memory_equal(del, want_age, sizeof del);
    /* Keep 2: everything after the second newest. */
    assert_int_equal(reg_ckpt_retention(v, 6, now, 2, 0, del), 4);
    int want_keep[] = {0, 0, 1, 1, 1, 1};
    assert_memory_equal(del, want_keep, sizeof del);
    /* Both rules: the union. */
    assert_int_equal(reg_ckpt_retention(v, 6, now, 5, 35 * DAY_MS, del), 2);
    /* Both off. */
    assert_int_equal(reg_ckpt_retention(v, 6, now, 0, 0, del), 0);
    assert_int_equal(reg_ckpt_retention(v, 0, now, 1, 1, del), 0);
}

static void test_choose(void **state)
{
    static const uint8_t K1[DW_KEY_LEN] = "0123456789abcdef0123456789abcde";
    static const uint8_t K2[DW_KEY_LEN] = "fedcba9876543210fedcba987654321";
    dw_keyring *kr = NULL;
    size_t skipped = 9;
    assert_int_equal(dw_keyring_create(&kr), 0);
    dw_keyring_add(kr, K2, 1, NULL);

    reg_ckpt v[4];
    v[0] = ck(5000, 50, 4800); /* taken at 5000, last event at 4800 */
    v[1] = ck(4000, 40, 3900);
    v[2] = ck(3000, 30, 2500);
    v[3] = ck(1000, 0, 0); /* empty table: usable for any time */
    for (int i = 0; i < 4; i++) {
        v[i].key_ids[0] = dw_key_id(K2);
        v[i].n_key_ids = 1;
    }
    reg_ckpt_sort(v, 4);
    assert_int_equal(reg_ckpt_choose(v, 4, 10000, kr, &skipped), 0);
    assert_int_equal(skipped, 0);
    /* Taken after T, but its events are all before T: usable. */
    assert_int_equal(reg_ckpt_choose(v, 4, 4850, kr, NULL), 0);
    assert_int_equal(reg_ckpt_choose(v, 4, 4799, kr, NULL), 1);
    assert_int_equal(reg_ckpt_choose(v, 4, 3900, kr, NULL), 1);
    assert_int_equal(reg_ckpt_choose(v, 4, 2000, kr, NULL), 3);
    assert_int_equal(reg_ckpt_choose(v, 3, 2000, kr, NULL), -1);

    /* Sealed with a key we no longer have: passed over, and counted. */
    v[0].key_ids[0] = dw_key_id(K1);
    assert_int_equal(reg_ckpt_choose(v, 4, 10000, kr, &skipped), 1);
    assert_int_equal(skipped, 1);
    /* Plaintext needs no key; a mixed table needs all of its keys. */
    v[0].key_ids[0] = 0;
    assert_int_equal(reg_ckpt_choose(v, 4, 10000, kr, NULL), 0);
    v[0].key_ids[1] = dw_key_id(K1);
    v[0].n_key_ids = 2;
    assert_false(reg_ckpt_keys_usable(&v[0], kr));
    assert_int_equal(reg_ckpt_choose(v, 4, 10000, kr, NULL), 1);
    assert_false(reg_ckpt_keys_usable(&v[1], NULL));
    dw_keyring_free(kr);
}

/* ---- on disk ----------------------------------------------------------- */

typedef struct fixture {
    char dir[64], replica[128], db[160], ckdir[160];
} fixture;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    strcpy(f->dir, "/tmp/dw-ckpt-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->replica, sizeof f->replica, "%s/r0", f->dir);
    snprintf(f->db, sizeof f->db, "%s/db", f->replica);
    snprintf(f->ckdir, sizeof f->ckdir, "%s/checkpoints", f->replica);
    assert_int_equal(reg_fs_mkdir_p(f->replica), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void connect_at(reg_store *st, uint64_t seq, int64_t ts, const char *conn)
{
    Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
    ev.kind = DW__CONN_EVENT__KIND__CONNECT;
    ev.conn_id = (char *)conn;
    ev.edge_id = "e1";
    ev.user_id = "someone";
    assert_int_equal(reg_store_apply_at(st, seq, ts, &ev), 1);
}

static reg_store *open_db(const char *dir)
{
    reg_store *st = NULL;
    char *err = NULL;
    assert_int_equal(reg_store_open(&st, dir, &err), 0);
    return st;
}

static void touch(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(reg_fs_mkdir_p(path), 0);
}

static void test_create_list_prune(void **state)
{
    fixture *f = *state;
    reg_store *st = open_db(f->db);
    reg_ckpt c1, c2, c3, *v = NULL;
    size_t n = 0, deleted = 0;
    char *err = NULL, path[512];

    connect_at(st, 1, 1000, "a");
    connect_at(st, 2, 2000, "b");
    assert_int_equal(reg_ckpt_create(st, f->ckdir, 10 * DAY_MS, &c1, &err), 0);
    assert_int_equal(c1.applied_seq, 2);
    assert_int_equal(c1.applied_ts_ms, 2000);
    assert_int_equal(c1.connections, 2);
    /* Without a key the table says its values are plaintext (id 0). */
    assert_int_equal(c1.n_key_ids, 1);
    assert_int_equal(c1.key_ids[0], 0);
    connect_at(st, 3, 3000, "c");
    assert_int_equal(reg_ckpt_create(st, f->ckdir, 20 * DAY_MS, &c2, &err), 0);
    assert_int_equal(c2.applied_seq, 3);
    /* Same millisecond, same state: the same checkpoint. */
    assert_int_equal(reg_ckpt_create(st, f->ckdir, 20 * DAY_MS, &c3, &err), 0);
    assert_string_equal(c3.name, c2.name);

    /* What a crash leaves, and what someone else put there. */
    touch(f->ckdir, ".tmp-1234-5");
    touch(f->ckdir, "30000101T000000.000Z-99"); /* named, but no tag */
    touch(f->ckdir, "not-a-checkpoint");
    assert_int_equal(reg_ckpt_list(f->ckdir, &v, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].name, c2.name);
    assert_string_equal(v[1].name, c1.name);
    free(v);
    assert_int_equal(reg_ckpt_cleanup_tmp(f->ckdir), 1);
    snprintf(path, sizeof path, "%s/.tmp-1234-5", f->ckdir);
    assert_false(reg_fs_exists(path));

    /* A checkpoint is a table of its own, as it was. */
    snprintf(path, sizeof path, "%s/%s", f->ckdir, c1.name);
    reg_store *cp = NULL;
    reg_store_opts ro = {.read_only = 1};
    assert_int_equal(reg_store_open_opts(&cp, path, &ro, &err), 0);
    assert_int_equal(reg_store_applied_seq(cp), 2);
    assert_int_equal(reg_store_count(cp), 2);
    reg_store_close(cp);

    /* Retention: 35 days at day 50 removes the one from day 10. */
    assert_int_equal(reg_ckpt_prune(f->ckdir, 50 * DAY_MS, 24, 35 * DAY_MS, &deleted), 0);
    assert_int_equal(deleted, 1);
    assert_int_equal(reg_ckpt_list(f->ckdir, &v, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].name, c2.name);
    free(v);
    assert_int_equal(reg_ckpt_prune(f->ckdir, 50 * DAY_MS, 0, 0, &deleted), 0);
    assert_int_equal(deleted, 0);
    reg_store_close(st);

    /* No directory: an empty list. */
    assert_int_equal(reg_ckpt_list("/tmp/dw-no-such-dir-really", &v, &n), 0);
    assert_int_equal(n, 0);
    assert_null(v);
}

/* Make a directory name under the replica (an empty RocksDB-less marker is
 * enough for the swap logic, which only renames). */
static void mk(const fixture *f, const char *name, const char *marker)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", f->replica, name);
    assert_int_equal(reg_fs_mkdir_p(path), 0);
    if (marker) {
        snprintf(path, sizeof path, "%s/%s/%s", f->replica, name, marker);
        assert_int_equal(reg_fs_write_sync(path, "x", 1), 0);
    }
}

static int has(const fixture *f, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", f->replica, name);
    return reg_fs_exists(path);
}

static void test_recover_every_crash_point(void **state)
{
    fixture *f = *state;

    /* Nothing to do. */
    mk(f, "db", "OLD");
    assert_int_equal(reg_restore_recover(f->replica), 0);
    assert_true(has(f, "db/OLD"));

    /* Killed while building: the build goes, the table stays. */
    mk(f, "restore.tmp", "NEW");
    assert_int_equal(reg_restore_recover(f->replica), 0);
    assert_false(has(f, "restore.tmp"));
    assert_true(has(f, "db/OLD"));

    /* Killed after the build was sealed, before the swap: swapped in. */
    mk(f, "restore.ready", "NEW");
    assert_int_equal(reg_restore_recover(f->replica), 1);
    assert_true(has(f, "db/NEW"));
    assert_false(has(f, "restore.ready") || has(f, "db.old"));

    /* Killed after db -> db.old: the new one moves in. */
    char old[512];
    snprintf(old, sizeof old, "%s/db.old", f->replica);
    assert_int_equal(rename(f->db, old), 0);
    mk(f, "restore.ready", "NEWER");
    assert_int_equal(reg_restore_recover(f->replica), 1);
    assert_true(has(f, "db/NEWER"));
    assert_false(has(f, "db.old"));

    /* Killed while removing db.old: it goes. */
    mk(f, "db.old", "STALE");
    assert_int_equal(reg_restore_recover(f->replica), 0);
    assert_false(has(f, "db.old"));
    assert_true(has(f, "db/NEWER"));

    /* A stale db.old and a ready build at once. */
    mk(f, "db.old", "STALE");
    mk(f, "restore.ready", "NEWEST");
    assert_int_equal(reg_restore_recover(f->replica), 1);
    assert_true(has(f, "db/NEWEST"));
    assert_false(has(f, "db.old"));
}

static void test_bootstrap(void **state)
{
    fixture *f = *state;
    static const uint8_t K1[DW_KEY_LEN] = "0123456789abcdef0123456789abcde";
    static const uint8_t K2[DW_KEY_LEN] = "fedcba9876543210fedcba987654321";
    dw_keyring *k1 = NULL, *k2 = NULL;
    dw_keyring_create(&k1);
    dw_keyring_add(k1, K1, 1, NULL);
    dw_keyring_create(&k2);
    dw_keyring_add(k2, K2, 1, NULL);

    /* Another replica's table and checkpoint, held (a restore). */
    char other[256], otherck[256], *err = NULL;
    snprintf(other, sizeof other, "%s/other/db", f->dir);
    snprintf(otherck, sizeof otherck, "%s/other/checkpoints", f->dir);
    reg_store *st = NULL;
    reg_store_opts o = {.keys = k1};
    assert_int_equal(reg_fs_mkdir_p(other), 0);
    assert_int_equal(reg_store_open_opts(&st, other, &o, &err), 0);
    connect_at(st, 1, 1000, "a");
    connect_at(st, 2, 2000, "b");
    assert_int_equal(reg_store_set_hold(st, 2500), 0);
    reg_ckpt c, got;
    assert_int_equal(reg_ckpt_create(st, otherck, 5000, &c, &err), 0);
    reg_store_close(st);
    assert_int_equal(c.restored_to_ms, 2500);
    char from[512];
    snprintf(from, sizeof from, "%s/%s", otherck, c.name);

    /* Without the key it is sealed with: refused, nothing left behind. */
    assert_int_equal(reg_bootstrap(f->replica, from, k2, &got, &err), -1);
    assert_non_null(strstr(err, "not in the keyring"));
    free(err);
    err = NULL;
    assert_false(has(f, "db") || has(f, "restore.tmp"));

    assert_int_equal(reg_bootstrap(f->replica, from, k1, &got, &err), 1);
    assert_int_equal(got.applied_seq, 2);
    o.keys = k1;
    assert_int_equal(reg_store_open_opts(&st, f->db, &o, &err), 0);
    assert_int_equal(reg_store_applied_seq(st), 2);
    assert_int_equal(reg_store_count(st), 2);
    assert_int_equal(reg_store_hold(st), 0); /* a new replica catches up */
    reg_store_close(st);
    /* A replica with a table is left alone. */
    assert_int_equal(reg_bootstrap(f->replica, from, k1, &got, &err), 0);
    /* Not a checkpoint. */
    assert_int_equal(reg_bootstrap(f->dir, f->dir, k1, &got, &err), -1);
    free(err);
    dw_keyring_free(k1);
    dw_keyring_free(k2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_meta),
        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_choose),
        cmocka_unit_test_setup_teardown(test_create_list_prune, setup, teardown),
        cmocka_unit_test_setup_teardown(test_recover_every_crash_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bootstrap, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
