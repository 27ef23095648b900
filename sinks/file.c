/* The file sink: one CloudEvent per line, appended to a file, acknowledged only after
 * fsync (fdatasync) returned.
 *
 * The file is an event log (eventlog.h): one writer thread per process group-commits what
 * every loop thread appends (writev, one sync per batch), rolls a failed batch back, cuts a
 * torn tail at start-up, reopens the file when it is renamed or removed (log rotation) or on
 * SIGHUP, holds an exclusive lock ("<file>.lock") so that a second process cannot write the
 * same file, and fsyncs the directory of a created file before the first acknowledgement.
 * Each loop thread's instance is a client of that log; its pending list (pending.h) owns
 * the deadline and the callbacks. With --dead-letter on, dead-letter records go to
 * "<file>.deadletter" beside it (deadletter.h), never into the file itself. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "config.h"
#include "deadletter.h"
#include "eventlog.h"
#include "file.h"
#include "log.h"
#include "mem.h"
#include "pending.h"

/* How long the process waits, after every instance is closed, for a write stuck in the
 * disk before it leaves the writer behind (SIGTERM with a stuck fsync). */
#define FILE_FREE_TIMEOUT_MS 1000

/* What every instance shares: the log, and the dead letter beside it (--dead-letter on). */
struct file_shared {
    struct ab_eventlog *log;
    struct ab_deadletter *dl;
};

struct file_sink {
    struct ab_sink base;
    struct ab_eventlog *log;
    struct ab_eventlog_client *client;
    struct ab_pending *pending; /* each entry travels through the log as its record's opaque */
    struct ab_deadletter_client *dl; /* NULL without a dead letter */
};

/* The file sink's options (struct ab_file_conf). */
#define OFF(field) offsetof(struct ab_file_conf, field)
/* clang-format off */
static const struct ab_option file_options[] = {
    {.name = "file", .type = AB_OPT_STRING, .def = "./almabridge-events.jsonl", .off = OFF(path),
     .group = "Sink", .metavar = "FILE",
     .help = "file sink: append one CloudEvent per line to FILE"},
    {.name = "file-fsync", .type = AB_OPT_BOOL, .def = "true", .off = OFF(fsync),
     .group = "Sink",
     .help = "file sink: fsync before acknowledging; false trades durability for speed"},
};
/* clang-format on */
static const struct ab_optset file_optset = AB_OPTSET(file_options, struct ab_file_conf);

static int file_global_init(const struct ab_sink_conf *conf, void **shared, char *errstr,
                            size_t errlen)
{
    const struct ab_file_conf *cfg = conf->opts;
    struct ab_eventlog_opts o = {
        .path = cfg->path,
        .what = "file sink",
        .sync = cfg->fsync,
        .check_only = conf->check_only,
    };
    struct ab_eventlog *log = ab_eventlog_open(&o, NULL, errstr, errlen);
    if (log == NULL) {
        return -1;
    }
    struct file_shared *sh = ab_calloc(1, sizeof(*sh));
    sh->log = log;
    if (conf->dead_letter &&
        (sh->dl = ab_deadletter_open(cfg->path, cfg->fsync, conf->check_only, errstr,
                                     errlen)) == NULL) {
        ab_eventlog_free(log, FILE_FREE_TIMEOUT_MS);
        free(sh);
        return -1;
    }
    *shared = sh;
    return 0;
}

static void file_global_free(void *shared)
{
    struct file_shared *sh = shared;
    ab_deadletter_free(sh->dl);
    ab_eventlog_free(sh->log, FILE_FREE_TIMEOUT_MS);
    free(sh);
}

static struct ab_sink *file_open(const struct ab_sink_conf *conf, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen)
{
    struct file_sink *fs = ab_calloc(1, sizeof(*fs));
    fs->base.ops = &ab_sink_file;
    struct file_shared *sh = shared;
    fs->log = sh->log;
    fs->client = ab_eventlog_client_new(sh->log, base);
    fs->pending = ab_pending_new(base, conf->ack_timeout_ms);
    if (sh->dl) {
        fs->dl = ab_deadletter_client_new(sh->dl, base, conf->ack_timeout_ms);
    }
    return &fs->base;
}

/* Loop thread: the log's answer for one event (ignored if its deadline passed). */
static void on_appended(int status, void *opaque)
{
    const char *why = status == AB_EVENTLOG_OK       ? NULL
                      : status == AB_EVENTLOG_CLOSED ? "file sink closed before fsync returned"
                                                     : "file write or fsync failed";
    ab_pending_done(opaque,
                    status == AB_EVENTLOG_OK       ? AB_SINK_OK
                    : status == AB_EVENTLOG_CLOSED ? AB_SINK_CLOSED
                                                   : AB_SINK_ERROR,
                    why);
}

static int file_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                       void *opaque)
{
    struct file_sink *fs = (struct file_sink *)s;
    if (msg->dead_letter) {
        return fs->dl ? ab_deadletter_submit(fs->dl, msg, cb, opaque) : -1;
    }
    struct ab_pending_req *r = ab_pending_add(fs->pending, cb, opaque, 0);
    struct iovec part = {(void *)msg->value, msg->value_len};
    if (ab_eventlog_append(fs->client, &part, 1, on_appended, r) != 0) {
        ab_pending_cancel(r);
        return -1;
    }
    return 0;
}

static int file_ready(struct ab_sink *s)
{
    struct file_sink *fs = (struct file_sink *)s;
    return ab_eventlog_ready(fs->log);
}

static void file_describe(struct ab_sink *s, char *buf, size_t len)
{
    struct file_sink *fs = (struct file_sink *)s;
    ab_eventlog_describe(fs->log, buf, len);
}

/* Loop thread, after its loop stopped: the log client waits (bounded) for the writes in
 * flight and answers those still waiting for the disk with AB_SINK_CLOSED; the pending
 * list runs every callback before it is freed. */
static void file_close(struct ab_sink *s, int timeout_ms)
{
    struct file_sink *fs = (struct file_sink *)s;
    if (fs == NULL) {
        return;
    }
    ab_eventlog_client_free(fs->client, timeout_ms);
    ab_pending_free(fs->pending);
    ab_deadletter_client_free(fs->dl, timeout_ms);
    free(fs);
}

/* The read side: the file, followed across rotation (eventlog_read.c), or its dead letter
 * "<file>.deadletter" (from->dead_letter). Any thread. */
static struct ab_sink_reader *file_reader_open(const struct ab_sink_conf *conf,
                                               const struct ab_read_from *from, char *errstr,
                                               size_t errlen)
{
    const struct ab_file_conf *cfg = conf->opts;
    char *dl = from->dead_letter && !from->path ? ab_deadletter_path(cfg->path) : NULL;
    struct ab_sink_reader *r = ab_eventlog_sink_reader(
        &ab_sink_file, dl ? dl : from->path ? from->path : cfg->path, 0, from->position,
        from->since_ms, errstr, errlen);
    free(dl);
    return r;
}

const struct ab_sink_ops ab_sink_file = {
    .name = "file",
    .default_route = "",
    .options = &file_optset,
    .global_init = file_global_init,
    .global_free = file_global_free,
    .open = file_open,
    .submit = file_submit,
    .ready = file_ready,
    .describe = file_describe,
    .close = file_close,
    .reader_open = file_reader_open,
    .reader_next = ab_eventlog_sink_reader_next,
    .reader_close = ab_eventlog_sink_reader_close,
};
