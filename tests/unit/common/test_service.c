/* dw/service.h up to the bus: --help and --version end at once (exit 0), a
 * bad setting is refused (exit 2) before any hook runs, a failing init's
 * status is the exit status and cleanup still runs; the shared rows fill
 * the service's own config struct. A stop keeps to its budget, and one
 * that does not is ended by the watchdog. No NATS is needed for any of
 * it. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "dw/service.h"

typedef struct test_config {
    int64_t answer;
    dw_service_cfg svc;
} test_config;

static const dw_cfg_field fields[] = {
    DW_SERVICE_ROW_NATS_URL(test_config, svc),
    {"ANSWER", DW_CFG_INT, offsetof(test_config, answer), "42", 0, 100, "the answer"},
    DW_SERVICE_ROWS_STATUS(test_config, svc, "9999"),
    DW_SERVICE_ROW_LOG_LEVEL(test_config, svc),
    DW_SERVICE_ROW_SHUTDOWN_TIMEOUT(test_config, svc),
};

static int inits, cleanups, init_rc;
static int64_t seen_answer, seen_port;
static char seen_url[64], seen_host[64], seen_level[16];

/* Copies what it sees: the strings are freed when the run ends. */
static int init(dw_service *s)
{
    const test_config *c = s->cfg;
    inits++;
    seen_answer = c->answer;
    seen_port = c->svc.status_port;
    snprintf(seen_url, sizeof seen_url, "%s", c->svc.nats_url);
    snprintf(seen_host, sizeof seen_host, "%s", c->svc.status_host);
    snprintf(seen_level, sizeof seen_level, "%s", c->svc.log_level);
    return init_rc;
}

static void cleanup(dw_service *s)
{
    cleanups++;
}

static const dw_service_hooks hooks = {init, NULL, NULL, NULL, cleanup, NULL};

static int run_with(int argc, char **argv)
{
    static test_config cfg;
    memset(&cfg, 0, sizeof cfg);
    inits = cleanups = 0;
    dw_service s = DW_SERVICE("test", "a test service", fields, &cfg, &hooks, NULL);
    return dw_service_main(&s, argc, argv);
}

static void test_help_and_version(void **state)
{
    char *help[] = {"test", "--help", NULL};
    assert_int_equal(run_with(2, help), 0);
    assert_int_equal(inits, 0);
    char *version[] = {"test", "--version", NULL};
    assert_int_equal(run_with(2, version), 0);
    assert_int_equal(inits, 0);
}

static void test_bad_setting(void **state)
{
    char *argv[] = {"test", "--answer=1000", NULL};
    assert_int_equal(run_with(2, argv), 2);
    assert_int_equal(inits, 0);
    assert_int_equal(cleanups, 0);
}

/* init sees the table's defaults and the flags in the service's struct,
 * the shared rows included; its status ends the run, after cleanup. */
static void test_init_fails(void **state)
{
    char *argv[] = {"test", "--answer=7", "--status-port=0", "--log-level=error", NULL};
    init_rc = 2;
    assert_int_equal(run_with(4, argv), 2);
    assert_int_equal(inits, 1);
    assert_int_equal(cleanups, 1);
    assert_int_equal(seen_answer, 7);
    assert_int_equal(seen_port, 0);
    assert_string_equal(seen_url, "nats://127.0.0.1:4222");
    assert_string_equal(seen_host, "127.0.0.1");
    assert_string_equal(seen_level, "error");
}

/* ---- the stop's budget (DW_SHUTDOWN_TIMEOUT_MS) ----
 * In a child process each: a stop sets dw_stop for good, and the watchdog
 * ends the process. NATS is "away" (a port nobody listens on): the service
 * runs all the same (dw_bus_connect retries in the background). */

static int64_t seen_left;
static int stuck;

/* Stopped by a real SIGTERM, which starts the stop's clock. */
static int run_until_sigterm(dw_service *s)
{
    raise(SIGTERM);
    while (!dw_stop)
        nats_Sleep(10);
    return 0;
}

static void stop_hook(dw_service *s)
{
    seen_left = dw_stop_left_ms(600000);
    if (stuck) sleep(30); /* a step that ignores the budget */
}

static const dw_service_hooks stop_hooks = {NULL, NULL, run_until_sigterm, stop_hook, NULL, NULL};

/* The child's exit status, and how long it ran (ms). */
static int run_child(int stuck_, int64_t *ms)
{
    int64_t t0 = dw_mono_ns();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static test_config cfg;
        char *argv[] = {"test",
                        "--nats-url=nats://127.0.0.1:1",
                        "--status-port=0",
                        "--shutdown-timeout-ms=2000",
                        "--log-level=error",
                        NULL};
        stuck = stuck_;
        dw_service s = DW_SERVICE("test", "a test service", fields, &cfg, &stop_hooks, NULL);
        int rc = dw_service_main(&s, 5, argv);
        /* The steps were handed what the budget leaves: 2 s less the
         * reserve, less what the stop has used. */
        _exit(rc ? 10 + rc : seen_left > 0 && seen_left <= 2000 - DW_STOP_RESERVE_MS ? 0 : 3);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *ms = (dw_mono_ns() - t0) / 1000000;
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void test_stop_within_budget(void **state)
{
    int64_t ms = 0;
    assert_int_equal(run_child(0, &ms), 0);
    assert_true(ms < 2000);
}

/* A step stuck past the budget: the watchdog ends the process at the
 * budget's end, with status 1 (not a clean stop). */
static void test_watchdog_ends_stuck_stop(void **state)
{
    int64_t ms = 0;
    assert_int_equal(run_child(1, &ms), 1);
    assert_true(ms >= 2000 - 100 && ms < 2000 + 1500);
}

static void test_shutdown_timeout_bounds(void **state)
{
    char *argv[] = {"test", "--shutdown-timeout-ms=1000", NULL};
    assert_int_equal(run_with(2, argv), 2);
    assert_int_equal(inits, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_version),   cmocka_unit_test(test_bad_setting),
        cmocka_unit_test(test_init_fails),         cmocka_unit_test(test_shutdown_timeout_bounds),
        cmocka_unit_test(test_stop_within_budget), cmocka_unit_test(test_watchdog_ends_stuck_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
