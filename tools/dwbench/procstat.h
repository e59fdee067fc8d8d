/* Resource use of a process, read from /proc: what the benchmark reports
 * for every service it was pointed at with --pid NAME=PID. */
#ifndef DWBENCH_PROCSTAT_H
#define DWBENCH_PROCSTAT_H

typedef struct procstat {
    int ok;       /* 0 when the process could not be read (gone?) */
    long rss_kb;  /* VmRSS */
    double cpu_s; /* utime + stime since the process started */
} procstat;

/* Read pid's figures (pid 0: this process). 0, or -1 with out->ok = 0. */
int procstat_read(int pid, procstat *out);

#endif
