#include "procstat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int procstat_read(int pid, procstat *out)
{
    char path[64], buf[4096];
    out->ok = 0;
    out->rss_kb = 0;
    out->cpu_s = 0;

    if (pid)
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
    else
        snprintf(path, sizeof path, "/proc/self/stat");
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and ')': fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long long utime, stime;
    /* After ')': state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt
     * majflt cmajflt utime(14) stime(15). */
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) !=
        2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    out->cpu_s = (double)(utime + stime) / (double)(hz > 0 ? hz : 100);

    if (pid)
        snprintf(path, sizeof path, "/proc/%d/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(buf, sizeof buf, f)) {
        if (!strncmp(buf, "VmRSS:", 6)) {
            out->rss_kb = strtol(buf + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    out->ok = 1;
    return 0;
}
