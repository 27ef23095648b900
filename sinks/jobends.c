/* The JOB_END instance ids a sink holds, for reconcile: see jobends.h. */
#include "jobends.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"
#include "mem.h"

int ab_jobends_supported(const struct ab_sink_ops *ops, char *err, size_t errlen)
{
    if (ab_sink_readable(ops)) {
        return 1;
    }
    snprintf(err, errlen, "the %s sink has no read side (core/sink.h): reconcile cannot see "
                          "which JOB_END events it holds", ops ? ops->name : "?");
    return 0;
}

/* One pass over what the backend holds from since_ms (its reader, the sink contract's read
 * side), up to its end: the instance of every JOB_END at or after since_ms. */
int ab_jobends_collect(const struct ab_sink_ops *ops, const struct ab_sink_conf *conf,
                       const char *stream, int64_t since_ms, struct ab_reconcile_ids *ids,
                       char *err, size_t errlen)
{
    if (!ab_jobends_supported(ops, err, errlen)) {
        return -1;
    }
    struct ab_read_from from = {.route = stream && *stream ? stream : NULL,
                                .since_ms = since_ms > 0 ? since_ms : 0};
    struct ab_sink_reader *r = ops->reader_open(conf, &from, err, errlen);
    if (r == NULL) {
        return -1;
    }
    struct ab_read_event ev;
    int got;
    while ((got = ab_reader_next(r, &ev, 0, err, errlen)) == AB_READ_EVENT) {
        int64_t when = -1;
        char *id = ab_reconcile_job_end_instance(ev.value, ev.len, &when);
        if (id && (when < 0 || when >= since_ms)) {
            ab_reconcile_ids_add(ids, id);
        }
        free(id);
    }
    ab_reader_close(r);
    return got == AB_READ_IDLE ? 0 : -1;
}

long ab_jobends_file_holder(const struct ab_sink_conf *conf)
{
    const struct ab_file_conf *f = conf->opts;
    char *lockpath = ab_asprintf("%s.lock", f->path);
    int fd = open(lockpath, O_RDONLY | O_CLOEXEC);
    long pid = 0;
    free(lockpath);
    if (fd < 0) {
        return 0;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        pid = atol(buf) > 0 ? atol(buf) : -1;
    }
    close(fd);
    return pid;
}
