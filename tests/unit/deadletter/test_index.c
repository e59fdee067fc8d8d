/* index: the deadletter service's view of DW_DLQ. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "index.h"
#include "dw/dlq_record.h"

/* A record as DW_DLQ would hand it back (owned, for dlq_index_add). */
static Dw__DeadLetter *letter(uint64_t stream_seq, const char *room, const char *reason)
{
    char subject[128];
    snprintf(subject, sizeof subject, "dw.msg.%s", room);
    uint8_t payload[] = {1, 2, 3};
    Dw__DeadLetter dl;
    dw__dead_letter__init(&dl);
    dl.subject = subject;
    dl.stream_seq = stream_seq;
    dl.msg_id = "m";
    dl.payload.data = payload;
    dl.payload.len = sizeof payload;
    dl.reason = (char *)reason;
    dl.attempts = 6;
    dl.room = (char *)room;
    dl.source = DLQ_SOURCE_DISPATCHER;
    size_t len = 0;
    uint8_t *buf = dlq_record_pack(&dl, &len);
    assert_non_null(buf);
    Dw__DeadLetter *out = dlq_record_unpack(buf, len);
    free(buf);
    assert_non_null(out);
    return out;
}

static void test_add_get_remove(void **state)
{
    dlq_index *ix = NULL;
    assert_int_equal(dlq_index_create(&ix), 0);
    assert_int_equal(dlq_index_add(ix, 5, 1000, "dw.dlq.lobby", letter(50, "lobby", "poison"), 3),
                     1);
    assert_int_equal(
        dlq_index_add(ix, 3, 900, "dw.dlq.games", letter(30, "games", "registry_unavailable"), 3),
        1);
    /* the same id again (the ordered consumer after our own add) */
    assert_int_equal(dlq_index_add(ix, 5, 1000, "dw.dlq.lobby", letter(50, "lobby", "poison"), 3),
                     0);
    assert_int_equal(dlq_index_count(ix), 2);
    const dlq_index_entry *e = dlq_index_get(ix, 3);
    assert_non_null(e);
    assert_string_equal(e->dl->room, "games");
    assert_int_equal(e->dl->payload.len, 0); /* the index keeps no payloads */
    assert_int_equal(e->payload_bytes, 3);
    assert_string_equal(e->dlq_subject, "dw.dlq.games");
    assert_int_equal(dlq_index_count_stream_seq(ix, 50), 1);
    assert_int_equal(dlq_index_count_stream_seq(ix, 30), 1);
    assert_int_equal(dlq_index_count_stream_seq(ix, 31), 0);

    /* bytes that are not a record are indexed too (so purge can find them) */
    assert_int_equal(dlq_index_add(ix, 7, 1100, "dw.dlq.x", NULL, 0), 1);
    assert_null(dlq_index_get(ix, 7)->dl);

    assert_int_equal(dlq_index_remove(ix, 5), 1);
    assert_int_equal(dlq_index_remove(ix, 5), 0);
    assert_int_equal(dlq_index_count_stream_seq(ix, 50), 0);
    assert_null(dlq_index_get(ix, 5));
    assert_int_equal(dlq_index_count(ix), 2);
    dlq_index_destroy(ix);
    dlq_index_destroy(NULL);
}

static void test_query_filters_and_pages(void **state)
{
    dlq_index *ix = NULL;
    assert_int_equal(dlq_index_create(&ix), 0);
    for (uint64_t id = 1; id <= 10; id++) {
        const char *room = id % 2 ? "lobby" : "games";
        const char *reason = id <= 4 ? "edge_timeout:e1" : "registry_unavailable";
        assert_int_equal(
            dlq_index_add(ix, id, (int64_t)id * 100, "s", letter(id + 100, room, reason), 3), 1);
    }
    const dlq_index_entry *out[16];
    size_t n = 0;
    int more = 0;

    dlq_filter all = {0};
    dlq_index_query(ix, &all, 0, 0, out, &n, &more);
    assert_int_equal(n, 10);
    assert_false(more);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(out[i]->id, i + 1);

    dlq_filter lobby = {.room = "lobby"};
    dlq_index_query(ix, &lobby, 0, 2, out, &n, &more);
    assert_int_equal(n, 2);
    assert_true(more);
    assert_int_equal(out[0]->id, 1);
    assert_int_equal(out[1]->id, 3);
    dlq_index_query(ix, &lobby, out[1]->id, 2, out, &n, &more);
    assert_int_equal(n, 2);
    assert_int_equal(out[0]->id, 5);
    assert_int_equal(out[1]->id, 7);
    assert_true(more);
    dlq_index_query(ix, &lobby, 7, 2, out, &n, &more);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->id, 9);
    assert_false(more);

    dlq_filter kind = {.reason = "edge_timeout"};
    dlq_index_query(ix, &kind, 0, 0, out, &n, &more);
    assert_int_equal(n, 4);
    dlq_filter since = {.since_ms = 800, .room = "games"};
    dlq_index_query(ix, &since, 0, 0, out, &n, &more);
    assert_int_equal(n, 2); /* 8 and 10 */
    assert_int_equal(out[0]->id, 8);
    dlq_index_destroy(ix);
}

static void test_reconcile_and_out_of_order(void **state)
{
    dlq_index *ix = NULL;
    assert_int_equal(dlq_index_create(&ix), 0);
    /* out of order arrivals still end up sorted by id */
    uint64_t ids[] = {9, 2, 7, 4, 12, 1};
    for (size_t i = 0; i < 6; i++)
        assert_int_equal(dlq_index_add(ix, ids[i], 1, "s", letter(ids[i], "lobby", "poison"), 0),
                         1);
    const dlq_index_entry *out[8];
    size_t n = 0;
    int more = 0;
    dlq_index_query(ix, NULL, 0, 0, out, &n, &more);
    assert_int_equal(n, 6);
    for (size_t i = 1; i < n; i++)
        assert_true(out[i - 1]->id < out[i]->id);

    /* Another instance removed 2 and 7; the stream now starts at 4. */
    uint64_t deleted[] = {7, 9};
    assert_int_equal(dlq_index_reconcile(ix, 4, deleted, 2), 4); /* 1, 2, 7, 9 */
    dlq_index_query(ix, NULL, 0, 0, out, &n, &more);
    assert_int_equal(n, 2);
    assert_int_equal(out[0]->id, 4);
    assert_int_equal(out[1]->id, 12); /* above what stream info saw: kept */
    assert_int_equal(dlq_index_count_stream_seq(ix, 9), 0);
    assert_int_equal(dlq_index_count_stream_seq(ix, 4), 1);
    dlq_index_destroy(ix);
}

static void test_stream_seq_counts_survive_churn(void **state)
{
    /* Many adds and removes through the open-addressing set. */
    dlq_index *ix = NULL;
    assert_int_equal(dlq_index_create(&ix), 0);
    for (uint64_t id = 1; id <= 3000; id++)
        assert_int_equal(dlq_index_add(ix, id, 1, "s", letter(id * 7, "lobby", "poison"), 0), 1);
    for (uint64_t id = 1; id <= 3000; id += 3)
        assert_int_equal(dlq_index_remove(ix, id), 1);
    for (uint64_t id = 1; id <= 3000; id++)
        assert_int_equal(dlq_index_count_stream_seq(ix, id * 7), id % 3 == 1 ? 0 : 1);
    /* two entries for one message (the residual case past the window) */
    assert_int_equal(dlq_index_add(ix, 5000, 1, "s", letter(14, "lobby", "poison"), 0), 1);
    assert_int_equal(dlq_index_count_stream_seq(ix, 14), 2);
    dlq_index_destroy(ix);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_get_remove),
        cmocka_unit_test(test_query_filters_and_pages),
        cmocka_unit_test(test_reconcile_and_out_of_order),
        cmocka_unit_test(test_stream_seq_counts_survive_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
