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
#include "log.h"
#include "mem.h"

#define ROTATED_GRACE_MS 3000 /* keep reading a rotated-away file this long */
#define POLL_MS 100           /* how often a file at its end is looked at again */

/* One open file, read through its checksum index (eventlog_crc.c). */
struct lr_file {
    struct ab_eventlog_reader *rd; /* NULL: not open */
    struct stat st;
    char *name;   /* a directory's segment file name; NULL for the single file */
    int complete; /* a directory's segment with a later one: written in full */
};

struct ab_eventlog_follower {
    char *path; /* the file, or the directory */
    int dir;
    int64_t since_ms;
    struct lr_file cur, old; /* old: a file rotated away, read for ROTATED_GRACE_MS more */
    int64_t old_until;
    int caught_up; /* the end was reached once: what comes now arrives while we follow */
    long damaged;  /* records skipped as damaged */
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
    ab_eventlog_reader_free(f->rd);
    free(f->name);
    memset(f, 0, sizeof(*f));
}

/* Open path at offset off (the end of a record, or past the file's end: its start) into
 * f (closed before), as a live reader. 0, or -1 with errno. */
static int lr_open(struct lr_file *f, const char *path, const char *name, int64_t off)
{
    char err[256];
    lr_close(f);
    if ((f->rd = ab_eventlog_reader_open(path, err, sizeof(err))) == NULL) {
        return -1; /* errno is open()'s */
    }
    ab_eventlog_reader_live(f->rd);
    ab_eventlog_reader_stat(f->rd, &f->st);
    if (off > 0 && off <= f->st.st_size) {
        ab_eventlog_reader_seek(f->rd, off);
    }
    f->name = name ? ab_strdup(name) : NULL;
    return 0;
}

/* The next complete record of f (without its newline, or a CR before it in a line read
 * unverified) into *line and *len, and the file offset just past it into *end. Damaged
 * records are logged, counted and skipped: their bytes are never handed out. 1, or 0 when
 * no complete record is there yet (one past the last index entry waits for its entry). */
static int lr_line(struct ab_eventlog_follower *r, struct lr_file *f, const char **line,
                   size_t *len, int64_t *end)
{
    struct ab_eventlog_rec rec;
    for (;;) {
        int rc = f->rd ? ab_eventlog_reader_next(f->rd, -1, f->complete, &rec) : AB_EVENTLOG_END;
        if (rc == AB_EVENTLOG_END) {
            return 0;
        }
        if (rc == AB_EVENTLOG_DAMAGED) {
            r->damaged += rec.count;
            ab_error("%s%s%s: damaged record(s) at offset %" PRId64 ": %s; %ld record(s), "
                     "%" PRId64 " bytes skipped",
                     r->path, f->name ? "/" : "", f->name ? f->name : "", rec.off, rec.why,
                     rec.count, rec.end - rec.off);
            continue;
        }
        *line = rec.line;
        *len = rec.len;
        if (rc == AB_EVENTLOG_UNVERIFIED && *len > 0 && (*line)[*len - 1] == '\r') {
            (*len)--;
        }
        *end = rec.end;
        return 1;
    }
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Files of a log directory that may hold events: not hidden, not the writer's lock file,
 * not a torn tail or damaged bytes moved aside, not a checksum index (rotated or not: a
 * name holding ".crc."), not a dead letter, not the spool's progress file. */
static int is_segment_name(const char *name)
{
    return name[0] != '.' && strcmp(name, "lock") != 0 && strcmp(name, "forwarded") != 0 &&
           !ends_with(name, ".lock") && !ends_with(name, ".torn") && !ends_with(name, ".tmp") &&
           !ends_with(name, ".damaged") && !ends_with(name, ".crc") && !strstr(name, ".crc.") &&
           !strstr(name, ".deadletter");
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
    if (dir) {
        dir_start(r, position);
    } else {
        file_start(r, position);
        if (r->cur.rd == NULL && errno != ENOENT) {
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
        int moved = 0;
        if (next != NULL && r->cur.rd != NULL && !r->cur.complete) {
            r->cur.complete = moved = 1; /* read it to its end first: what is left is damage */
        } else if (next != NULL) {
            moved = open_segment(r, next, 0) == 0;
        }
        free(next);
        return moved;
    }
    if (r->cur.rd == NULL) {
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
    if (now.st_size < ab_eventlog_reader_offset(r->cur.rd)) {
        /* truncated in place: the index describes what was there before (the writer does
         * not know), so this file is read on unverified */
        ab_warn("%s was truncated in place (copytruncate?): its checksum index no longer "
                "describes it; read on from its start, unverified", r->path);
        if (lr_open(&r->cur, r->path, NULL, 0) == 0) {
            ab_eventlog_reader_drop_index(r->cur.rd);
        }
        return 1;
    }
    return 0;
}

/* A line of f, with its position; 1, or 0 when f has no complete line now. */
static int take_line(struct ab_eventlog_follower *r, struct lr_file *f, const char **line,
                     size_t *len)
{
    int64_t end = 0;
    if (!lr_line(r, f, line, len, &end)) {
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
        if (r->old.rd != NULL && mono_ms() > r->old_until) {
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

long ab_eventlog_follow_damaged(const struct ab_eventlog_follower *r)
{
    return r->damaged;
}

void ab_eventlog_follow_close(struct ab_eventlog_follower *r)
{
    if (r == NULL) {
        return;
    }
    lr_close(&r->cur);
    lr_close(&r->old);
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

long ab_eventlog_sink_reader_damaged(const struct ab_sink_reader *base)
{
    if (base == NULL || base->ops->reader_next != ab_eventlog_sink_reader_next) {
        return 0; /* not a log: its backend checks what it reads its own way */
    }
    return ab_eventlog_follow_damaged(((const struct log_sink_reader *)base)->lr);
}
