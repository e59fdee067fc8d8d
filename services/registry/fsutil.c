#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int reg_fs_mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0750) && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0750) && errno != EEXIST) return -1;
    return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    return rc && errno != ENOENT ? -1 : 0;
}

int reg_fs_rm_rf(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb)) {
        return errno == ENOENT ? 0 : -1;
    }
    if (!S_ISDIR(sb.st_mode)) return unlink(path);
    return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) ? -1 : 0;
}

int reg_fs_exists(const char *path)
{
    struct stat sb;
    return lstat(path, &sb) == 0;
}

int reg_fs_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int reg_fs_write_sync(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) return -1;
    int rc = write_all(fd, data, len);
    if (rc == 0) rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int reg_fs_read_small(const char *path, char *buf, size_t cap, size_t *len)
{
    size_t got = 0;
    ssize_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while (got < cap && (n = read(fd, buf + got, cap - got)) > 0)
        got += (size_t)n;
    int saved = errno;
    close(fd);
    if (n < 0) {
        errno = saved;
        return -1;
    }
    if (got >= cap) {
        errno = EFBIG;
        return -1;
    }
    buf[got] = '\0';
    if (len) *len = got;
    return 0;
}

static int copy_file(const char *src, const char *dst)
{
    char buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC), out = -1, rc = -1;
    if (in < 0) return -1;
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (out < 0) goto done;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) goto done;
        if (n == 0) break;
        if (write_all(out, buf, (size_t)n)) goto done;
    }
    rc = fsync(out);
done:;
    int saved = errno;
    close(in);
    if (out >= 0) close(out);
    errno = saved;
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static int skipped(const char *name, const char *const *skip)
{
    if (!strcmp(name, "LOCK") || !strcmp(name, "LOG") || !strncmp(name, "LOG.old", 7)) return 1;
    for (size_t i = 0; skip && skip[i]; i++)
        if (!strcmp(name, skip[i])) return 1;
    return 0;
}

int reg_fs_copy_db(const char *src, const char *dst, const char *const *skip)
{
    char from[4096], to[4096];
    int rc = -1, saved = 0;
    DIR *d = opendir(src);
    if (!d) return -1;
    if (mkdir(dst, 0750)) {
        saved = errno;
        closedir(d);
        errno = saved;
        return -1;
    }
    struct dirent *e;
    while ((errno = 0, e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || skipped(e->d_name, skip)) continue;
        if (snprintf(from, sizeof from, "%s/%s", src, e->d_name) >= (int)sizeof from ||
            snprintf(to, sizeof to, "%s/%s", dst, e->d_name) >= (int)sizeof to) {
            errno = ENAMETOOLONG;
            goto done;
        }
        struct stat sb;
        if (lstat(from, &sb)) goto done;
        if (!S_ISREG(sb.st_mode)) continue;
        /* Table files never change once written: sharing them is safe and
         * makes a restore from a checkpoint cost no copy at all. */
        if (ends_with(e->d_name, ".sst") && link(from, to) == 0) continue;
        if (copy_file(from, to)) goto done;
    }
    if (errno) goto done;
    rc = reg_fs_fsync_dir(dst);
done:
    saved = errno;
    closedir(d);
    if (rc) reg_fs_rm_rf(dst);
    errno = saved;
    return rc;
}

int reg_fs_join(char *buf, size_t len, const char *a, const char *b)
{
    int n = snprintf(buf, len, "%s/%s", a, b);
    if (n < 0 || (size_t)n >= len) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}
