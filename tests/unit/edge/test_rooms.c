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

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_join_leave_keeps_indices)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
