/* The file sink: one CloudEvent per line, appended to a file, acknowledged only after
 * fsync (fdatasync) returned.
 *
 * Group commit: one writer thread per process owns the file. Loop threads queue jobs and
 * return; the writer takes everything queued, writes it with writev and syncs once, then
 * hands each job back to the loop that submitted it (a per-instance completion list and an
 * event activated across threads). Requests that arrive while a sync runs share the next
 * one, so throughput does not fall to one fsync per request.
 *
 * A failed write is rolled back with ftruncate to the last synced length, so a partial
 * line never stays in the file; the batch's callbacks get AB_SINK_ERROR. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/event.h>

#include "file.h"
#include "log.h"
#include "mem.h"
#include "pending.h"

struct file_sink;

struct file_job {
    struct file_job *next;      /* writer queue / completion list */
    struct file_job *prev_o, *next_o; /* the instance's outstanding list */
    struct file_sink *inst;
    struct ab_pending_req *req; /* NULL once close() gave up on the job */
    int status;
    size_t len;
    char data[]; /* the line, newline included */
};

struct file_shared {
    int fd;
    char *path;
    int do_sync;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct file_job *head, **tail; /* the queue the writer takes whole */
    int stop;
    atomic_int failing; /* the last batch failed */
    off_t synced;       /* file length after the last successful batch */
};

struct file_sink {
    struct ab_sink base;
    struct file_shared *sh;
    struct event *done_ev;
    struct ab_pending *pending;      /* the deadline and the callbacks (loop thread) */
    pthread_mutex_t mu;              /* guards done list, outstanding list, closed */
    struct file_job *done, **done_tail;
    struct file_job *outstanding;    /* jobs submitted and not yet handed back */
    int closed;
};

/* Writer thread: append a batch, sync once. Returns 0 or an errno. */
static int write_batch(struct file_shared *sh, struct file_job *batch)
{
    struct iovec iov[64];
    struct file_job *j = batch;
    while (j) {
        int n = 0;
        size_t total = 0;
        for (; j && n < 64; j = j->next, n++) {
            iov[n].iov_base = j->data;
            iov[n].iov_len = j->len;
            total += j->len;
        }
        struct iovec *v = iov;
        while (total > 0) {
            ssize_t w = writev(sh->fd, v, n);
            if (w < 0) {
                if (errno == EINTR) {
                    continue;
                }
                return errno;
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
    if (sh->do_sync && fdatasync(sh->fd) != 0) {
        return errno;
    }
    return 0;
}

/* Writer thread: hand each job back to the loop thread that submitted it. */
static void complete_batch(struct file_job *batch, int status)
{
    while (batch) {
        struct file_job *j = batch;
        batch = j->next;
        struct file_sink *fs = j->inst;
        j->status = status;
        j->next = NULL;
        pthread_mutex_lock(&fs->mu);
        /* unlink from outstanding */
        if (j->prev_o) {
            j->prev_o->next_o = j->next_o;
        } else {
            fs->outstanding = j->next_o;
        }
        if (j->next_o) {
            j->next_o->prev_o = j->prev_o;
        }
        if (j->req == NULL) {
            /* completed by close() already: the loop may be gone, so do not wake it */
            pthread_mutex_unlock(&fs->mu);
            free(j);
            continue;
        }
        int wake = fs->done == NULL;
        *fs->done_tail = j;
        fs->done_tail = &j->next;
        pthread_mutex_unlock(&fs->mu);
        if (wake) {
            event_active(fs->done_ev, EV_READ, 0);
        }
    }
}

static void *writer_main(void *arg)
{
    struct file_shared *sh = arg;
    pthread_mutex_lock(&sh->mu);
    for (;;) {
        while (sh->head == NULL && !sh->stop) {
            pthread_cond_wait(&sh->cv, &sh->mu);
        }
        if (sh->head == NULL && sh->stop) {
            break;
        }
        struct file_job *batch = sh->head;
        sh->head = NULL;
        sh->tail = &sh->head;
        pthread_mutex_unlock(&sh->mu);

        int err = write_batch(sh, batch);
        if (err != 0) {
            ab_error("file sink: writing %s failed: %s", sh->path, strerror(err));
            if (ftruncate(sh->fd, sh->synced) != 0) {
                ab_error("file sink: cannot roll back %s: %s", sh->path, strerror(errno));
            }
        } else {
            off_t end = lseek(sh->fd, 0, SEEK_END);
            if (end >= 0) {
                sh->synced = end;
            }
        }
        atomic_store(&sh->failing, err != 0);
        complete_batch(batch, err ? AB_SINK_ERROR : AB_SINK_OK);
        pthread_mutex_lock(&sh->mu);
    }
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

static int file_global_init(const struct ab_sink_conf *conf, void **shared, char *errstr,
                            size_t errlen)
{
    const struct ab_file_conf *cfg = conf->opts;
    int fd = open(cfg->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(errstr, errlen, "file sink: cannot open %s: %s", cfg->path, strerror(errno));
        return -1;
    }
    struct file_shared *sh = ab_calloc(1, sizeof(*sh));
    sh->fd = fd;
    sh->path = ab_strdup(cfg->path);
    sh->do_sync = cfg->fsync;
    sh->tail = &sh->head;
    sh->synced = lseek(fd, 0, SEEK_END);
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->cv, NULL);
    fsync(fd); /* the file's creation itself is durable before the first ack */
    int rc = pthread_create(&sh->thread, NULL, writer_main, sh);
    if (rc != 0) {
        snprintf(errstr, errlen, "file sink: cannot start writer thread: %s", strerror(rc));
        close(fd);
        free(sh->path);
        free(sh);
        return -1;
    }
    *shared = sh;
    return 0;
}

static void file_global_free(void *shared)
{
    struct file_shared *sh = shared;
    if (sh == NULL) {
        return;
    }
    pthread_mutex_lock(&sh->mu);
    sh->stop = 1;
    pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    pthread_join(sh->thread, NULL);
    close(sh->fd);
    pthread_mutex_destroy(&sh->mu);
    pthread_cond_destroy(&sh->cv);
    free(sh->path);
    free(sh);
}

/* Loop thread: run the callbacks of the jobs the writer handed back. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct file_sink *fs = arg;
    pthread_mutex_lock(&fs->mu);
    struct file_job *list = fs->done;
    fs->done = NULL;
    fs->done_tail = &fs->done;
    pthread_mutex_unlock(&fs->mu);
    while (list) {
        struct file_job *j = list;
        list = j->next;
        if (j->req) {
            ab_pending_done(j->req, j->status,
                            j->status == AB_SINK_OK ? NULL : "file write or fsync failed");
        }
        free(j);
    }
}

static struct ab_sink *file_open(const struct ab_sink_conf *conf, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen)
{
    struct file_sink *fs = ab_calloc(1, sizeof(*fs));
    fs->base.ops = &ab_sink_file;
    fs->sh = shared;
    fs->done_tail = &fs->done;
    pthread_mutex_init(&fs->mu, NULL);
    fs->done_ev = event_new(base, -1, 0, on_done, fs);
    fs->pending = ab_pending_new(base, conf->ack_timeout_ms);
    return &fs->base;
}

static int file_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                       void *opaque)
{
    struct file_sink *fs = (struct file_sink *)s;
    if (fs->closed) {
        return -1;
    }
    struct file_job *j = ab_malloc(sizeof(*j) + msg->value_len + 1);
    memset(j, 0, sizeof(*j));
    j->inst = fs;
    j->req = ab_pending_add(fs->pending, cb, opaque, 0);
    memcpy(j->data, msg->value, msg->value_len);
    j->data[msg->value_len] = '\n';
    j->len = msg->value_len + 1;

    pthread_mutex_lock(&fs->mu);
    j->next_o = fs->outstanding;
    if (fs->outstanding) {
        fs->outstanding->prev_o = j;
    }
    fs->outstanding = j;
    pthread_mutex_unlock(&fs->mu);

    struct file_shared *sh = fs->sh;
    pthread_mutex_lock(&sh->mu);
    *sh->tail = j;
    sh->tail = &j->next;
    pthread_cond_signal(&sh->cv);
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

static int file_ready(struct ab_sink *s)
{
    struct file_sink *fs = (struct file_sink *)s;
    return !fs->closed && !atomic_load(&fs->sh->failing);
}

static void file_describe(struct ab_sink *s, char *buf, size_t len)
{
    struct file_sink *fs = (struct file_sink *)s;
    snprintf(buf, len, "%s%s", fs->sh->path,
             atomic_load(&fs->sh->failing) ? ": last write failed" : "");
}

/* Loop thread, after its loop stopped: wait (bounded) for the writer to hand back every
 * outstanding job, run their callbacks, and complete any still stuck in a sync with
 * AB_SINK_CLOSED (the pending list). Such jobs stay with the writer, which frees them when
 * it is done. */
static void file_close(struct ab_sink *s, int timeout_ms)
{
    struct file_sink *fs = (struct file_sink *)s;
    if (fs == NULL) {
        return;
    }
    pthread_mutex_lock(&fs->mu);
    fs->closed = 1;
    pthread_mutex_unlock(&fs->mu);
    for (int waited = 0;; waited += 5) {
        pthread_mutex_lock(&fs->mu);
        int left = fs->outstanding != NULL;
        pthread_mutex_unlock(&fs->mu);
        if (!left || waited >= timeout_ms) {
            break;
        }
        usleep(5000);
    }
    on_done(-1, 0, fs);
    pthread_mutex_lock(&fs->mu);
    int stuck = fs->outstanding != NULL;
    for (struct file_job *j = fs->outstanding; j; j = j->next_o) {
        j->req = NULL; /* the writer frees the job; ab_pending_free frees the entry */
    }
    pthread_mutex_unlock(&fs->mu);
    on_done(-1, 0, fs); /* handed back meanwhile */
    ab_pending_close(fs->pending, AB_SINK_CLOSED, "file sink closed before fsync returned");
    ab_pending_free(fs->pending);
    if (stuck) {
        /* The writer still holds jobs pointing at fs: leave fs allocated (a bounded leak
         * at exit only), never free what another thread will touch. */
        ab_warn("file sink: closed with writes still waiting for fsync");
        return;
    }
    event_free(fs->done_ev);
    pthread_mutex_destroy(&fs->mu);
    free(fs);
}

const struct ab_sink_ops ab_sink_file = {
    .name = "file",
    .default_route = "",
    .global_init = file_global_init,
    .global_free = file_global_free,
    .open = file_open,
    .submit = file_submit,
    .ready = file_ready,
    .describe = file_describe,
    .close = file_close,
};
