#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "connmap.h"

static void id_of(int i, char *out)
{
    snprintf(out, DW_ID_LEN + 1, "id%014d", i);
}

static void test_put_get_del_many(void **state)
{
    enum { N = 5000 };
    static int values[N];
    edge_connmap m = {0};
    char id[DW_ID_LEN + 1];
    for (int i = 0; i < N; i++) {
        id_of(i, id);
        assert_int_equal(connmap_put(&m, id, &values[i]), 0);
    }
    assert_int_equal(m.count, N);
    for (int i = 0; i < N; i++) {
        id_of(i, id);
        assert_ptr_equal(connmap_get(&m, id, DW_ID_LEN), &values[i]);
    }
    for (int i = 0; i < N; i += 2) {
        id_of(i, id);
        connmap_del(&m, id);
    }
    for (int i = 0; i < N; i++) {
        id_of(i, id);
        assert_ptr_equal(connmap_get(&m, id, DW_ID_LEN), i % 2 ? &values[i] : NULL);
    }
    assert_int_equal(m.count, N / 2);
    connmap_del(&m, "notthereatall123");
    assert_null(connmap_get(&m, "short", 5));
    connmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_put_get_del_many)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
