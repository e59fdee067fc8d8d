#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "outbox.h"

static void test_frame_headers(void **state)
{
    edge_frame *f = frame_text("hi", 2);
    assert_int_equal(f->len, 4);
    assert_int_equal(f->bytes[0], 0x81);
    assert_int_equal(f->bytes[1], 2);
    assert_memory_equal(f->bytes + 2, "hi", 2);
    frame_unref(f);

    char *big = calloc(1, 70000);
    f = frame_text(big, 300);
    assert_int_equal(f->bytes[1], 126);
    assert_int_equal((f->bytes[2] << 8) | f->bytes[3], 300);
    assert_int_equal(f->len, 304);
    frame_unref(f);
    f = frame_text(big, 70000);
    assert_int_equal(f->bytes[1], 127);
    assert_int_equal(f->len, 70010);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++)
        n = n << 8 | f->bytes[2 + i];
    assert_int_equal(n, 70000);
    frame_unref(f);
    free(big);
}

static void test_fill_coalesces_whole_frames(void **state)
{
    edge_outbox ob = {0};
    edge_frame *a = frame_text("aaaa", 4), *b = frame_text("bbbbbbbb", 8);
    for (int i = 0; i < 100; i++) /* grows the ring past its first size */
        assert_int_equal(outbox_push(&ob, i % 2 ? b : a), 0);
    assert_int_equal(a->refs, 51);
    assert_int_equal(ob.bytes, 50 * 6 + 50 * 10);

    unsigned char buf[20];
    edge_frame *bigf;
    /* 6 + 10 fit, the next 6 does not. */
    assert_int_equal(outbox_fill(&ob, buf, sizeof buf, &bigf), 16);
    assert_null(bigf);
    assert_memory_equal(buf, a->bytes, 6);
    assert_memory_equal(buf + 6, b->bytes, 10);
    assert_int_equal(ob.count, 98);

    /* A frame larger than the buffer is handed back, not split. */
    assert_int_equal(outbox_fill(&ob, buf, 4, &bigf), 0);
    assert_ptr_equal(bigf, a);
    outbox_pop(&ob);
    assert_int_equal(ob.count, 97);

    outbox_clear(&ob);
    assert_int_equal(a->refs, 1);
    assert_int_equal(b->refs, 1);
    assert_null(ob.ring);
    frame_unref(a);
    frame_unref(b);
}

static void test_frame_texts_is_frames_back_to_back(void **state)
{
    char *big = calloc(1, 300);
    edge_frame_part parts[] = {{"hi", 2}, {big, 300}, {"", 0}};
    edge_frame *f = frame_texts(parts, 3);
    assert_int_equal(f->msgs, 3);
    assert_int_equal(f->len, frame_text_len(2) + frame_text_len(300) + frame_text_len(0));
    size_t off = 0;
    for (size_t i = 0; i < 3; i++) {
        edge_frame *one = frame_text(parts[i].data, parts[i].len);
        assert_int_equal(one->msgs, 1);
        assert_memory_equal(f->bytes + off, one->bytes, one->len);
        off += one->len;
        frame_unref(one);
    }
    assert_int_equal(off, f->len);
    frame_unref(f);
    free(big);
}

static void test_fill_hands_back_a_lone_frame(void **state)
{
    edge_outbox ob = {0};
    edge_frame *a = frame_text("aaaa", 4), *b = frame_text("bb", 2);
    unsigned char buf[64];
    edge_frame *whole;
    /* Alone in the queue: written from its own bytes, no copy. */
    assert_int_equal(outbox_push(&ob, a), 0);
    assert_int_equal(outbox_fill(&ob, buf, sizeof buf, &whole), 0);
    assert_ptr_equal(whole, a);
    outbox_pop(&ob);
    assert_int_equal(ob.count, 0);
    assert_int_equal(ob.bytes, 0);
    /* Two: coalesced into the buffer. */
    assert_int_equal(outbox_push(&ob, a), 0);
    assert_int_equal(outbox_push(&ob, b), 0);
    assert_int_equal(outbox_fill(&ob, buf, sizeof buf, &whole), 10);
    assert_null(whole);
    assert_memory_equal(buf, a->bytes, 6);
    assert_memory_equal(buf + 6, b->bytes, 4);
    assert_int_equal(ob.count, 0);
    outbox_clear(&ob);
    assert_int_equal(a->refs, 1);
    frame_unref(a);
    frame_unref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_headers),
        cmocka_unit_test(test_fill_coalesces_whole_frames),
        cmocka_unit_test(test_frame_texts_is_frames_back_to_back),
        cmocka_unit_test(test_fill_hands_back_a_lone_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
