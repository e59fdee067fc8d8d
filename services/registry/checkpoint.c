#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dw/log.h"
#include "dw/util.h"
#include "fsutil.h"

#define META_MAX 1024
#define META_VERSION 1

/* ---- names ------------------------------------------------------------ */

int reg_ckpt_name(char *buf, size_t len, int64_t time_ms, uint64_t seq)
{
    struct tm tm;
    time_t secs = (time_t)(time_ms / 1000);
    if (time_ms < 0 || !gmtime_r(&secs, &tm)) return -1;
    int n = snprintf(buf, len, "%04d%02d%02dT%02d%02d%02d.%03dZ-%" PRIu64, tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(time_ms % 1000), seq);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

int reg_ckpt_name_parse(const char *name, int64_t *time_ms, uint64_t *seq)
{
    /* 20261125T085427.123Z-<seq> */
    const char *p;
    int64_t t;
    if (strlen(name) >= REG_CKPT_NAME_MAX || dw_time_parse(name, DW_TIME_BASIC_MS, &t, &p) ||
        *p++ != '-')
        return -1;
    if (!*p || strlen(p) > 20) return -1;
    uint64_t v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        uint64_t nv = v * 10 + (uint64_t)(*p - '0');
        if (nv / 10 != v) return -1; /* overflow */
        v = nv;
    }
    *time_ms = t;
    *seq = v;
    return 0;
}

/* ---- the tag ---------------------------------------------------------- */

size_t reg_ckpt_meta_format(const reg_ckpt *c, char *buf, size_t len)
{
    char ids[DW_KEYRING_MAX * 9 + 16] = "";
    size_t off = 0;
    for (size_t i = 0; i < c->n_key_ids && off + 10 < sizeof ids; i++)
        off += (size_t)snprintf(ids + off, sizeof ids - off, "%s%08x", i ? "," : "",
                                (unsigned)c->key_ids[i]);
    int n = snprintf(buf, len,
                     "version=%d\nname=%s\ntime_ms=%" PRId64 "\napplied_seq=%" PRIu64
                     "\napplied_ts_ms=%" PRId64 "\nconnections=%" PRIu64 "\nrestored_to_ms=%" PRId64
                     "\nkey_ids=%s\n",
                     META_VERSION, c->name, c->time_ms, c->applied_seq, c->applied_ts_ms,
                     c->connections, c->restored_to_ms, ids);
    return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

static int parse_i64(const char *s, int64_t *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *v = x;
    return 0;
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    if (*s == '-') return -1;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s || *end) return -1;
    *v = x;
    return 0;
}

static int parse_key_ids(const char *s, reg_ckpt *c)
{
    c->n_key_ids = 0;
    while (*s) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 16);
        if (errno || end != s + 8 || v > UINT32_MAX || c->n_key_ids >= DW_KEYRING_MAX + 1)
            return -1;
        c->key_ids[c->n_key_ids++] = (uint32_t)v;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return 0;
}

int reg_ckpt_meta_parse(const char *text, reg_ckpt *c)
{
    enum { F_VERSION = 1, F_NAME = 2, F_TIME = 4, F_SEQ = 8, F_TS = 16, F_KEYS = 32 };
    int seen = 0;
    char line[META_MAX];
    memset(c, 0, sizeof *c);
    while (*text) {
        const char *nl = strchr(text, '\n');
        size_t n = nl ? (size_t)(nl - text) : strlen(text);
        if (n >= sizeof line) return -1;
        memcpy(line, text, n);
        line[n] = '\0';
        text += n + (nl ? 1 : 0);
        char *eq = strchr(line, '=');
        if (!eq) continue; /* blank lines and future formats' comments */
        *eq = '\0';
        const char *k = line, *v = eq + 1;
        int64_t i64;
        int bad = 0;
        if (!strcmp(k, "version")) {
            bad = parse_i64(v, &i64) || i64 != META_VERSION;
            seen |= F_VERSION;
        } else if (!strcmp(k, "name")) {
            bad = strlen(v) >= sizeof c->name;
            if (!bad) strcpy(c->name, v);
            seen |= F_NAME;
        } else if (!strcmp(k, "time_ms")) {
            bad = parse_i64(v, &c->time_ms);
            seen |= F_TIME;
        } else if (!strcmp(k, "applied_seq")) {
            bad = parse_u64(v, &c->applied_seq);
            seen |= F_SEQ;
        } else if (!strcmp(k, "applied_ts_ms")) {
            bad = parse_i64(v, &c->applied_ts_ms);
            seen |= F_TS;
        } else if (!strcmp(k, "connections")) {
            bad = parse_u64(v, &c->connections);
        } else if (!strcmp(k, "restored_to_ms")) {
            bad = parse_i64(v, &c->restored_to_ms);
        } else if (!strcmp(k, "key_ids")) {
            bad = parse_key_ids(v, c);
            seen |= F_KEYS;
        }
        if (bad) return -1;
    }
    int required = F_VERSION | F_NAME | F_TIME | F_SEQ | F_TS | F_KEYS;
    return (seen & required) == required ? 0 : -1;
}

/* ---- ordering, retention, choice -------------------------------------- */

static int cmp_newest_first(const void *a, const void *b)
{
    const reg_ckpt *x = a, *y = b;
    if (x->time_ms != y->time_ms) return x->time_ms > y->time_ms ? -1 : 1;
    if (x->applied_seq != y->applied_seq) return x->applied_seq > y->applied_seq ? -1 : 1;
    return strcmp(y->name, x->name);
}

void reg_ckpt_sort(reg_ckpt *v, size_t n)
{
    if (n > 1) qsort(v, n, sizeof *v, cmp_newest_first);
}

size_t reg_ckpt_retention(const reg_ckpt *v, size_t n, int64_t now_ms, size_t keep,
                          int64_t max_age_ms, int *del)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        del[i] = (keep && i >= keep) || (max_age_ms > 0 && now_ms - v[i].time_ms > max_age_ms);
        count += (size_t)del[i];
    }
    return count;
}

int reg_ckpt_keys_usable(const reg_ckpt *c, const dw_keyring *kr)
{
    for (size_t i = 0; i < c->n_key_ids; i++)
        if (c->key_ids[i] && !dw_keyring_has(kr, c->key_ids[i])) return 0;
    return 1;
}

int reg_ckpt_choose(const reg_ckpt *v, size_t n, int64_t to_ms, const dw_keyring *kr,
                    size_t *skipped_keys)
{
    size_t skipped = 0;
    int found = -1;
    for (size_t i = 0; i < n; i++) {
        /* The tag's event time, not the time it was taken: the checkpoint
         * may be newer than to_ms and still hold only older events. */
        if (v[i].applied_ts_ms > to_ms) continue;
        if (!reg_ckpt_keys_usable(&v[i], kr)) {
            skipped++;
            continue;
        }
        /* Sorted by time taken, not by event time: keep the best. */
        if (found < 0 || v[i].applied_seq > v[found].applied_seq) found = (int)i;
    }
    if (skipped_keys) *skipped_keys = skipped;
    return found;
}

/* ---- on disk ---------------------------------------------------------- */

int reg_ckpt_cleanup_tmp(const char *dir)
{
    char path[4096];
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, REG_CKPT_TMP_PREFIX, strlen(REG_CKPT_TMP_PREFIX))) continue;
        if (reg_fs_join(path, sizeof path, dir, e->d_name)) continue;
        if (reg_fs_rm_rf(path) == 0) {
            DW_WARN("deleted a checkpoint that was cut short", "dir=\"%s\"", path);
            n++;
        }
    }
    closedir(d);
    if (n) reg_fs_fsync_dir(dir);
    return n;
}

int reg_ckpt_load(const char *path, int check_name, reg_ckpt *out)
{
    char meta[4096], text[META_MAX];
    if (reg_fs_join(meta, sizeof meta, path, REG_CKPT_META) ||
        reg_fs_read_small(meta, text, sizeof text, NULL) || reg_ckpt_meta_parse(text, out))
        return -1;
    if (check_name) {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        int64_t t;
        uint64_t seq;
        if (strcmp(base, out->name) || reg_ckpt_name_parse(base, &t, &seq) || t != out->time_ms ||
            seq != out->applied_seq)
            return -1;
    }
    return 0;
}

int reg_ckpt_list(const char *dir, reg_ckpt **out, size_t *n)
{
    char path[4096];
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int64_t t;
        uint64_t seq;
        if (reg_ckpt_name_parse(e->d_name, &t, &seq)) continue;
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            reg_ckpt *nv = realloc(*out, ncap * sizeof *nv);
            if (!nv) {
                closedir(d);
                free(*out);
                *out = NULL;
                *n = 0;
                return -1;
            }
            *out = nv;
            cap = ncap;
        }
        if (reg_fs_join(path, sizeof path, dir, e->d_name) || reg_ckpt_load(path, 1, &(*out)[*n])) {
            DW_WARN("ignoring a checkpoint directory without a valid tag", "dir=\"%s\"", path);
            continue;
        }
        (*n)++;
    }
    closedir(d);
    reg_ckpt_sort(*out, *n);
    return 0;
}

static char *errdup(const char *what, const char *path)
{
    char msg[4400];
    if (snprintf(msg, sizeof msg, "%s %s: %s", what, path, strerror(errno)) < 0)
        return strdup(what);
    return strdup(msg);
}

int reg_ckpt_create(reg_store *st, const char *dir, int64_t now_ms, reg_ckpt *out, char **err)
{
    char tmp[4096], final[4096], meta[4096], text[META_MAX];
    reg_store *cp = NULL;
    reg_store_info info;
    reg_store_opts ro = {.read_only = 1};
    *err = NULL;
    memset(out, 0, sizeof *out);

    if (reg_fs_mkdir_p(dir)) {
        *err = errdup("cannot create", dir);
        return -1;
    }
    char tmpname[64];
    snprintf(tmpname, sizeof tmpname, "%s%" PRId64 "-%ld", REG_CKPT_TMP_PREFIX, now_ms,
             (long)getpid());
    if (reg_fs_join(tmp, sizeof tmp, dir, tmpname)) {
        *err = errdup("cannot use", dir);
        return -1;
    }
    reg_fs_rm_rf(tmp);
    if (reg_store_checkpoint(st, tmp, err)) goto error;
    /* The copy says what it holds: the writer kept going while it was made. */
    if (reg_store_open_opts(&cp, tmp, &ro, err)) goto error;
    reg_store_info_get(cp, &info);
    reg_store_close(cp);

    out->time_ms = now_ms;
    out->applied_seq = info.applied_seq;
    out->applied_ts_ms = info.applied_ts_ms;
    out->connections = info.count;
    out->restored_to_ms = info.restored_to_ms;
    out->n_key_ids = info.n_key_ids;
    memcpy(out->key_ids, info.key_ids, sizeof out->key_ids);
    if (reg_ckpt_name(out->name, sizeof out->name, now_ms, info.applied_seq)) {
        *err = strdup("cannot name the checkpoint");
        goto error;
    }
    size_t len = reg_ckpt_meta_format(out, text, sizeof text);
    if (!len || reg_fs_join(meta, sizeof meta, tmp, REG_CKPT_META) ||
        reg_fs_write_sync(meta, text, len) || reg_fs_fsync_dir(tmp)) {
        *err = errdup("cannot write", meta);
        goto error;
    }
    if (reg_fs_join(final, sizeof final, dir, out->name) || rename(tmp, final)) {
        if (errno == EEXIST || errno == ENOTEMPTY) {
            /* Same millisecond, same sequence: the same state. */
            reg_fs_rm_rf(tmp);
            return reg_ckpt_load(final, 1, out) == 0 ? 0
                                                     : (*err = errdup("cannot read", final), -1);
        }
        *err = errdup("cannot rename into", final);
        goto error;
    }
    if (reg_fs_fsync_dir(dir)) {
        *err = errdup("cannot sync", dir);
        return -1; /* it exists and is whole; only its durability is in doubt */
    }
    return 0;

error:
    reg_fs_rm_rf(tmp);
    return -1;
}

int reg_ckpt_prune(const char *dir, int64_t now_ms, size_t keep, int64_t max_age_ms,
                   size_t *deleted)
{
    reg_ckpt *v = NULL;
    size_t n = 0, gone = 0;
    char path[4096];
    int rc = 0;
    if (deleted) *deleted = 0;
    if (reg_ckpt_list(dir, &v, &n)) return -1;
    int *del = calloc(n ? n : 1, sizeof *del);
    if (!del) {
        free(v);
        return -1;
    }
    reg_ckpt_retention(v, n, now_ms, keep, max_age_ms, del);
    for (size_t i = 0; i < n; i++) {
        if (!del[i]) continue;
        char doomed_name[REG_CKPT_NAME_MAX + 16], doomed[4096];
        snprintf(doomed_name, sizeof doomed_name, "%sdel-%s", REG_CKPT_TMP_PREFIX, v[i].name);
        if (reg_fs_join(path, sizeof path, dir, v[i].name) ||
            reg_fs_join(doomed, sizeof doomed, dir, doomed_name))
            continue;
        /* Out of the listing first (rename is atomic), then removed: a kill
         * -9 in the middle of rm -rf leaves a .tmp- that the next start
         * deletes, never a half-deleted checkpoint that still lists. */
        if (rename(path, doomed) || reg_fs_rm_rf(doomed)) {
            DW_WARN("cannot delete a checkpoint", "dir=\"%s\" err=\"%s\"", path, strerror(errno));
            rc = -1;
            continue;
        }
        DW_INFO("checkpoint deleted by retention", "name=%s", v[i].name);
        gone++;
    }
    if (gone) reg_fs_fsync_dir(dir);
    free(del);
    free(v);
    if (deleted) *deleted = gone;
    return rc;
}
