#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "rooms.h"
#include "session.h"

static void test_join_leave_keeps_indices(void **state)
{
    edge_rooms rs;
    assert_int_equal(rooms_init(&rs, 4), 0);
    edge_session s[5];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 5; i++)
        assert_int_equal(rooms_join(&rs, &s[i], "lobby"), 0);
    assert_int_equal(rooms_join(&rs, &s[0], "lobby"), 1);
    assert_int_equal(rooms_join(&rs, &s[0], "other"), 0);
    assert_int_equal(rs.count, 2);

    edge_room *lobby = rooms_get(&rs, "lobby");
    assert_int_equal(lobby->count, 5);
    rooms_leave_all(&rs, &s[1]);
    rooms_leave_all(&rs, &s[0]);
    assert_int_equal(lobby->count, 3);
    assert_null(rooms_get(&rs, "other"));
    /* Every remaining member's back-reference points at itself. */
    for (uint32_t i = 0; i < lobby->count; i++) {
        edge_session *m = lobby->members[i];
        assert_int_equal(m->nrooms, 1);
        assert_int_equal(m->rooms[0].idx, i);
    }
    for (int i = 2; i < 5; i++)
        rooms_leave_all(&rs, &s[i]);
    assert_null(rooms_get(&rs, "lobby"));
    assert_int_equal(rs.count, 0);
    rooms_free(&rs);
}

/* The v1 member list and the edge-wide count follow joins and leaves, with
 * plain members in the same room left out of both. */
static void test_v1_members_tracked(void **state)
{
    edge_rooms rs;
    assert_int_equal(rooms_init(&rs, 4), 0);
    edge_session s[6];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 6; i++)
        s[i].v1 = i % 2 == 1; /* 1, 3, 5 speak v1 */
    for (int i = 0; i < 6; i++)
        assert_int_equal(rooms_join(&rs, &s[i], "lobby"), 0);
    assert_int_equal(rooms_join(&rs, &s[3], "other"), 0);
    assert_int_equal(rooms_join(&rs, &s[4], "other"), 0);

    edge_room *lobby = rooms_get(&rs, "lobby"), *other = rooms_get(&rs, "other");
    assert_int_equal(lobby->count, 6);
    assert_int_equal(lobby->nv1, 3);
    assert_int_equal(other->nv1, 1);
    assert_int_equal(rooms_v1_members(&rs), 4);

    rooms_leave(&rs, &s[1], "lobby");
    rooms_leave_all(&rs, &s[0]);
    assert_int_equal(lobby->nv1, 2);
    assert_int_equal(rooms_v1_members(&rs), 3);
    /* Each v1 member's back-reference points at itself. */
    for (uint32_t i = 0; i < lobby->nv1; i++) {
        edge_session *m = lobby->v1[i];
        assert_true(m->v1);
        edge_membership *mb = rooms_membership(m, lobby);
        assert_non_null(mb);
        assert_int_equal(mb->v1_idx, i);
        assert_ptr_equal(lobby->members[mb->idx], m);
    }
    rooms_leave_all(&rs, &s[3]);
    assert_int_equal(other->nv1, 0);
    assert_int_equal(other->count, 1);
    assert_int_equal(rooms_v1_members(&rs), 1);
    for (int i = 0; i < 6; i++)
        rooms_leave_all(&rs, &s[i]);
    assert_int_equal(rooms_v1_members(&rs), 0);
    assert_int_equal(rs.count, 0);
    rooms_free(&rs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_join_leave_keeps_indices),
                                       cmocka_unit_test(test_v1_members_tracked)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
