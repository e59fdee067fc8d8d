/* edges: heartbeat liveness, EDGE_DOWN once, with the clock driven by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "edges.h"

#define DEAD 10000
#define FORGET 300000

static edges_table *table(void)
{
    edges_table *t = NULL;
    assert_int_equal(edges_create(&t, DEAD, FORGET, 64), 0);
    return t;
}

/* The stale list at now, as one comma-joined string (order of insertion). */
static char *stale(edges_table *t, int64_t now)
{
    char **ids = NULL;
    size_t n = 99;
    static char out[1024];
    assert_int_equal(edges_stale(t, now, &ids, &n), 0);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (i) strcat(out, ",");
        strcat(out, ids[i]);
    }
    edges_list_free(ids, n);
    return out;
}

static void test_id_valid(void **state)
{
    assert_true(edges_id_valid("AbC-_09xyz", 10));
    assert_false(edges_id_valid("", 0));
    assert_false(edges_id_valid("a.b", 3));
    assert_false(edges_id_valid("a*", 2));
    assert_false(edges_id_valid("a>", 2));
    assert_false(edges_id_valid("a b", 3));
    assert_false(edges_id_valid("a\nb", 3));
    assert_false(edges_id_valid("caf\xc3\xa9", 5));
    char long_id[EDGES_ID_MAX + 2];
    memset(long_id, 'e', sizeof long_id);
    assert_true(edges_id_valid(long_id, EDGES_ID_MAX));
    assert_false(edges_id_valid(long_id, EDGES_ID_MAX + 1));
}

static void test_heartbeats_keep_alive(void **state)
{
    edges_table *t = table();
    assert_int_equal(edges_seen(t, "e1", 1000), 0);
    assert_int_equal(edges_get(t, "e1"), EDGES_ALIVE);
    for (int64_t now = 3000; now <= 60000; now += 2000) {
        assert_int_equal(edges_seen(t, "e1", now), 0);
        assert_string_equal(stale(t, now + 1), "");
    }
    assert_int_equal(edges_count(t), 1);
    edges_destroy(t);
}

static void test_silent_edge_goes_stale_once(void **state)
{
    edges_table *t = table();
    edges_seen(t, "e1", 1000);
    edges_seen(t, "e2", 1000);
    edges_seen(t, "e2", 6000);
    assert_string_equal(stale(t, 1000 + DEAD - 1), "");
    assert_string_equal(stale(t, 1000 + DEAD), "e1");
    /* Until the EDGE_DOWN is durable, every sweep reports it again. */
    assert_string_equal(stale(t, 1000 + DEAD + 500), "e1");
    edges_mark_down(t, "e1", 1000 + DEAD + 600);
    assert_int_equal(edges_get(t, "e1"), EDGES_DOWN);
    assert_string_equal(stale(t, 1000 + DEAD + 700), "");
    assert_string_equal(stale(t, 6000 + DEAD), "e2");
    edges_mark_down(t, "e2", 6000 + DEAD);
    assert_string_equal(stale(t, 100000), "");
    edges_destroy(t);
}

static void test_heartbeat_revives_down_edge(void **state)
{
    edges_table *t = table();
    edges_seen(t, "e1", 0);
    assert_string_equal(stale(t, DEAD), "e1");
    edges_mark_down(t, "e1", DEAD);
    assert_int_equal(edges_seen(t, "e1", DEAD + 100), 1); /* 1: it was down */
    assert_int_equal(edges_get(t, "e1"), EDGES_ALIVE);
    assert_int_equal(edges_seen(t, "e1", DEAD + 200), 0);
    assert_string_equal(stale(t, DEAD + 200 + DEAD - 1), "");
    /* Silent again: reported again. */
    assert_string_equal(stale(t, DEAD + 200 + DEAD), "e1");
    edges_destroy(t);
}

static void test_known_seeds_clock_without_reviving(void **state)
{
    edges_table *t = table();
    /* Seeded from the registry at start: the clock starts now. */
    assert_int_equal(edges_known(t, "seeded", 5000), 0);
    assert_int_equal(edges_get(t, "seeded"), EDGES_ALIVE);
    assert_string_equal(stale(t, 5000 + DEAD - 1), "");
    assert_string_equal(stale(t, 5000 + DEAD), "seeded");

    /* known never moves a heard-from edge's clock forward... */
    edges_seen(t, "hb", 1000);
    edges_known(t, "hb", 9000);
    assert_string_equal(stale(t, 1000 + DEAD), "hb");

    /* ...nor revives a down one (the registry may lag the EDGE_DOWN). */
    edges_mark_down(t, "hb", 1000 + DEAD);
    edges_known(t, "hb", 1000 + DEAD + 1);
    assert_int_equal(edges_get(t, "hb"), EDGES_DOWN);
    edges_destroy(t);
}

static void test_mark_down_unknown_edge(void **state)
{
    /* "No responders" for an edge we never heard of: remember it as down so
     * the sweep does not report it a second time. */
    edges_table *t = table();
    edges_mark_down(t, "ghost", 100);
    assert_int_equal(edges_get(t, "ghost"), EDGES_DOWN);
    assert_string_equal(stale(t, 100 + DEAD * 3), "");
    edges_destroy(t);
}

static void test_down_edges_forgotten(void **state)
{
    edges_table *t = table();
    edges_seen(t, "e1", 0);
    edges_mark_down(t, "e1", DEAD);
    edges_seen(t, "e2", 0);
    stale(t, DEAD + FORGET - 1);
    assert_int_equal(edges_get(t, "e1"), EDGES_DOWN);
    stale(t, DEAD + FORGET);
    assert_int_equal(edges_get(t, "e1"), EDGES_UNKNOWN);
    /* Alive-but-stale edges are never forgotten before they are reported. */
    assert_int_equal(edges_get(t, "e2"), EDGES_ALIVE);
    /* The registry still names it: its clock starts again. */
    edges_known(t, "e1", DEAD + FORGET + 1);
    assert_string_equal(stale(t, DEAD + FORGET + 1 + DEAD), "e2,e1");
    edges_destroy(t);
}

static void test_rejects_bad_ids_and_bounds_size(void **state)
{
    edges_table *t = NULL;
    assert_int_equal(edges_create(&t, DEAD, FORGET, 3), 0);
    assert_int_equal(edges_seen(t, "bad.id", 0), -1);
    assert_int_equal(edges_seen(t, "", 0), -1);
    assert_int_equal(edges_seen(t, NULL, 0), -1);
    assert_int_equal(edges_known(t, "a>b", 0), -1);
    edges_mark_down(t, "x.y", 0);
    assert_int_equal(edges_count(t), 0);
    assert_int_equal(edges_seen(t, "a", 0), 0);
    assert_int_equal(edges_seen(t, "b", 0), 0);
    assert_int_equal(edges_seen(t, "c", 0), 0);
    assert_int_equal(edges_seen(t, "d", 0), -1);
    assert_int_equal(edges_seen(t, "a", 1), 0); /* known ones still update */
    assert_int_equal(edges_count(t), 3);
    edges_destroy(t);
    edges_destroy(NULL);
}

static void test_out_of_order_heartbeats(void **state)
{
    /* Heartbeat callbacks and the loop race: an older timestamp never
     * moves the clock back. */
    edges_table *t = table();
    edges_seen(t, "e1", 5000);
    edges_seen(t, "e1", 4000);
    assert_string_equal(stale(t, 4000 + DEAD), "");
    assert_string_equal(stale(t, 5000 + DEAD), "e1");
    edges_destroy(t);
}

static void test_many_edges(void **state)
{
    edges_table *t = NULL;
    assert_int_equal(edges_create(&t, DEAD, FORGET, 1000), 0);
    char id[16];
    for (int i = 0; i < 500; i++) {
        snprintf(id, sizeof id, "edge%d", i);
        assert_int_equal(edges_seen(t, id, i % 2 ? 0 : 5000), 0);
    }
    char **ids = NULL;
    size_t n = 0;
    assert_int_equal(edges_stale(t, DEAD, &ids, &n), 0);
    assert_int_equal(n, 250);
    for (size_t i = 0; i < n; i++)
        edges_mark_down(t, ids[i], DEAD);
    edges_list_free(ids, n);
    assert_int_equal(edges_stale(t, DEAD, &ids, &n), 0);
    assert_int_equal(n, 0);
    assert_null(ids);
    edges_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_valid),
        cmocka_unit_test(test_heartbeats_keep_alive),
        cmocka_unit_test(test_silent_edge_goes_stale_once),
        cmocka_unit_test(test_heartbeat_revives_down_edge),
        cmocka_unit_test(test_known_seeds_clock_without_reviving),
        cmocka_unit_test(test_mark_down_unknown_edge),
        cmocka_unit_test(test_down_edges_forgotten),
        cmocka_unit_test(test_rejects_bad_ids_and_bounds_size),
        cmocka_unit_test(test_out_of_order_heartbeats),
        cmocka_unit_test(test_many_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
