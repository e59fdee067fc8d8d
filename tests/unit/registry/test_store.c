/* The connections table: event semantics, idempotency, reads, reopen. */
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

#include "apply.h"
#include "dw/bus.h"
#include "store.h"

typedef struct fixture {
    char dir[64];
    reg_store *st;
    uint64_t seq;
} fixture;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    char *err = NULL;
    strcpy(f->dir, "/tmp/dw-reg-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(reg_store_open(&f->st, f->dir, &err), 0);
    assert_null(err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    reg_store_close(f->st);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Apply one event at the next sequence; rooms is a NULL-terminated list. */
static int ev_at(reg_store *st, uint64_t seq, Dw__ConnEvent__Kind kind, const char *conn,
                 const char *edge, const char *const *rooms)
{
    Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
    size_t n = 0;
    while (rooms && rooms[n])
        n++;
    ev.kind = kind;
    ev.conn_id = (char *)(conn ? conn : "");
    ev.edge_id = (char *)(edge ? edge : "");
    ev.rooms = (char **)rooms;
    ev.n_rooms = n;
    ev.user_id = "u1";
    ev.source_ip = "127.0.0.1";
    ev.ts_ms = 1700000000000;
    return reg_store_apply(st, seq, &ev);
}

static int ev(fixture *f, Dw__ConnEvent__Kind kind, const char *conn, const char *edge,
              const char *const *rooms)
{
    return ev_at(f->st, ++f->seq, kind, conn, edge, rooms);
}

#define CONNECT DW__CONN_EVENT__KIND__CONNECT
#define DISCONNECT DW__CONN_EVENT__KIND__DISCONNECT
#define JOIN DW__CONN_EVENT__KIND__JOIN
#define LEAVE DW__CONN_EVENT__KIND__LEAVE
#define EDGE_DOWN DW__CONN_EVENT__KIND__EDGE_DOWN
#define ROOMS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* room_edges(room) joined with ',' ("" for none). */
static const char *room_edges(reg_store *st, const char *room)
{
    static char buf[1024];
    reg_strs s;
    assert_int_equal(reg_store_room_edges(st, room, &s), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < s.n; i++) {
        if (i)
            strcat(buf, ",");
        strcat(buf, s.v[i]);
    }
    assert_int_equal(s.applied_seq, reg_store_applied_seq(st));
    reg_strs_free(&s);
    return buf;
}

static const char *all_edges(reg_store *st)
{
    static char buf[1024];
    reg_strs s;
    assert_int_equal(reg_store_edges(st, &s), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < s.n; i++) {
        if (i)
            strcat(buf, ",");
        strcat(buf, s.v[i]);
    }
    reg_strs_free(&s);
    return buf;
}

/* conn ids from list(edge, conn, limit) joined with ','. */
static const char *list_ids(reg_store *st, const char *edge, const char *conn, size_t limit)
{
    static char buf[4096];
    reg_conns c;
    assert_int_equal(reg_store_list(st, edge, conn, limit, &c), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < c.n; i++) {
        if (i)
            strcat(buf, ",");
        strcat(buf, c.conns[i]->conn_id);
    }
    assert_int_equal(c.total, reg_store_count(st));
    reg_conns_free(&c);
    return buf;
}

/* The record of conn (must exist); free with dw__conn_record__free_unpacked. */
static Dw__ConnRecord *get(reg_store *st, const char *conn)
{
    reg_conns c;
    assert_int_equal(reg_store_list(st, NULL, conn, 0, &c), 0);
    assert_int_equal(c.n, 1);
    Dw__ConnRecord *r = c.conns[0];
    c.n = 0;
    reg_conns_free(&c);
    return r;
}

static void test_empty(void **state)
{
    fixture *f = *state;
    assert_int_equal(reg_store_applied_seq(f->st), 0);
    assert_int_equal(reg_store_count(f->st), 0);
    assert_string_equal(room_edges(f->st, "lobby"), "");
    assert_string_equal(all_edges(f->st), "");
    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "");
}

static void test_connect(void **state)
{
    fixture *f = *state;
    assert_int_equal(ev(f, CONNECT, "c1", "e1", ROOMS("lobby", "a")), 1);
    assert_int_equal(ev(f, CONNECT, "c2", "e2", ROOMS("lobby")), 1);
    assert_int_equal(ev(f, CONNECT, "c3", "e1", ROOMS("lobby", "lobby")), 1);
    assert_int_equal(reg_store_applied_seq(f->st), 3);
    assert_int_equal(reg_store_count(f->st), 3);

    assert_string_equal(room_edges(f->st, "lobby"), "e1,e2");
    assert_string_equal(room_edges(f->st, "a"), "e1");
    assert_string_equal(room_edges(f->st, "b"), "");
    assert_string_equal(all_edges(f->st), "e1,e2");

    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "c1,c2,c3");
    assert_string_equal(list_ids(f->st, NULL, NULL, 2), "c1,c2");
    assert_string_equal(list_ids(f->st, "e1", NULL, 0), "c1,c3");
    assert_string_equal(list_ids(f->st, "e1", NULL, 1), "c1");
    assert_string_equal(list_ids(f->st, "e3", NULL, 0), "");
    assert_string_equal(list_ids(f->st, NULL, "c2", 0), "c2");
    assert_string_equal(list_ids(f->st, "e1", "c2", 0), "");
    assert_string_equal(list_ids(f->st, "e2", "c2", 0), "c2");
    assert_string_equal(list_ids(f->st, NULL, "nope", 0), "");

    Dw__ConnRecord *r = get(f->st, "c3");
    assert_string_equal(r->edge_id, "e1");
    assert_int_equal(r->n_rooms, 1); /* the duplicate room is stored once */
    assert_string_equal(r->rooms[0], "lobby");
    assert_string_equal(r->user_id, "u1");
    assert_string_equal(r->source_ip, "127.0.0.1");
    assert_int_equal(r->connected_at_ms, 1700000000000);
    assert_int_equal(r->conn_seq, 3);
    dw__conn_record__free_unpacked(r, NULL);
}

static void test_connect_replaces(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("a", "b"));
    ev(f, CONNECT, "c1", "e2", ROOMS("b", "c"));
    assert_int_equal(reg_store_count(f->st), 1);
    assert_string_equal(room_edges(f->st, "a"), "");
    assert_string_equal(room_edges(f->st, "b"), "e2");
    assert_string_equal(room_edges(f->st, "c"), "e2");
    assert_string_equal(all_edges(f->st), "e2");
    assert_string_equal(list_ids(f->st, "e1", NULL, 0), "");
    Dw__ConnRecord *r = get(f->st, "c1");
    assert_int_equal(r->conn_seq, 2);
    dw__conn_record__free_unpacked(r, NULL);

    /* Same edge, overlapping rooms: the shared room key survives the replace. */
    ev(f, CONNECT, "c1", "e2", ROOMS("c"));
    assert_string_equal(room_edges(f->st, "b"), "");
    assert_string_equal(room_edges(f->st, "c"), "e2");
    assert_int_equal(reg_store_count(f->st), 1);
}

static void test_disconnect(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby", "a"));
    ev(f, CONNECT, "c2", "e2", ROOMS("lobby"));
    /* DISCONNECT may come without edge_id: the stored record knows it. */
    assert_int_equal(ev(f, DISCONNECT, "c2", NULL, NULL), 1);
    assert_int_equal(reg_store_count(f->st), 1);
    assert_string_equal(room_edges(f->st, "lobby"), "e1");
    assert_string_equal(all_edges(f->st), "e1");
    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "c1");

    /* Unknown id: nothing changes but the sequence. */
    assert_int_equal(ev(f, DISCONNECT, "ghost", "e1", NULL), 1);
    assert_int_equal(ev(f, DISCONNECT, "c2", "e2", NULL), 1);
    assert_int_equal(reg_store_applied_seq(f->st), 5);
    assert_int_equal(reg_store_count(f->st), 1);
    assert_string_equal(room_edges(f->st, "lobby"), "e1");

    /* An event from another edge does not touch the row. */
    ev(f, DISCONNECT, "c1", "e2", NULL);
    ev(f, JOIN, "c1", "e2", ROOMS("z"));
    ev(f, LEAVE, "c1", "e2", ROOMS("lobby"));
    assert_string_equal(room_edges(f->st, "lobby"), "e1");
    assert_string_equal(room_edges(f->st, "z"), "");
    assert_int_equal(reg_store_count(f->st), 1);

    ev(f, DISCONNECT, "c1", "e1", NULL);
    assert_int_equal(reg_store_count(f->st), 0);
    assert_string_equal(room_edges(f->st, "lobby"), "");
    assert_string_equal(room_edges(f->st, "a"), "");
    assert_string_equal(all_edges(f->st), "");
}

static void test_join_leave(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby"));
    ev(f, CONNECT, "c2", "e2", ROOMS("lobby"));

    assert_int_equal(ev(f, JOIN, "c2", "e2", ROOMS("a", "b", "a", "bad/room", "..", "lobby")), 1);
    assert_string_equal(room_edges(f->st, "a"), "e2");
    assert_string_equal(room_edges(f->st, "b"), "e2");
    Dw__ConnRecord *r = get(f->st, "c2");
    assert_int_equal(r->n_rooms, 3); /* lobby, a, b: no duplicates, no invalid names */
    dw__conn_record__free_unpacked(r, NULL);

    ev(f, JOIN, "c2", "e2", ROOMS("a")); /* duplicate join: harmless */
    ev(f, JOIN, "ghost", "e2", ROOMS("a", "z")); /* unknown id: no-op */
    assert_string_equal(room_edges(f->st, "z"), "");
    assert_int_equal(reg_store_count(f->st), 2);

    ev(f, LEAVE, "c2", "e2", ROOMS("a", "never-joined"));
    assert_string_equal(room_edges(f->st, "a"), "");
    assert_string_equal(room_edges(f->st, "b"), "e2");
    ev(f, LEAVE, "c2", "e2", ROOMS("a")); /* duplicate leave: harmless */
    ev(f, LEAVE, "ghost", "e2", ROOMS("b"));
    assert_string_equal(room_edges(f->st, "b"), "e2");
    ev(f, LEAVE, "c1", "e1", ROOMS("lobby"));
    assert_string_equal(room_edges(f->st, "lobby"), "e2");
    r = get(f->st, "c2");
    assert_int_equal(r->n_rooms, 2);
    assert_string_equal(r->rooms[0], "lobby");
    assert_string_equal(r->rooms[1], "b");
    dw__conn_record__free_unpacked(r, NULL);

    /* Leaving rooms must not lose the connection itself. */
    ev(f, DISCONNECT, "c2", NULL, NULL);
    assert_string_equal(room_edges(f->st, "b"), "");
    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "c1");
}

static void test_edge_down(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby", "a"));
    ev(f, CONNECT, "c2", "e2", ROOMS("lobby"));
    ev(f, CONNECT, "c3", "e1", ROOMS("b"));
    ev(f, CONNECT, "c4", "e1x", ROOMS("b")); /* an edge id that extends "e1" */
    assert_int_equal(ev(f, EDGE_DOWN, NULL, "e1", NULL), 1);
    assert_int_equal(reg_store_count(f->st), 2);
    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "c2,c4");
    assert_string_equal(room_edges(f->st, "lobby"), "e2");
    assert_string_equal(room_edges(f->st, "a"), "");
    assert_string_equal(room_edges(f->st, "b"), "e1x");
    assert_string_equal(all_edges(f->st), "e1x,e2");

    assert_int_equal(ev(f, EDGE_DOWN, NULL, "e-unknown", NULL), 1);
    assert_int_equal(reg_store_count(f->st), 2);
    /* A connection that moved to another edge is not taken down with the old one. */
    ev(f, CONNECT, "c5", "e3", ROOMS("lobby"));
    ev(f, CONNECT, "c5", "e4", ROOMS("lobby"));
    ev(f, EDGE_DOWN, NULL, "e3", NULL);
    assert_string_equal(list_ids(f->st, NULL, "c5", 0), "c5");
    assert_string_equal(room_edges(f->st, "lobby"), "e2,e4");
}

static void test_idempotent(void **state)
{
    fixture *f = *state;
    assert_int_equal(ev_at(f->st, 5, CONNECT, "c1", "e1", ROOMS("lobby")), 1);
    /* The same sequence again, even with another event: skipped. */
    assert_int_equal(ev_at(f->st, 5, DISCONNECT, "c1", "e1", NULL), 0);
    assert_int_equal(ev_at(f->st, 5, CONNECT, "c1", "e1", ROOMS("lobby")), 0);
    assert_int_equal(ev_at(f->st, 3, CONNECT, "c9", "e9", ROOMS("x")), 0);
    assert_int_equal(reg_store_applied_seq(f->st), 5);
    assert_int_equal(reg_store_count(f->st), 1);
    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "c1");
    assert_string_equal(room_edges(f->st, "x"), "");
    /* Gaps in the stream are fine. */
    assert_int_equal(ev_at(f->st, 9, JOIN, "c1", "e1", ROOMS("x")), 1);
    assert_string_equal(room_edges(f->st, "x"), "e1");
    assert_int_equal(reg_store_applied_seq(f->st), 9);
}

static void test_bad_events(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby"));
    /* Invalid ids and unknown kinds change nothing but applied_seq. */
    assert_int_equal(ev(f, CONNECT, "c/2", "e1", ROOMS("lobby")), 1);
    assert_int_equal(ev(f, CONNECT, "c2", "e/1", ROOMS("lobby")), 1);
    assert_int_equal(ev(f, CONNECT, "", "e1", ROOMS("lobby")), 1);
    assert_int_equal(ev(f, CONNECT, "c2", "", ROOMS("lobby")), 1);
    assert_int_equal(ev(f, EDGE_DOWN, NULL, "", NULL), 1);
    assert_int_equal(ev(f, (Dw__ConnEvent__Kind)42, "c1", "e1", NULL), 1);
    assert_int_equal(ev(f, DW__CONN_EVENT__KIND__UNKNOWN, "c1", "e1", NULL), 1);
    assert_int_equal(reg_store_count(f->st), 1);
    assert_string_equal(room_edges(f->st, "lobby"), "e1");

    /* An undecodable event: the sequence advances, nothing else. */
    uint64_t seq = reg_store_applied_seq(f->st);
    assert_int_equal(reg_store_apply(f->st, seq + 1, NULL), 1);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x80};
    assert_int_equal(reg_apply_payload(f->st, seq + 2, junk, sizeof junk), 1);
    assert_int_equal(reg_apply_payload(f->st, seq + 3, NULL, 0), 1);
    assert_int_equal(reg_store_applied_seq(f->st), seq + 3);
    assert_int_equal(reg_store_count(f->st), 1);

    /* A real payload goes through the same decoder the consumer uses. */
    Dw__ConnEvent e = DW__CONN_EVENT__INIT;
    char *rooms[] = {"lobby"};
    e.kind = CONNECT;
    e.conn_id = "c2";
    e.edge_id = "e2";
    e.rooms = rooms;
    e.n_rooms = 1;
    size_t len;
    uint8_t *buf = dw_pb_pack(&e.base, &len);
    assert_int_equal(reg_apply_payload(f->st, seq + 4, buf, len), 1);
    assert_int_equal(reg_apply_payload(f->st, seq + 4, buf, len), 0);
    free(buf);
    assert_string_equal(room_edges(f->st, "lobby"), "e1,e2");

    /* Reads with bad names answer nothing rather than fail. */
    assert_string_equal(room_edges(f->st, "a/b"), "");
    assert_string_equal(room_edges(f->st, ""), "");
    assert_string_equal(list_ids(f->st, "e/1", NULL, 0), "");
    assert_string_equal(list_ids(f->st, NULL, "c/1", 0), "");
}

/* Many members on few edges: one entry per edge, only for that room, even
 * when room and edge names are prefixes of each other. */
static void test_room_edges_distinct(void **state)
{
    fixture *f = *state;
    const char *edges[] = {"e", "e-x", "e1", "e1-", "eZ"};
    char id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof id, "c%04d", i);
        ev(f, CONNECT, id, edges[i % 5], i % 2 ? ROOMS("a") : ROOMS("a", "a.b"));
    }
    ev(f, CONNECT, "other", "e9", ROOMS("a-b", "ab", "a.bc"));
    assert_int_equal(reg_store_count(f->st), 1001);
    assert_string_equal(room_edges(f->st, "a"), "e,e-x,e1,e1-,eZ");
    /* Even members only: i % 5 over even i still hits every edge. */
    assert_string_equal(room_edges(f->st, "a.b"), "e,e-x,e1,e1-,eZ");
    assert_string_equal(room_edges(f->st, "a-b"), "e9");
    assert_string_equal(room_edges(f->st, "a.bc"), "e9");
    assert_string_equal(all_edges(f->st), "e,e-x,e1,e1-,e9,eZ");

    reg_conns c;
    assert_int_equal(reg_store_list(f->st, "e1", NULL, 0, &c), 0);
    assert_int_equal(c.n, 200);
    reg_conns_free(&c);
    ev(f, EDGE_DOWN, NULL, "e1", NULL);
    assert_string_equal(room_edges(f->st, "a"), "e,e-x,e1-,eZ");
    assert_int_equal(reg_store_count(f->st), 801);
}

static void test_reopen(void **state)
{
    fixture *f = *state;
    char *err = NULL;
    ev(f, CONNECT, "c1", "e1", ROOMS("lobby", "a"));
    ev(f, CONNECT, "c2", "e2", ROOMS("lobby"));
    ev(f, DISCONNECT, "c1", NULL, NULL);
    ev(f, CONNECT, "c3", "e3", ROOMS("b"));
    reg_store_close(f->st);
    f->st = NULL;

    assert_int_equal(reg_store_open(&f->st, f->dir, &err), 0);
    assert_int_equal(reg_store_applied_seq(f->st), 4);
    assert_int_equal(reg_store_count(f->st), 2);
    assert_string_equal(room_edges(f->st, "lobby"), "e2");
    assert_string_equal(room_edges(f->st, "b"), "e3");
    assert_string_equal(list_ids(f->st, NULL, NULL, 0), "c2,c3");
    /* Replaying what was already applied changes nothing. */
    assert_int_equal(ev_at(f->st, 3, DISCONNECT, "c2", NULL, NULL), 0);
    assert_int_equal(ev_at(f->st, 4, DISCONNECT, "c3", NULL, NULL), 0);
    assert_int_equal(reg_store_count(f->st), 2);
    assert_int_equal(ev_at(f->st, 5, DISCONNECT, "c3", NULL, NULL), 1);
    assert_int_equal(reg_store_count(f->st), 1);
}

static void test_open_error(void **state)
{
    reg_store *st = (reg_store *)1;
    char *err = NULL;
    assert_int_equal(reg_store_open(&st, "/proc/dw-no-such-dir/db", &err), -1);
    assert_null(st);
    assert_non_null(err);
    free(err);
    reg_store_close(NULL);
    reg_strs_free(NULL);
    reg_conns_free(NULL);
}

static void test_id_valid(void **state)
{
    assert_true(reg_id_valid("abc_DEF-123"));
    assert_true(reg_id_valid("edge.0:1"));
    assert_false(reg_id_valid(""));
    assert_false(reg_id_valid(NULL));
    assert_false(reg_id_valid("a/b"));
    assert_false(reg_id_valid("a b"));
    assert_false(reg_id_valid("a\x7f"));
    char longid[REG_ID_MAX + 2];
    memset(longid, 'x', sizeof longid);
    longid[REG_ID_MAX] = '\0';
    assert_true(reg_id_valid(longid));
    longid[REG_ID_MAX] = 'x';
    longid[REG_ID_MAX + 1] = '\0';
    assert_false(reg_id_valid(longid));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_replaces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edge_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_room_edges_distinct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
        cmocka_unit_test(test_open_error),
        cmocka_unit_test(test_id_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
