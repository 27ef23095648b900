/* The event log: see eventlog.h for what it promises and its ownership rule. */
#include "eventlog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "mem.h"

struct job {
    struct job *next;                 /* writer queue, then the client's done list */
    struct job *prev_o, *next_o;      /* the client's list of records with the writer */
    struct ab_eventlog_client *client;
    ab_eventlog_done_cb cb;           /* NULL once close() has answered it */
    void *opaque;
    int status;
    size_t len;
    char data[]; /* the line, newline included */
};

struct ab_eventlog {
    char *path; /* the file, or the directory of segments */
    char *what;
    char *cur;  /* the file being written: path, or path/<segment> */
    int sync;
    long segment_bytes;
    int fd, lock_fd;
    int idx_fd;       /* the checksum index "<cur>.crc" */
    int64_t idx_synced;
    dev_t dev;
    ino_t ino;
    int last_open_errno; /* so that a failing reopen is logged once, not every second */
    pthread_t thread;
    int started;
    /* the queue: guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* work for the writer; and the writer's exit */
    struct job *head, **tail;
    int stop, reopen, exited;
    /* what readers may look at: guarded by pos_mu, written by the writer */
    pthread_mutex_t pos_mu;
    uint64_t seq;
    int64_t synced;
    char state[200];
    atomic_int ready;
    struct ab_eventlog *next_open; /* the registry of open logs (SIGHUP) */
};

struct ab_eventlog_client {
    struct ab_eventlog *log;
    struct event *done_ev;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;  /* signalled when the writer holds no more of this client's records */
    struct job *done, **done_tail;
    struct job *outstanding;
    int closed;
    long refs; /* 1 for the loop thread until close, 1 per record not yet freed */
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ab_eventlog *registry;
/* Logs whose writer was stuck at free: kept reachable for the process's exit. */
static struct ab_eventlog *abandoned;

/* ---- files --------------------------------------------------------------------------- */

void ab_eventlog_segment_name(uint64_t seq, char *buf, size_t len)
{
    snprintf(buf, len, "%020" PRIu64 ".seg", seq);
}

/* fsync the directory holding path, so that a created (or renamed-to) entry is durable.
 * Returns 0 or an errno. */
static int sync_parent(const char *path)
{
    char *copy = ab_strdup(path);
    int rc = 0;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        rc = errno;
    }
    if (fd >= 0) {
        close(fd);
    }
    free(copy);
    return rc;
}

/* Offset just past the last newline among the first `size` bytes of fd (0 if none). */
static int64_t last_line_end(int fd, int64_t size, int *err)
{
    char buf[65536];
    int64_t end = size;
    while (end > 0) {
        int64_t start = end > (int64_t)sizeof(buf) ? end - (int64_t)sizeof(buf) : 0;
        ssize_t n = pread(fd, buf, (size_t)(end - start), start);
        if (n != end - start) {
            *err = n < 0 ? errno : EIO;
            return -1;
        }
        for (ssize_t i = n - 1; i >= 0; i--) {
            if (buf[i] == '\n') {
                return start + i + 1;
            }
        }
        end = start;
    }
    return 0;
}

/* Copy bytes [from, to) of fd to the end of "<path>.torn" (plus a newline) and sync it.
 * Returns 0 or an errno. */
static int save_torn(const char *path, int fd, int64_t from, int64_t to)
{
    char *tp = ab_asprintf("%s.torn", path);
    char buf[65536];
    int rc = 0;
    int out = open(tp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (out < 0) {
        rc = errno;
        goto done;
    }
    for (int64_t off = from; off < to;) {
        size_t want = to - off > (int64_t)sizeof(buf) ? sizeof(buf) : (size_t)(to - off);
        ssize_t n = pread(fd, buf, want, off);
        if (n <= 0 || write(out, buf, (size_t)n) != n) {
            rc = n < 0 ? errno : EIO;
            goto done;
        }
        off += n;
    }
    if (write(out, "\n", 1) != 1 || fsync(out) != 0) {
        rc = errno ? errno : EIO;
    }
done:
    if (out >= 0) {
        close(out);
    }
    free(tp);
    return rc;
}

/* The torn-tail rule: bytes after the last newline were never acknowledged (each record is
 * acknowledged only after its whole line was synced). Move them to "<path>.torn", cut the
 * file at its last newline, sync, and log. Sets *size to the file's length afterwards.
 * Returns 0 or an errno. */
static int cut_torn_tail(const char *what, const char *path, int fd, int64_t *size)
{
    struct stat st;
    char last = '\n';
    int err = 0;
    if (fstat(fd, &st) != 0) {
        return errno;
    }
    *size = st.st_size;
    if (st.st_size == 0 || pread(fd, &last, 1, st.st_size - 1) != 1 || last == '\n') {
        return 0;
    }
    int64_t keep = last_line_end(fd, st.st_size, &err);
    if (keep < 0) {
        return err;
    }
    if ((err = save_torn(path, fd, keep, st.st_size)) != 0) {
        return err;
    }
    if (ftruncate(fd, keep) != 0 || fsync(fd) != 0) {
        return errno;
    }
    ab_warn("%s: %s ended with %" PRId64 " bytes after its last newline (a write cut short by "
            "a crash, never acknowledged); moved them to %s.torn",
            what, path, (int64_t)st.st_size - keep, path);
    *size = keep;
    return 0;
}

/* Take the log's exclusive lock: an OFD write lock on lockpath (released by the kernel when
 * the process dies), which then holds our pid for the next one to name. Returns the lock's
 * descriptor, or -1 with errstr (and *locked = 1 when another process holds it). */
static int take_lock(const char *what, const char *path, const char *lockpath, int *locked,
                     char *errstr, size_t errlen)
{
    int fd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(errstr, errlen, "%s: cannot create the lock file %s: %s", what, lockpath,
                 strerror(errno));
        return -1;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_OFD_SETLK, &fl) != 0) {
        int e = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        if (e == EAGAIN || e == EACCES) {
            *locked = 1;
            snprintf(errstr, errlen,
                     "%s: %s is in use by another almabridge process (pid %s, lock %s); "
                     "two writers would overwrite each other's events",
                     what, path, *pid ? pid : "unknown", lockpath);
        } else {
            snprintf(errstr, errlen, "%s: cannot lock %s: %s", what, lockpath, strerror(e));
        }
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        ab_warn("%s: cannot write our pid into %s: %s", what, lockpath, strerror(errno));
    }
    return fd;
}

static void set_state(struct ab_eventlog *log, int ready, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_state(struct ab_eventlog *log, int ready, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&log->pos_mu);
    va_start(ap, fmt);
    vsnprintf(log->state, sizeof(log->state), fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&log->pos_mu);
    atomic_store(&log->ready, ready);
}

/* Bytes after the last record the checksum index covers were written but never
 * acknowledged (the index entry is written in the same batch, before the sync that
 * acknowledges): move them to "<file>.torn" as for a torn tail. Returns 0 or an errno. */
static int cut_uncovered(struct ab_eventlog *log, int fd, int64_t covered, int64_t *size)
{
    if (covered >= *size) {
        return 0;
    }
    int err = save_torn(log->cur, fd, covered, *size);
    if (err != 0) {
        return err;
    }
    if (ftruncate(fd, covered) != 0 || fsync(fd) != 0) {
        return errno;
    }
    ab_warn("%s: %s had %" PRId64 " bytes after its last checksummed record (written, never "
            "acknowledged); moved them to %s.torn",
            log->what, log->cur, *size - covered, log->cur);
    *size = covered;
    return 0;
}

/* Open log->cur (creating it), cut its torn tail and sync its directory. On success the
 * new descriptor replaces the old one. Returns 0 or an errno. Start-up or writer thread. */
static int open_current(struct ab_eventlog *log)
{
    int64_t size = 0;
    struct stat st;
    int err = 0;
    int idx = -1;
    int64_t idx_size = 0, covered = 0;
    int fd = open(log->cur, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        return errno;
    }
    if ((err = cut_torn_tail(log->what, log->cur, fd, &size)) != 0 ||
        (fstat(fd, &st) != 0 && (err = errno)) ||
        (err = ab_eventlog_crc_open(log->what, log->cur, size, (uint64_t)st.st_ino, &idx,
                                    &idx_size, &covered)) != 0 ||
        (err = cut_uncovered(log, fd, covered, &size)) != 0 ||
        (err = sync_parent(log->cur)) != 0) {
        if (idx >= 0) {
            close(idx);
        }
        close(fd);
        return err;
    }
    if (log->fd >= 0) {
        close(log->fd);
    }
    if (log->idx_fd >= 0) {
        close(log->idx_fd);
    }
    log->fd = fd;
    log->idx_fd = idx;
    log->idx_synced = idx_size;
    log->dev = st.st_dev;
    log->ino = st.st_ino;
    pthread_mutex_lock(&log->pos_mu);
    log->synced = size;
    pthread_mutex_unlock(&log->pos_mu);
    return 0;
}

/* Writer thread: make sure the path still names the open file, reopening it when it was
 * renamed or removed, when `why` asks for it (SIGHUP), or when an earlier reopen failed.
 * Returns 0 when writes may go ahead, or an errno. */
static int check_file(struct ab_eventlog *log, const char *why)
{
    struct stat st;
    if (log->fd >= 0 && why == NULL) {
        if (stat(log->cur, &st) != 0) {
            why = "it was removed or renamed";
        } else if (st.st_dev != log->dev || st.st_ino != log->ino) {
            why = "the path names another file now";
        } else {
            return 0;
        }
    }
    if (why == NULL) {
        why = "retrying";
    }
    int err = open_current(log);
    if (err != 0) {
        if (log->fd >= 0) {
            close(log->fd); /* never write on into a file that the path no longer names */
            log->fd = -1;
        }
        if (log->idx_fd >= 0) {
            close(log->idx_fd);
            log->idx_fd = -1;
        }
        if (err != log->last_open_errno) {
            ab_error("%s: cannot reopen %s (%s): %s; writes fail (503) until it can be", log->what,
                     log->cur, why, strerror(err));
        }
        log->last_open_errno = err;
        set_state(log, 0, "%s: cannot open: %s", log->cur, strerror(err));
        return err;
    }
    log->last_open_errno = 0;
    ab_info("%s: reopened %s (%s)", log->what, log->cur, why);
    set_state(log, 1, "%s", log->cur);
    return 0;
}

/* Writer thread: a segmented log whose segment is full moves on to the next one. */
static void maybe_roll(struct ab_eventlog *log)
{
    if (log->segment_bytes <= 0 || log->synced < log->segment_bytes) {
        return;
    }
    char name[64];
    ab_eventlog_segment_name(log->seq + 1, name, sizeof(name));
    char *next = ab_asprintf("%s/%s", log->path, name);
    char *old = log->cur;
    log->cur = next;
    int err = open_current(log);
    if (err != 0) {
        ab_error("%s: cannot start segment %s: %s; writing on into %s", log->what, next,
                 strerror(err), old);
        log->cur = old;
        free(next);
        return;
    }
    free(old);
    pthread_mutex_lock(&log->pos_mu);
    log->seq++;
    pthread_mutex_unlock(&log->pos_mu);
}

static size_t batch_len(const struct job *batch)
{
    size_t n = 0;
    for (; batch; batch = batch->next) {
        n++;
    }
    return n;
}

/* Writer thread: the batch's checksum index entries, appended to the index (synced with
 * the data by write_batch). The records go at log->synced onwards. Returns 0 or an errno. */
static int write_index(struct ab_eventlog *log, const struct job *batch)
{
    size_t n = batch_len(batch), len = 0;
    char *buf = ab_malloc(n * AB_EVENTLOG_CRC_ENTRY + 1);
    int64_t off = log->synced;
    for (const struct job *j = batch; j; j = j->next) {
        ab_eventlog_crc_entry(buf + len, off, j->data, j->len - 1);
        len += AB_EVENTLOG_CRC_ENTRY;
        off += (int64_t)j->len;
    }
    int err = 0;
    for (size_t done = 0; done < len;) {
        ssize_t w = write(log->idx_fd, buf + done, len - done);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        done += (size_t)w;
    }
    free(buf);
    return err;
}

/* Writer thread: append a batch with writev and sync once. Returns 0 or an errno; on error
 * the file is cut back to its last synced length. */
static int write_batch(struct ab_eventlog *log, struct job *batch)
{
    struct iovec iov[64];
    int64_t total_all = 0;
    int err = 0;
    err = write_index(log, batch);
    for (struct job *j = batch; j && err == 0;) {
        int n = 0;
        size_t total = 0;
        for (; j && n < 64; j = j->next, n++) {
            iov[n] = (struct iovec){j->data, j->len};
            total += j->len;
        }
        total_all += (int64_t)total;
        struct iovec *v = iov;
        while (total > 0) {
            ssize_t w = writev(log->fd, v, n);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w <= 0) {
                err = w < 0 ? errno : EIO;
                break;
            }
            total -= (size_t)w;
            while (n > 0 && (size_t)w >= v->iov_len) {
                w -= (ssize_t)v->iov_len;
                v++;
                n--;
            }
            if (n > 0) {
                v->iov_base = (char *)v->iov_base + w;
                v->iov_len -= (size_t)w;
            }
        }
    }
    if (err == 0 && log->sync && (fdatasync(log->fd) != 0 || fdatasync(log->idx_fd) != 0)) {
        err = errno;
    }
    if (err != 0) {
        ab_error("%s: writing %s failed: %s", log->what, log->cur, strerror(err));
        if (ftruncate(log->fd, log->synced) != 0 ||
            ftruncate(log->idx_fd, log->idx_synced) != 0) {
            ab_error("%s: cannot roll back %s: %s", log->what, log->cur, strerror(errno));
        }
        set_state(log, 0, "%s: last write failed: %s", log->cur, strerror(err));
        return err;
    }
    log->idx_synced += (int64_t)batch_len(batch) * AB_EVENTLOG_CRC_ENTRY;
    pthread_mutex_lock(&log->pos_mu);
    log->synced += total_all;
    pthread_mutex_unlock(&log->pos_mu);
    if (!atomic_load(&log->ready)) {
        set_state(log, 1, "%s", log->cur);
    }
    maybe_roll(log);
    return 0;
}

/* ---- clients ------------------------------------------------------------------------- */

static void client_destroy(struct ab_eventlog_client *c)
{
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* Drop n references; frees the client when they were the last. */
static void client_unref(struct ab_eventlog_client *c, long n)
{
    pthread_mutex_lock(&c->mu);
    int last = (c->refs -= n) == 0;
    pthread_mutex_unlock(&c->mu);
    if (last) {
        client_destroy(c);
    }
}

/* The CLOCK_REALTIME instant timeout_ms from now, for pthread_cond_timedwait(). */
static struct timespec deadline_in(int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    return until;
}

/* Writer thread: hand a client its records (a list in order), under one lock and with at
 * most one wake-up of its loop. A closed client's records are freed here; an open client's
 * loop is woken under its lock (close sets `closed` under the same lock before it frees
 * the event, so the event is never touched after that). */
static void hand_back(struct ab_eventlog_client *c, struct job *list, int status)
{
    struct job *last = NULL;
    int n = 0;
    pthread_mutex_lock(&c->mu);
    for (struct job *j = list; j; j = j->next) {
        j->status = status;
        if (j->prev_o) {
            j->prev_o->next_o = j->next_o;
        } else {
            c->outstanding = j->next_o;
        }
        if (j->next_o) {
            j->next_o->prev_o = j->prev_o;
        }
        last = j;
        n++;
    }
    if (c->outstanding == NULL) {
        pthread_cond_broadcast(&c->cv);
    }
    if (c->closed) {
        int gone = (c->refs -= n) == 0;
        pthread_mutex_unlock(&c->mu);
        while (list) {
            struct job *j = list;
            list = j->next;
            free(j);
        }
        if (gone) {
            client_destroy(c);
        }
        return;
    }
    int wake = c->done == NULL;
    *c->done_tail = list;
    c->done_tail = &last->next;
    if (wake) {
        event_active(c->done_ev, EV_READ, 0);
    }
    pthread_mutex_unlock(&c->mu);
}

/* Writer thread: hand each record of a written batch back to its client, client by client
 * (a batch holds the records of a few loops, interleaved; each keeps its order). */
static void complete_batch(struct job *batch, int status)
{
    while (batch) {
        struct ab_eventlog_client *c = batch->client;
        struct job *mine = NULL, **mine_tail = &mine, **pp = &batch;
        while (*pp) {
            struct job *j = *pp;
            if (j->client == c) {
                *pp = j->next;
                j->next = NULL;
                *mine_tail = j;
                mine_tail = &j->next;
            } else {
                pp = &j->next;
            }
        }
        hand_back(c, mine, status);
    }
}

/* Run the callbacks of a list of handed-back records and free them. Returns how many. */
static long run_done(struct job *list)
{
    long n = 0;
    while (list) {
        struct job *j = list;
        list = j->next;
        if (j->cb) {
            j->cb(j->status, j->opaque);
        }
        free(j);
        n++;
    }
    return n;
}

/* Loop thread: the writer handed records back. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct ab_eventlog_client *c = arg;
    pthread_mutex_lock(&c->mu);
    struct job *list = c->done;
    c->done = NULL;
    c->done_tail = &c->done;
    pthread_mutex_unlock(&c->mu);
    long n = run_done(list);
    if (n) {
        client_unref(c, n); /* never the last: the loop's own reference is still held */
    }
}

struct ab_eventlog_client *ab_eventlog_client_new(struct ab_eventlog *log,
                                                  struct event_base *base)
{
    struct ab_eventlog_client *c = ab_calloc(1, sizeof(*c));
    c->log = log;
    c->done_tail = &c->done;
    c->refs = 1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->done_ev = event_new(base, -1, 0, on_done, c);
    return c;
}

int ab_eventlog_append(struct ab_eventlog_client *c, const struct iovec *parts, int n,
                       ab_eventlog_done_cb cb, void *opaque)
{
    if (c->closed) {
        return -1;
    }
    size_t len = 0;
    for (int i = 0; i < n; i++) {
        len += parts[i].iov_len;
    }
    struct job *j = ab_malloc(sizeof(*j) + len + 1);
    memset(j, 0, sizeof(*j));
    j->client = c;
    j->cb = cb;
    j->opaque = opaque;
    for (int i = 0; i < n; i++) {
        memcpy(j->data + j->len, parts[i].iov_base, parts[i].iov_len);
        j->len += parts[i].iov_len;
    }
    j->data[j->len++] = '\n';

    pthread_mutex_lock(&c->mu);
    j->next_o = c->outstanding;
    if (c->outstanding) {
        c->outstanding->prev_o = j;
    }
    c->outstanding = j;
    c->refs++;
    pthread_mutex_unlock(&c->mu);

    struct ab_eventlog *log = c->log;
    pthread_mutex_lock(&log->mu);
    *log->tail = j;
    log->tail = &j->next;
    pthread_cond_signal(&log->cv);
    pthread_mutex_unlock(&log->mu);
    return 0;
}

struct stuck {
    ab_eventlog_done_cb cb;
    void *opaque;
};

void ab_eventlog_client_free(struct ab_eventlog_client *c, int timeout_ms)
{
    if (c == NULL) {
        return;
    }
    struct timespec until = deadline_in(timeout_ms);
    pthread_mutex_lock(&c->mu);
    while (c->outstanding && timeout_ms > 0 &&
           pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT) {
    }
    c->closed = 1;
    struct job *done = c->done;
    c->done = NULL;
    c->done_tail = &c->done;
    /* Records still with the writer stay its own; copy out what answers them. */
    size_t n = 0;
    for (struct job *j = c->outstanding; j; j = j->next_o) {
        n++;
    }
    struct stuck *st = ab_calloc(n + 1, sizeof(*st));
    n = 0;
    for (struct job *j = c->outstanding; j; j = j->next_o) {
        if (j->cb) {
            st[n++] = (struct stuck){j->cb, j->opaque};
            j->cb = NULL;
        }
    }
    pthread_mutex_unlock(&c->mu);
    event_free(c->done_ev);
    long freed = run_done(done);
    for (size_t i = 0; i < n; i++) {
        st[i].cb(AB_EVENTLOG_CLOSED, st[i].opaque);
    }
    free(st);
    if (n) {
        ab_warn("%s: closed with %zu write(s) still waiting for the disk; answered 503",
                c->log->what, n);
    }
    client_unref(c, freed + 1);
}

/* ---- the writer and the log ---------------------------------------------------------- */

static void *writer_main(void *arg)
{
    struct ab_eventlog *log = arg;
    pthread_setname_np(pthread_self(), "ab-eventlog");
    pthread_mutex_lock(&log->mu);
    for (;;) {
        if (log->head == NULL && !log->stop && !log->reopen) {
            /* idle: wake once a second to notice a removed or renamed file */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&log->cv, &log->mu, &ts);
        }
        if (log->head == NULL && log->stop) {
            break;
        }
        struct job *batch = log->head;
        log->head = NULL;
        log->tail = &log->head;
        int reopen = log->reopen;
        log->reopen = 0;
        pthread_mutex_unlock(&log->mu);

        int err = check_file(log, reopen ? "reopen requested" : NULL);
        if (batch) {
            if (err == 0) {
                err = write_batch(log, batch);
            }
            complete_batch(batch, err ? AB_EVENTLOG_ERROR : AB_EVENTLOG_OK);
        }
        pthread_mutex_lock(&log->mu);
    }
    log->exited = 1;
    pthread_cond_broadcast(&log->cv);
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* The highest-numbered segment in dir (0 if none). Returns -1 and an errno on error. */
static int64_t last_segment(const char *dir, int *err)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        *err = errno;
        return -1;
    }
    uint64_t max = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end = NULL;
        unsigned long long v = strtoull(e->d_name, &end, 10);
        if (end == e->d_name + 20 && strcmp(end, ".seg") == 0 && v > max) {
            max = v;
        }
    }
    closedir(d);
    return (int64_t)max;
}

/* Segmented log: create the directory if needed and pick the segment to write. */
static int prepare_dir(struct ab_eventlog *log, char *errstr, size_t errlen)
{
    int err = 0;
    if (mkdir(log->path, 0750) == 0) {
        sync_parent(log->path);
    } else if (errno != EEXIST) {
        snprintf(errstr, errlen, "%s: cannot create %s: %s", log->what, log->path,
                 strerror(errno));
        return -1;
    }
    int64_t last = last_segment(log->path, &err);
    if (last < 0) {
        snprintf(errstr, errlen, "%s: cannot read %s: %s", log->what, log->path, strerror(err));
        return -1;
    }
    char name[64];
    log->seq = last > 0 ? (uint64_t)last : 1;
    ab_eventlog_segment_name(log->seq, name, sizeof(name));
    free(log->cur);
    log->cur = ab_asprintf("%s/%s", log->path, name);
    return 0;
}

static void log_destroy(struct ab_eventlog *log)
{
    if (log->fd >= 0) {
        close(log->fd);
    }
    if (log->idx_fd >= 0) {
        close(log->idx_fd);
    }
    if (log->lock_fd >= 0) {
        close(log->lock_fd);
    }
    pthread_mutex_destroy(&log->mu);
    pthread_mutex_destroy(&log->pos_mu);
    pthread_cond_destroy(&log->cv);
    free(log->path);
    free(log->what);
    free(log->cur);
    free(log);
}

struct ab_eventlog *ab_eventlog_open(const struct ab_eventlog_opts *o, int *errp, char *errstr,
                                     size_t errlen)
{
    struct ab_eventlog *log = ab_calloc(1, sizeof(*log));
    int locked = 0, err = 0;
    log->path = ab_strdup(o->path);
    log->what = ab_strdup(o->what ? o->what : "event log");
    log->cur = ab_strdup(o->path);
    log->sync = o->sync;
    log->segment_bytes = o->segment_bytes;
    log->fd = log->lock_fd = log->idx_fd = -1;
    log->tail = &log->head;
    pthread_mutex_init(&log->mu, NULL);
    pthread_mutex_init(&log->pos_mu, NULL);
    pthread_cond_init(&log->cv, NULL);
    if (o->segment_bytes > 0 && prepare_dir(log, errstr, errlen) != 0) {
        goto fail;
    }
    if (o->check_only) {
        int fd = open(log->cur, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(errstr, errlen, "%s: cannot open %s: %s", log->what, log->cur,
                     strerror(errno));
            goto fail;
        }
        close(fd);
        return log;
    }
    char *lockpath = o->segment_bytes > 0 ? ab_asprintf("%s/lock", log->path)
                                          : ab_asprintf("%s.lock", log->path);
    log->lock_fd = take_lock(log->what, log->path, lockpath, &locked, errstr, errlen);
    free(lockpath);
    if (log->lock_fd < 0) {
        goto fail;
    }
    if ((err = open_current(log)) != 0) {
        snprintf(errstr, errlen, "%s: cannot open %s: %s", log->what, log->cur, strerror(err));
        goto fail;
    }
    snprintf(log->state, sizeof(log->state), "%s", log->cur);
    atomic_store(&log->ready, 1);
    if ((err = pthread_create(&log->thread, NULL, writer_main, log)) != 0) {
        snprintf(errstr, errlen, "%s: cannot start the writer thread: %s", log->what,
                 strerror(err));
        goto fail;
    }
    log->started = 1;
    pthread_mutex_lock(&registry_mu);
    log->next_open = registry;
    registry = log;
    pthread_mutex_unlock(&registry_mu);
    return log;
fail:
    if (errp) {
        *errp = locked ? AB_EVENTLOG_ELOCKED : AB_EVENTLOG_EOPEN;
    }
    log_destroy(log);
    return NULL;
}

int ab_eventlog_free(struct ab_eventlog *log, int timeout_ms)
{
    if (log == NULL) {
        return 0;
    }
    if (!log->started) {
        log_destroy(log);
        return 0;
    }
    pthread_mutex_lock(&registry_mu);
    for (struct ab_eventlog **p = &registry; *p; p = &(*p)->next_open) {
        if (*p == log) {
            *p = log->next_open;
            break;
        }
    }
    pthread_mutex_unlock(&registry_mu);
    struct timespec until = deadline_in(timeout_ms);
    pthread_mutex_lock(&log->mu);
    log->stop = 1;
    pthread_cond_broadcast(&log->cv);
    while (!log->exited && pthread_cond_timedwait(&log->cv, &log->mu, &until) != ETIMEDOUT) {
    }
    int exited = log->exited;
    pthread_mutex_unlock(&log->mu);
    if (!exited) {
        /* A sync stuck in the kernel: leave the writer and all it holds for exit(). */
        ab_warn("%s: a write to %s is still waiting for the disk; not waiting for it", log->what,
                log->cur);
        pthread_detach(log->thread);
        pthread_mutex_lock(&registry_mu);
        log->next_open = abandoned;
        abandoned = log;
        pthread_mutex_unlock(&registry_mu);
        return -1;
    }
    pthread_join(log->thread, NULL);
    log_destroy(log);
    return 0;
}

void ab_eventlog_reopen(struct ab_eventlog *log)
{
    pthread_mutex_lock(&log->mu);
    log->reopen = 1;
    pthread_cond_signal(&log->cv);
    pthread_mutex_unlock(&log->mu);
}

void ab_eventlog_reopen_all(void)
{
    pthread_mutex_lock(&registry_mu);
    for (struct ab_eventlog *log = registry; log; log = log->next_open) {
        ab_eventlog_reopen(log);
    }
    pthread_mutex_unlock(&registry_mu);
}

int ab_eventlog_ready(struct ab_eventlog *log)
{
    return atomic_load(&log->ready);
}

void ab_eventlog_describe(struct ab_eventlog *log, char *buf, size_t len)
{
    pthread_mutex_lock(&log->pos_mu);
    snprintf(buf, len, "%s", log->state);
    pthread_mutex_unlock(&log->pos_mu);
}

void ab_eventlog_position(struct ab_eventlog *log, uint64_t *segment, int64_t *synced)
{
    pthread_mutex_lock(&log->pos_mu);
    *segment = log->seq;
    *synced = log->synced;
    pthread_mutex_unlock(&log->pos_mu);
}
