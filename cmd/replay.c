/* almabridge replay: push the CloudEvents of a file-sink log (or a directory of log
 * segments) into Kafka or Redis, as the daemon would have written them.
 *
 *   almabridge replay --from FILE_OR_DIR --sink kafka|redis [--rate N] [--start-line N]
 *                     [--no-dedup] [the daemon's sink options, --route, --kafka-key, --config]
 *
 * The input is read through the read side of the file sink (a file) or of the spool (a
 * directory of segments); each line is decoded with the event codec (ab_event_from_line)
 * and goes through the daemon's own sink backend with the daemon's route, the backend
 * choosing its key as it does for the daemon, so topics, streams, keys, headers and fields
 * are exactly what the daemon produces. Only the contract (sink.h) is used: any backend
 * with a read side can be the target. At most --rate events a second are sent, with a bounded
 * number in flight. Progress goes to stderr (one self-rewriting line on a terminal).
 *
 * Resuming: lines are numbered from 1 over the whole input (over the segments of a
 * directory, in name order). On SIGINT/SIGTERM the replay stops reading, waits for what is
 * in flight and prints the first line not acknowledged: `--start-line N` continues from
 * there. Idempotent by id: before the first event for a stream or topic, the ids already
 * in it are read through the target's read side (the id it stores beside the event, else
 * the event's own), and events with an id already there, or already sent, are skipped.
 * --no-dedup skips that reading. The input's records are checked against its checksum
 * index as they are read (eventlog_read.c): a damaged one is logged and skipped.
 * --dead-letters reads a dead letter instead (replay_dead.c). Exit: 0 done, 1 a write
 * failed for good, nothing was delivered of an input that held only lines that are no
 * CloudEvents, damaged records were skipped or dead letters still fail, 2 usage or
 * connection errors (the target cannot be reached), 130 interrupted. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "cli.h"
#include "event.h"
#include "log.h"
#include "mem.h"
#include "route.h"
#include "sink.h"
#include "strset.h"
#include "sinks/dedupe_store.h"
#include "sinks/eventlog.h"
#include "sinks/registry.h"

#include "replay.h"

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct replay *rp = arg;
    int64_t now = ab_cli_mono_ms();
    if (rp->tty || now - rp->last_report >= 10000) {
        ab_replay_report(rp, 0);
        rp->last_report = now;
    }
}

/* SIGINT/SIGTERM: the first stops reading and lets what is in flight finish; a second
 * closes the sink at once (what is left is completed as not acknowledged). */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct replay *rp = arg;
    rp->interrupted = 1;
    if (!rp->stopping) {
        rp->stopping = 1;
        fprintf(stderr, "%sreplay: interrupted; waiting for %ld event(s) in flight (again to "
                        "stop now)\n",
                rp->tty ? "\n" : "", rp->inflight);
        ab_replay_maybe_finish(rp);
        return;
    }
    event_base_loopbreak(rp->base);
}

/* ---- the command ---- */

/* The input's read side: a directory is a spool (its segments), a file the file sink's. */
static int open_input(struct replay *rp, const char *from, char *err, size_t errlen)
{
    int spool = 0;
    const struct ab_sink_ops *ops = ab_sink_log_reader(from, &spool, err, errlen);
    struct ab_sink_setup in_setup;
    if (ops == NULL) {
        return -1;
    }
    ab_sink_setup_init(&in_setup, &rp->cfg, ops);
    struct ab_read_from in = {.path = from, .all = rp->all};
    if ((rp->in = ops->reader_open(&in_setup.conf, &in, err, errlen)) == NULL) {
        return -1;
    }
    rp->spool = spool;
    if (spool && !rp->all) {
        fprintf(stderr, "replay: %s is a spool: starting where its forwarder stopped (line 1 "
                        "= the first event not forwarded; --all for every event)\n", from);
    }
    return 0;
}

static int replay_setup(struct replay *rp, const char *from, char *err, size_t errlen)
{
    char rerr[256];
    rp->ops = ab_sink_find(rp->cfg.sink);
    if (rp->ops == NULL || (strcmp(rp->ops->name, "file") == 0 && !rp->dead)) {
        snprintf(err, errlen, "--sink kafka, redis or http: replay writes to a broker or a "
                              "target (the file sink's log has one writer, the daemon; "
                              "--dead-letters only can write it, the daemon stopped)");
        return -1;
    }
    if (rp->dedup && !ab_sink_readable(rp->ops)) {
        snprintf(err, errlen, "--sink %s has no read side: replay cannot skip the events the "
                              "target already holds; add --no-dedup to send every event",
                 rp->ops->name);
        return -1;
    }
    const char *tmpl = rp->cfg.route ? rp->cfg.route
                       : rp->ops->default_route ? rp->ops->default_route
                                                : "";
    if ((rp->route = ab_route_compile(tmpl, rerr, sizeof(rerr))) == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return -1;
    }
    ab_sink_setup_init(&rp->setup, &rp->cfg, rp->ops);
    rp->setup.conf.dead_letter = 0; /* replay writes events, never dead letters */
    if ((rp->dead ? ab_replay_dead_open(rp, from, err, errlen)
                  : open_input(rp, from, err, errlen)) != 0) {
        return -1;
    }
    if (rp->ops->global_init &&
        rp->ops->global_init(&rp->setup.conf, &rp->shared, err, errlen) != 0) {
        return -1;
    }
    rp->base = event_base_new();
    if ((rp->sink = rp->ops->open(&rp->setup.conf, rp->shared, rp->base, err, errlen)) == NULL) {
        return -1;
    }
    int dd_on = 0; /* --dedupe-store: each event checked and, delivered, marked (dedupe.h) */
    if (rp->dedup && ab_dedupe_setup_init(&rp->dd_setup, &rp->cfg, &dd_on, err, errlen) != 0) {
        return -1;
    }
    if (dd_on && (rp->dd = ab_dedupe_guard_new(&rp->dd_setup, rp->base, err, errlen)) == NULL) {
        return -1;
    }
    return 0;
}

/* Run the loop until the input is done or the replay stops; returns the exit code. */
static int replay_run(struct replay *rp)
{
    struct timeval one = {1, 0};
    rp->pump = evtimer_new(rp->base, ab_replay_on_pump, rp);
    rp->tick = event_new(rp->base, -1, EV_PERSIST, on_tick, rp);
    rp->sigs[0] = evsignal_new(rp->base, SIGINT, on_signal, rp);
    rp->sigs[1] = evsignal_new(rp->base, SIGTERM, on_signal, rp);
    event_add(rp->tick, &one);
    event_add(rp->sigs[0], NULL);
    event_add(rp->sigs[1], NULL);
    rp->t0 = rp->last_report = ab_cli_mono_ms();
    ab_replay_schedule_pump(rp, 0);
    event_base_dispatch(rp->base);
    rp->ops->close(rp->sink, 5000); /* completes anything left as not acknowledged */
    rp->sink = NULL;
    ab_dedupe_guard_free(rp->dd); /* after the sink: its last answers mark or release */
    rp->dd = NULL;
    ab_replay_ring_advance(rp);
    ab_replay_report(rp, 1);
    long resume = ab_replay_resume_line(rp);
    long damaged = ab_eventlog_sink_reader_damaged(rp->in);
    int done = rp->eof && rp->count == 0 && !rp->failed && !rp->unreachable;
    int kept = rp->dead && ab_replay_dead_summary(rp);
    if (done && rp->acked == 0 && rp->dupes == 0 && rp->skipped > 0) {
        snprintf(rp->err, sizeof(rp->err), "nothing delivered: no line of the input was a "
                                           "CloudEvent with an id");
        rp->failed = 1;
        done = 0;
    }
    if (damaged > 0) {
        fprintf(stderr, "replay: %ld damaged record(s) of the input skipped (see the errors "
                        "above; `almabridge verify` lists them)\n", damaged);
    }
    if (done && (damaged > 0 || kept)) {
        done = 0;
        rp->failed = 1; /* all that could be delivered was: exit 1, nothing to resume */
    } else if (!done) {
        fprintf(stderr, "replay: stopped%s%s; resume with --start-line %ld\n",
                rp->err[0] ? ": " : "", rp->err, resume);
    }
    event_free(rp->pump);
    event_free(rp->tick);
    event_free(rp->sigs[0]);
    event_free(rp->sigs[1]);
    return done ? AB_EXIT_OK
           : rp->unreachable ? AB_EXIT_USAGE
           : rp->failed      ? AB_EXIT_FAILED
                             : AB_EXIT_INTERRUPTED;
}

static void replay_free(struct replay *rp)
{
    if (rp->sink) {
        rp->ops->close(rp->sink, 0);
    }
    ab_dedupe_guard_free(rp->dd);
    ab_dedupe_setup_free(&rp->dd_setup);
    if (rp->ops && rp->ops->global_free && rp->shared) {
        rp->ops->global_free(rp->shared);
    }
    for (size_t i = 0; i < WINDOW; i++) {
        ab_replay_slot_clear(&rp->ring[i]);
    }
    if (rp->base) {
        event_base_free(rp->base);
    }
    ab_reader_close(rp->in);
    ab_replay_dead_free(rp);
    ab_strset_clear(&rp->seen);
    ab_strset_clear(&rp->loaded);
    ab_route_free(rp->route);
    if (rp->have_cfg) {
        ab_config_free(&rp->cfg);
    }
}

static const char REPLAY_ABOUT[] =
    "Push the CloudEvents of a file-sink log (or a directory of log segments, in name\n"
    "order) into Kafka or Redis with the daemon's routing and keys. Progress on stderr;\n"
    "on SIGINT it stops cleanly and prints the --start-line to resume from. Events whose\n"
    "id is already in the target stream/topic are skipped (--no-dedup: not checked);\n"
    "with --dedupe-store, also those the daemon's store holds, and what is delivered is\n"
    "recorded there (docs/DEDUPLICATION.md).\n"
    "--dead-letters: the dead letter instead, each body checked against its signature and\n"
    "normalised again; what now makes an event is written, the rest stays (docs/INTEGRITY.md).\n"
    "With --institutions, each under the secrets and route of the institution it is bound to.\n"
    "Exit status: 0 done, 1 a write failed for good (or no line was a CloudEvent, damaged\n"
    "records were skipped, dead letters still fail), 2 usage or connection error (the\n"
    "target cannot be reached), 130 interrupted.";
static const char REPLAY_FOOTER[] =
    "Sink options are the daemon's (almabridge --help): --sink, --route, --kafka-brokers,\n"
    "--kafka-key, --kafka-conf, --redis, --redis-maxlen, --ack-timeout, or --config FILE.";

/* replay's own options (loaded with the daemon's, see ab_cli_load). */
struct replay_opts {
    char *from, *rate, *content_type;
    long start_line;
    int no_dedup, all, dead_letters;
};

#define OFF(field) offsetof(struct replay_opts, field)
/* clang-format off */
static const struct ab_option replay_options[] = {
    {.name = "from", .type = AB_OPT_STRING, .off = OFF(from), .group = "Replay",
     .metavar = "FILE|DIR", .help = "the file sink's log, or a directory of segments"},
    {.name = "rate", .type = AB_OPT_STRING, .def = "1000", .off = OFF(rate), .group = "Replay",
     .metavar = "N", .help = "events per second at most (0 = no limit)"},
    {.name = "start-line", .type = AB_OPT_LONG, .def = "1", .min = 1, .max = LONG_MAX,
     .off = OFF(start_line), .group = "Replay", .metavar = "N",
     .help = "begin at line N (1 = the first), to resume"},
    {.name = "no-dedup", .type = AB_OPT_BOOL, .def = "false", .off = OFF(no_dedup),
     .group = "Replay", .help = "do not read the ids already in the target (nor ask --dedupe-store)"},
    {.name = "all", .type = AB_OPT_BOOL, .def = "false", .off = OFF(all), .group = "Replay",
     .help = "a spool directory: also the events already forwarded"},
    {.name = "dead-letters", .type = AB_OPT_BOOL, .def = "false", .off = OFF(dead_letters),
     .group = "Replay", .help = "process the dead letter again (the sink's, or --from FILE): "
     "signatures checked, bodies normalised, events written; the rest kept"},
    {.name = "content-type", .type = AB_OPT_STRING, .off = OFF(content_type),
     .group = "Replay", .metavar = "TYPE",
     .help = "--dead-letters: take every body as TYPE (e.g. application/json) instead of "
     "the Content-Type it came with"},
};
/* clang-format on */
static const struct ab_optset replay_optset = AB_OPTSET(replay_options, struct replay_opts);
static const struct ab_sink_ops replay_table = {
    .name = "replay", .options = &replay_optset, .flags = AB_SINK_WRAPS};

int ab_cmd_replay(int argc, char **argv)
{
    const struct ab_cli_table cmd = {
        "almabridge replay --from FILE|DIR --sink kafka|redis [options]\n"
        "       almabridge replay --dead-letters [--from FILE.deadletter] --sink SINK [options]",
        REPLAY_ABOUT,
        REPLAY_FOOTER, &replay_table};
    static struct replay rp; /* big (the ring): not on the stack */
    int rc = AB_EXIT_USAGE, started;
    char err[1024] = "", *end = NULL;

    if ((started = ab_cli_load(&cmd, argc, argv, &rp.cfg, err, sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    rp.have_cfg = 1;
    ab_config_scrub_argv(ab_sinks, argc, argv);
    const struct replay_opts *o = ab_config_sink_opts(&rp.cfg, &replay_table);
    rp.rate = strtod(o->rate, &end);
    rp.start_line = o->start_line;
    if ((o->from == NULL && !o->dead_letters) || *end != '\0' || rp.rate < 0 ||
        (o->content_type && !o->dead_letters)) {
        snprintf(err, sizeof(err), "give --from FILE|DIR (or --dead-letters); --rate N >= 0; "
                                   "--start-line N >= 1; --content-type with --dead-letters");
        goto done;
    }
    rp.dead = o->dead_letters;
    rp.content_type = o->content_type;
    ab_log_configure(strcmp(rp.cfg.log_level, "info") == 0 ? "warn" : rp.cfg.log_level,
                     rp.cfg.log_format, err, sizeof(err));
    rp.next_line = 1;
    rp.dedup = !o->no_dedup;
    rp.all = o->all;
    rp.tty = isatty(2);
    signal(SIGPIPE, SIG_IGN);
    if (replay_setup(&rp, o->from, err, sizeof(err)) != 0) {
        goto done;
    }
    err[0] = '\0';
    rc = replay_run(&rp);
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge replay: %s\n", err);
    }
    replay_free(&rp);
    return rc;
}
