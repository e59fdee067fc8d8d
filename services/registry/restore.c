#include "restore.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apply.h"
#include "dw/bus.h"
#include "dw/log.h"
#include "fsutil.h"
#include "store.h"

/* ---- plan ------------------------------------------------------------- */

__attribute__((format(printf, 1, 2))) static char *msgdup(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return strdup(n < 0 ? fmt : msg);
}

int reg_restore_plan_make(jsCtx *js, const char *ckpt_dir, const dw_keyring *kr, int64_t to_ms,
                          int full_replay, reg_restore_plan *out, char **err)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    reg_ckpt *v = NULL;
    size_t n = 0;
    memset(out, 0, sizeof *out);
    *err = NULL;
    out->to_ms = to_ms;

    natsStatus s = js_GetStreamInfo(&si, js, DW_STREAM_CONN, NULL, &jerr);
    if (s != NATS_OK) {
        *err = msgdup("cannot read the state of DW_CONN: %s", natsStatus_GetText(s));
        return -1;
    }
    out->until_seq = si->State.LastSeq;
    out->stream_first_seq = si->State.Msgs ? si->State.FirstSeq : si->State.LastSeq + 1;
    jsStreamInfo_Destroy(si);

    if (!full_replay) {
        if (reg_ckpt_list(ckpt_dir, &v, &n)) {
            *err = msgdup("cannot list the checkpoints in %s: %s", ckpt_dir, strerror(errno));
            return -1;
        }
        out->n_ckpts = n;
        /* A checkpoint beyond the stream's end belongs to a stream that
         * was reset: replaying after it would skip the new events. */
        size_t usable = 0;
        for (size_t i = 0; i < n; i++)
            if (v[i].applied_seq <= out->until_seq) v[usable++] = v[i];
        int idx = reg_ckpt_choose(v, usable, to_ms, kr, &out->skipped_keys);
        if (idx >= 0) {
            out->has_ckpt = 1;
            out->ckpt = v[idx];
            if (reg_fs_join(out->ckpt_path, sizeof out->ckpt_path, ckpt_dir, v[idx].name)) {
                free(v);
                *err = msgdup("checkpoint directory name too long: %s", ckpt_dir);
                return -1;
            }
        }
        free(v);
    }
    out->from_seq = out->has_ckpt ? out->ckpt.applied_seq + 1 : 1;
    /* Events between the checkpoint and the stream's first have expired:
     * the restore would miss them. Without a checkpoint the lost prefix is
     * older than the retention window (every connection it made is gone). */
    out->gap =
        out->has_ckpt && out->stream_first_seq > out->from_seq && out->from_seq <= out->until_seq;
    return 0;
}

/* ---- build, swap, recover --------------------------------------------- */

/* The four names under replica_dir; -1 when they do not fit (the caller's
 * buffers are as long as any path the registry uses). */
static int paths(const char *replica_dir, char *tmp, char *ready, char *db, char *old, size_t len)
{
    return reg_fs_join(tmp, len, replica_dir, "restore.tmp") ||
                   reg_fs_join(ready, len, replica_dir, "restore.ready") ||
                   reg_fs_join(db, len, replica_dir, "db") ||
                   reg_fs_join(old, len, replica_dir, "db.old")
               ? -1
               : 0;
}

/* Flush, close, sync tmp and rename it to ready. */
static int seal_build(reg_store *st, const char *replica_dir, const char *tmp, const char *ready,
                      char **err)
{
    int rc = reg_store_flush(st);
    reg_store_close(st);
    if (rc) {
        *err = strdup("cannot flush the new table");
        return -1;
    }
    if (reg_fs_fsync_dir(tmp) || rename(tmp, ready) || reg_fs_fsync_dir(replica_dir)) {
        *err = msgdup("cannot move the new table into place under %s: %s", replica_dir,
                      strerror(errno));
        return -1;
    }
    return 0;
}

int reg_restore_build(jsCtx *js, const char *replica_dir, const reg_restore_plan *p,
                      const dw_keyring *kr, atomic_int *stop, reg_restore_result *res, char **err)
{
    char tmp[4096], ready[4096], db[4096], old[4096];
    static const char *const skip[] = {REG_CKPT_META, NULL};
    reg_store *st = NULL;
    reg_store_opts o = {.keys = kr, .events = p->events};
    *err = NULL;
    memset(res, 0, sizeof *res);
    if (paths(replica_dir, tmp, ready, db, old, sizeof tmp)) {
        *err = strdup("replica directory name too long");
        return -1;
    }

    if (reg_fs_rm_rf(tmp) || reg_fs_rm_rf(ready)) {
        *err = msgdup("cannot clear %s: %s", tmp, strerror(errno));
        return -1;
    }
    if (p->has_ckpt && reg_fs_copy_db(p->ckpt_path, tmp, skip)) {
        *err = msgdup("cannot copy checkpoint %s: %s", p->ckpt_path, strerror(errno));
        return -1;
    }
    if (reg_store_open_opts(&st, tmp, &o, err)) goto error;
    reg_store_events_floor(st, p->events_floor_seq, p->events_floor_idx);
    if (reg_apply_replay(js, st, p->from_seq, p->until_seq, p->to_ms, stop, &res->replayed, err))
        goto error;
    if (reg_store_set_hold(st, p->to_ms)) {
        *err = strdup("cannot write the hold");
        goto error;
    }
    reg_store_info info;
    reg_store_info_get(st, &info);
    res->applied_seq = info.applied_seq;
    res->applied_ts_ms = info.applied_ts_ms;
    res->connections = info.count;
    if (seal_build(st, replica_dir, tmp, ready, err)) {
        st = NULL;
        goto error;
    }
    return 0;

error:
    reg_store_close(st);
    reg_fs_rm_rf(tmp);
    return -1;
}

int reg_restore_recover(const char *replica_dir)
{
    char tmp[4096], ready[4096], db[4096], old[4096];
    int swapped = 0;
    if (paths(replica_dir, tmp, ready, db, old, sizeof tmp)) return -1;

    if (reg_fs_exists(tmp)) {
        DW_WARN("dropping a table build that was cut short (the current table is whole)",
                "dir=\"%s\"", tmp);
        if (reg_fs_rm_rf(tmp)) return -1;
    }
    if (reg_fs_exists(ready)) {
        if (reg_fs_exists(db)) {
            if (reg_fs_rm_rf(old) || rename(db, old)) return -1;
        }
        if (rename(ready, db) || reg_fs_fsync_dir(replica_dir)) return -1;
        swapped = 1;
    }
    if (reg_fs_exists(old)) {
        if (reg_fs_rm_rf(old) || reg_fs_fsync_dir(replica_dir)) return -1;
    }
    return swapped;
}

int reg_bootstrap(const char *replica_dir, const char *from_dir, const dw_keyring *kr,
                  reg_ckpt *ckpt, char **err)
{
    char tmp[4096], ready[4096], db[4096], old[4096];
    static const char *const skip[] = {REG_CKPT_META, NULL};
    reg_store *st = NULL;
    reg_store_opts o = {.keys = kr};
    *err = NULL;
    if (paths(replica_dir, tmp, ready, db, old, sizeof tmp)) {
        *err = strdup("replica directory name too long");
        return -1;
    }

    if (reg_fs_exists(db)) return 0;
    if (reg_ckpt_load(from_dir, 0, ckpt)) {
        *err = msgdup("%s is not a checkpoint (no valid %s tag)", from_dir, REG_CKPT_META);
        return -1;
    }
    if (reg_fs_mkdir_p(replica_dir) || reg_fs_rm_rf(tmp) || reg_fs_copy_db(from_dir, tmp, skip)) {
        *err = msgdup("cannot copy %s: %s", from_dir, strerror(errno));
        return -1;
    }
    /* Opening checks the keys: a copy we cannot read is refused here. */
    if (reg_store_open_opts(&st, tmp, &o, err)) goto error;
    /* A copy of a held restore joins live: it catches up from its sequence. */
    if (reg_store_set_hold(st, 0)) {
        *err = strdup("cannot clear the hold");
        goto error;
    }
    if (seal_build(st, replica_dir, tmp, ready, err)) {
        st = NULL;
        goto error;
    }
    if (reg_restore_recover(replica_dir) < 0) {
        *err = msgdup("cannot swap the copy in under %s: %s", replica_dir, strerror(errno));
        return -1;
    }
    return 1;

error:
    reg_store_close(st);
    reg_fs_rm_rf(tmp);
    return -1;
}
