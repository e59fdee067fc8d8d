#include "dw/util.h"

#include <errno.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>

volatile sig_atomic_t dw_stop;
static void (*signal_wake)(void *);
static void *signal_wake_arg;

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

void dw_iso8601_ms(int64_t ms, char *buf, size_t len)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
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

static void on_signal(int sig)
{
    (void)sig;
    dw_stop = 1;
    if (signal_wake) signal_wake(signal_wake_arg);
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
