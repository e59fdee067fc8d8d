#include "dw/util.h"

#include <errno.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>

atomic_int dw_stop;
static void (*signal_wake)(void *);
static void *signal_wake_arg;
/* Written by the signal handler: lock-free, or the handler could deadlock. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "the stop clock must be lock-free");
static atomic_llong stop_since_ns;
static atomic_llong stop_timeout_ms = DW_STOP_TIMEOUT_DEFAULT_MS;
static _Atomic(const char *) stop_step;

int64_t dw_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t dw_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int dw_cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc) return rc;
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (!rc) rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

int dw_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
    if (deadline_ns < 0) deadline_ns = 0;
    struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000),
                          .tv_nsec = (long)(deadline_ns % 1000000000)};
    return pthread_cond_timedwait(cv, mu, &ts);
}

void dw_iso8601_ms(int64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* n decimal digits at *p into *v, advancing *p. 0 or -1. */
static int num(const char **p, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9') return -1;
        *v = *v * 10 + (**p - '0');
    }
    return 0;
}

int dw_time_parse(const char *s, dw_time_form form, int64_t *ms, const char **end)
{
    int y, mo, d, h, mi, sec, frac = 0, oh = 0, om = 0, sign = 0;
    const char *p = s;
    if (!s) return -1;
    if (form == DW_TIME_BASIC_MS) {
        if (num(&p, 4, &y) || num(&p, 2, &mo) || num(&p, 2, &d) || *p++ != 'T' || num(&p, 2, &h) ||
            num(&p, 2, &mi) || num(&p, 2, &sec) || *p++ != '.' || num(&p, 3, &frac) || *p++ != 'Z')
            return -1;
    } else {
        if (num(&p, 4, &y) || *p++ != '-' || num(&p, 2, &mo) || *p++ != '-' || num(&p, 2, &d))
            return -1;
        if (*p != 'T' && *p != 't' && *p != ' ') return -1;
        p++;
        if (num(&p, 2, &h) || *p++ != ':' || num(&p, 2, &mi) || *p++ != ':' || num(&p, 2, &sec))
            return -1;
        if (*p == '.') {
            /* Milliseconds: the first three digits count, the rest are read
             * and dropped. */
            int digits = 0;
            for (p++; *p >= '0' && *p <= '9'; p++, digits++)
                if (digits < 3) frac = frac * 10 + (*p - '0');
            if (!digits) return -1;
            for (; digits < 3; digits++)
                frac *= 10;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            sign = *p++ == '+' ? 1 : -1;
            if (num(&p, 2, &oh)) return -1;
            if (*p == ':') p++;
            if (num(&p, 2, &om)) return -1;
        } else {
            return -1;
        }
    }
    if (end)
        *end = p;
    else if (*p)
        return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 || oh > 23 || om > 59)
        return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d) /* 2026-02-31 normalizes to March */
        return -1;
    *ms = ((int64_t)t - sign * (oh * 3600 + om * 60)) * 1000 + frac;
    return 0;
}

static const char id_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#define RANDOM_POOL 4096

int dw_random_bytes(void *buf, size_t n)
{
    static _Thread_local unsigned char pool[RANDOM_POOL];
    static _Thread_local size_t left;
    unsigned char *out = buf;
    if (n > RANDOM_POOL / 4) return RAND_bytes(out, (int)n) == 1 ? 0 : -1;
    while (n) {
        if (!left) {
            if (RAND_bytes(pool, RANDOM_POOL) != 1) return -1;
            left = RANDOM_POOL;
        }
        size_t take = n < left ? n : left;
        unsigned char *src = pool + RANDOM_POOL - left;
        memcpy(out, src, take);
        /* What was handed out is not kept. */
        memset(src, 0, take);
        left -= take;
        out += take;
        n -= take;
    }
    return 0;
}

int dw_id_random(char *out)
{
    unsigned char raw[12];
    if (dw_random_bytes(raw, sizeof raw)) return -1;
    /* 12 bytes = 96 bits = 16 x 6 bits: base64url without padding. */
    for (int i = 0; i < 4; i++) {
        uint32_t v = (uint32_t)raw[3 * i] << 16 | (uint32_t)raw[3 * i + 1] << 8 | raw[3 * i + 2];
        out[4 * i] = id_alphabet[(v >> 18) & 63];
        out[4 * i + 1] = id_alphabet[(v >> 12) & 63];
        out[4 * i + 2] = id_alphabet[(v >> 6) & 63];
        out[4 * i + 3] = id_alphabet[v & 63];
    }
    out[DW_ID_LEN] = '\0';
    return 0;
}

int dw_id_valid(const char *s, size_t len)
{
    if (!s || len != DW_ID_LEN) return 0;
    for (size_t i = 0; i < len; i++)
        if (!memchr(id_alphabet, s[i], sizeof id_alphabet - 1) || !s[i]) return 0;
    return 1;
}

void dw_stop_request(void)
{
    /* clock_gettime is async-signal-safe, and so are lock-free atomics. */
    long long none = 0;
    atomic_compare_exchange_strong(&stop_since_ns, &none, (long long)dw_mono_ns());
    dw_stop = 1;
    if (signal_wake) signal_wake(signal_wake_arg);
}

static void on_signal(int sig)
{
    (void)sig;
    dw_stop_request();
}

void dw_stop_set_timeout_ms(int64_t ms)
{
    if (ms < 2 * DW_STOP_RESERVE_MS) ms = 2 * DW_STOP_RESERVE_MS;
    atomic_store(&stop_timeout_ms, (long long)ms);
}

int64_t dw_stop_timeout_ms(void)
{
    return (int64_t)atomic_load(&stop_timeout_ms);
}

int64_t dw_stop_since_ns(void)
{
    return (int64_t)atomic_load(&stop_since_ns);
}

int64_t dw_stop_left_ms(int64_t cap_ms)
{
    int64_t now = dw_mono_ns(), since = dw_stop_since_ns();
    if (!since) since = now;
    int64_t end = since + (dw_stop_timeout_ms() - DW_STOP_RESERVE_MS) * 1000000;
    int64_t left = end > now ? (end - now) / 1000000 : 0;
    if (cap_ms < 0) cap_ms = 0;
    return left < cap_ms ? left : cap_ms;
}

void dw_stop_step(const char *what)
{
    atomic_store(&stop_step, what);
}

const char *dw_stop_step_now(void)
{
    return atomic_load(&stop_step);
}

void dw_signals_install(void (*wake)(void *), void *arg)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    signal_wake = wake;
    signal_wake_arg = arg;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

long dw_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}
