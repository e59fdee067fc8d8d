#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "httproute.h"

static httproute match(const char *p)
{
    return httproute_match(p, strlen(p));
}

static void test_routes(void **state)
{
    (void)state;
    assert_int_equal(match("/healthz").target, HTTPROUTE_HEALTHZ);
    assert_int_equal(match("/readyz").target, HTTPROUTE_READYZ);
    assert_int_equal(match("/metrics").target, HTTPROUTE_METRICS);
    httproute r = match("/");
    assert_int_equal(r.target, HTTPROUTE_FILE);
    assert_string_equal(r.file, "index.html");
    assert_string_equal(match("/app.js").file, "app.js");
    assert_string_equal(match("/style.css").mime, "text/css; charset=utf-8");
    static const char *const none[] = {"",          "/healthz/",      "/HEALTHZ",
                                       "//",        "/../index.html", "/index.html/..",
                                       "/app.js/.", "index.html",     "/app.js?x"};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
        assert_int_equal(match(none[i]).target, HTTPROUTE_NOT_FOUND);
    /* Length counts: an embedded NUL is not the end of the path. */
    assert_int_equal(httproute_match("/app.js\0.css", 12).target, HTTPROUTE_NOT_FOUND);
}

static void test_inside(void **state)
{
    (void)state;
    assert_true(httproute_inside("/srv/web", "/srv/web/index.html"));
    assert_true(httproute_inside("/srv/web", "/srv/web"));
    assert_true(httproute_inside("/", "/etc/passwd"));
    assert_false(httproute_inside("/srv/web", "/srv/web2/index.html"));
    assert_false(httproute_inside("/srv/web", "/srv/secret"));
    assert_false(httproute_inside("/srv/web", "/srv/web/../secret"));
    assert_false(httproute_inside("/srv/web", "/srv/web/./x"));
    assert_false(httproute_inside("/srv/web", "/srv/web//x"));
    assert_false(httproute_inside("/srv/web/", "/srv/web/x")); /* roots come from realpath */
    assert_false(httproute_inside("srv/web", "srv/web/x"));
    assert_false(httproute_inside("/srv/web", ""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_inside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
