/* bench/slowdisk.c: LD_PRELOAD shim that makes fdatasync/fsync take at least
 * $SLOWDISK_US microseconds longer (sleep, then the real call), to show group commit on a
 * disk whose flush is slower than this VM's (~0.3 ms): a cloud block device or a disk
 * without a write cache needs 1-10 ms. Built and used by bench/run.py, phase e only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void delay(void)
{
    static long us = -1;
    if (us < 0) {
        const char *s = getenv("SLOWDISK_US");
        us = s ? atol(s) : 0;
    }
    if (us > 0) {
        struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    delay();
    return real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    delay();
    return real(fd);
}
