/* The file-backed dead letter. See deadletter.h. */
#include "deadletter.h"

#include <stdlib.h>
#include <sys/uio.h>

#include "eventlog.h"
#include "mem.h"
#include "pending.h"

struct ab_deadletter {
    struct ab_eventlog *log;
};

struct ab_deadletter_client {
    struct ab_eventlog_client *client;
    struct ab_pending *pending;
};

char *ab_deadletter_path(const char *file)
{
    return ab_asprintf("%s.deadletter", file);
}

struct ab_deadletter *ab_deadletter_open(const char *file, int sync, int check_only,
                                         char *errstr, size_t errlen)
{
    char *path = ab_deadletter_path(file);
    struct ab_eventlog_opts o = {
        .path = path, .what = "dead letter", .sync = sync, .check_only = check_only};
    struct ab_eventlog *log = ab_eventlog_open(&o, NULL, errstr, errlen);
    free(path);
    if (log == NULL) {
        return NULL;
    }
    struct ab_deadletter *dl = ab_calloc(1, sizeof(*dl));
    dl->log = log;
    return dl;
}

void ab_deadletter_free(struct ab_deadletter *dl)
{
    if (dl) {
        ab_eventlog_free(dl->log, 1000);
        free(dl);
    }
}

struct ab_deadletter_client *ab_deadletter_client_new(struct ab_deadletter *dl,
                                                      struct event_base *base,
                                                      long timeout_ms)
{
    struct ab_deadletter_client *c = ab_calloc(1, sizeof(*c));
    c->client = ab_eventlog_client_new(dl->log, base);
    c->pending = ab_pending_new(base, timeout_ms);
    return c;
}

static void on_appended(int status, void *opaque)
{
    ab_pending_done(opaque,
                    status == AB_EVENTLOG_OK       ? AB_SINK_OK
                    : status == AB_EVENTLOG_CLOSED ? AB_SINK_CLOSED
                                                   : AB_SINK_ERROR,
                    status == AB_EVENTLOG_OK ? NULL : "dead-letter write or fsync failed");
}

int ab_deadletter_submit(struct ab_deadletter_client *c, const struct ab_sink_msg *msg,
                         ab_sink_done_cb cb, void *opaque)
{
    struct ab_pending_req *r = ab_pending_add(c->pending, cb, opaque, 0);
    struct iovec part = {(void *)msg->value, msg->value_len};
    if (ab_eventlog_append(c->client, &part, 1, on_appended, r) != 0) {
        ab_pending_cancel(r);
        return -1;
    }
    return 0;
}

void ab_deadletter_client_free(struct ab_deadletter_client *c, int timeout_ms)
{
    if (c) {
        ab_eventlog_client_free(c->client, timeout_ms);
        ab_pending_free(c->pending);
        free(c);
    }
}
