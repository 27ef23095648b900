/* INTERIM readers of JOB_END instance ids for reconcile: see jobends.h. */
#include "jobends.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "file.h"
#include "mem.h"
#include "redis.h"

struct collect {
    struct ab_reconcile_ids *ids;
    int64_t since_ms;
};

static void on_event(const char *line, size_t len, void *arg)
{
    struct collect *c = arg;
    int64_t when = -1;
    char *id = ab_reconcile_job_end_instance(line, len, &when);
    if (id && (when < 0 || when >= c->since_ms)) {
        ab_reconcile_ids_add(c->ids, id);
    }
    free(id);
}

/* Every line of the log file (none when it does not exist yet). */
static int scan_file(const char *path, struct collect *c, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (fp == NULL) {
        if (errno == ENOENT) {
            return 0;
        }
        snprintf(err, errlen, "file sink: cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    while ((n = getline(&line, &cap, fp)) > 0) {
        on_event(line, (size_t)n - (line[n - 1] == '\n'), c);
    }
    free(line);
    fclose(fp);
    return 0;
}

int ab_jobends_supported(const struct ab_sink_ops *ops, char *err, size_t errlen)
{
    if (ops == &ab_sink_file || ops == &ab_sink_redis) {
        return 1;
    }
    snprintf(err, errlen, "reconcile reads the file and redis sinks; the %s sink's reader comes "
                          "with the sink read side (issue 18)", ops->name);
    return 0;
}

int ab_jobends_collect(const struct ab_sink_ops *ops, const struct ab_sink_conf *conf,
                       const char *stream, int64_t since_ms, struct ab_reconcile_ids *ids,
                       char *err, size_t errlen)
{
    struct collect c = {ids, since_ms};
    if (ops == &ab_sink_file) {
        return scan_file(((const struct ab_file_conf *)conf->opts)->path, &c, err, errlen);
    }
    if (ops == &ab_sink_redis) {
        return ab_redis_scan(conf->opts, stream, since_ms, on_event, &c, err, errlen);
    }
    ab_jobends_supported(ops, err, errlen);
    return -1;
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
