/* Lifecycle events derived while applying DW_CONN (store.c's outbox): which
 * changes make which events, exactly one disconnect per connect, positions
 * that do not depend on the floor, deletes, and sealing with rotation. */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "dw/crypto.h"
#include "events.h"
#include "store.h"
#include "store_fixture.h"

static int open_with(fixture *f, const dw_keyring *kr)
{
    reg_store_opts o = {.keys = kr, .events = 1};
    char *err = NULL;
    reg_store_close(f->st);
    f->st = NULL;
    int rc = reg_store_open_opts(&f->st, f->dir, &o, &err);
    free(err);
    return rc;
}

static int setup(void **state)
{
    fixture *f = fixture_new("dw-outbox-test-");
    assert_non_null(f);
    assert_int_equal(open_with(f, NULL), 0);
    *state = f;
    return 0;
}

/* Apply one event at the next sequence (user "u-<conn>", time 1000 + seq). */
static void ev(fixture *f, Dw__ConnEvent__Kind kind, const char *conn, const char *edge,
               const char *const *rooms, const char *reason)
{
    Dw__ConnEvent e = DW__CONN_EVENT__INIT;
    char user[64];
    size_t n = 0;
    while (rooms && rooms[n])
        n++;
    snprintf(user, sizeof user, "u-%s", conn ? conn : "");
    e.kind = kind;
    e.conn_id = (char *)(conn ? conn : "");
    e.edge_id = (char *)(edge ? edge : "");
    e.rooms = (char **)rooms;
    e.n_rooms = n;
    e.user_id = user;
    e.reason = (char *)reason;
    f->seq++;
    e.ts_ms = (int64_t)(1000 + f->seq);
    assert_int_equal(reg_store_apply(f->st, f->seq, &e), 1);
}

/* The outbox as "<seq>.<idx> <type> <conn> <room> <reason>" lines. */
static const char *outbox(fixture *f)
{
    static char buf[8192];
    reg_outbox o;
    assert_int_equal(reg_store_outbox_read(f->st, 0, &o), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < o.n; i++) {
        const Dw__LifecycleEvent *e = o.v[i].ev;
        char line[256];
        snprintf(line, sizeof line, "%s%llu.%u %s %s %s %s", i ? "\n" : "",
                 (unsigned long long)o.v[i].seq, o.v[i].idx, e->type, e->conn_id,
                 *e->room ? e->room : "-", *e->reason ? e->reason : "-");
        strcat(buf, line);
    }
    reg_outbox_free(&o);
    return buf;
}

static void test_connect_then_disconnect(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby"), NULL);
    assert_string_equal(outbox(f), "1.0 connect c1 - -\n"
                                   "1.1 join c1 lobby -");
    ev(f, DISCONNECT, "c1", "e1", NULL, "closed_by_server");
    assert_string_equal(outbox(f), "1.0 connect c1 - -\n"
                                   "1.1 join c1 lobby -\n"
                                   "2.0 leave c1 lobby disconnect\n"
                                   "2.1 disconnect c1 - closed_by_server");
    /* What the worker reads. */
    reg_outbox o;
    assert_int_equal(reg_store_outbox_read(f->st, 0, &o), 0);
    char *json = reg_ev_json(o.v[3].ev, NULL);
    assert_string_equal(json, "{\"type\":\"disconnect\",\"connectionId\":\"c1\",\"user\":\"u-c1\","
                              "\"room\":null,\"edge\":\"e1\",\"ts\":1002,"
                              "\"reason\":\"closed_by_server\"}");
    free(json);
    reg_outbox_free(&o);
}

/* A second disconnect for the same id (the edge's own after the api's
 * cleanup, a retry) and events for unknown ids say nothing. */
static void test_one_disconnect_per_connect(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", NULL, NULL);
    ev(f, DISCONNECT, "c1", "", NULL, NULL); /* no edge: ops cleanup */
    ev(f, DISCONNECT, "c1", "e1", NULL, "closed");
    ev(f, JOIN, "c1", "e1", ROOMS("a"), NULL);
    ev(f, DISCONNECT, "nobody", "e1", NULL, NULL);
    assert_string_equal(outbox(f), "1.0 connect c1 - -\n"
                                   "2.0 disconnect c1 - closed");
}

static void test_join_leave_only_changes(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", NULL, NULL);
    ev(f, JOIN, "c1", "e1", ROOMS("a", "b", "a", "bad..name"), NULL);
    ev(f, JOIN, "c1", "e1", ROOMS("a"), NULL);        /* already in */
    ev(f, JOIN, "c1", "e9", ROOMS("c"), NULL);        /* another edge's late event */
    ev(f, LEAVE, "c1", "e1", ROOMS("a", "zz"), NULL); /* zz: never joined */
    ev(f, LEAVE, "c1", "e1", ROOMS("a"), NULL);
    assert_string_equal(outbox(f), "1.0 connect c1 - -\n"
                                   "2.0 join c1 a -\n"
                                   "2.1 join c1 b -\n"
                                   "5.0 leave c1 a left");
}

/* The edge died: each of its connections leaves its rooms and disconnects,
 * in id order; the other edge's stay; their own late disconnects are
 * silent. */
static void test_edge_down(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c2", "e1", ROOMS("lobby"), NULL);
    ev(f, CONNECT, "c1", "e1", NULL, NULL);
    ev(f, CONNECT, "c3", "e2", NULL, NULL);
    assert_int_equal(reg_store_outbox_delete_through(f->st, 3, 0), 0);
    assert_string_equal(outbox(f), "");
    ev(f, EDGE_DOWN, NULL, "e1", NULL, "heartbeat_timeout");
    ev(f, DISCONNECT, "c1", "e1", NULL, "closed");
    assert_string_equal(outbox(f), "4.0 disconnect c1 - edge_down:heartbeat_timeout\n"
                                   "4.1 leave c2 lobby disconnect\n"
                                   "4.2 disconnect c2 - edge_down:heartbeat_timeout");
    ev(f, EDGE_DOWN, NULL, "e9", NULL, NULL);
    ev(f, EDGE_DOWN, NULL, "e2", NULL, NULL);
    const char *all = outbox(f);
    assert_string_equal(all + strlen(all) - strlen("\n7.0 disconnect c3 - edge_down"),
                        "\n7.0 disconnect c3 - edge_down");
}

/* The edge announces a connection the table still has: no second connect,
 * only the rooms that differ. The same id on another edge: the old one is
 * gone first. */
static void test_reannounce_and_reuse(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("a", "b"), NULL);
    assert_int_equal(reg_store_outbox_delete_through(f->st, 1, 99), 0);
    ev(f, CONNECT, "c1", "e1", ROOMS("b", "c"), NULL);
    assert_string_equal(outbox(f), "2.0 leave c1 a reconciled\n"
                                   "2.1 join c1 c -");
    assert_int_equal(reg_store_outbox_delete_through(f->st, 2, 1), 0);
    ev(f, CONNECT, "c1", "e2", NULL, NULL);
    assert_string_equal(outbox(f), "3.0 leave c1 b disconnect\n"
                                   "3.1 leave c1 c disconnect\n"
                                   "3.2 disconnect c1 - replaced\n"
                                   "3.3 connect c1 - -");
}

/* Events at or before the floor are not written, but keep their index:
 * the positions are the same on a replica that writes everything. */
static void test_floor_keeps_positions(void **state)
{
    fixture *f = *state;
    reg_store_events_floor(f->st, 2, 0);
    uint64_t s;
    uint32_t i;
    reg_store_events_floor_get(f->st, &s, &i);
    assert_int_equal(s, 2);
    assert_int_equal(i, 0);
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby"), NULL);
    ev(f, CONNECT, "c2", "e1", ROOMS("lobby"), NULL);
    ev(f, CONNECT, "c3", "e1", NULL, NULL);
    assert_string_equal(outbox(f), "2.1 join c2 lobby -\n"
                                   "3.0 connect c3 - -");
    /* Deletes go up to and including the position given. */
    assert_int_equal(reg_store_outbox_delete_through(f->st, 2, 1), 0);
    assert_string_equal(outbox(f), "3.0 connect c3 - -");
    reg_outbox o;
    assert_int_equal(reg_store_outbox_read(f->st, 1, &o), 0);
    assert_int_equal(o.n, 1);
    reg_outbox_free(&o);
}

static void test_off_writes_nothing(void **state)
{
    fixture *f = *state;
    reg_store_opts o = {0};
    char *err = NULL;
    reg_store_close(f->st);
    assert_int_equal(reg_store_open_opts(&f->st, f->dir, &o, &err), 0);
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby"), NULL);
    ev(f, DISCONNECT, "c1", "e1", NULL, NULL);
    assert_string_equal(outbox(f), "");
    assert_int_equal(reg_store_count(f->st), 0);
}

/* ---- sealed, rotated ------------------------------------------------- */

static void test_sealed_and_rotated(void **state)
{
    fixture *f = *state;
    dw_keyring *k1 = fixture_ring(K1, NULL), *k21 = fixture_ring(K2, K1),
               *k2 = fixture_ring(K2, NULL);
    /* A fresh table with key 1: the events' user ids are not on disk. */
    reg_store_close(f->st);
    f->st = NULL;
    fixture_rm_dir(f->dir);
    assert_int_equal(open_with(f, k1), 0);
    ev(f, CONNECT, "secretive-conn", "e1", ROOMS("lobby"), NULL);
    reg_store_flush(f->st);
    assert_false(fixture_grep_dir(f->dir, "u-secretive-conn"));

    /* Rotated to key 2, the outbox opens without key 1. */
    assert_int_equal(open_with(f, k21), 0);
    uint64_t n = 0;
    char *err = NULL;
    assert_int_equal(reg_store_rotate(f->st, &n, &err), 0);
    assert_int_equal(n, 3); /* the row and its two events */
    assert_int_equal(open_with(f, k2), 0);
    assert_string_equal(outbox(f), "1.0 connect secretive-conn - -\n"
                                   "1.1 join secretive-conn lobby -");
    dw_keyring_free(k1);
    dw_keyring_free(k21);
    dw_keyring_free(k2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_connect_then_disconnect, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_one_disconnect_per_connect, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_join_leave_only_changes, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_edge_down, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reannounce_and_reuse, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_floor_keeps_positions, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_off_writes_nothing, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_sealed_and_rotated, setup, fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
