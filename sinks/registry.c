/* The registry of sink backends. See registry.h. */
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "eventlog.h"
#include "file.h"
#include "http.h"
#include "kafka.h"
#include "redis.h"
#include "spool.h"

const struct ab_sink_ops *const ab_sinks[] = {
    &ab_sink_file,
    &ab_sink_spool, /* wraps kafka or redis: only its options are found here */
    &ab_sink_kafka,
    &ab_sink_redis,
    &ab_sink_http,
    NULL,
};

const struct ab_sink_ops *ab_sink_find(const char *name)
{
    for (size_t i = 0; name && ab_sinks[i]; i++) {
        if (!(ab_sinks[i]->flags & AB_SINK_WRAPS) && strcmp(ab_sinks[i]->name, name) == 0) {
            return ab_sinks[i];
        }
    }
    return NULL;
}

void ab_sink_setup_init(struct ab_sink_setup *s, const struct ab_config *cfg,
                        const struct ab_sink_ops *ops)
{
    memset(s, 0, sizeof(*s));
    s->ops = s->backend = ops;
    ab_config_sink_conf(cfg, ops, &s->conf);
}

int ab_sink_setup_build(struct ab_sink_setup *s, const struct ab_config *cfg, char *errstr,
                        size_t errlen)
{
    const struct ab_sink_ops *backend = ab_sink_find(cfg->sink);
    if (backend == NULL) {
        char names[256] = "";
        for (size_t i = 0, w = 0; ab_sinks[i] && w < sizeof(names); i++) {
            if (!(ab_sinks[i]->flags & AB_SINK_WRAPS)) {
                w += (size_t)snprintf(names + w, sizeof(names) - w, "%s%s", w ? ", " : "",
                                      ab_sinks[i]->name);
            }
        }
        snprintf(errstr, errlen, "--sink: unknown sink \"%s\" (%s)", cfg->sink, names);
        return -1;
    }
    ab_sink_setup_init(s, cfg, backend);
    const struct ab_spool_opts *spool = ab_config_sink_opts(cfg, &ab_sink_spool);
    if (spool->dir == NULL) {
        return 0;
    }
    if (ab_spool_configure(&s->spool, spool, backend, &s->conf, errstr, errlen) != 0) {
        return -1;
    }
    s->ops = &ab_sink_spool;
    s->conf.opts = &s->spool;
    return 0;
}

const struct ab_sink_ops *ab_sink_log_reader(const char *path, int *spool, char *errstr,
                                             size_t errlen)
{
    struct stat st;
    *spool = 0;
    if (stat(path, &st) != 0) {
        snprintf(errstr, errlen, "--from %s: %s", path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        *spool = ab_spool_has_progress(path);
        return &ab_sink_spool;
    }
    return &ab_sink_file;
}

const struct ab_sink_ops *ab_sink_reader_check(const struct ab_sink_ops *ops, const char *name,
                                               const char *command, char *errstr,
                                               size_t errlen)
{
    if (ab_sink_readable(ops)) {
        return ops;
    }
    char names[256] = "";
    size_t w = 0;
    for (size_t i = 0; ab_sinks[i] && w < sizeof(names); i++) {
        if (ab_sink_readable(ab_sinks[i]) && !(ab_sinks[i]->flags & AB_SINK_WRAPS)) {
            w += (size_t)snprintf(names + w, sizeof(names) - w, "%s%s", w ? ", " : "",
                                  ab_sinks[i]->name);
        }
    }
    snprintf(errstr, errlen, "the %s sink cannot be read back (it has no read side); %s reads "
                             "only from a sink that has one: %s",
             name ? name : "(none)", command, names);
    return NULL;
}

const struct ab_sink_ops *ab_sink_reader_find(const char *name, const char *command,
                                              char *errstr, size_t errlen)
{
    return ab_sink_reader_check(ab_sink_find(name), name, command, errstr, errlen);
}

void ab_sink_reopen_files(void)
{
    ab_eventlog_reopen_all(); /* the file sink's log and the spool's */
}
