/* Fault injection for end-to-end tests, loaded with LD_PRELOAD into the real daemon:
 * a slow or failing disk.
 *   while the file named by $SLOWSYNC_GATE exists, fsync/fdatasync wait (up to 60 s);
 *   while the file named by $SLOWSYNC_FAIL exists, they fail with EIO;
 *   with $SLOWSYNC_DELAY_US set, each takes that much longer (bench/: a slower disk);
 *   with $SLOWSYNC_LOG set, each appends "<what> <path synced>" to that file first (which
 *   files and directories were synced, in order).
 * Nothing else changes: the daemon runs its production code path. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
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

static void note(const char *what, int fd)
{
    const char *log = getenv("SLOWSYNC_LOG");
    if (log == NULL) {
        return;
    }
    char link[64], target[4096], line[4200];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    target[n > 0 ? n : 0] = '\0';
    int len = snprintf(line, sizeof(line), "%s %s\n", what, target);
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out >= 0) {
        if (write(out, line, (size_t)len) < 0) {
        }
        close(out);
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
    note("fdatasync", fd);
    return gate() ? -1 : real(fd);
}

int fsync(int fd)
{
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    note("fsync", fd);
    return gate() ? -1 : real(fd);
}
