/* Registry query replies (no NATS): good requests, filters, garbage. */
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/bus.h"
#include "query.h"
#include "store.h"

typedef struct fixture {
    char dir[64];
    reg_store *st;
} fixture;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void add_conn(reg_store *st, uint64_t seq, const char *conn, const char *edge,
                     const char *room)
{
    Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
    char *rooms[] = {(char *)room};
    ev.kind = DW__CONN_EVENT__KIND__CONNECT;
    ev.conn_id = (char *)conn;
    ev.edge_id = (char *)edge;
    ev.rooms = rooms;
    ev.n_rooms = 1;
    assert_int_equal(reg_store_apply(st, seq, &ev), 1);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    char *err = NULL;
    strcpy(f->dir, "/tmp/dw-regq-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(reg_store_open(&f->st, f->dir, &err), 0);
    add_conn(f->st, 1, "c1", "e1", "lobby");
    add_conn(f->st, 2, "c2", "e2", "lobby");
    add_conn(f->st, 3, "c3", "e1", "side");
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

static Dw__RoomEdges *room_reply(reg_store *st, const char *room, const char *err)
{
    size_t len = 0;
    uint8_t *buf = reg_query_room_reply(st, room, err, &len);
    assert_non_null(buf);
    Dw__RoomEdges *re = dw__room_edges__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(re);
    return re;
}

static void test_room(void **state)
{
    fixture *f = *state;
    Dw__RoomQuery rq = DW__ROOM_QUERY__INIT;
    rq.room = "lobby";
    rq.min_seq = 3;
    size_t len;
    uint8_t *req = dw_pb_pack(&rq.base, &len);
    char room[DW_ROOM_MAX + 1];
    uint64_t min_seq;
    assert_null(reg_query_room_parse(req, len, room, &min_seq));
    free(req);
    assert_string_equal(room, "lobby");
    assert_int_equal(min_seq, 3);

    Dw__RoomEdges *re = room_reply(f->st, room, NULL);
    assert_true(re->ok);
    assert_int_equal(re->applied_seq, 3);
    assert_int_equal(re->n_edge_ids, 2);
    assert_string_equal(re->edge_ids[0], "e1");
    assert_string_equal(re->edge_ids[1], "e2");
    dw__room_edges__free_unpacked(re, NULL);

    re = room_reply(f->st, "lobby", "behind");
    assert_false(re->ok);
    assert_string_equal(re->error, "behind");
    assert_int_equal(re->n_edge_ids, 0);
    assert_int_equal(re->applied_seq, 3);
    dw__room_edges__free_unpacked(re, NULL);
}

static void test_room_garbage(void **state)
{
    char room[DW_ROOM_MAX + 1];
    uint64_t min_seq;
    const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f};
    assert_non_null(reg_query_room_parse(junk, sizeof junk, room, &min_seq));
    assert_non_null(reg_query_room_parse(NULL, 0, room, &min_seq)); /* no room */
    assert_string_equal(room, "");

    Dw__RoomQuery rq = DW__ROOM_QUERY__INIT;
    const char *bad[] = {
        "",     "a/b", ".a",
        "a..b", "a b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len;
        rq.room = (char *)bad[i];
        uint8_t *req = dw_pb_pack(&rq.base, &len);
        assert_non_null(reg_query_room_parse(req, len, room, &min_seq));
        free(req);
    }
    /* Every prefix of a valid request, and random bytes, must not crash. */
    rq.room = "lobby";
    rq.min_seq = UINT64_MAX;
    size_t len;
    uint8_t *req = dw_pb_pack(&rq.base, &len);
    for (size_t i = 0; i <= len; i++)
        (void)reg_query_room_parse(req, i, room, &min_seq);
    free(req);
    srand(7);
    for (int i = 0; i < 2000; i++) {
        uint8_t buf[32];
        size_t n = (size_t)(rand() % (int)sizeof buf);
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)rand();
        (void)reg_query_room_parse(buf, n, room, &min_seq);
    }
}

static Dw__ListReply *list_reply(reg_store *st, const char *edge, const char *conn, uint32_t limit,
                                 size_t max_bytes)
{
    Dw__ListQuery lq = DW__LIST_QUERY__INIT;
    lq.edge_id = (char *)(edge ? edge : "");
    lq.conn_id = (char *)(conn ? conn : "");
    lq.limit = limit;
    size_t len, outlen = 0;
    uint8_t *req = dw_pb_pack(&lq.base, &len);
    uint8_t *buf = reg_query_list_reply(st, req, len, max_bytes, &outlen);
    free(req);
    assert_non_null(buf);
    Dw__ListReply *lr = dw__list_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_non_null(lr);
    return lr;
}

static void test_list(void **state)
{
    fixture *f = *state;
    Dw__ListReply *lr = list_reply(f->st, NULL, NULL, 0, 0);
    assert_true(lr->ok);
    assert_int_equal(lr->n_conns, 3);
    assert_int_equal(lr->total, 3);
    assert_int_equal(lr->applied_seq, 3);
    assert_string_equal(lr->conns[2]->conn_id, "c3");
    assert_string_equal(lr->conns[2]->edge_id, "e1");
    assert_int_equal(lr->conns[2]->n_rooms, 1);
    assert_string_equal(lr->conns[2]->rooms[0], "side");
    dw__list_reply__free_unpacked(lr, NULL);

    lr = list_reply(f->st, "e1", NULL, 0, 0);
    assert_int_equal(lr->n_conns, 2);
    assert_int_equal(lr->total, 3);
    dw__list_reply__free_unpacked(lr, NULL);

    lr = list_reply(f->st, NULL, NULL, 1, 0);
    assert_int_equal(lr->n_conns, 1);
    dw__list_reply__free_unpacked(lr, NULL);

    lr = list_reply(f->st, NULL, "c2", 0, 0);
    assert_int_equal(lr->n_conns, 1);
    assert_string_equal(lr->conns[0]->edge_id, "e2");
    dw__list_reply__free_unpacked(lr, NULL);

    lr = list_reply(f->st, "e1", "c2", 0, 0);
    assert_true(lr->ok);
    assert_int_equal(lr->n_conns, 0);
    dw__list_reply__free_unpacked(lr, NULL);

    /* A reply that would not fit in one NATS message. */
    lr = list_reply(f->st, NULL, NULL, 0, 16);
    assert_false(lr->ok);
    assert_non_null(strstr(lr->error, "too_large"));
    assert_int_equal(lr->total, 3);
    dw__list_reply__free_unpacked(lr, NULL);

    lr = list_reply(f->st, "e/1", NULL, 0, 0);
    assert_false(lr->ok);
    assert_non_null(strstr(lr->error, "bad_request"));
    dw__list_reply__free_unpacked(lr, NULL);
}

static void test_list_garbage(void **state)
{
    fixture *f = *state;
    const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f};
    size_t outlen = 0;
    uint8_t *buf = reg_query_list_reply(f->st, junk, sizeof junk, 0, &outlen);
    assert_non_null(buf);
    Dw__ListReply *lr = dw__list_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_non_null(lr);
    assert_false(lr->ok);
    assert_string_equal(lr->error, "bad_request");
    dw__list_reply__free_unpacked(lr, NULL);

    /* An empty request is a valid "list everything". */
    buf = reg_query_list_reply(f->st, NULL, 0, 0, &outlen);
    lr = dw__list_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_true(lr->ok);
    assert_int_equal(lr->n_conns, 3);
    dw__list_reply__free_unpacked(lr, NULL);

    srand(11);
    for (int i = 0; i < 2000; i++) {
        uint8_t b[32];
        size_t n = (size_t)(rand() % (int)sizeof b);
        for (size_t j = 0; j < n; j++)
            b[j] = (uint8_t)rand();
        free(reg_query_list_reply(f->st, b, n, 0, &outlen));
    }
}

static void test_edges(void **state)
{
    fixture *f = *state;
    size_t len = 0;
    uint8_t *buf = reg_query_edges_reply(f->st, &len);
    assert_non_null(buf);
    Dw__EdgesReply *er = dw__edges_reply__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(er);
    assert_int_equal(er->n_edge_ids, 2);
    assert_string_equal(er->edge_ids[0], "e1");
    assert_string_equal(er->edge_ids[1], "e2");
    dw__edges_reply__free_unpacked(er, NULL);
}

static void test_list_paging(void **state)
{
    fixture *f = *state;
    Dw__ListQuery lq = DW__LIST_QUERY__INIT;
    size_t len, outlen;
    lq.after_conn_id = "c1";
    lq.limit = 1;
    uint8_t *req = dw_pb_pack(&lq.base, &len);
    uint8_t *buf = reg_query_list_reply(f->st, req, len, 0, &outlen);
    free(req);
    Dw__ListReply *lr = dw__list_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_true(lr->ok);
    assert_int_equal(lr->n_conns, 1);
    assert_string_equal(lr->conns[0]->conn_id, "c2");
    assert_int_equal(lr->total, 3);
    dw__list_reply__free_unpacked(lr, NULL);

    lq.after_conn_id = "a/b"; /* not an id: no page starts there */
    req = dw_pb_pack(&lq.base, &len);
    buf = reg_query_list_reply(f->st, req, len, 0, &outlen);
    free(req);
    lr = dw__list_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_false(lr->ok);
    assert_non_null(strstr(lr->error, "bad_request"));
    dw__list_reply__free_unpacked(lr, NULL);
}

static Dw__PresenceReply *presence_reply(reg_store *st, const char *room, const char *after,
                                         uint32_t limit, size_t max_bytes)
{
    Dw__PresenceQuery pq = DW__PRESENCE_QUERY__INIT;
    pq.room = (char *)room;
    pq.after_user = (char *)(after ? after : "");
    pq.limit = limit;
    size_t len, outlen = 0;
    uint8_t *req = dw_pb_pack(&pq.base, &len);
    uint8_t *buf = reg_query_presence_reply(st, req, len, max_bytes, &outlen);
    free(req);
    assert_non_null(buf);
    Dw__PresenceReply *pr = dw__presence_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_non_null(pr);
    return pr;
}

static void test_presence(void **state)
{
    fixture *f = *state;
    /* 150 users in "big", one with two connections. */
    for (int i = 0; i < 150; i++) {
        Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
        char conn[16], user[16];
        char *rooms[] = {"big"};
        snprintf(conn, sizeof conn, "p%03d", i);
        snprintf(user, sizeof user, "user%03d", i == 149 ? 0 : i);
        ev.kind = DW__CONN_EVENT__KIND__CONNECT;
        ev.conn_id = conn;
        ev.edge_id = "e1";
        ev.user_id = user;
        ev.rooms = rooms;
        ev.n_rooms = 1;
        assert_int_equal(reg_store_apply(f->st, 10 + (uint64_t)i, &ev), 1);
    }
    Dw__PresenceReply *pr = presence_reply(f->st, "big", NULL, 0, 0);
    assert_true(pr->ok);
    assert_int_equal(pr->n_users, REG_PRESENCE_DEFAULT_PAGE);
    assert_true(pr->more);
    assert_string_equal(pr->users[0]->user_id, "user000");
    assert_int_equal(pr->users[0]->connections, 2);
    assert_int_equal(pr->users[1]->connections, 1);
    char last[32];
    snprintf(last, sizeof last, "%s", pr->users[pr->n_users - 1]->user_id);
    dw__presence_reply__free_unpacked(pr, NULL);

    pr = presence_reply(f->st, "big", last, 0, 0); /* the next page: the rest */
    assert_true(pr->ok);
    assert_int_equal(pr->n_users, 149 - REG_PRESENCE_DEFAULT_PAGE);
    assert_false(pr->more);
    dw__presence_reply__free_unpacked(pr, NULL);

    pr = presence_reply(f->st, "big", NULL, 100000, 0); /* capped at the maximum */
    assert_int_equal(pr->n_users, 149);
    dw__presence_reply__free_unpacked(pr, NULL);

    /* The seed connections have no user: nobody to name. */
    pr = presence_reply(f->st, "lobby", NULL, 0, 0);
    assert_true(pr->ok);
    assert_int_equal(pr->n_users, 0);
    dw__presence_reply__free_unpacked(pr, NULL);

    pr = presence_reply(f->st, "big", NULL, 0, 64);
    assert_false(pr->ok);
    assert_non_null(strstr(pr->error, "too_large"));
    dw__presence_reply__free_unpacked(pr, NULL);

    pr = presence_reply(f->st, "no/room", NULL, 0, 0);
    assert_false(pr->ok);
    assert_string_equal(pr->error, "bad_request: room");
    dw__presence_reply__free_unpacked(pr, NULL);

    const uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f};
    size_t outlen = 0;
    uint8_t *buf = reg_query_presence_reply(f->st, junk, sizeof junk, 0, &outlen);
    pr = dw__presence_reply__unpack(NULL, outlen, buf);
    free(buf);
    assert_false(pr->ok);
    assert_string_equal(pr->error, "bad_request");
    dw__presence_reply__free_unpacked(pr, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_room, setup, teardown),
        cmocka_unit_test(test_room_garbage),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_edges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_presence, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
