/* The registry of sink backends. See registry.h. */
#include "registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config.h"
#include "dedupe_store.h"
#include "eventlog.h"
#include "file.h"
#include "http.h"
#include "kafka.h"
#include "mem.h"
#include "redis.h"
#include "route.h"
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
    if (cfg->content_mode && strcmp(cfg->content_mode, "batched") == 0 &&
        !(backend->flags & AB_SINK_BATCHES)) {
        snprintf(errstr, errlen, "--content-mode batched is the HTTP binding's (--sink http); "
                 "--sink %s takes binary or structured", backend->name);
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

/* ---- the deduplication store ---------------------------------------------------------- */

/* 1 when the sink is Redis on the same server and database as the store: then the sink
 * claims and writes in one script (sinks/redis.c), for the spool's forwarder too. */
static int same_redis(const struct ab_config *cfg, const char *store_url)
{
    const struct ab_redis_conf *rc = ab_config_sink_opts(cfg, &ab_sink_redis);
    if (strcmp(cfg->sink, "redis") != 0 || rc == NULL) {
        return 0;
    }
    char *h[2] = {NULL, NULL}, *u[2] = {NULL, NULL}, *pw[2] = {NULL, NULL};
    int port[2] = {0, 0}, ok = 1;
    long db[2] = {0, 0};
    char addr[300], err[256];
    const char *urls[2] = {rc->url ? rc->url : "redis://127.0.0.1:6379", store_url};
    for (int i = 0; i < 2; i++) {
        ok &= ab_redis_url_parse(urls[i], &h[i], &port[i], &db[i], &u[i], &pw[i], addr,
                                 sizeof(addr), err, sizeof(err)) == 0;
    }
    ok = ok && strcmp(h[0], h[1]) == 0 && port[0] == port[1] && db[0] == db[1];
    for (int i = 0; i < 2; i++) {
        free(h[i]);
        free(u[i]);
        free(pw[i]);
    }
    return ok;
}

static const struct ab_dedupe_ops *const dedupe_stores[] = {&ab_dedupe_redis, &ab_dedupe_file,
                                                            NULL};

int ab_dedupe_setup_init(struct ab_dedupe_setup *setup, const struct ab_config *cfg, int *on,
                         char *errstr, size_t errlen)
{
    *setup = (struct ab_dedupe_setup){0};
    *on = 0;
    const char *url = cfg->dedupe_store ? cfg->dedupe_store : "auto";
    char *owned = NULL;
    if (strcmp(url, "none") == 0 || url[0] == '\0') {
        return 0;
    }
    if (strcmp(url, "auto") == 0) {
        if (strcmp(cfg->sink, "file") != 0) {
            return 0;
        }
        const struct ab_file_conf *fc = ab_config_sink_opts(cfg, &ab_sink_file);
        url = owned = ab_asprintf("file:%s.dedupe", fc->path);
    }
    for (size_t i = 0; dedupe_stores[i]; i++) {
        const char *sch = dedupe_stores[i]->scheme;
        if (strncasecmp(url, sch, strlen(sch)) == 0) {
            setup->ops = dedupe_stores[i];
        }
    }
    int rc = -1;
    if (setup->ops == NULL) {
        snprintf(errstr, errlen, "--dedupe-store: expected redis://..., file:DIR, none or auto");
        goto done;
    }
    char rerr[256];
    if (cfg->dedupe_key && !(setup->key = ab_route_compile(cfg->dedupe_key, rerr, sizeof(rerr)))) {
        snprintf(errstr, errlen, "--dedupe-key: %s", rerr);
        goto done;
    }
    setup->conf.url = ab_strdup(url);
    setup->conf.window_ms = ab_dedupe_parse_duration(cfg->dedupe_window);
    /* A claim outlives every answer the sink can still give: a late acknowledgement marks
     * the key stored; one that never comes lets the claim lapse. */
    setup->conf.claim_ms = cfg->ack_timeout_ms * 2 > 60000 ? cfg->ack_timeout_ms * 2 : 60000;
    setup->conf.timeout_ms = cfg->ack_timeout_ms / 2 > 0 ? cfg->ack_timeout_ms / 2 : 1;
    setup->conf.check_only = cfg->check_config;
    setup->refuse = strcmp(cfg->dedupe_on_error, "refuse") == 0;
    setup->ack_timeout_ms = cfg->ack_timeout_ms;
    setup->sink_atomic = setup->ops == &ab_dedupe_redis && same_redis(cfg, url);
    if (setup->ops->global_init(&setup->conf, &setup->shared, errstr, errlen) != 0) {
        goto done;
    }
    *on = 1;
    if (!cfg->check_config) {
        ab_dedupe_metrics_init(setup);
    }
    rc = 0;
done:
    free(owned);
    if (rc != 0) {
        ab_dedupe_setup_free(setup);
    }
    return rc;
}

void ab_dedupe_setup_free(struct ab_dedupe_setup *setup)
{
    if (setup->ops && setup->shared && setup->ops->global_free) {
        setup->ops->global_free(setup->shared);
    }
    ab_route_free(setup->key);
    free((char *)setup->conf.url);
    *setup = (struct ab_dedupe_setup){0};
}
