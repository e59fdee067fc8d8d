/* auth.c: the token file, the Authorization header, loopback addresses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "auth.h"

static char path[64];

static void write_token_file(const char *content, size_t len)
{
    snprintf(path, sizeof path, "/tmp/dw-test-token-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
}

static int teardown(void **state)
{
    if (*path) unlink(path);
    path[0] = '\0';
    return 0;
}

static void test_no_file_means_no_check(void **state)
{
    api_auth a;
    char err[128];
    assert_int_equal(api_auth_load(&a, "", err, sizeof err), 0);
    assert_false(a.enabled);
    assert_int_equal(api_auth_check(&a, NULL), API_AUTH_OK);
    assert_int_equal(api_auth_check(&a, "Bearer anything"), API_AUTH_OK);
}

static void test_token_with_newline(void **state)
{
    api_auth a;
    char err[128];
    write_token_file("  s3cret\n", 9);
    assert_int_equal(api_auth_load(&a, path, err, sizeof err), 0);
    assert_true(a.enabled);
    assert_int_equal(api_auth_check(&a, "Bearer s3cret"), API_AUTH_OK);
    assert_int_equal(api_auth_check(&a, "bearer   s3cret  "), API_AUTH_OK);
    assert_int_equal(api_auth_check(&a, NULL), API_AUTH_MISSING);
    assert_int_equal(api_auth_check(&a, ""), API_AUTH_MISSING);
    assert_int_equal(api_auth_check(&a, "Bearer"), API_AUTH_MISSING);
    assert_int_equal(api_auth_check(&a, "Bearer "), API_AUTH_MISSING);
    assert_int_equal(api_auth_check(&a, "Basic czNjcmV0"), API_AUTH_MISSING);
    assert_int_equal(api_auth_check(&a, "Bearers3cret"), API_AUTH_MISSING);
    assert_int_equal(api_auth_check(&a, "Bearer s3cre"), API_AUTH_WRONG);
    assert_int_equal(api_auth_check(&a, "Bearer s3cretX"), API_AUTH_WRONG);
    assert_int_equal(api_auth_check(&a, "Bearer S3CRET"), API_AUTH_WRONG);
    api_auth_clear(&a);
    assert_false(a.enabled);
}

static void test_bad_files(void **state)
{
    api_auth a;
    char err[128] = "";
    assert_int_equal(api_auth_load(&a, "/nonexistent/dw-token", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot open"));
    write_token_file(" \n\t\n", 4);
    assert_int_equal(api_auth_load(&a, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "no token"));
    teardown(NULL);
    write_token_file("ab\0cd", 5);
    assert_int_equal(api_auth_load(&a, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "NUL"));
    teardown(NULL);
    char *big = malloc(5000);
    memset(big, 'x', 5000);
    write_token_file(big, 5000);
    free(big);
    assert_int_equal(api_auth_load(&a, path, err, sizeof err), -1);
    assert_non_null(strstr(err, "not a token"));
}

static void test_loopback(void **state)
{
    assert_true(api_host_is_loopback("127.0.0.1"));
    assert_true(api_host_is_loopback("127.1.2.3"));
    assert_true(api_host_is_loopback("::1"));
    assert_true(api_host_is_loopback("localhost"));
    assert_false(api_host_is_loopback(""));
    assert_false(api_host_is_loopback(NULL));
    assert_false(api_host_is_loopback("0.0.0.0"));
    assert_false(api_host_is_loopback("10.0.0.1"));
    assert_false(api_host_is_loopback("::"));
    assert_false(api_host_is_loopback("128.0.0.1"));
    assert_false(api_host_is_loopback("eth0"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_file_means_no_check),
        cmocka_unit_test_teardown(test_token_with_newline, teardown),
        cmocka_unit_test_teardown(test_bad_files, teardown),
        cmocka_unit_test(test_loopback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
