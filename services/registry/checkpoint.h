/* Checkpoints of the connections table: RocksDB checkpoints (hard links
 * to the immutable table files, cheap) kept under one directory, each
 * tagged with the DW_CONN position it holds.
 *
 *   <dir>/<name>/                  one checkpoint: a RocksDB directory ...
 *   <dir>/<name>/DW_CHECKPOINT     ... and its tag (key=value lines)
 *   <dir>/.tmp-<...>/              one being written: never listed or used,
 *                                  deleted by reg_ckpt_cleanup_tmp at start
 *
 * <name> is "<time>-<applied_seq>", time in UTC to the millisecond
 * ("20261125T085427.123Z-4711"), so names sort by time in `ls`.
 *
 * Writing one: RocksDB checkpoint into .tmp-<...>, open that copy read-only
 * to read the applied_seq it really holds (the writer runs meanwhile: only
 * the copy knows which events it contains), write and fsync the tag, rename
 * the directory to its name, fsync <dir>. A kill -9 at any step leaves
 * either nothing or a .tmp- directory. */
#ifndef REG_CHECKPOINT_H
#define REG_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "dw/crypto.h"
#include "store.h"

#define REG_CKPT_META "DW_CHECKPOINT"
#define REG_CKPT_TMP_PREFIX ".tmp-"
#define REG_CKPT_NAME_MAX 64

typedef struct reg_ckpt {
    char name[REG_CKPT_NAME_MAX];
    int64_t time_ms;       /* when it was taken (the registry's clock) */
    uint64_t applied_seq;  /* the last DW_CONN event it holds */
    int64_t applied_ts_ms; /* that event's JetStream time (0: none applied) */
    uint64_t connections;
    int64_t restored_to_ms;               /* the table was a held restore (0: live) */
    uint32_t key_ids[DW_KEYRING_MAX + 1]; /* keys its values need (0 = plaintext) */
    size_t n_key_ids;
} reg_ckpt;

/* ---- pure logic (unit-tested) ----------------------------------------- */

/* "<time>-<seq>" into buf (>= REG_CKPT_NAME_MAX). 0 or -1. */
int reg_ckpt_name(char *buf, size_t len, int64_t time_ms, uint64_t seq);
/* Parse a name made by reg_ckpt_name. 0, or -1 for anything else (.tmp-
 * directories, stray files, names from the future of this format). */
int reg_ckpt_name_parse(const char *name, int64_t *time_ms, uint64_t *seq);

/* The DW_CHECKPOINT text of c into buf. Returns its length, 0 if too small. */
size_t reg_ckpt_meta_format(const reg_ckpt *c, char *buf, size_t len);
/* Parse DW_CHECKPOINT text (NUL-terminated). 0, or -1 when a required
 * field is missing or malformed. */
int reg_ckpt_meta_parse(const char *text, reg_ckpt *c);

/* Newest first: by time, then by applied_seq. */
void reg_ckpt_sort(reg_ckpt *v, size_t n);

/* Retention over v sorted newest first: del[i] = 1 for the checkpoints to
 * delete, those beyond the keep newest and those older than max_age_ms
 * (keep 0 or max_age_ms 0: that rule is off). Returns how many. */
size_t reg_ckpt_retention(const reg_ckpt *v, size_t n, int64_t now_ms, size_t keep,
                          int64_t max_age_ms, int *del);

/* 1 when every key the checkpoint's values need is in kr (plaintext needs none). */
int reg_ckpt_keys_usable(const reg_ckpt *c, const dw_keyring *kr);

/* The checkpoint a restore to to_ms starts from: the newest (v sorted
 * newest first) whose last event is at or before to_ms and whose keys are
 * in kr. Returns its index or -1; *skipped_keys (may be NULL) counts the
 * checkpoints at or before to_ms passed over for want of a key. */
int reg_ckpt_choose(const reg_ckpt *v, size_t n, int64_t to_ms, const dw_keyring *kr,
                    size_t *skipped_keys);

/* ---- on disk ---------------------------------------------------------- */

/* Delete every .tmp- directory under dir (a checkpoint cut short). Call at
 * start, before anything else writes there. Returns how many, or -1. */
int reg_ckpt_cleanup_tmp(const char *dir);

/* Read the tag of the checkpoint directory path (its name must parse and
 * agree with the tag unless check_name is 0, e.g. for a copied directory). */
int reg_ckpt_load(const char *path, int check_name, reg_ckpt *out);

/* The valid checkpoints under dir, newest first (*out malloc'd, caller
 * frees; NULL with *n = 0 when there are none or dir is missing). 0 or -1. */
int reg_ckpt_list(const char *dir, reg_ckpt **out, size_t *n);

/* Take a checkpoint of st into dir (created if missing), named after now_ms.
 * 0 with *out filled, or -1 with *err (malloc'd). Two checkpoints with the
 * same name hold the same state: the second returns the first. */
int reg_ckpt_create(reg_store *st, const char *dir, int64_t now_ms, reg_ckpt *out, char **err);

/* Apply retention to dir; *deleted (may be NULL) counts what went. 0 or -1. */
int reg_ckpt_prune(const char *dir, int64_t now_ms, size_t keep, int64_t max_age_ms,
                   size_t *deleted);

#endif
