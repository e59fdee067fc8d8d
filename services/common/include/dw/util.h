/* Small process-wide helpers: clocks, ids, signals, file limits. */
#ifndef DW_UTIL_H
#define DW_UTIL_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Wall clock in milliseconds since the epoch. */
int64_t dw_now_ms(void);
/* Monotonic clock in nanoseconds (for deadlines and latency). */
int64_t dw_mono_ns(void);

/* "2026-11-25T08:54:27.123Z" into buf (at least 25 bytes). */
void dw_iso8601_ms(int64_t ms, char *buf, size_t len);

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

/* SIGINT/SIGTERM set dw_stop and call wake(arg) (which must be
 * async-signal-safe, e.g. lws_cancel_service or a write to a pipe). */
extern volatile sig_atomic_t dw_stop;
void dw_signals_install(void (*wake)(void *), void *arg);

/* Lift RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit. */
long dw_raise_nofile(void);

#endif
