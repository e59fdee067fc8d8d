/* Unit tests of dwbench_core: the WebSocket client handshake and framing,
 * the latency histogram, the seq sets and the loopback-only URL parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include <cmocka.h>

#include "hist.h"
#include "seqset.h"
#include "stages.h"
#include "url.h"
#include "wsc.h"

static void test_accept_rfc6455_example(void **state)
{
    /* RFC 6455, section 1.3. */
    char out[WSC_ACCEPT_LEN + 1];
    wsc_accept_for("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_key_is_base64_of_16_bytes(void **state)
{
    char a[WSC_KEY_LEN + 1], b[WSC_KEY_LEN + 1];
    assert_int_equal(wsc_key_new(a), 0);
    assert_int_equal(wsc_key_new(b), 0);
    assert_int_equal(strlen(a), WSC_KEY_LEN);
    assert_string_equal(a + 22, "==");
    assert_string_not_equal(a, b);
}

static void test_response(void **state)
{
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    const char ok[] =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nsec-websocket-accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        "\r\n\x81\x02hi";
    size_t hl = 0;
    assert_int_equal(wsc_response(ok, sizeof ok - 1, key, &hl), 1);
    assert_int_equal(hl, sizeof ok - 1 - 4);
    /* Incomplete: no blank line yet. */
    assert_int_equal(wsc_response(ok, 40, key, &hl), 0);
    const char wrong[] = "HTTP/1.1 101 Switching Protocols\r\n"
                         "Sec-WebSocket-Accept: AAAALMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    assert_int_equal(wsc_response(wrong, sizeof wrong - 1, key, &hl), -1);
    const char refused[] = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
    assert_int_equal(wsc_response(refused, sizeof refused - 1, key, &hl), -1);
    const char missing[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    assert_int_equal(wsc_response(missing, sizeof missing - 1, key, &hl), -1);
}

static void test_request(void **state)
{
    char buf[512];
    size_t n =
        wsc_request(buf, sizeof buf, "127.0.0.1:8080", "/", "dGhlIHNhbXBsZSBub25jZQ==", NULL);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "GET / HTTP/1.1\r\n"));
    assert_non_null(strstr(buf, "Host: 127.0.0.1:8080\r\n"));
    assert_non_null(strstr(buf, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"));
    assert_memory_equal(buf + n - 4, "\r\n\r\n", 4);
    assert_int_equal(wsc_request(buf, 20, "127.0.0.1:8080", "/", "x", NULL), 0);
    assert_null(strstr(buf, "Sec-WebSocket-Protocol"));
    n = wsc_request(buf, sizeof buf, "h", "/", "k", "dynamowave.v1");
    assert_true(n > 0);
    assert_non_null(strstr(buf, "\r\nSec-WebSocket-Protocol: dynamowave.v1\r\n"));
    assert_memory_equal(buf + n - 4, "\r\n\r\n", 4);
}

/* Unmask a client frame the way a server does. */
static size_t unmask(const unsigned char *f, unsigned char *out)
{
    size_t len = f[1] & 0x7f, h = 2;
    if (len == 126) {
        len = (size_t)f[2] << 8 | f[3];
        h = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | f[2 + i];
        h = 10;
    }
    const unsigned char *key = f + h;
    for (size_t i = 0; i < len; i++)
        out[i] = f[h + 4 + i] ^ key[i & 3];
    return len;
}

static void test_masked_frames(void **state)
{
    static unsigned char payload[70000], frame[70100], back[70000];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (unsigned char)(i * 7 + 3);
    const size_t sizes[] = {0, 1, 7, 8, 9, 125, 126, 65535, 65536, 70000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t len = sizes[k];
        size_t n = wsc_frame_masked(frame, WSC_OP_TEXT, payload, len, 0xA1B2C3D4u + (uint32_t)k);
        assert_int_equal(n, wsc_masked_size(len));
        assert_int_equal(frame[0], 0x81);
        assert_true(frame[1] & 0x80);
        assert_int_equal(unmask(frame, back), len);
        assert_memory_equal(back, payload, len);
    }
}

static void test_parse_server_frames(void **state)
{
    wsc_frame f;
    const unsigned char two[] = {0x81, 0x02, 'h', 'i', 0x89, 0x00, 0x81};
    assert_int_equal(wsc_frame_parse(two, sizeof two, 1 << 20, &f), 4);
    assert_int_equal(f.opcode, WSC_OP_TEXT);
    assert_int_equal(f.fin, 1);
    assert_int_equal(f.len, 2);
    assert_memory_equal(f.payload, "hi", 2);
    assert_int_equal(wsc_frame_parse(two + 4, 3, 1 << 20, &f), 2);
    assert_int_equal(f.opcode, WSC_OP_PING);
    /* A lone first byte is incomplete, as is a 16-bit length without its bytes. */
    assert_int_equal(wsc_frame_parse(two + 6, 1, 1 << 20, &f), 0);
    const unsigned char mid[] = {0x81, 126, 0x01, 0x00, 'x'};
    assert_int_equal(wsc_frame_parse(mid, sizeof mid, 1 << 20, &f), 0);
    assert_int_equal(wsc_frame_parse(mid, 3, 1 << 20, &f), 0);
    /* Too long for the caller's limit, masked, reserved bits, long control. */
    assert_int_equal(wsc_frame_parse(mid, sizeof mid, 100, &f), -1);
    const unsigned char masked[] = {0x81, 0x81, 1, 2, 3, 4, 'x'};
    assert_int_equal(wsc_frame_parse(masked, sizeof masked, 1 << 20, &f), -1);
    const unsigned char rsv[] = {0xC1, 0x00};
    assert_int_equal(wsc_frame_parse(rsv, sizeof rsv, 1 << 20, &f), -1);
    const unsigned char bigping[] = {0x89, 126, 0x00, 0x80};
    assert_int_equal(wsc_frame_parse(bigping, sizeof bigping, 1 << 20, &f), -1);
    const unsigned char fragping[] = {0x09, 0x00};
    assert_int_equal(wsc_frame_parse(fragping, sizeof fragping, 1 << 20, &f), -1);
}

static void test_hist(void **state)
{
    static bench_hist h;
    memset(&h, 0, sizeof h);
    assert_int_equal(hist_quantile(&h, 0.5), 0);
    /* Every bucket's low bound maps back to that bucket, and buckets are
     * contiguous. */
    for (uint32_t i = 1; i < HIST_BUCKETS; i++) {
        assert_int_equal(hist_index(hist_bucket_low(i)), i);
        assert_int_equal(hist_index(hist_bucket_low(i) - 1), i - 1);
    }
    assert_int_equal(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
    for (uint64_t v = 1; v <= 100000; v++)
        hist_add(&h, v * 1000); /* 1 us .. 100 ms */
    assert_int_equal(h.n, 100000);
    assert_int_equal(h.max, 100000000);
    double p50 = (double)hist_quantile(&h, 0.5), p99 = (double)hist_quantile(&h, 0.99);
    assert_true(p50 > 50e6 * 0.99 && p50 < 50e6 * 1.01);
    assert_true(p99 > 99e6 * 0.99 && p99 < 99e6 * 1.01);
    assert_int_equal(hist_quantile(&h, 1.0), 100000000);
}

static void test_seqset(void **state)
{
    seqset s;
    memset(&s, 0, sizeof s);
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(seqset_add(&s, i, 100), 1);
    assert_null(s.w); /* in order: no bitmap */
    assert_int_equal(seqset_add(&s, 5, 100), 0);
    assert_int_equal(seqset_add(&s, 103, 200), 1);
    assert_int_equal(seqset_add(&s, 103, 200), 0);
    assert_int_equal(seqset_add(&s, 102, 200), 1);
    assert_int_equal(seqset_count(&s), 102);
    assert_int_equal(seqset_add(&s, 100, 200), 1);
    assert_int_equal(seqset_add(&s, 101, 200), 1);
    /* 100..103 are now contiguous: all folded into low. */
    assert_int_equal(s.low, 104);
    assert_int_equal(s.above, 0);
    assert_int_equal(seqset_add(&s, 103, 200), 0);
    assert_int_equal(seqset_add(&s, 5000, 200), 1);
    assert_int_equal(seqset_count(&s), 105);
    seqset_free(&s);
    seqset_free(NULL);
}

static void test_url(void **state)
{
    bench_url u;
    char err[256];
    assert_int_equal(url_parse("ws://127.0.0.1:8080/", &u, err, sizeof err), 0);
    assert_int_equal(u.family, AF_INET);
    assert_string_equal(u.hostport, "127.0.0.1:8080");
    assert_string_equal(u.path, "/");
    assert_int_equal(url_parse("ws://localhost", &u, err, sizeof err), 0);
    assert_string_equal(u.hostport, "localhost:80");
    assert_int_equal(url_parse("ws://127.1.2.3:9/chat?x=1", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/chat?x=1");
    assert_int_equal(url_parse("ws://[::1]:8080/", &u, err, sizeof err), 0);
    assert_int_equal(u.family, AF_INET6);
    assert_string_equal(u.hostport, "[::1]:8080");
    /* Only loopback, only ws://, well-formed ports. */
    assert_int_equal(url_parse("ws://10.0.0.1:80/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("ws://example.com/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("ws://[2001:db8::1]/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("wss://127.0.0.1/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("http://127.0.0.1/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("ws://127.0.0.1:0/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("ws://127.0.0.1:70000/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("ws://127.0.0.1:80x/", &u, err, sizeof err), -1);
    assert_int_equal(url_parse("ws:///", &u, err, sizeof err), -1);
}

/* Stage histograms: parsed from Prometheus text, summed over endpoints,
 * reported as the difference between two scrapes. */
static void test_stages(void **state)
{
    static const char before_txt[] =
        "# HELP dw_edge_stage_seconds x\n"
        "dw_edge_stage_seconds_bucket{stage=\"written\",le=\"0.001\"} 5\n"
        "dw_edge_stage_seconds_bucket{stage=\"written\",le=\"0.01\"} 10\n"
        "dw_edge_stage_seconds_bucket{stage=\"written\",le=\"+Inf\"} 10\n"
        "dw_edge_stage_seconds_sum{stage=\"written\"} 0.02\n"
        "dw_edge_stage_seconds_count{stage=\"written\"} 10\n"
        "dw_edge_deliveries_total 99\n";
    static const char after_txt[] =
        "dw_edge_stage_seconds_bucket{stage=\"written\",le=\"0.001\"} 55\n"
        "dw_edge_stage_seconds_bucket{stage=\"written\",le=\"0.01\"} 108\n"
        "dw_edge_stage_seconds_bucket{stage=\"written\",le=\"+Inf\"} 110\n"
        "dw_edge_stage_seconds_sum{stage=\"written\"} 0.22\n"
        "dw_edge_stage_seconds_count{stage=\"written\"} 110\n";
    stage_set before, after;
    memset(&before, 0, sizeof before);
    memset(&after, 0, sizeof after);
    stages_parse(&before, before_txt);
    stages_parse(&after, after_txt);
    /* A second endpoint with nothing in the window adds nothing. */
    stages_parse(&before, before_txt);
    stages_parse(&after, before_txt);
    assert_int_equal(after.n, 1);
    assert_string_equal(after.h[0].name, "edge.written");
    json_t *j = stages_json(&before, &after);
    json_t *w = json_object_get(j, "edge.written");
    assert_non_null(w);
    assert_int_equal(json_integer_value(json_object_get(w, "count")), 100);
    assert_true(fabs(json_real_value(json_object_get(w, "mean_ms")) - 2.0) < 1e-9);
    assert_true(fabs(json_real_value(json_object_get(w, "p50_ms_le")) - 1.0) < 1e-9);
    assert_true(json_is_null(json_object_get(w, "p99_ms_le"))); /* past the last bound */
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_rfc6455_example),
        cmocka_unit_test(test_key_is_base64_of_16_bytes),
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_request),
        cmocka_unit_test(test_masked_frames),
        cmocka_unit_test(test_parse_server_frames),
        cmocka_unit_test(test_hist),
        cmocka_unit_test(test_seqset),
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_stages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
