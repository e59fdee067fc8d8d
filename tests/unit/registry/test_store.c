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
#include "dw/crypto.h"
#include "store.h"
#include "store_fixture.h"

static int setup(void **state)
{
    fixture *f = fixture_new("dw-reg-test-");
    char *err = NULL;
    assert_non_null(f);
    assert_int_equal(reg_store_open(&f->st, f->dir, &err), 0);
    assert_null(err);
    *state = f;
    return 0;
}

/* One event; rooms is a NULL-terminated list (borrowed). */
static Dw__ConnEvent mk(Dw__ConnEvent__Kind kind, const char *conn, const char *edge,
                        const char *const *rooms)
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
    return ev;
}

/* Apply one event at seq. */
static int ev_at(reg_store *st, uint64_t seq, Dw__ConnEvent__Kind kind, const char *conn,
                 const char *edge, const char *const *rooms)
{
    Dw__ConnEvent ev = mk(kind, conn, edge, rooms);
    return reg_store_apply(st, seq, &ev);
}

static int ev(fixture *f, Dw__ConnEvent__Kind kind, const char *conn, const char *edge,
              const char *const *rooms)
{
    return ev_at(f->st, ++f->seq, kind, conn, edge, rooms);
}

/* room_edges(room) joined with ',' ("" for none). */
static const char *room_edges(reg_store *st, const char *room)
{
    static char buf[1024];
    reg_strs s;
    assert_int_equal(reg_store_room_edges(st, room, &s), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < s.n; i++) {
        if (i) strcat(buf, ",");
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
        if (i) strcat(buf, ",");
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
    assert_int_equal(reg_store_list(st, edge, conn, NULL, limit, &c), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < c.n; i++) {
        if (i) strcat(buf, ",");
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
    assert_int_equal(reg_store_list(st, NULL, conn, NULL, 0, &c), 0);
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

    ev(f, JOIN, "c2", "e2", ROOMS("a"));         /* duplicate join: harmless */
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

/* Every lifecycle event in the outbox as "seq.idx:type:conn:room;". */
static char *outbox_text(reg_store *st)
{
    reg_outbox o;
    assert_int_equal(reg_store_outbox_read(st, 0, &o), 0);
    char *buf = calloc(1, 8192);
    size_t len = 0;
    for (size_t i = 0; i < o.n; i++)
        len += (size_t)snprintf(buf + len, 8192 - len, "%llu.%u:%s:%s:%s;",
                                (unsigned long long)o.v[i].seq, o.v[i].idx, o.v[i].ev->type,
                                o.v[i].ev->conn_id, o.v[i].ev->room);
    reg_outbox_free(&o);
    return buf;
}

/* Events applied many at a time leave exactly the table, the position and
 * the lifecycle events that applying them one by one leaves: also when an
 * event touches a connection an earlier one of the same call changed (a
 * reconnect with the same id, a disconnect right after the connect), with
 * an EDGE_DOWN in the middle, an undecodable event, and events at or before
 * applied_seq (skipped). */
static void test_apply_many_same_as_one_by_one(void **state)
{
    Dw__ConnEvent evs[] = {
        mk(CONNECT, "c1", "e1", ROOMS("lobby", "a")),
        mk(CONNECT, "c2", "e1", ROOMS("lobby")),
        mk(CONNECT, "c3", "e2", ROOMS("lobby")),
        mk(DISCONNECT, "c2", "e1", NULL),
        mk(CONNECT, "c2", "e2", ROOMS("b")),
        mk(JOIN, "c1", "e1", ROOMS("b")),
        mk(EDGE_DOWN, NULL, "e1", NULL),
        mk(CONNECT, "c1", "e3", ROOMS("a")),
        mk(CONNECT, "c4", "e3", ROOMS("lobby")),
        mk(LEAVE, "c4", "e3", ROOMS("lobby")),
        mk(DISCONNECT, "c3", "", NULL),
        mk(CONNECT, "c5", "e3", ROOMS("lobby")),
    };
    size_t n = sizeof evs / sizeof evs[0];
    reg_store *st[2];
    char dirs[2][64];
    for (int k = 0; k < 2; k++) {
        reg_store_opts o = {.events = 1};
        char *err = NULL;
        strcpy(dirs[k], "/tmp/dw-reg-many-XXXXXX");
        assert_non_null(mkdtemp(dirs[k]));
        assert_int_equal(reg_store_open_opts(&st[k], dirs[k], &o, &err), 0);
    }
    /* st[0] one by one, with an undecodable event at seq 13. */
    for (size_t i = 0; i < n; i++)
        assert_int_equal(reg_store_apply_at(st[0], i + 1, 1000 + (int64_t)i, &evs[i]), 1);
    assert_int_equal(reg_store_apply_at(st[0], n + 1, 2000, NULL), 1);
    /* st[1]: the first two alone, then all again (two skipped) and NULL. */
    reg_apply_item items[16];
    for (size_t i = 0; i < n; i++)
        items[i] = (reg_apply_item){.seq = i + 1, .ts_ms = 1000 + (int64_t)i, .ev = &evs[i]};
    items[n] = (reg_apply_item){.seq = n + 1, .ts_ms = 2000, .ev = NULL};
    assert_int_equal(reg_store_apply_many(st[1], items, 2), 2);
    assert_int_equal(reg_store_apply_many(st[1], items, n + 1), (int)n - 1);
    assert_int_equal(reg_store_apply_many(st[1], items, n + 1), 0);

    char *box[2];
    char ids[2][4096], rooms[2][3][1024];
    for (int k = 0; k < 2; k++) {
        assert_int_equal(reg_store_applied_seq(st[k]), n + 1);
        strcpy(ids[k], list_ids(st[k], NULL, NULL, 0));
        strcpy(rooms[k][0], room_edges(st[k], "lobby"));
        strcpy(rooms[k][1], room_edges(st[k], "a"));
        strcpy(rooms[k][2], room_edges(st[k], "b"));
        box[k] = outbox_text(st[k]);
    }
    assert_string_equal(ids[0], "c1,c2,c4,c5");
    assert_int_equal(reg_store_count(st[0]), 4);
    assert_int_equal(reg_store_count(st[1]), 4);
    assert_string_equal(ids[1], ids[0]);
    for (int r = 0; r < 3; r++)
        assert_string_equal(rooms[1][r], rooms[0][r]);
    assert_true(strlen(box[0]) > 0);
    assert_string_equal(box[1], box[0]);
    Dw__ConnRecord *a = get(st[0], "c1"), *b = get(st[1], "c1");
    assert_string_equal(a->edge_id, "e3");
    assert_string_equal(b->edge_id, a->edge_id);
    assert_int_equal(b->conn_seq, a->conn_seq);
    dw__conn_record__free_unpacked(a, NULL);
    dw__conn_record__free_unpacked(b, NULL);
    for (int k = 0; k < 2; k++) {
        free(box[k]);
        reg_store_close(st[k]);
        fixture_rm_dir(dirs[k]);
    }
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
    /* A JOIN or LEAVE that changes nothing is applied, not a failure (it
     * was -1, "RocksDB failed", and stopped the apply thread). */
    assert_int_equal(ev_at(f->st, 10, JOIN, "c1", "e1", ROOMS("x")), 1);
    assert_int_equal(ev_at(f->st, 11, LEAVE, "c1", "e1", ROOMS("never")), 1);
    assert_int_equal(reg_store_applied_seq(f->st), 11);
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
    assert_int_equal(reg_store_list(f->st, "e1", NULL, NULL, 0, &c), 0);
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

/* ---- paging, presence, hold ------------------------------------------- */

static void test_list_after(void **state)
{
    fixture *f = *state;
    ev(f, CONNECT, "c3", "e1", NULL);
    ev(f, CONNECT, "c1", "e2", NULL);
    ev(f, CONNECT, "c2", "e1", NULL);
    ev(f, CONNECT, "c10", "e1", NULL);
    reg_conns c;
    const char *pages[][2] = {{NULL, "c1,c10"}, {"c10", "c2,c3"}, {"c3", ""},
                              {"c0", "c1,c10"}, {"c11", "c2,c3"}, {"zz", ""}};
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        char buf[64] = "";
        assert_int_equal(reg_store_list(f->st, NULL, NULL, pages[i][0], 2, &c), 0);
        for (size_t j = 0; j < c.n; j++) {
            strcat(buf, j ? "," : "");
            strcat(buf, c.conns[j]->conn_id);
        }
        assert_string_equal(buf, pages[i][1]);
        assert_int_equal(c.total, 4);
        reg_conns_free(&c);
    }
    /* By edge, the same way. */
    assert_int_equal(reg_store_list(f->st, "e1", NULL, "c10", 0, &c), 0);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.conns[0]->conn_id, "c2");
    assert_string_equal(c.conns[1]->conn_id, "c3");
    reg_conns_free(&c);
    /* One id: listed only when it is after "after". */
    assert_int_equal(reg_store_list(f->st, NULL, "c2", "c1", 0, &c), 0);
    assert_int_equal(c.n, 1);
    reg_conns_free(&c);
    assert_int_equal(reg_store_list(f->st, NULL, "c2", "c2", 0, &c), 0);
    assert_int_equal(c.n, 0);
    reg_conns_free(&c);
}

static void connect_user(fixture *f, const char *conn, const char *edge, const char *user,
                         const char *const *rooms)
{
    Dw__ConnEvent e = DW__CONN_EVENT__INIT;
    size_t n = 0;
    while (rooms && rooms[n])
        n++;
    e.kind = CONNECT;
    e.conn_id = (char *)conn;
    e.edge_id = (char *)edge;
    e.user_id = (char *)user;
    e.rooms = (char **)rooms;
    e.n_rooms = n;
    assert_int_equal(reg_store_apply(f->st, ++f->seq, &e), 1);
}

/* "user:n,user:n" of a presence page, and its "more" flag. */
static const char *presence(reg_store *st, const char *room, const char *after, size_t limit,
                            int *more)
{
    static char buf[256];
    reg_presence p;
    assert_int_equal(reg_store_presence(st, room, after, limit, &p), 0);
    buf[0] = '\0';
    for (size_t i = 0; i < p.n; i++)
        sprintf(buf + strlen(buf), "%s%s:%u", i ? "," : "", p.users[i], p.conns[i]);
    *more = p.more;
    assert_int_equal(p.applied_seq, reg_store_applied_seq(st));
    reg_presence_free(&p);
    return buf;
}

static void test_presence(void **state)
{
    fixture *f = *state;
    int more;
    connect_user(f, "c1", "e1", "bob", ROOMS("lobby"));
    connect_user(f, "c2", "e2", "alice", ROOMS("lobby", "x"));
    connect_user(f, "c3", "e1", "bob", ROOMS("lobby"));
    connect_user(f, "c4", "e1", "", ROOMS("lobby")); /* anonymous: not named */
    connect_user(f, "c5", "e3", "carol", ROOMS("lobby"));
    connect_user(f, "c6", "e3", "dave", ROOMS("x"));

    assert_string_equal(presence(f->st, "lobby", NULL, 0, &more), "alice:1,bob:2,carol:1");
    assert_false(more);
    assert_string_equal(presence(f->st, "lobby", NULL, 2, &more), "alice:1,bob:2");
    assert_true(more);
    assert_string_equal(presence(f->st, "lobby", "bob", 2, &more), "carol:1");
    assert_false(more);
    assert_string_equal(presence(f->st, "lobby", "b", 1, &more), "bob:2");
    assert_true(more);
    assert_string_equal(presence(f->st, "lobby", "carol", 5, &more), "");
    assert_false(more);
    assert_string_equal(presence(f->st, "x", "", 0, &more), "alice:1,dave:1");
    assert_string_equal(presence(f->st, "nobody-here", NULL, 0, &more), "");
    assert_string_equal(presence(f->st, "bad/room", NULL, 0, &more), "");
    ev(f, DISCONNECT, "c3", NULL, NULL);
    assert_string_equal(presence(f->st, "lobby", NULL, 0, &more), "alice:1,bob:1,carol:1");
}

static void test_hold_and_event_time_survive_reopen(void **state)
{
    fixture *f = *state;
    char *err = NULL;
    Dw__ConnEvent e = DW__CONN_EVENT__INIT;
    e.kind = CONNECT;
    e.conn_id = "c1";
    e.edge_id = "e1";
    assert_int_equal(reg_store_apply_at(f->st, 1, 1700000001234, &e), 1);
    assert_int_equal(reg_store_apply_at(f->st, 2, 1700000005678, NULL), 1);
    assert_int_equal(reg_store_hold(f->st), 0);
    assert_int_equal(reg_store_set_hold(f->st, 1700000009000), 0);
    reg_store_close(f->st);
    assert_int_equal(reg_store_open(&f->st, f->dir, &err), 0);
    reg_store_info info;
    reg_store_info_get(f->st, &info);
    assert_int_equal(info.applied_seq, 2);
    assert_int_equal(info.applied_ts_ms, 1700000005678);
    assert_int_equal(info.count, 1);
    assert_int_equal(info.restored_to_ms, 1700000009000);
    assert_int_equal(reg_store_hold(f->st), 1700000009000);
    assert_int_equal(reg_store_set_hold(f->st, 0), 0);
    reg_store_close(f->st);
    assert_int_equal(reg_store_open(&f->st, f->dir, &err), 0);
    assert_int_equal(reg_store_hold(f->st), 0);
}

/* ---- encryption at rest ----------------------------------------------- */

static int reopen(fixture *f, const dw_keyring *kr, char **err)
{
    reg_store_opts o = {.keys = kr};
    reg_store_close(f->st);
    f->st = NULL;
    *err = NULL;
    return reg_store_open_opts(&f->st, f->dir, &o, err);
}

static const char *user_of(reg_store *st, const char *conn)
{
    static char buf[64];
    reg_conns c;
    assert_int_equal(reg_store_list(st, NULL, conn, NULL, 0, &c), 0);
    if (c.n != 1) {
        reg_conns_free(&c);
        return NULL;
    }
    snprintf(buf, sizeof buf, "%s", c.conns[0]->user_id);
    reg_conns_free(&c);
    return buf;
}

static void test_sealed_values(void **state)
{
    fixture *f = *state;
    char *err = NULL;
    dw_keyring *k1 = fixture_ring(K1, NULL);
    assert_int_equal(reopen(f, k1, &err), 0);
    connect_user(f, "c1", "e1", "user-known-4c1d", ROOMS("lobby"));
    assert_string_equal(user_of(f->st, "c1"), "user-known-4c1d");
    reg_store_flush(f->st);
    reg_store_close(f->st);
    f->st = NULL;
    /* Keys are there in clear (room and ids), the user id is not. */
    assert_true(fixture_grep_dir(f->dir, "c/c1"));
    assert_false(fixture_grep_dir(f->dir, "user-known-4c1d"));

    /* No key, or another key: refused, with the reason. */
    assert_int_equal(reopen(f, NULL, &err), -1);
    assert_non_null(strstr(err, "no key is configured"));
    free(err);
    dw_keyring *k2 = fixture_ring(K2, NULL);
    assert_int_equal(reopen(f, k2, &err), -1);
    assert_non_null(strstr(err, "not in the keyring"));
    free(err);
    assert_int_equal(reopen(f, k1, &err), 0);
    assert_string_equal(user_of(f->st, "c1"), "user-known-4c1d");
    dw_keyring_free(k1);
    dw_keyring_free(k2);
}

static void test_rotation(void **state)
{
    fixture *f = *state;
    char *err = NULL;
    uint64_t n = 0;
    dw_keyring *plain = fixture_ring(NULL, NULL), *k1 = fixture_ring(K1, NULL),
               *k21 = fixture_ring(K2, K1);
    dw_keyring *k2 = fixture_ring(K2, NULL);

    /* A plaintext table (from before encryption) ... */
    assert_int_equal(reopen(f, plain, &err), 0);
    connect_user(f, "c1", "e1", "u1", ROOMS("lobby"));
    assert_int_equal(reg_store_rotate(f->st, &n, &err), -1); /* nothing to rotate to */
    free(err);
    /* ... gets a key: old values read, new ones are sealed. */
    assert_int_equal(reopen(f, k1, &err), 0);
    connect_user(f, "c2", "e1", "u2", ROOMS("lobby"));
    assert_string_equal(user_of(f->st, "c1"), "u1");
    reg_store_info info;
    reg_store_info_get(f->st, &info);
    assert_int_equal(info.n_key_ids, 2);
    assert_int_equal(reg_store_rotate(f->st, &n, &err), 0);
    assert_int_equal(n, 1); /* c1 */
    reg_store_info_get(f->st, &info);
    assert_int_equal(info.n_key_ids, 1);
    assert_int_equal(info.key_ids[0], dw_key_id(K1));

    /* Key 2 current, key 1 old: every value moves to key 2. */
    assert_int_equal(reopen(f, k21, &err), 0);
    for (int i = 0; i < 1200; i++) { /* more than one rotation batch */
        char id[16];
        snprintf(id, sizeof id, "m%04d", i);
        connect_user(f, id, "e2", i % 2 ? "odd" : "even", ROOMS("lobby"));
    }
    connect_user(f, "c3", "e1", "u3", NULL);
    assert_string_equal(user_of(f->st, "c2"), "u2");
    assert_int_equal(reg_store_rotate(f->st, &n, &err), 0);
    assert_int_equal(n, 2); /* c1 and c2; the rest was written with key 2 */
    assert_int_equal(reg_store_rotate(f->st, &n, &err), 0);
    assert_int_equal(n, 0);

    /* Key 1 can go. */
    assert_int_equal(reopen(f, k2, &err), 0);
    assert_string_equal(user_of(f->st, "c1"), "u1");
    assert_string_equal(user_of(f->st, "c2"), "u2");
    assert_string_equal(user_of(f->st, "m0007"), "odd");
    assert_int_equal(reg_store_count(f->st), 1203);
    dw_keyring_free(plain);
    dw_keyring_free(k1);
    dw_keyring_free(k21);
    dw_keyring_free(k2);
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
        cmocka_unit_test_setup_teardown(test_empty, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_connect, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_connect_replaces, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_disconnect, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_join_leave, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_edge_down, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_idempotent, setup, fixture_teardown),
        cmocka_unit_test(test_apply_many_same_as_one_by_one),
        cmocka_unit_test_setup_teardown(test_bad_events, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_room_edges_distinct, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_reopen, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_list_after, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_presence, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_hold_and_event_time_survive_reopen, setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_sealed_values, setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, fixture_teardown),
        cmocka_unit_test(test_open_error),
        cmocka_unit_test(test_id_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
