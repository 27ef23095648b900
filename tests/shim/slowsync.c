/* Fault injection for end-to-end tests, loaded with LD_PRELOAD into the real daemon:
 * a slow or failing disk.
 *   while the file named by $SLOWSYNC_GATE exists, fsync/fdatasync wait (up to 60 s);
 *   while the file named by $SLOWSYNC_FAIL exists, they fail with EIO;
 *   with $SLOWSYNC_DELAY_US set, each takes that much longer (bench/: a slower disk).
 * Nothing else changes: the daemon runs its production code path. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int exists(const char *env)
{
    const char *p = getenv(env);
    return p && access(p, F_OK) == 0;
}

static void delay(void)
{
    static long us = -1;
    if (us < 0) {
        const char *s = getenv("SLOWSYNC_DELAY_US");
        us = s ? atol(s) : 0;
    }
    if (us > 0) {
        struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
}

static int gate(void)
{
    delay();
    for (int i = 0; i < 6000 && exists("SLOWSYNC_GATE"); i++) {
        usleep(10000);
    }
    if (exists("SLOWSYNC_FAIL")) {
        errno = EIO;
        return -1;
    }
    return 0;
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    return gate() ? -1 : real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    return gate() ? -1 : real(fd);
}
