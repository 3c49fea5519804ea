/* clock.h - the clocks of the benchmark drivers (flowbench, maf_bench,
 * conv_bench): wall time and the process's CPU time. */
#ifndef FLOW_BENCH_CLOCK_H
#define FLOW_BENCH_CLOCK_H

#include <time.h>
#include <sys/resource.h>

/* Monotonic wall-clock seconds. */
static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* User + system CPU seconds of the process so far (all threads; 0 when
 * unavailable): robust to other jobs time-sharing the cores, unlike
 * wall-clock time. */
static inline double cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec
           + (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

#endif
