/* almabridge reconcile: write the JOB_END events the sink is missing, from Alma's Jobs API.
 *
 *   almabridge reconcile --job ID [--job ID ...] --institution CODE [--since 48h]
 *                        --alma-api na|eu|ap|aps|ca|cn|URL --alma-api-key-file FILE
 *                        [--api-budget N] [--state-dir DIR]
 *                        [the daemon's sink options, --route, or --config FILE]
 *
 * One shot, for cron, a systemd timer or a Kubernetes CronJob (docs/MISSED_EVENTS.md). The
 * logic is core/reconcile.c; this file parses options, opens the sink through the registry
 * and hands core the two sink functions it needs. Alma's API has no list of every job's
 * instances, only each job's: --job is required (repeatable or comma-separated).
 * Exit: 0 the sink holds a JOB_END for every instance that ended in the window, 1 an API
 * or sink error, 2 usage or configuration errors (and a daemon holding the file sink). */
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/thread.h>

#include "alma_api.h"
#include "cli.h"
#include "event.h"
#include "log.h"
#include "mem.h"
#include "reconcile.h"
#include "route.h"
#include "sinks/dedupe_store.h"
#include "sinks/file.h"
#include "sinks/jobends.h"
#include "sinks/registry.h"

struct target {
    const struct ab_sink_ops *ops;
    struct ab_sink_setup setup;
    void *shared;
    struct ab_route *route;
    char *stream; /* where a JOB_END of --institution goes (Redis) */
    struct ab_reconcile_writer *writer;
    struct ab_dedupe_setup dedupe; /* one-shot: --dedupe-store (auto: "<file>.dedupe") */
};

static int job_ends(void *ctx, int64_t since_ms, struct ab_reconcile_ids *ids, char *err,
                    size_t errlen)
{
    struct target *t = ctx;
    return ab_jobends_collect(t->ops, &t->setup.conf, t->stream, since_ms, ids, err, errlen);
}

static int write_events(void *ctx, struct ab_event *const *evs, size_t n, unsigned char *skipped,
                        char *err, size_t errlen)
{
    struct target *t = ctx;
    return ab_reconcile_writer_put(t->writer, evs, n, skipped, err, errlen);
}

/* Open the sink for writing. Returns 0, or the exit code with err. */
static int open_target(struct target *t, const struct ab_config *cfg, const char *institution,
                       char *err, size_t errlen)
{
    char rerr[256];
    if ((t->ops = ab_sink_find(cfg->sink)) == NULL) {
        snprintf(err, errlen, "--sink: unknown sink \"%s\"", cfg->sink);
        return AB_EXIT_USAGE;
    }
    if (!ab_jobends_supported(t->ops, err, errlen)) {
        return AB_EXIT_USAGE;
    }
    ab_sink_setup_init(&t->setup, cfg, t->ops);
    const char *tmpl = cfg->route ? cfg->route : t->ops->default_route;
    if ((t->route = ab_route_compile(tmpl, rerr, sizeof(rerr))) == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return AB_EXIT_USAGE;
    }
    if ((t->stream = ab_reconcile_job_end_route(t->route, institution, err, errlen)) == NULL) {
        return AB_EXIT_USAGE;
    }
    long holder = strcmp(t->ops->name, "file") == 0 ? ab_jobends_file_holder(&t->setup.conf) : 0;
    if (holder != 0) {
        snprintf(err, errlen, "the file sink's log has one writer and a running almabridge "
                              "(pid %ld) holds it: run reconcile inside the daemon "
                              "(--reconcile-every) or while no daemon runs on that file",
                 holder);
        return AB_EXIT_USAGE;
    }
    if (t->ops->global_init &&
        t->ops->global_init(&t->setup.conf, &t->shared, err, errlen) != 0) {
        return AB_EXIT_FAILED;
    }
    int dd_on = 0; /* the daemon's store: a webhook coming later finds what we wrote */
    if (ab_dedupe_setup_init(&t->dedupe, cfg, &dd_on, err, errlen) != 0) {
        return AB_EXIT_USAGE;
    }
    t->writer = ab_reconcile_writer_open(t->ops, &t->setup.conf, t->shared, t->route, err,
                                         errlen);
    return t->writer && (!dd_on || ab_reconcile_writer_dedupe(t->writer, &t->dedupe, err,
                                                              errlen) == 0) ? 0 : AB_EXIT_FAILED;
}

static void close_target(struct target *t)
{
    ab_reconcile_writer_close(t->writer);
    ab_dedupe_setup_free(&t->dedupe);
    if (t->ops && t->ops->global_free && t->shared) {
        t->ops->global_free(t->shared);
    }
    ab_route_free(t->route);
    free(t->stream);
}

/* ---- inside the daemon: --reconcile-every ------------------------------------------- */

struct ab_reconcile_daemon {
    struct target t;            /* the daemon's sink (its shared state), opened on our base */
    struct ab_sink_setup read;  /* the backend itself (not the spool wrapping it), to read */
    struct ab_alma_api *api;
    const struct ab_config *cfg;
    const struct ab_dedupe_setup *dedupe; /* the daemon's, NULL when off */
    int64_t every_ms, since_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    atomic_int cancel; /* stop now: aborts an API call in progress */
};

static int daemon_job_ends(void *ctx, int64_t since_ms, struct ab_reconcile_ids *ids, char *err,
                           size_t errlen)
{
    struct ab_reconcile_daemon *rd = ctx;
    return ab_jobends_collect(ab_sink_find(rd->cfg->sink), &rd->read.conf, rd->t.stream,
                              since_ms, ids, err, errlen);
}

static int daemon_write(void *ctx, struct ab_event *const *evs, size_t n, unsigned char *skipped,
                        char *err, size_t errlen)
{
    struct ab_reconcile_daemon *rd = ctx;
    return ab_reconcile_writer_put(rd->t.writer, evs, n, skipped, err, errlen);
}

/* Its own thread: one run every --reconcile-every (the first one period after start-up,
 * which leaves Alma's retries of webhooks refused while the daemon was down time to come)
 * until stopped. */
static void *daemon_main(void *arg)
{
    struct ab_reconcile_daemon *rd = arg;
    pthread_setname_np(pthread_self(), "ab-reconcile");
    const struct ab_config *cfg = rd->cfg;
    struct ab_reconcile_sink sink = {daemon_job_ends, daemon_write, rd};
    char err[1024] = "";
    rd->t.writer = ab_reconcile_writer_open(rd->t.ops, &rd->t.setup.conf, rd->t.shared,
                                            rd->t.route, err, sizeof(err));
    if (rd->t.writer == NULL ||
        (rd->dedupe && ab_reconcile_writer_dedupe(rd->t.writer, rd->dedupe, err, sizeof(err)))) {
        ab_error("reconcile: cannot open the sink: %s", err);
        return NULL;
    }
    pthread_mutex_lock(&rd->mu);
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)(rd->every_ms / 1000);
        while (!rd->stop && pthread_cond_timedwait(&rd->cv, &rd->mu, &until) == 0) {
        }
        if (rd->stop) {
            break;
        }
        pthread_mutex_unlock(&rd->mu);
        struct ab_reconcile_opts o = {.jobs = (const char *const *)cfg->reconcile_job.v,
                                      .njobs = cfg->reconcile_job.n, .now_ms = ab_cli_now_ms(),
                                      .since_ms = rd->since_ms,
                                      .institution = cfg->reconcile_institution};
        struct ab_reconcile_report rep;
        int rc = ab_reconcile_run(rd->api, &o, &sink, &rep, err, sizeof(err));
        ab_log(rc == 0 ? (rep.written ? AB_LOG_WARN : AB_LOG_INFO) : AB_LOG_ERROR,
               "reconcile: %ld instance(s), %ld ended, %ld had a JOB_END, %ld written (missed "
               "by the webhooks); API calls %ld of %ld today%s%s",
               rep.listed, rep.ended, rep.present, rep.written,
               ab_alma_api_calls_today(rd->api), ab_alma_api_budget(rd->api),
               rc ? "; stopped: " : "", rc ? err : "");
        pthread_mutex_lock(&rd->mu);
    }
    pthread_mutex_unlock(&rd->mu);
    return NULL;
}

int ab_reconcile_daemon_check(const struct ab_config *cfg, char *err, size_t errlen)
{
    int64_t every = 0, since = 0;
    if (cfg->reconcile_every == NULL) {
        return 0;
    }
    if (ab_cli_duration_ms(cfg->reconcile_every, &every) != 0 || every < 1000 ||
        ab_cli_duration_ms(cfg->reconcile_since, &since) != 0 || cfg->reconcile_job.n == 0 ||
        cfg->reconcile_institution == NULL || cfg->alma_api == NULL) {
        snprintf(err, errlen, "--reconcile-every DURATION (1s or more) needs --reconcile-job ID, "
                              "--reconcile-institution CODE, --alma-api and a "
                              "--reconcile-since DURATION");
        return -1;
    }
    return ab_jobends_supported(ab_sink_find(cfg->sink), err, errlen) ? 0 : -1;
}

struct ab_reconcile_daemon *ab_reconcile_daemon_start(const struct ab_config *cfg,
                                                      const struct ab_sink_ops *ops,
                                                      const struct ab_sink_conf *conf,
                                                      void *shared,
                                                      const struct ab_dedupe_setup *dedupe,
                                                      char *err, size_t errlen)
{
    if (cfg->reconcile_every == NULL) {
        return NULL;
    }
    struct ab_reconcile_daemon *rd = ab_calloc(1, sizeof(*rd));
    const struct ab_sink_ops *backend = ab_sink_find(cfg->sink);
    char rerr[256];
    rd->cfg = cfg;
    rd->dedupe = dedupe;
    if (ab_reconcile_daemon_check(cfg, err, errlen) != 0) {
        goto fail;
    }
    ab_cli_duration_ms(cfg->reconcile_every, &rd->every_ms);
    ab_cli_duration_ms(cfg->reconcile_since, &rd->since_ms);
    ab_sink_setup_init(&rd->read, cfg, backend);
    const struct ab_file_conf *file = ab_config_sink_opts(cfg, &ab_sink_file);
    rd->t.ops = ops;
    rd->t.setup.conf = *conf;
    rd->t.shared = shared;
    if (!(rd->t.route = ab_route_compile(cfg->route ? cfg->route : backend->default_route, rerr,
                                         sizeof(rerr))) ||
        !(rd->t.stream = ab_reconcile_job_end_route(rd->t.route, cfg->reconcile_institution, err, errlen)) ||
        !(rd->api = ab_alma_api_from_config(cfg, file->path, err, errlen))) {
        goto fail;
    }
    pthread_mutex_init(&rd->mu, NULL);
    pthread_cond_init(&rd->cv, NULL);
    ab_alma_api_cancel_on(rd->api, &rd->cancel);
    pthread_create(&rd->thread, NULL, daemon_main, rd);
    return rd;
fail:
    ab_route_free(rd->t.route);
    free(rd->t.stream);
    free(rd);
    return NULL;
}

void ab_reconcile_daemon_stop(struct ab_reconcile_daemon *rd)
{
    if (rd == NULL) {
        return;
    }
    atomic_store(&rd->cancel, 1);
    pthread_mutex_lock(&rd->mu);
    rd->stop = 1;
    pthread_cond_signal(&rd->cv);
    pthread_mutex_unlock(&rd->mu);
    pthread_join(rd->thread, NULL);
    ab_reconcile_writer_close(rd->t.writer);
    ab_route_free(rd->t.route);
    free(rd->t.stream);
    ab_alma_api_free(rd->api);
    pthread_mutex_destroy(&rd->mu);
    pthread_cond_destroy(&rd->cv);
    free(rd);
}

static const char RECONCILE_ABOUT[] =
    "Write the JOB_END events the sink is missing: list each job's instances submitted in\n"
    "the window with Alma's Jobs API and, for each one that ended without a JOB_END in the\n"
    "sink, write the event Alma's webhook would have given (id = the job instance id,\n"
    "almaorigin: api) through the sink's own writer. Prints what it found and wrote and the\n"
    "API calls used. Exit status: 0 the sink is complete, 1 an API or sink error, 2 usage or\n"
    "configuration error (also: a daemon holds the file sink's log).";
static const char RECONCILE_FOOTER[] =
    "Alma API options (almabridge --help): --alma-api, --alma-api-key-file, --alma-api-ca,\n"
    "--api-budget, --state-dir. Sink options are the daemon's: --sink, --route, --file,\n"
    "--redis, or --config FILE and ALMABRIDGE_* variables. See docs/MISSED_EVENTS.md.";

/* reconcile's own options (loaded with the daemon's, see ab_cli_load). */
struct reconcile_opts {
    struct ab_strlist job;
    char *since, *institution;
};

#define ROFF(field) offsetof(struct reconcile_opts, field)
/* clang-format off */
static const struct ab_option reconcile_options[] = {
    {.name = "job", .type = AB_OPT_LIST, .off = ROFF(job), .group = "Reconcile",
     .metavar = "ID", .help = "a job (job_info.id, e.g. M53); repeatable, or ID,ID,..."},
    {.name = "since", .type = AB_OPT_STRING, .def = "48h", .off = ROFF(since),
     .group = "Reconcile", .metavar = "DURATION",
     .help = "the window: instances submitted this long ago or later"},
    {.name = "institution", .type = AB_OPT_STRING, .off = ROFF(institution),
     .group = "Reconcile", .metavar = "CODE", .help = "the institution the API key belongs to"},
};
/* clang-format on */
static const struct ab_optset reconcile_optset =
    AB_OPTSET(reconcile_options, struct reconcile_opts);
static const struct ab_sink_ops reconcile_table = {
    .name = "reconcile", .options = &reconcile_optset, .flags = AB_SINK_WRAPS};

/* The --job values split at commas into jobs. */
static void split_jobs(const struct ab_strlist *in, char ***jobs, size_t *njobs)
{
    for (size_t i = 0; i < in->n; i++) {
        for (const char *p = in->v[i]; *p;) {
            size_t l = strcspn(p, ",");
            if (l > 0) {
                *jobs = ab_realloc(*jobs, (*njobs + 1) * sizeof(**jobs));
                (*jobs)[(*njobs)++] = ab_strndup(p, l);
            }
            p += l + (p[l] == ',');
        }
    }
}

int ab_cmd_reconcile(int argc, char **argv)
{
    const struct ab_cli_table cmd = {
        "almabridge reconcile --job ID [--job ID ...] --institution CODE [options]",
        RECONCILE_ABOUT, RECONCILE_FOOTER, &reconcile_table};
    char **jobs = NULL;
    size_t njobs = 0;
    int rc = AB_EXIT_USAGE, started, loaded = 0;
    char err[1024] = "";
    struct ab_config cfg;
    struct target t = {0};
    struct ab_alma_api *api = NULL;
    int64_t since_ms = 0;

    if ((started = ab_cli_load(&cmd, argc, argv, &cfg, err, sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    loaded = 1;
    ab_config_scrub_argv(ab_sinks, argc, argv);
    const struct reconcile_opts *ro = ab_config_sink_opts(&cfg, &reconcile_table);
    const char *institution = ro->institution;
    split_jobs(&ro->job, &jobs, &njobs);
    if (njobs == 0 || institution == NULL || ab_cli_duration_ms(ro->since, &since_ms) != 0) {
        snprintf(err, sizeof(err), "give --job ID (at least one), --institution CODE and a "
                                   "--since such as 48h (see --help)");
        goto done;
    }
    ab_log_configure(strcmp(cfg.log_level, "info") == 0 ? "warn" : cfg.log_level,
                     cfg.log_format, err, sizeof(err));
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads(); /* the file sink answers from its writer thread */
    const struct ab_file_conf *file = ab_config_sink_opts(&cfg, &ab_sink_file);
    if ((api = ab_alma_api_from_config(&cfg, file->path, err, sizeof(err))) == NULL ||
        (rc = open_target(&t, &cfg, institution, err, sizeof(err))) != 0) {
        rc = api ? rc : AB_EXIT_USAGE;
        goto done;
    }
    struct ab_reconcile_sink sink = {job_ends, write_events, &t};
    struct ab_reconcile_opts o = {.jobs = (const char *const *)jobs, .njobs = njobs,
                                  .now_ms = ab_cli_now_ms(), .since_ms = since_ms,
                                  .institution = institution, .out = stdout};
    struct ab_reconcile_report rep;
    rc = ab_reconcile_run(api, &o, &sink, &rep, err, sizeof(err)) == 0 ? AB_EXIT_OK
                                                                        : AB_EXIT_FAILED;
    printf("reconcile: %ld instance(s) in the window, %ld ended, %ld already had a JOB_END, "
           "%ld written%s\n", rep.listed, rep.ended, rep.present, rep.written,
           rc == AB_EXIT_OK ? "; the sink is complete" : "; stopped by an error");
    printf("API calls: %ld this run, %ld of --api-budget %ld today (UTC)\n",
           ab_alma_api_calls(api), ab_alma_api_calls_today(api), ab_alma_api_budget(api));
    fflush(stdout);
done:
    if (rc != AB_EXIT_OK && err[0]) {
        fprintf(stderr, "almabridge reconcile: %s\n", err);
    }
    close_target(&t);
    ab_alma_api_free(api);
    for (size_t i = 0; i < njobs; i++) {
        free(jobs[i]);
    }
    free(jobs);
    if (loaded) {
        ab_config_free(&cfg);
    }
    return rc;
}
