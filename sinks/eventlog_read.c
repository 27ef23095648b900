/* Reading an event log back (eventlog.h): one file followed across rotation, or a directory
 * of segments in name order. Blocking, one thread per reader; never on a loop thread. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "event.h"
#include "eventlog.h"
#include "mem.h"

#define ROTATED_GRACE_MS 3000 /* keep reading a rotated-away file this long */
#define POLL_MS 100           /* how often a file at its end is looked at again */

/* One open file: bytes read and not yet returned are buf[start..len); buf[0] is at file
 * offset base. */
struct lr_file {
    int fd;
    struct stat st;
    char *name; /* a directory's segment file name; NULL for the single file */
    char *buf;
    size_t start, len, cap;
    int64_t base;
};

struct ab_eventlog_follower {
    char *path; /* the file, or the directory */
    int dir;
    int64_t since_ms;
    struct lr_file cur, old; /* old: a file rotated away, read for ROTATED_GRACE_MS more */
    int64_t old_until;
    int caught_up; /* the end was reached once: what comes now arrives while we follow */
    char pos[320];
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void lr_close(struct lr_file *f)
{
    if (f->fd >= 0) {
        close(f->fd);
    }
    free(f->name);
    f->fd = -1;
    f->name = NULL;
    f->start = f->len = 0;
    f->base = 0;
}

/* Open path at offset off into f (closed before). 0, or -1 with errno. */
static int lr_open(struct lr_file *f, const char *path, const char *name, int64_t off)
{
    lr_close(f);
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        return -1;
    }
    fstat(f->fd, &f->st);
    if (off > 0 && off <= f->st.st_size && lseek(f->fd, off, SEEK_SET) == off) {
        f->base = off;
    }
    f->name = name ? ab_strdup(name) : NULL;
    return 0;
}

/* The next complete line of f (without its newline or a CR before it) into *line and *len, and
 * the file offset just past it into *end. 1, or 0 when no complete line is there yet. */
static int lr_line(struct lr_file *f, const char **line, size_t *len, int64_t *end)
{
    for (;;) {
        char *nl = f->len > f->start ? memchr(f->buf + f->start, '\n', f->len - f->start) : NULL;
        if (nl != NULL) {
            *line = f->buf + f->start;
            *len = (size_t)(nl - *line);
            if (*len > 0 && (*line)[*len - 1] == '\r') {
                (*len)--;
            }
            f->start = (size_t)(nl - f->buf) + 1;
            *end = f->base + (int64_t)f->start;
            return 1;
        }
        if (f->fd < 0) {
            return 0;
        }
        if (f->len > f->start) {
            memmove(f->buf, f->buf + f->start, f->len - f->start);
        }
        f->len -= f->start;
        f->base += (int64_t)f->start;
        f->start = 0;
        if (f->len == f->cap) {
            f->cap = f->cap ? f->cap * 2 : 1 << 16;
            f->buf = ab_realloc(f->buf, f->cap);
        }
        ssize_t n = read(f->fd, f->buf + f->len, f->cap - f->len);
        if (n <= 0) {
            return 0;
        }
        f->len += (size_t)n;
    }
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Files of a log directory that may hold events: not hidden, not the writer's lock file,
 * not a torn tail moved aside, not the spool's progress file. */
static int is_segment_name(const char *name)
{
    return name[0] != '.' && strcmp(name, "lock") != 0 && strcmp(name, "forwarded") != 0 &&
           !ends_with(name, ".lock") && !ends_with(name, ".torn") && !ends_with(name, ".tmp");
}

/* The first file of dir, in name order, whose name is after `after` (NULL: any), into a
 * new string; NULL when there is none. A directory holding "*.seg" segments is read for
 * those only; another one (rotated file-sink logs) for all its regular files. */
static char *next_segment(const char *dir, const char *after)
{
    DIR *d = opendir(dir);
    char *best = NULL;
    int segs = 0;
    for (int pass = 0; d && pass < 2; pass++) {
        rewinddir(d);
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (pass == 0) {
                segs |= ends_with(e->d_name, ".seg") && is_segment_name(e->d_name);
                continue;
            }
            if (!is_segment_name(e->d_name) || (segs && !ends_with(e->d_name, ".seg")) ||
                (after && strcmp(e->d_name, after) <= 0) ||
                (best && strcmp(e->d_name, best) >= 0)) {
                continue;
            }
            char *p = ab_asprintf("%s/%s", dir, e->d_name);
            struct stat st;
            if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
                free(best);
                best = ab_strdup(e->d_name);
            }
            free(p);
        }
    }
    if (d) {
        closedir(d);
    }
    return best;
}

/* Open the segment called name (a NULL name: none) at off in the directory. */
static int open_segment(struct ab_eventlog_follower *r, const char *name, int64_t off)
{
    if (name == NULL) {
        return -1;
    }
    char *p = ab_asprintf("%s/%s", r->path, name);
    int rc = lr_open(&r->cur, p, name, off);
    free(p);
    return rc;
}

/* Where to begin in a directory: position "NAME:OFFSET" (the segment gone: the next one). */
static void dir_start(struct ab_eventlog_follower *r, const char *position)
{
    const char *colon = position ? strrchr(position, ':') : NULL;
    if (colon != NULL) {
        char *name = ab_strndup(position, (size_t)(colon - position));
        long long off = strtoll(colon + 1, NULL, 10);
        if (open_segment(r, name, off) != 0) {
            char *next = next_segment(r->path, name);
            open_segment(r, next, 0);
            free(next);
        }
        free(name);
        return;
    }
    char *first = next_segment(r->path, NULL);
    open_segment(r, first, 0);
    free(first);
}

/* Where to begin in a file: position "INODE:OFFSET" (another inode: rotated, the start). */
static void file_start(struct ab_eventlog_follower *r, const char *position)
{
    unsigned long long ino = 0;
    long long off = 0;
    if (lr_open(&r->cur, r->path, NULL, 0) != 0) {
        return;
    }
    if (position && sscanf(position, "%llu:%lld", &ino, &off) == 2 &&
        (unsigned long long)r->cur.st.st_ino == ino && off <= r->cur.st.st_size) {
        lr_open(&r->cur, r->path, NULL, off);
    }
}

struct ab_eventlog_follower *ab_eventlog_follow_open(const char *path, int dir,
                                                   const char *position, int64_t since_ms,
                                                   char *errstr, size_t errlen)
{
    struct stat st;
    int exists = stat(path, &st) == 0;
    if (!exists && (dir || errno != ENOENT)) {
        snprintf(errstr, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    if (exists && !S_ISDIR(st.st_mode) != !dir) {
        snprintf(errstr, errlen, "cannot read %s: %s", path,
                 dir ? "not a directory" : "a directory");
        return NULL;
    }
    struct ab_eventlog_follower *r = ab_calloc(1, sizeof(*r));
    r->path = ab_strdup(path);
    r->dir = dir;
    r->since_ms = position ? 0 : since_ms;
    r->cur.fd = r->old.fd = -1;
    if (dir) {
        dir_start(r, position);
    } else {
        file_start(r, position);
        if (r->cur.fd < 0 && errno != ENOENT) {
            snprintf(errstr, errlen, "cannot read %s: %s", path, strerror(errno));
            ab_eventlog_follow_close(r);
            return NULL;
        }
    }
    return r;
}

/* At the end of what is there: move on. A directory: to the next segment, once there is
 * one (a writer starts it only after the current one is complete). A file: has the path
 * been given to a new file (renamed away and recreated, by the daemon or logrotate) or
 * truncated (copytruncate)? The rotated file moves to r->old and is still read for
 * ROTATED_GRACE_MS, since the writer may put its last lines there before it notices.
 * Returns 1 when there may be more to read now. */
static int lr_advance(struct ab_eventlog_follower *r)
{
    struct stat now;
    if (r->dir) {
        char *next = next_segment(r->path, r->cur.name);
        int moved = next != NULL && open_segment(r, next, 0) == 0;
        free(next);
        return moved;
    }
    if (r->cur.fd < 0) {
        return lr_open(&r->cur, r->path, NULL, 0) == 0;
    }
    if (stat(r->path, &now) != 0) {
        return 0; /* renamed away and not yet recreated: keep reading the old one */
    }
    if (now.st_ino != r->cur.st.st_ino || now.st_dev != r->cur.st.st_dev) {
        lr_close(&r->old);
        struct lr_file spare = r->old;
        r->old = r->cur;
        r->cur = spare;
        r->old_until = mono_ms() + ROTATED_GRACE_MS;
        return lr_open(&r->cur, r->path, NULL, 0) == 0;
    }
    if (now.st_size < r->cur.base + (int64_t)r->cur.len) {
        lr_open(&r->cur, r->path, NULL, 0);
        return 1;
    }
    return 0;
}

/* A line of f, with its position; 1, or 0 when f has no complete line now. */
static int take_line(struct ab_eventlog_follower *r, struct lr_file *f, const char **line,
                     size_t *len)
{
    int64_t end = 0;
    if (!lr_line(f, line, len, &end)) {
        return 0;
    }
    if (r->dir) {
        snprintf(r->pos, sizeof(r->pos), "%s:%" PRId64, f->name, end);
    } else {
        snprintf(r->pos, sizeof(r->pos), "%llu:%" PRId64, (unsigned long long)f->st.st_ino,
                 end);
    }
    return 1;
}

/* Lines older than since_ms by their own "time" are passed over. */
static int too_old(const struct ab_eventlog_follower *r, const char *line, size_t len)
{
    if (r->since_ms <= 0) {
        return 0;
    }
    char *t = AB_EVENT_LINE_TEXT(line, len, "time");
    int64_t when = ab_event_time_ms(t);
    free(t);
    return when >= 0 && when < r->since_ms;
}

int ab_eventlog_follow_next(struct ab_eventlog_follower *r, struct ab_eventlog_line *out,
                            int timeout_ms)
{
    int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        const char *line;
        size_t len;
        int got = take_line(r, &r->old, &line, &len) || take_line(r, &r->cur, &line, &len);
        if (got && too_old(r, line, len)) {
            continue;
        }
        if (got) {
            out->line = line;
            out->len = len;
            out->position = r->pos;
            out->read_ms = r->caught_up ? wall_ms() : -1;
            return 1;
        }
        if (r->old.fd >= 0 && mono_ms() > r->old_until) {
            lr_close(&r->old);
        }
        if (lr_advance(r)) {
            continue;
        }
        r->caught_up = 1;
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            return 0;
        }
        struct timespec ts = {0, (long)(left < POLL_MS ? left : POLL_MS) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

void ab_eventlog_follow_close(struct ab_eventlog_follower *r)
{
    if (r == NULL) {
        return;
    }
    lr_close(&r->cur);
    lr_close(&r->old);
    free(r->cur.buf);
    free(r->old.buf);
    free(r->path);
    free(r);
}

/* ---- The read side of the contract for backends that are event logs (file, spool) ---- */

struct log_sink_reader {
    struct ab_sink_reader base;
    struct ab_eventlog_follower *lr;
};

struct ab_sink_reader *ab_eventlog_sink_reader(const struct ab_sink_ops *ops, const char *path,
                                               int dir, const char *position, int64_t since_ms,
                                               char *errstr, size_t errlen)
{
    struct ab_eventlog_follower *lr =
        ab_eventlog_follow_open(path, dir, position, since_ms, errstr, errlen);
    if (lr == NULL) {
        return NULL;
    }
    struct log_sink_reader *r = ab_calloc(1, sizeof(*r));
    r->base.ops = ops;
    r->lr = lr;
    return &r->base;
}

int ab_eventlog_sink_reader_next(struct ab_sink_reader *base, struct ab_read_event *ev,
                                 int timeout_ms, char *errstr, size_t errlen)
{
    struct log_sink_reader *r = (struct log_sink_reader *)base;
    struct ab_eventlog_line l;
    if (!ab_eventlog_follow_next(r->lr, &l, timeout_ms)) {
        return AB_READ_IDLE;
    }
    *ev = (struct ab_read_event){.value = l.line, .len = l.len, .position = l.position,
                                 .stored_ms = l.read_ms};
    return AB_READ_EVENT;
}

void ab_eventlog_sink_reader_close(struct ab_sink_reader *base)
{
    struct log_sink_reader *r = (struct log_sink_reader *)base;
    if (r != NULL) {
        ab_eventlog_follow_close(r->lr);
        free(r);
    }
}
