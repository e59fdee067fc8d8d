/* Corpus replay: runs a fuzz target's LLVMFuzzerTestOneInput once on every
 * file named on the command line or found (not recursively) in a directory
 * named there. Built with any compiler, so `make test` replays every seed
 * corpus as a regression test; under -DDW_SANITIZE=address,undefined the
 * replay is as strict as the fuzzer. Each input gets a buffer of exactly
 * its size, so a read past the end is a sanitizer report. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Largest input replayed; libFuzzer's default -max_len is far below. */
#define REPLAY_MAX (16u << 20)

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    uint8_t *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || (unsigned long)size > REPLAY_MAX || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "%s: cannot size or too large\n", path);
        goto error;
    }
    buf = malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: read failed\n", path);
        goto error;
    }
    fclose(f);
    /* An empty input gets a zero-length heap block, as libFuzzer gives. */
    if (size == 0) {
        free(buf);
        buf = malloc(0);
    }
    LLVMFuzzerTestOneInput(buf, (size_t)size);
    free(buf);
    return 0;

error:
    free(buf);
    fclose(f);
    return -1;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Files of a directory in name order, so a failure is reproducible. */
static int run_dir(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                rc = -1;
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(path))
                rc = -1;
            else
                (*count)++;
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s <corpus dir or file>...\n", argv[0]);
        return 2;
    }
    int count = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 1;
        }
        int rc = S_ISDIR(st.st_mode) ? run_dir(argv[i], &count) : run_file(argv[i]);
        if (rc == 0 && !S_ISDIR(st.st_mode)) count++;
        if (rc) return 1;
    }
    /* An empty corpus would make the test pass while testing nothing. */
    if (count == 0) {
        fprintf(stderr, "no inputs found\n");
        return 1;
    }
    printf("replayed %d inputs\n", count);
    return 0;
}
