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
 * --no-dedup skips that reading. Exit: 0 done, 1 a write failed for good or nothing was
 * delivered of an input that held only lines that are no CloudEvents, 2 usage or
 * connection errors (the target cannot be reached), 130 interrupted. */
#include <errno.h>
#include <inttypes.h>
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
#include "sinks/registry.h"

#define WINDOW 1000          /* events in flight at most */
#define MAX_TRIES 5          /* attempts per event before the replay gives up */
#define UNREACHABLE_MS 20000 /* a sink that refuses everything this long: exit 2 */

/* ---- a set of strings (the ids seen), open addressing ---- */

struct idset {
    char **slots;
    size_t cap, n;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

/* Add s (copied); returns 1 when it was new, 0 when it was there already. */
static int idset_add(struct idset *set, const char *s)
{
    if (set->n * 2 >= set->cap) {
        struct idset bigger = {.cap = set->cap ? set->cap * 2 : 1024};
        bigger.slots = ab_calloc(bigger.cap, sizeof(char *));
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i]) {
                size_t j = hash_str(set->slots[i]) & (bigger.cap - 1);
                while (bigger.slots[j]) {
                    j = (j + 1) & (bigger.cap - 1);
                }
                bigger.slots[j] = set->slots[i];
            }
        }
        free(set->slots);
        bigger.n = set->n;
        *set = bigger;
    }
    size_t j = hash_str(s) & (set->cap - 1);
    for (; set->slots[j]; j = (j + 1) & (set->cap - 1)) {
        if (strcmp(set->slots[j], s) == 0) {
            return 0;
        }
    }
    set->slots[j] = ab_strdup(s);
    set->n++;
    return 1;
}

static int idset_has(const struct idset *set, const char *s)
{
    if (set->cap == 0) {
        return 0;
    }
    for (size_t j = hash_str(s) & (set->cap - 1); set->slots[j]; j = (j + 1) & (set->cap - 1)) {
        if (strcmp(set->slots[j], s) == 0) {
            return 1;
        }
    }
    return 0;
}

static void idset_free(struct idset *set)
{
    for (size_t i = 0; i < set->cap; i++) {
        free(set->slots[i]);
    }
    free(set->slots);
    memset(set, 0, sizeof(*set));
}

/* ---- the replay ---- */

enum slot_state { SLOT_WAITING, SLOT_INFLIGHT, SLOT_DONE };

struct replay;

/* One event between reading and acknowledgement. */
struct slot {
    struct replay *rp;
    long line;
    enum slot_state state;
    int tries;
    struct ab_event *ev; /* decoded from the line (the codec), owns the line */
    char *route;
};

struct replay {
    struct event_base *base;
    const struct ab_sink_ops *ops;
    struct ab_sink *sink;
    void *shared;
    struct ab_config cfg;
    int have_cfg;               /* cfg holds a configuration */
    struct ab_sink_setup setup; /* the sink's configuration, out of cfg */
    struct ab_route *route;
    struct ab_sink_reader *in;  /* the input: a file's or a spool's read side */
    struct idset seen;      /* ids sent, or already in a stream/topic */
    struct idset loaded;    /* streams/topics whose ids have been read */
    int dedup;
    int all; /* --all: a spool's forwarded events too */
    long next_line;         /* number of the next line to read */
    long start_line;
    double rate;            /* events/s, 0 = unbounded */
    struct slot ring[WINDOW];
    size_t head, count;     /* ring[head] is the oldest slot */
    long sent, acked, dupes, skipped, inflight;
    int eof, stopping, interrupted, failed, unreachable;
    int64_t t0, refused_since, last_report;
    struct event *pump, *tick, *sigs[2];
    int tty;
    char err[512];
};

static void slot_clear(struct slot *s)
{
    ab_event_free(s->ev);
    free(s->route);
    memset(s, 0, sizeof(*s));
}

static void schedule_pump(struct replay *rp, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(rp->pump, &tv);
}

/* The first line not yet acknowledged: where --start-line resumes. */
static long resume_line(const struct replay *rp)
{
    for (size_t i = 0; i < rp->count; i++) {
        const struct slot *s = &rp->ring[(rp->head + i) % WINDOW];
        if (s->state != SLOT_DONE) {
            return s->line;
        }
    }
    return rp->next_line;
}

static void report(struct replay *rp, int final)
{
    double secs = (double)(ab_cli_mono_ms() - rp->t0) / 1000.0;
    char line[256];
    snprintf(line, sizeof(line),
             "replay: line %ld, %ld acknowledged, %ld in flight, %ld already there, %ld "
             "skipped, %.0f/s",
             resume_line(rp) - 1, rp->acked, rp->inflight, rp->dupes, rp->skipped,
             secs > 0 ? (double)rp->acked / secs : 0.0);
    if (rp->tty) {
        fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

static void maybe_finish(struct replay *rp)
{
    if (rp->inflight == 0 && (rp->stopping || (rp->eof && rp->count == 0))) {
        event_base_loopbreak(rp->base);
    }
}

/* Drop acknowledged slots from the front of the ring. */
static void ring_advance(struct replay *rp)
{
    while (rp->count > 0 && rp->ring[rp->head].state == SLOT_DONE) {
        slot_clear(&rp->ring[rp->head]);
        rp->head = (rp->head + 1) % WINDOW;
        rp->count--;
    }
}

/* Loop thread, exactly once per accepted submit (the sink contract). */
static void on_done(int status, const char *errstr, void *opaque)
{
    struct slot *s = opaque;
    struct replay *rp = s->rp;
    rp->inflight--;
    if (status == AB_SINK_OK) {
        s->state = SLOT_DONE;
        rp->acked++;
        ring_advance(rp);
    } else {
        s->state = SLOT_WAITING;
        if (++s->tries >= MAX_TRIES && !rp->stopping) {
            snprintf(rp->err, sizeof(rp->err), "line %ld (id %s) failed %d times: %s", s->line,
                     s->ev->id, s->tries, errstr ? errstr : ab_sink_status_str(status));
            rp->failed = rp->stopping = 1;
        }
    }
    if (!event_pending(rp->pump, EV_TIMEOUT, NULL)) {
        schedule_pump(rp, status == AB_SINK_OK ? 0 : 200L * s->tries);
    }
    maybe_finish(rp);
}

static int submit(struct replay *rp, struct slot *s)
{
    struct ab_sink_msg m = {.id = s->ev->id, .type = s->ev->type, .source = s->ev->source,
                            .route = s->route, .key = NULL, .value = s->ev->json,
                            .value_len = s->ev->json_len, .event = s->ev};
    if (rp->ops->submit(rp->sink, &m, on_done, s) != 0) {
        return -1;
    }
    s->state = SLOT_INFLIGHT;
    rp->inflight++;
    rp->sent++;
    return 0;
}

/* ---- dedup: the ids already in a stream or topic ---- */

/* Read route from its oldest event to its end through the target's read side, adding
 * every id to the ids seen. -1 (rp->err) when the target cannot be read. */
static int load_ids(struct replay *rp, const char *route)
{
    struct ab_read_from from = {.route = route};
    struct ab_sink_reader *r = rp->ops->reader_open(&rp->setup.conf, &from, rp->err,
                                                    sizeof(rp->err));
    struct ab_read_event ev;
    int got = AB_READ_IDLE;
    while (r && (got = ab_reader_next(r, &ev, 0, rp->err, sizeof(rp->err))) == AB_READ_EVENT) {
        struct ab_event *e = NULL;
        char why[128];
        if (ev.id) {
            idset_add(&rp->seen, ev.id);
        } else if (ab_event_from_line(ev.value, ev.len, &e, why, sizeof(why)) == AB_EVENT_OK) {
            idset_add(&rp->seen, e->id);
        }
        ab_event_free(e);
    }
    ab_reader_close(r);
    return r && got == AB_READ_IDLE ? 0 : -1;
}

/* Before the first event for route: learn the ids it holds. -1 stops the replay. */
static int learn_route(struct replay *rp, const char *route)
{
    if (!rp->dedup || !idset_add(&rp->loaded, route)) {
        return 0;
    }
    int rc = load_ids(rp, route);
    if (rc != 0) {
        rp->unreachable = rp->stopping = 1;
    }
    return rc;
}

/* ---- reading lines into slots ---- */

/* Fill s from one input line; -1 when it is not a CloudEvent with an id. */
static int slot_fill(struct replay *rp, struct slot *s, const char *line, size_t len)
{
    char why[256];
    if (ab_event_from_line(line, len, &s->ev, why, sizeof(why)) != AB_EVENT_OK) {
        return -1;
    }
    s->route = ab_route_expand(rp->route, s->ev);
    return 0;
}

/* Read the next line into a new slot at the ring's tail. Returns 1 when a slot was added,
 * 0 when the line was skipped (before --start-line, malformed, a duplicate), -1 at the end
 * of the input or on a stop. */
static int read_one(struct replay *rp)
{
    struct ab_read_event in;
    int got = ab_reader_next(rp->in, &in, 0, rp->err, sizeof(rp->err));
    if (got != AB_READ_EVENT) {
        rp->eof = 1;
        if (got == AB_READ_ERROR) {
            rp->failed = rp->stopping = 1;
        }
        return -1;
    }
    const char *line = in.value;
    size_t len = in.len;
    long no = rp->next_line++;
    if (no < rp->start_line || len == 0) {
        return 0;
    }
    struct slot *s = &rp->ring[(rp->head + rp->count) % WINDOW];
    s->rp = rp;
    s->line = no;
    if (slot_fill(rp, s, line, len) != 0) {
        fprintf(stderr, "%sreplay: line %ld is not a CloudEvent with an id: skipped\n",
                rp->tty ? "\n" : "", no);
        slot_clear(s);
        rp->skipped++;
        return 0;
    }
    if (learn_route(rp, s->route) != 0) {
        rp->next_line = no; /* not sent: resume here */
        slot_clear(s);
        return -1;
    }
    if (rp->dedup && idset_has(&rp->seen, s->ev->id)) {
        slot_clear(s);
        rp->dupes++;
        return 0;
    }
    if (rp->dedup) {
        idset_add(&rp->seen, s->ev->id);
    }
    s->state = SLOT_WAITING;
    rp->count++;
    return 1;
}

/* How many new events the rate allows now. */
static long rate_budget(const struct replay *rp)
{
    if (rp->rate <= 0) {
        return WINDOW;
    }
    double elapsed = (double)(ab_cli_mono_ms() - rp->t0) / 1000.0;
    return (long)(rp->rate * elapsed + 1) - rp->sent;
}

/* Loop thread: send what is waiting (retries first), then read more, within the window
 * and the rate. A sink that refuses (not connected yet, queue full) is tried again soon. */
static void on_pump(evutil_socket_t fd, short what, void *arg)
{
    struct replay *rp = arg;
    int refused = 0;
    while (!rp->stopping && !rp->eof && rp->count < WINDOW && read_one(rp) >= 0) {
    }
    for (size_t i = 0; i < rp->count && !refused && !rp->stopping; i++) {
        struct slot *s = &rp->ring[(rp->head + i) % WINDOW];
        if (s->state != SLOT_WAITING) {
            continue;
        }
        if (rate_budget(rp) <= 0) {
            schedule_pump(rp, 10);
            return;
        }
        refused = submit(rp, s) != 0;
    }
    if (refused) {
        int64_t now = ab_cli_mono_ms();
        rp->refused_since = rp->refused_since ? rp->refused_since : now;
        if (now - rp->refused_since > UNREACHABLE_MS) {
            snprintf(rp->err, sizeof(rp->err), "the %s sink refuses every write",
                     rp->ops->name);
            if (rp->ops->describe) {
                rp->ops->describe(rp->sink, rp->err, sizeof(rp->err));
            }
            rp->unreachable = rp->stopping = 1;
        } else {
            schedule_pump(rp, 100);
        }
    } else {
        rp->refused_since = 0;
    }
    maybe_finish(rp);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct replay *rp = arg;
    int64_t now = ab_cli_mono_ms();
    if (rp->tty || now - rp->last_report >= 10000) {
        report(rp, 0);
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
        maybe_finish(rp);
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
    if (rp->ops == NULL || rp->ops->default_route == NULL || !*rp->ops->default_route) {
        snprintf(err, errlen, "--sink kafka or --sink redis: replay writes to a broker");
        return -1;
    }
    if (rp->dedup && ab_sink_reader_find(rp->cfg.sink, "replay (reading the ids already there)", err, errlen) == NULL) {
        return -1;
    }
    const char *tmpl = rp->cfg.route ? rp->cfg.route : rp->ops->default_route;
    if ((rp->route = ab_route_compile(tmpl, rerr, sizeof(rerr))) == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return -1;
    }
    if (open_input(rp, from, err, errlen) != 0) {
        return -1;
    }
    ab_sink_setup_init(&rp->setup, &rp->cfg, rp->ops);
    if (rp->ops->global_init &&
        rp->ops->global_init(&rp->setup.conf, &rp->shared, err, errlen) != 0) {
        return -1;
    }
    rp->base = event_base_new();
    if ((rp->sink = rp->ops->open(&rp->setup.conf, rp->shared, rp->base, err, errlen)) == NULL) {
        return -1;
    }
    return 0;
}

/* Run the loop until the input is done or the replay stops; returns the exit code. */
static int replay_run(struct replay *rp)
{
    struct timeval one = {1, 0};
    rp->pump = evtimer_new(rp->base, on_pump, rp);
    rp->tick = event_new(rp->base, -1, EV_PERSIST, on_tick, rp);
    rp->sigs[0] = evsignal_new(rp->base, SIGINT, on_signal, rp);
    rp->sigs[1] = evsignal_new(rp->base, SIGTERM, on_signal, rp);
    event_add(rp->tick, &one);
    event_add(rp->sigs[0], NULL);
    event_add(rp->sigs[1], NULL);
    rp->t0 = rp->last_report = ab_cli_mono_ms();
    schedule_pump(rp, 0);
    event_base_dispatch(rp->base);
    rp->ops->close(rp->sink, 5000); /* completes anything left as not acknowledged */
    rp->sink = NULL;
    ring_advance(rp);
    report(rp, 1);
    long resume = resume_line(rp);
    int done = rp->eof && rp->count == 0 && !rp->failed && !rp->unreachable;
    if (done && rp->acked == 0 && rp->dupes == 0 && rp->skipped > 0) {
        snprintf(rp->err, sizeof(rp->err), "nothing delivered: no line of the input was a "
                                           "CloudEvent with an id");
        rp->failed = 1;
        done = 0;
    }
    if (!done) {
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
    if (rp->ops && rp->ops->global_free && rp->shared) {
        rp->ops->global_free(rp->shared);
    }
    for (size_t i = 0; i < WINDOW; i++) {
        slot_clear(&rp->ring[i]);
    }
    if (rp->base) {
        event_base_free(rp->base);
    }
    ab_reader_close(rp->in);
    idset_free(&rp->seen);
    idset_free(&rp->loaded);
    ab_route_free(rp->route);
    if (rp->have_cfg) {
        ab_config_free(&rp->cfg);
    }
}

static const char REPLAY_ABOUT[] =
    "Push the CloudEvents of a file-sink log (or a directory of log segments, in name\n"
    "order) into Kafka or Redis with the daemon's routing and keys. Progress on stderr;\n"
    "on SIGINT it stops cleanly and prints the --start-line to resume from. Events whose\n"
    "id is already in the target stream/topic are skipped (--no-dedup: not checked).\n"
    "Exit status: 0 done, 1 a write failed for good (or no line was a CloudEvent), 2\n"
    "usage or connection error (the target cannot be reached), 130 interrupted.";
static const char REPLAY_FOOTER[] =
    "Sink options are the daemon's (almabridge --help): --sink, --route, --kafka-brokers,\n"
    "--kafka-key, --kafka-conf, --redis, --redis-maxlen, --ack-timeout, or --config FILE.";

int ab_cmd_replay(int argc, char **argv)
{
    const char *from = NULL, *rate = "1000", *start = "1", *no_dedup = NULL, *all = NULL;
    const struct ab_cli_opt opts[] = {
        {"from", 1, &from, "FILE|DIR", "the file sink's log, or a directory of segments"},
        {"rate", 1, &rate, "N", "events per second at most (default 1000; 0 = no limit)"},
        {"start-line", 1, &start, "N", "begin at line N (1 = the first), to resume"},
        {"no-dedup", 0, &no_dedup, NULL, "do not read the ids already in the target"},
        {"all", 0, &all, NULL, "a spool directory: also the events already forwarded"},
    };
    const struct ab_cli_cmd cmd = {
        "almabridge replay --from FILE|DIR --sink kafka|redis [options]", REPLAY_ABOUT,
        REPLAY_FOOTER, opts, sizeof(opts) / sizeof(opts[0])};
    static struct replay rp; /* big (the ring): not on the stack */
    char **rest = ab_calloc((size_t)argc + 1, sizeof(char *));
    int nrest = 0, rc = AB_EXIT_USAGE, started;
    char err[1024] = "", *end = NULL;

    if ((started = ab_cli_start(&cmd, argc, argv, NULL, NULL, rest, &nrest, err,
                                sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    rp.rate = strtod(rate, &end);
    rp.start_line = strtol(start, NULL, 10);
    if (from == NULL || *end != '\0' || rp.rate < 0 || rp.start_line < 1) {
        snprintf(err, sizeof(err), "give --from FILE|DIR; --rate N >= 0; --start-line N >= 1");
        goto done;
    }
    if (ab_cli_load_config(nrest, rest, &rp.cfg, err, sizeof(err)) != 0) {
        goto done;
    }
    rp.have_cfg = 1;
    ab_config_scrub_argv(ab_sinks, argc, argv);
    ab_log_configure(strcmp(rp.cfg.log_level, "info") == 0 ? "warn" : rp.cfg.log_level,
                     rp.cfg.log_format, err, sizeof(err));
    rp.next_line = 1;
    rp.dedup = no_dedup == NULL;
    rp.all = all != NULL;
    rp.tty = isatty(2);
    signal(SIGPIPE, SIG_IGN);
    if (replay_setup(&rp, from, err, sizeof(err)) != 0) {
        goto done;
    }
    err[0] = '\0';
    rc = replay_run(&rp);
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge replay: %s\n", err);
    }
    replay_free(&rp);
    free(rest);
    return rc;
}
