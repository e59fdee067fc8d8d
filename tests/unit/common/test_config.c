/* dw_config_load: defaults < environment < flags, and its error paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dw/config.h"

typedef struct test_cfg {
    char *nats_url;
    int64_t port;
    int verbose;
} test_cfg;

static const dw_cfg_field test_fields[] = {
    {"T_NATS_URL", DW_CFG_STR, offsetof(test_cfg, nats_url), "nats://127.0.0.1:4222", 0, 0,
     "NATS server URL"},
    {"T_PORT", DW_CFG_INT, offsetof(test_cfg, port), "8080", 1, 65535, "listen port"},
    {"T_VERBOSE", DW_CFG_BOOL, offsetof(test_cfg, verbose), "0", 0, 0, "log more"},
};
#define N_FIELDS (sizeof test_fields / sizeof test_fields[0])

/* argv as dw_config_load sees it: program name first. */
static int load(test_cfg *cfg, int argc, char **argv)
{
    return dw_config_load(cfg, test_fields, N_FIELDS, argc, argv, "test_config", "A test.");
}

/* Each test starts from a clean environment and frees what it loaded. */
static int setup(void **state)
{
    unsetenv("DW_T_NATS_URL");
    unsetenv("DW_T_PORT");
    unsetenv("DW_T_VERBOSE");
    test_cfg *cfg = calloc(1, sizeof *cfg);
    if (!cfg) return -1;
    *state = cfg;
    return 0;
}

static int teardown(void **state)
{
    test_cfg *cfg = *state;
    dw_config_free(cfg, test_fields, N_FIELDS);
    free(cfg);
    return 0;
}

static void test_defaults(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", NULL};
    assert_int_equal(load(cfg, 1, argv), 0);
    assert_string_equal(cfg->nats_url, "nats://127.0.0.1:4222");
    assert_int_equal(cfg->port, 8080);
    assert_int_equal(cfg->verbose, 0);
}

static void test_env_overrides_default(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", NULL};
    setenv("DW_T_NATS_URL", "nats://10.0.0.1:4333", 1);
    setenv("DW_T_PORT", "9000", 1);
    setenv("DW_T_VERBOSE", "true", 1);
    assert_int_equal(load(cfg, 1, argv), 0);
    assert_string_equal(cfg->nats_url, "nats://10.0.0.1:4333");
    assert_int_equal(cfg->port, 9000);
    assert_int_equal(cfg->verbose, 1);
}

static void test_flag_with_equals(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-port=1", "--t-nats-url=nats://a:1", NULL};
    assert_int_equal(load(cfg, 3, argv), 0);
    assert_int_equal(cfg->port, 1);
    assert_string_equal(cfg->nats_url, "nats://a:1");
}

static void test_flag_with_separate_value(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-port", "1", "--t-nats-url", "nats://b:2", NULL};
    assert_int_equal(load(cfg, 5, argv), 0);
    assert_int_equal(cfg->port, 1);
    assert_string_equal(cfg->nats_url, "nats://b:2");
}

static void test_flag_overrides_env(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-port=7000", NULL};
    setenv("DW_T_PORT", "9000", 1);
    assert_int_equal(load(cfg, 2, argv), 0);
    assert_int_equal(cfg->port, 7000);
}

static void test_bool_flag_without_value(void **state)
{
    test_cfg *cfg = *state;
    /* The bool must not swallow the next argument as its value. */
    char *argv[] = {"prog", "--t-verbose", "--t-port", "81", NULL};
    assert_int_equal(load(cfg, 4, argv), 0);
    assert_int_equal(cfg->verbose, 1);
    assert_int_equal(cfg->port, 81);
}

static void test_bool_flag_explicit_false(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-verbose=false", NULL};
    setenv("DW_T_VERBOSE", "1", 1);
    assert_int_equal(load(cfg, 2, argv), 0);
    assert_int_equal(cfg->verbose, 0);
}

static void test_bounds_error(void **state)
{
    test_cfg *cfg = *state;
    char *argv_hi[] = {"prog", "--t-port=65536", NULL};
    assert_int_equal(load(cfg, 2, argv_hi), -1);
    char *argv_lo[] = {"prog", "--t-port", "0", NULL};
    assert_int_equal(load(cfg, 3, argv_lo), -1);
}

static void test_env_bounds_error(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", NULL};
    setenv("DW_T_PORT", "70000", 1);
    assert_int_equal(load(cfg, 1, argv), -1);
}

static void test_not_a_number(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-port=80x", NULL};
    assert_int_equal(load(cfg, 2, argv), -1);
}

static void test_bad_bool(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-verbose=maybe", NULL};
    assert_int_equal(load(cfg, 2, argv), -1);
}

static void test_unknown_flag(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--no-such-flag=1", NULL};
    assert_int_equal(load(cfg, 2, argv), -1);
}

static void test_positional_argument_rejected(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "stray", NULL};
    assert_int_equal(load(cfg, 2, argv), -1);
}

static void test_missing_value(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--t-port", NULL};
    assert_int_equal(load(cfg, 2, argv), -1);
}

static void test_help_returns_1(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", "--help", NULL};
    assert_int_equal(load(cfg, 2, argv), 1);
    char *argv_short[] = {"prog", "-h", NULL};
    assert_int_equal(load(cfg, 2, argv_short), 1);
}

static void test_set_replaces_string(void **state)
{
    test_cfg *cfg = *state;
    char err[128];
    char *argv[] = {"prog", NULL};
    assert_int_equal(load(cfg, 1, argv), 0);
    assert_int_equal(dw_config_set(cfg, &test_fields[0], "nats://c:3", err, sizeof err), 0);
    assert_string_equal(cfg->nats_url, "nats://c:3");
    assert_int_equal(dw_config_set(cfg, &test_fields[1], "99999", err, sizeof err), -1);
    assert_non_null(strstr(err, "T_PORT"));
    assert_int_equal(cfg->port, 8080);
}

static void test_free_is_repeatable(void **state)
{
    test_cfg *cfg = *state;
    char *argv[] = {"prog", NULL};
    assert_int_equal(load(cfg, 1, argv), 0);
    dw_config_free(cfg, test_fields, N_FIELDS);
    assert_null(cfg->nats_url);
    /* teardown frees again: must be harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_overrides_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_with_equals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_with_separate_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_overrides_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bool_flag_without_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bool_flag_explicit_false, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_bounds_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_number, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_bool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_flag, setup, teardown),
        cmocka_unit_test_setup_teardown(test_positional_argument_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_value, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_returns_1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_replaces_string, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_is_repeatable, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
