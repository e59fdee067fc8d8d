/* dw/service.h up to the bus: --help and --version end at once (exit 0), a
 * bad setting is refused (exit 2) before any hook runs, a failing init's
 * status is the exit status and cleanup still runs; the shared rows fill
 * the service's own config struct. No NATS is needed for any of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_bad_setting),
        cmocka_unit_test(test_init_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
