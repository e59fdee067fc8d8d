/* Small process-wide helpers: clocks, ids, signals, file limits, and
 * condition variables that wait on the monotonic clock. */
#ifndef DW_UTIL_H
#define DW_UTIL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Wall clock in milliseconds since the epoch. */
int64_t dw_now_ms(void);
/* Monotonic clock in nanoseconds (for deadlines and latency). */
int64_t dw_mono_ns(void);

/* A condition variable whose timed waits run on the dw_mono_ns clock, so
 * that a jump of the wall clock neither cuts a wait short nor stretches
 * it. 0 or an errno (like pthread_cond_init). */
int dw_cond_init_mono(pthread_cond_t *cv);
/* Wait on cv (made by dw_cond_init_mono; mu held) until deadline_ns on the
 * dw_mono_ns clock at the latest. 0 or ETIMEDOUT, like
 * pthread_cond_timedwait; wake-ups may be spurious, so the caller checks
 * its condition again. */
int dw_cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns);

/* "2026-11-25T08:54:27.123Z" into buf (at least 25 bytes). */
void dw_iso8601_ms(int64_t ms, char *buf, size_t len);

/* Parse an ISO 8601 time in one of the two shapes this project writes:
 *   DW_TIME_RFC3339   "2026-11-25T08:54:27.123Z" (RFC 3339: 'T', 't' or a
 *                     space between date and time; a fraction of any length,
 *                     milliseconds kept; a zone, Z/z or +hh:mm / -hhmm; a
 *                     time without its zone is ambiguous and refused)
 *   DW_TIME_BASIC_MS  "20261125T085427.123Z" (registry checkpoint names)
 * The date must exist: "2026-02-31" is refused, not read as March 3.
 * *ms: milliseconds since the epoch. end NULL: the time must be all of s;
 * else *end points after it. 0, or -1 when s holds no such time. */
typedef enum { DW_TIME_RFC3339, DW_TIME_BASIC_MS } dw_time_form;
int dw_time_parse(const char *s, dw_time_form form, int64_t *ms, const char **end);

/* Connection and edge ids: 16 URL-safe characters ([A-Za-z0-9_-]) made from
 * 12 bytes of the OS CSPRNG. out must hold DW_ID_LEN + 1 bytes.
 * Returns 0, or -1 if the CSPRNG failed (never falls back to a weak source). */
#define DW_ID_LEN 16
int dw_id_random(char *out);

/* n bytes from the OS-seeded CSPRNG (OpenSSL's RAND_bytes), drawn from a
 * per-thread pool refilled 4 KB at a time: one RAND_bytes call costs as
 * much as thousands of pooled bytes (a connect needs an id, a registry
 * write a nonce). 0 or -1. */
int dw_random_bytes(void *buf, size_t n);

/* True when s is a well-formed id (what dw_id_random makes). */
int dw_id_valid(const char *s, size_t len);

/* SIGINT/SIGTERM set dw_stop, start the stop's clock (below) and call
 * wake(arg) (which must be async-signal-safe, e.g. lws_cancel_service or a
 * write to a pipe). An atomic rather than a volatile sig_atomic_t: every
 * thread reads it, and a lock-free atomic is both signal-safe and
 * race-free. */
extern atomic_int dw_stop;
void dw_signals_install(void (*wake)(void *), void *arg);

/* ---- the stop's one deadline ----
 * A stop has one budget for all of its steps (DW_SHUTDOWN_TIMEOUT_MS,
 * dw/service.h), counted from the first stop request: every step that
 * waits (requests in flight, a drain, a flush, giving leases back) waits at
 * most what is left of it, so that the steps together never take longer,
 * whatever NATS does. Waiting for NATS while it is away is the case this
 * is for: each step's own timeout was fine, their sum was not (22 s).
 * The last DW_STOP_RESERVE_MS of the budget are not handed out: they are
 * for closing up after the steps (dw/service.h closes the connection
 * then, so that no step still waiting for NATS can keep the process). */
#define DW_STOP_TIMEOUT_DEFAULT_MS 10000
#define DW_STOP_RESERVE_MS 1000
/* The budget, ms (at least 2 × DW_STOP_RESERVE_MS; smaller: that). Set
 * once at start, before any stop. */
void dw_stop_set_timeout_ms(int64_t ms);
int64_t dw_stop_timeout_ms(void);
/* Stop as a signal would (dw_stop, the clock, wake): a service that ends on
 * its own. Any thread, signal-safe; only the first request starts the
 * clock. */
void dw_stop_request(void);
/* dw_mono_ns() of the first stop request; 0 before any. */
int64_t dw_stop_since_ns(void);
/* How long a stop step may wait: cap_ms, or less when the steps' share of
 * the budget ends sooner; 0 once it has ended (a step then gives up at
 * once, and says so in the log). Before any stop request: as if the stop
 * started now. Any thread. */
int64_t dw_stop_left_ms(int64_t cap_ms);
/* The step the stop is in, for the log line of a stop that overran
 * (a static string; NULL: none yet). Any thread. */
void dw_stop_step(const char *what);
const char *dw_stop_step_now(void);

/* Lift RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit. */
long dw_raise_nofile(void);

#endif
