/* Directory and file helpers for checkpoints, restores and bootstraps:
 * everything that must survive kill -9 (and a power cut) is written into a
 * temporary name, synced, then renamed into place, and the directory that
 * holds the rename is synced too. All return 0, or -1 with errno set. */
#ifndef REG_FSUTIL_H
#define REG_FSUTIL_H

#include <stddef.h>

/* mkdir -p with mode 0750 for what it creates. */
int reg_fs_mkdir_p(const char *path);

/* rm -rf without following symlinks; a missing path is not an error. */
int reg_fs_rm_rf(const char *path);

/* 1 when path exists (any type), 0 otherwise. */
int reg_fs_exists(const char *path);

/* fsync a directory (after creating, renaming or removing entries in it). */
int reg_fs_fsync_dir(const char *path);

/* Write data to path (created or truncated, mode 0640) and fsync it. */
int reg_fs_write_sync(const char *path, const void *data, size_t len);

/* Read at most cap - 1 bytes of path into buf and NUL-terminate it;
 * *len (may be NULL) gets the length. A longer file is an error (EFBIG). */
int reg_fs_read_small(const char *path, char *buf, size_t cap, size_t *len);

/* Copy the flat RocksDB directory src into dst, which must not exist:
 * table files (*.sst, immutable) are hard-linked when src and dst share a
 * filesystem, everything else is copied; the LOG files, the LOCK and names
 * in skip (NULL-terminated, may be NULL) are left out. Every file and dst
 * are synced. On failure dst is removed. */
int reg_fs_copy_db(const char *src, const char *dst, const char *const *skip);

/* "a/b" into buf. 0, or -1 (ENAMETOOLONG) when it does not fit. */
int reg_fs_join(char *buf, size_t len, const char *a, const char *b);

#endif
