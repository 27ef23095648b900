/* almabridge wait: block until a given Alma job instance (or the next run of a job) has
 * ended, reading the JOB_END CloudEvents the daemon wrote to Kafka, Redis or its file.
 *
 *   almabridge wait --job-instance ID [--job-id ID] [--since 24h] [--timeout DURATION]
 *                   [--sink kafka|redis|file, the daemon's connection options, --route,
 *                    or --config FILE]
 *
 * The event is found wherever the daemon put it, through the sink's read side (sink.h):
 * the route template is the daemon's, so the topic (Kafka) or stream (Redis) is the one a
 * JOB_END goes to. Reading starts at now - --since (each backend's reader says how: Kafka
 * offsets by timestamp, Redis a time-derived stream id, the file its events' own time, then
 * follows), so a job that ended just before the waiter started is found, and any number of
 * waiters run side by side without sharing anything. A sink without a read side is
 * refused (exit 2). Exit: 0 the job's status is a success (COMPLETED_SUCCESS, or --success),
 * 1 it ended otherwise (status on stderr), 3 --timeout, 2 usage or connection errors.
 * The matching CloudEvent is printed on stdout. */
#include <inttypes.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alma_api.h"
#include "cli.h"
#include "event.h"
#include "mem.h"
#include "reconcile.h"
#include "route.h"
#include "sink.h"
#include "sinks/file.h"
#include "sinks/registry.h"
#include "wait.h"

#define RETRY_MS 1000 /* after a read error: reconnect this often */

/* ---- --fallback-after: Alma's API answers when the webhook does not come -------------- */

/* Called wherever the reader checks its deadline: when a poll is due, one API call
 * (core/reconcile.h); an ended instance is reported like its webhook would be. */
static int fallback_check(struct ab_waiter *w)
{
    struct ab_event *ev = NULL;
    char err[1024];
    if (w->poll == NULL || w->fallback_rc != NO_MATCH) {
        return w->fallback_rc;
    }
    int rc = ab_reconcile_poll_step(w->poll, ab_cli_mono_ms(), &ev, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "almabridge wait: %s%s\n", err, ab_reconcile_poll_stopped(w->poll)
                                                           ? "; waiting for the webhook only"
                                                           : "; asking again later");
    } else if (rc > 0) {
        fprintf(stderr, "almabridge wait: answered by the Alma API (no JOB_END webhook after "
                        "--fallback-after)\n");
        w->fallback_rc = AB_EXIT_OK; /* ab_wait_finish() must not claim the webhook */
        w->fallback_rc = ab_wait_finish(w, ev->json, ev->json_len);
        ab_event_free(ev);
    }
    return w->fallback_rc;
}

static int64_t remaining_ms(struct ab_waiter *w)
{
    if (fallback_check(w) != NO_MATCH) {
        return 0;
    }
    int64_t left = w->deadline - ab_cli_mono_ms();
    return left > 0 ? left : 0;
}

static int timed_out(const struct ab_waiter *w)
{
    if (w->fallback_rc != NO_MATCH) {
        return w->fallback_rc;
    }
    fprintf(stderr, "almabridge wait: no matching JOB_END event before --timeout\n");
    return AB_EXIT_TIMEOUT;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- reading ---------------------------------------------------------------------- */

/* Read from the sink until a match, the deadline or an interrupt. A read error (the
 * connection broke, the broker restarts) is reported and retried until the deadline. */
static int wait_loop(struct ab_waiter *w, struct ab_sink_reader *r, const char *what)
{
    char err[512] = "";
    for (;;) {
        struct ab_read_event ev;
        int64_t left = remaining_ms(w);
        int got = ab_reader_next(r, &ev, left < 1000 ? (int)left : 1000, err, sizeof(err));
        if (got == AB_READ_EVENT) {
            int rc = ab_wait_consider(w, ev.value, ev.len, ev.stored_ms);
            if (rc != NO_MATCH) {
                return rc;
            }
            continue;
        }
        if (got == AB_READ_ERROR) {
            fprintf(stderr, "almabridge wait: %s: %s; reconnecting\n", what, err);
            left = remaining_ms(w);
            sleep_ms(left < RETRY_MS ? left : RETRY_MS);
        }
        if (remaining_ms(w) == 0) {
            return timed_out(w);
        }
    }
}

/* --fallback-after: the API client and the poll of the instance; NULL with err. */
static struct ab_alma_api *fallback_start(struct ab_waiter *w, const struct ab_config *cfg,
                                          const char *after, const char *every,
                                          const char *institution, char *err, size_t errlen)
{
    int64_t after_ms = 0, every_ms = 0;
    if (w->instance == NULL || w->job == NULL || ab_cli_duration_ms(after, &after_ms) != 0 ||
        ab_cli_duration_ms(every, &every_ms) != 0 || every_ms < 1000) {
        snprintf(err, errlen, "--fallback-after DURATION needs --job-instance ID and --job-id "
                              "ID (the API's path names both); --fallback-every at least 1s");
        return NULL;
    }
    const struct ab_file_conf *file = ab_config_sink_opts(cfg, &ab_sink_file);
    struct ab_alma_api *api = ab_alma_api_from_config(cfg, file->path, err, errlen);
    if (api) {
        w->poll = ab_reconcile_poll_new(api, w->job, w->instance, institution,
                                        ab_cli_mono_ms() + after_ms, every_ms);
    }
    return api;
}

/* ---- the command ------------------------------------------------------------------- */

/* The topic or stream a JOB_END goes to under the daemon's route. NULL with err when the
 * route depends on what the waiter cannot know. */
static char *job_end_route(const struct ab_config *c, const struct ab_sink_ops *ops,
                           const char *institution, char *err, size_t errlen)
{
    const char *tmpl = c->route ? c->route : ops->default_route;
    char rerr[256];
    struct ab_route *r = ab_route_compile(tmpl ? tmpl : "", rerr, sizeof(rerr));
    if (r == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return NULL;
    }
    static char one[] = "1", two[] = "2", job_end[] = "JOB_END", another[] = "another";
    struct ab_event a = {.id = one, .action = job_end, .institution = (char *)institution};
    struct ab_event b = a, c2 = a;
    b.id = two;
    c2.institution = institution ? (char *)institution : another;
    char *ra = ab_route_expand(r, &a), *rb = ab_route_expand(r, &b), *rc = ab_route_expand(r, &c2);
    char *out = NULL;
    if (strcmp(ra, rb) != 0) {
        snprintf(err, errlen, "--route %s holds {id}: each event has its own topic, so there is "
                              "nothing to wait on", tmpl);
    } else if (strcmp(ra, rc) != 0) {
        snprintf(err, errlen, "--route %s depends on the institution: give --institution CODE",
                 tmpl);
    } else {
        out = ab_strdup(ra);
    }
    free(ra);
    free(rb);
    free(rc);
    ab_route_free(r);
    return out;
}

/* wait's own options (loaded with the daemon's, see ab_cli_load). */
struct wait_opts {
    char *instance, *job, *since, *timeout, *institution, *success;
    char *fallback_after, *fallback_every;
    int verbose;
};

#define OFF(field) offsetof(struct wait_opts, field)
/* clang-format off */
static const struct ab_option wait_options[] = {
    {.name = "job-instance", .type = AB_OPT_STRING, .off = OFF(instance), .group = "Wait",
     .metavar = "ID", .help = "the job instance to wait for (data.job_instance.id)"},
    {.name = "job-id", .type = AB_OPT_STRING, .off = OFF(job), .group = "Wait", .metavar = "ID",
     .help = "the job (job_info.id, e.g. M53); alone: its next run to end"},
    {.name = "since", .type = AB_OPT_STRING, .def = "24h", .off = OFF(since), .group = "Wait",
     .metavar = "DURATION", .help = "look back this far for events"},
    {.name = "timeout", .type = AB_OPT_STRING, .off = OFF(timeout), .group = "Wait",
     .metavar = "DURATION", .help = "give up after this long, exit 3 (default: never)"},
    {.name = "institution", .type = AB_OPT_STRING, .off = OFF(institution), .group = "Wait",
     .metavar = "CODE", .help = "for a --route with {institution}"},
    {.name = "success", .type = AB_OPT_STRING, .def = "COMPLETED_SUCCESS", .off = OFF(success),
     .group = "Wait", .metavar = "STATUS,...", .help = "statuses meaning success"},
    {.name = "verbose", .type = AB_OPT_BOOL, .def = "false", .off = OFF(verbose),
     .group = "Wait", .help = "report the outcome on stderr also on success"},
    {.name = "fallback-after", .type = AB_OPT_STRING, .off = OFF(fallback_after),
     .group = "Wait", .metavar = "DURATION",
     .help = "no webhook after this long: ask Alma's API (--alma-api; needs --job-id)"},
    {.name = "fallback-every", .type = AB_OPT_STRING, .def = "1m", .off = OFF(fallback_every),
     .group = "Wait", .metavar = "DURATION", .help = "then ask at this interval"},
};
/* clang-format on */
static const struct ab_optset wait_optset = AB_OPTSET(wait_options, struct wait_opts);
static const struct ab_sink_ops wait_table = {
    .name = "wait", .options = &wait_optset, .flags = AB_SINK_WRAPS};

static const char WAIT_ABOUT[] =
    "Wait until an Alma job has ended, reading the JOB_END events almabridge wrote to its\n"
    "sink. Prints the CloudEvent on stdout. Exit status: 0 the job completed successfully,\n"
    "1 it ended otherwise (the status on stderr), 3 --timeout, 2 usage or connection error.\n"
    "With --fallback-after, Alma's Jobs API is asked when the webhook is late (stderr says\n"
    "which answered; docs/MISSED_EVENTS.md).";
static const char WAIT_FOOTER[] =
    "Sink options are the daemon's (almabridge --help): --sink, --route, --file,\n"
    "--kafka-brokers, --kafka-conf, --redis, or --config FILE and ALMABRIDGE_* variables;\n"
    "the Alma API's: --alma-api, --alma-api-key-file, --alma-api-ca, --api-budget, --state-dir.";

int ab_cmd_wait(int argc, char **argv)
{
    const struct ab_cli_table cmd = {
        "almabridge wait --job-instance ID | --job-id ID [options] [sink options]", WAIT_ABOUT,
        WAIT_FOOTER, &wait_table};
    int rc = AB_EXIT_USAGE, started, loaded = 0;
    char err[1024] = "";
    struct ab_config cfg;
    struct ab_sink_setup setup;
    struct ab_sink_reader *reader = NULL;
    const struct ab_sink_ops *ops = NULL;
    struct ab_alma_api *api = NULL;
    struct ab_waiter w = {0};
    char *route = NULL;
    int64_t since_ms = 0, timeout_ms = -1;

    if ((started = ab_cli_load(&cmd, argc, argv, &cfg, err, sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    loaded = 1;
    ab_config_scrub_argv(ab_sinks, argc, argv);
    const struct wait_opts *o = ab_config_sink_opts(&cfg, &wait_table);
    if (o->instance == NULL && o->job == NULL) {
        snprintf(err, sizeof(err), "give --job-instance ID or --job-id ID (see --help)");
        goto done;
    }
    if (ab_cli_duration_ms(o->since, &since_ms) != 0 ||
        (o->timeout && ab_cli_duration_ms(o->timeout, &timeout_ms) != 0)) {
        snprintf(err, sizeof(err), "--since/--timeout: a duration such as 90s, 15m, 24h, 2d");
        goto done;
    }
    if ((ops = ab_sink_reader_find(cfg.sink, "wait", err, sizeof(err))) == NULL) {
        goto done;
    }
    if (ops->default_route && *ops->default_route &&
        (route = job_end_route(&cfg, ops, o->institution, err, sizeof(err))) == NULL) {
        goto done;
    }
    w = (struct ab_waiter){.instance = o->instance, .job = o->job, .success = o->success,
                           .start_ms = ab_cli_now_ms(), .verbose = o->verbose,
                           .fallback_rc = NO_MATCH};
    if (o->fallback_after &&
        !(api = fallback_start(&w, &cfg, o->fallback_after, o->fallback_every, o->institution,
                               err, sizeof(err)))) {
        goto done;
    }
    w.from_ms = w.start_ms - since_ms;
    w.deadline = timeout_ms >= 0 ? ab_cli_mono_ms() + timeout_ms : INT64_MAX;
    signal(SIGPIPE, SIG_IGN);
    struct ab_read_from from = {.route = route, .since_ms = w.from_ms > 0 ? w.from_ms : 1};
    ab_sink_setup_init(&setup, &cfg, ops);
    if ((reader = ops->reader_open(&setup.conf, &from, err, sizeof(err))) == NULL) {
        goto done;
    }
    rc = wait_loop(&w, reader, ops->name);
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge wait: %s\n", err);
    }
    ab_reader_close(reader);
    ab_reconcile_poll_free(w.poll);
    ab_alma_api_free(api);
    free(route);
    if (loaded) {
        ab_config_free(&cfg);
    }
    return rc;
}
