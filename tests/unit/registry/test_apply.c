/* The DW_CONN consumer against a real nats-server (started here on a free
 * port with a temp store, stopped by PID): every event applied once, in
 * order, also when fetches are cut short so that deliveries keep arriving
 * after a fetch gave up on them. That is the case nats.c 3.4.1's
 * natsSubscription_Fetch overflows its message array on (see apply.c),
 * which corrupted the registry's heap under load. */
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "apply.h"
#include "dw/bus.h"
#include "dw/util.h"
#include "store.h"

#define EVENTS 3000

typedef struct fixture {
    char dir[64];
    char url[64];
    pid_t nats;
    natsConnection *nc;
    jsCtx *js;
} fixture;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        getsockname(fd, (struct sockaddr *)&a, &len)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static void stop_nats(fixture *f)
{
    if (f->nats <= 0) return;
    kill(f->nats, SIGTERM);
    int64_t deadline = dw_mono_ns() + 5000000000LL;
    while (waitpid(f->nats, NULL, WNOHANG) == 0) {
        if (dw_mono_ns() > deadline) {
            kill(f->nats, SIGKILL);
            waitpid(f->nats, NULL, 0);
            break;
        }
        nats_Sleep(20);
    }
    f->nats = 0;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    char store[96], port_s[16];
    assert_non_null(f);
    strcpy(f->dir, "/tmp/dw-regapply-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(store, sizeof store, "%s/nats", f->dir);
    int port = free_port();
    assert_true(port > 0);
    snprintf(port_s, sizeof port_s, "%d", port);
    snprintf(f->url, sizeof f->url, "nats://127.0.0.1:%d", port);
    f->nats = fork();
    assert_true(f->nats >= 0);
    if (f->nats == 0) {
        execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", port_s, "-sd", store,
               (char *)NULL);
        _exit(127);
    }
    /* Poll with a deadline until the server takes connections. */
    int64_t deadline = dw_mono_ns() + 15000000000LL;
    while (natsConnection_ConnectTo(&f->nc, f->url) != NATS_OK) {
        if (dw_mono_ns() > deadline || waitpid(f->nats, NULL, WNOHANG) != 0) {
            f->nats = 0;
            fail_msg("nats-server did not start");
        }
        nats_Sleep(50);
    }
    assert_int_equal(natsConnection_JetStream(&f->js, f->nc, NULL), NATS_OK);
    dw_stream_opts so;
    dw_stream_opts_default(&so);
    assert_int_equal(dw_streams_ensure(f->js, &so), NATS_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    jsCtx_Destroy(f->js);
    natsConnection_Destroy(f->nc);
    stop_nats(f);
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* CONNECT (connect=1) or DISCONNECT events for c<from>..c<to-1>, durable. */
static void publish_events(fixture *f, int from, int to, int connect)
{
    for (int i = from; i < to; i++) {
        char conn[32];
        char *rooms[] = {"lobby"};
        Dw__ConnEvent ev = DW__CONN_EVENT__INIT;
        snprintf(conn, sizeof conn, "c%d", i);
        ev.kind = connect ? DW__CONN_EVENT__KIND__CONNECT : DW__CONN_EVENT__KIND__DISCONNECT;
        ev.conn_id = conn;
        ev.edge_id = "e1";
        if (connect) {
            ev.rooms = rooms;
            ev.n_rooms = 1;
        }
        size_t len = 0;
        uint8_t *buf = dw_pb_pack(&ev.base, &len);
        assert_non_null(buf);
        assert_int_equal(js_PublishAsync(f->js, dw_subj_conn_event(ev.kind), buf, (int)len, NULL),
                         NATS_OK);
        free(buf);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 20000;
    assert_int_equal(js_PublishAsyncComplete(f->js, &po), NATS_OK);
}

typedef struct run_ctx {
    fixture *f;
    reg_store *st;
    reg_apply_opts o;
    atomic_int stop;
    uint64_t last_progress;
    int out_of_order;
    int rc;
} run_ctx;

static void on_progress(void *arg, uint64_t seq)
{
    run_ctx *r = arg;
    if (seq <= r->last_progress) r->out_of_order = 1;
    r->last_progress = seq;
}

static void *run_main(void *arg)
{
    run_ctx *r = arg;
    r->rc = reg_apply_run(r->f->nc, r->f->js, r->st, &r->o);
    return NULL;
}

/* Run the consumer until the table reached want (or 30 s passed). */
static void apply_until(fixture *f, reg_store *st, int batch, int64_t wait_ms, uint64_t want)
{
    run_ctx r = {.f = f, .st = st};
    pthread_t t;
    reg_apply_opts_default(&r.o);
    r.o.replica_id = "t";
    r.o.batch = batch;
    r.o.fetch_wait_ms = wait_ms;
    r.o.stop = &r.stop;
    r.o.on_progress = on_progress;
    r.o.progress_arg = &r;
    r.last_progress = reg_store_applied_seq(st);
    assert_int_equal(pthread_create(&t, NULL, run_main, &r), 0);
    int64_t deadline = dw_mono_ns() + 30000000000LL;
    while (reg_store_applied_seq(st) < want && dw_mono_ns() < deadline)
        nats_Sleep(20);
    r.stop = 1;
    pthread_join(t, NULL);
    assert_int_equal(r.rc, 0);
    assert_int_equal(reg_store_applied_seq(st), want);
    assert_false(r.out_of_order);
}

static void test_every_event_once_with_short_fetches(void **state)
{
    fixture *f = *state;
    char db[96], *err = NULL;
    reg_store *st = NULL;
    snprintf(db, sizeof db, "%s/db", f->dir);
    assert_int_equal(reg_store_open(&st, db, &err), 0);

    /* A backlog of several batches, fetched with a 1 ms wait: most
     * fetches give up while the server is still sending. */
    publish_events(f, 0, EVENTS, 1);
    apply_until(f, st, 256, 1, EVENTS);
    assert_int_equal(reg_store_count(st), EVENTS);

    /* Again with a batch that does not divide the backlog, resuming from
     * the table's position with a new consumer. */
    publish_events(f, 0, EVENTS, 0);
    apply_until(f, st, 7, 1, 2 * EVENTS);
    assert_int_equal(reg_store_count(st), 0);

    /* Live: events published while the consumer waits on an idle stream. */
    publish_events(f, EVENTS, EVENTS + 10, 1);
    apply_until(f, st, 256, 500, 2 * EVENTS + 10);
    assert_int_equal(reg_store_count(st), 10);
    reg_store_close(st);
}

static void test_replay_to_a_sequence(void **state)
{
    fixture *f = *state;
    char db[96], *err = NULL;
    reg_store *st = NULL;
    uint64_t applied = 0;
    atomic_int stop = 0;
    snprintf(db, sizeof db, "%s/replay", f->dir);
    publish_events(f, 0, EVENTS, 1);
    publish_events(f, 0, EVENTS / 2, 0);

    assert_int_equal(reg_store_open(&st, db, &err), 0);
    assert_int_equal(
        reg_apply_replay(f->js, st, 1, EVENTS + 100, dw_now_ms() + 1000, &stop, &applied, &err), 0);
    assert_null(err);
    assert_int_equal(applied, EVENTS + 100);
    assert_int_equal(reg_store_applied_seq(st), EVENTS + 100);
    assert_int_equal(reg_store_count(st), EVENTS - 100);

    /* The rest, to the end of the stream. */
    assert_int_equal(reg_apply_replay(f->js, st, EVENTS + 101, EVENTS + EVENTS / 2,
                                      dw_now_ms() + 1000, &stop, &applied, &err),
                     0);
    assert_int_equal(applied, EVENTS / 2 - 100);
    assert_int_equal(reg_store_count(st), EVENTS / 2);
    reg_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_event_once_with_short_fetches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_to_a_sequence, setup, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
