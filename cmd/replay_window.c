/* The replay's window (see replay.h): events between reading and acknowledgement, read
 * through the input's read side, decoded by the event codec, deduplicated by id against
 * what the target's read side holds, sent within --rate and retried. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "cli.h"
#include "event.h"
#include "mem.h"
#include "replay.h"
#include "route.h"

void ab_replay_slot_clear(struct slot *s)
{
    ab_event_free(s->ev);
    free(s->route);
    memset(s, 0, sizeof(*s));
}

void ab_replay_schedule_pump(struct replay *rp, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(rp->pump, &tv);
}

/* The first line not yet acknowledged: where --start-line resumes. */
long ab_replay_resume_line(const struct replay *rp)
{
    for (size_t i = 0; i < rp->count; i++) {
        const struct slot *s = &rp->ring[(rp->head + i) % WINDOW];
        if (s->state != SLOT_DONE) {
            return s->line;
        }
    }
    return rp->next_line;
}

void ab_replay_report(struct replay *rp, int final)
{
    double secs = (double)(ab_cli_mono_ms() - rp->t0) / 1000.0;
    char line[256];
    snprintf(line, sizeof(line),
             "replay: line %ld, %ld acknowledged, %ld in flight, %ld already there, %ld "
             "skipped, %.0f/s",
             ab_replay_resume_line(rp) - 1, rp->acked, rp->inflight, rp->dupes, rp->skipped,
             secs > 0 ? (double)rp->acked / secs : 0.0);
    if (rp->tty) {
        fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

void ab_replay_maybe_finish(struct replay *rp)
{
    if (rp->inflight == 0 && (rp->stopping || (rp->eof && rp->count == 0))) {
        event_base_loopbreak(rp->base);
    }
}

/* Drop acknowledged slots from the front of the ring. */
void ab_replay_ring_advance(struct replay *rp)
{
    while (rp->count > 0 && rp->ring[rp->head].state == SLOT_DONE) {
        ab_replay_slot_clear(&rp->ring[rp->head]);
        rp->head = (rp->head + 1) % WINDOW;
        rp->count--;
    }
}

/* The slot is delivered (and, with a store, marked): drop what is done, send more. */
static void delivered(struct replay *rp, struct slot *s)
{
    s->state = SLOT_DONE;
    *(s->there ? &rp->dupes : &rp->acked) += 1;
    ab_replay_ring_advance(rp);
}

/* Loop thread: the store holds the key of a delivered event. */
static void on_marked(void *opaque)
{
    struct slot *s = opaque;
    struct replay *rp = s->rp;
    rp->inflight--;
    delivered(rp, s);
    if (!event_pending(rp->pump, EV_TIMEOUT, NULL)) {
        ab_replay_schedule_pump(rp, 0);
    }
    ab_replay_maybe_finish(rp);
}

/* Loop thread, exactly once per accepted submit (the sink contract). */
static void on_done(int status, const char *errstr, void *opaque)
{
    struct slot *s = opaque;
    struct replay *rp = s->rp;
    struct ab_dedupe_ticket *t = s->ticket;
    s->ticket = NULL;
    if (t && status == AB_SINK_DUPLICATE) { /* the sink's atomic claim: there already */
        ab_dedupe_count_duplicate(AB_DEDUPE_CAUSE_REPLAY);
        s->there = 1;
        status = AB_SINK_OK;
    }
    if (t && status == AB_SINK_OK) {
        ab_dedupe_outcome(t, 1, on_marked, s); /* done once the store holds the key */
        return;
    }
    if (t) {
        ab_dedupe_outcome(t, 0, NULL, NULL); /* released: the retry claims it again */
    }
    rp->inflight--;
    if (status == AB_SINK_OK) {
        delivered(rp, s);
    } else {
        s->state = t ? SLOT_CHECK : SLOT_WAITING;
        if (++s->tries >= MAX_TRIES && !rp->stopping) {
            snprintf(rp->err, sizeof(rp->err), "line %ld (id %s) failed %d times: %s", s->line,
                     s->ev->id, s->tries, errstr ? errstr : ab_sink_status_str(status));
            rp->failed = rp->stopping = 1;
        }
    }
    if (!event_pending(rp->pump, EV_TIMEOUT, NULL)) {
        ab_replay_schedule_pump(rp, status == AB_SINK_OK ? 0 : 200L * s->tries);
    }
    ab_replay_maybe_finish(rp);
}

/* ---- the deduplication store (--dedupe-store): what the target already stored ---- */

/* Loop thread: the guard's verdict for one slot. */
static void on_verdict(int verdict, struct ab_dedupe_ticket *t, void *opaque)
{
    struct slot *s = opaque;
    struct replay *rp = s->rp;
    rp->inflight--;
    if (verdict == AB_DEDUPE_WRITE) {
        s->ticket = t;
        s->state = SLOT_WAITING;
    } else if (verdict == AB_DEDUPE_SKIP_OK) {
        s->state = SLOT_DONE; /* stored already (counted by the guard) */
        rp->dupes++;
        ab_replay_ring_advance(rp);
    } else if (verdict == AB_DEDUPE_SKIP_FAILED && ++s->tries < MAX_TRIES) {
        s->state = SLOT_CHECK; /* another copy was being written: ask again */
    } else {
        s->state = SLOT_CHECK;
        if (!rp->stopping) {
            snprintf(rp->err, sizeof(rp->err), "line %ld (id %s): %s", s->line, s->ev->id,
                     verdict == AB_DEDUPE_REFUSED
                         ? "the deduplication store is unreachable (--dedupe-on-error refuse)"
                         : "another copy was being written and did not finish in time");
            rp->failed = rp->stopping = 1;
        }
    }
    if (!event_pending(rp->pump, EV_TIMEOUT, NULL)) {
        ab_replay_schedule_pump(rp, s->state == SLOT_CHECK ? 200L * s->tries : 0);
    }
    ab_replay_maybe_finish(rp);
}

/* Ask the store about s: its key is the daemon's (ab_dedupe_key), "fwd:<key>" for a spool's
 * events (what its forwarder checks and marks) unless the sink claims atomically. */
static void check(struct replay *rp, struct slot *s)
{
    char fkey[520];
    if (rp->spool) {
        ab_dedupe_spool_key(&rp->dd_setup, s->ev, fkey, sizeof(fkey));
    } else {
        ab_dedupe_key(&rp->dd_setup, s->ev, fkey, sizeof(fkey));
    }
    s->state = SLOT_CHECKING;
    rp->inflight++;
    ab_dedupe_check(rp->dd, fkey, AB_DEDUPE_CAUSE_REPLAY, on_verdict, s);
}

static int submit(struct replay *rp, struct slot *s)
{
    struct ab_sink_msg m = {.id = s->ev->id, .type = s->ev->type, .source = s->ev->source,
                            .route = s->route, .key = NULL, .value = s->ev->json,
                            .value_len = s->ev->json_len, .event = s->ev};
    if (s->ticket && rp->dd_setup.sink_atomic) {
        m.dedupe_key = ab_dedupe_ticket_key(s->ticket);
        m.dedupe_window_ms = rp->dd_setup.conf.window_ms;
    }
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
            ab_strset_add(&rp->seen, ev.id);
        } else if (ab_event_from_line(ev.value, ev.len, &e, why, sizeof(why)) == AB_EVENT_OK) {
            ab_strset_add(&rp->seen, e->id);
        }
        ab_event_free(e);
    }
    ab_reader_close(r);
    return r && got == AB_READ_IDLE ? 0 : -1;
}

/* Before the first event for route: learn the ids it holds. -1 stops the replay. */
static int learn_route(struct replay *rp, const char *route)
{
    if (!rp->dedup || !ab_strset_add(&rp->loaded, route)) {
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
    if (rp->dead && ab_replay_dead_fill(rp, s, line, len) != 0) {
        ab_replay_slot_clear(s); /* reported and counted */
        return 0;
    }
    if (!rp->dead && slot_fill(rp, s, line, len) != 0) {
        fprintf(stderr, "%sreplay: line %ld is not a CloudEvent with an id: skipped\n",
                rp->tty ? "\n" : "", no);
        ab_replay_slot_clear(s);
        rp->skipped++;
        return 0;
    }
    if (learn_route(rp, s->route) != 0) {
        rp->next_line = no; /* not sent: resume here */
        ab_replay_slot_clear(s);
        return -1;
    }
    if (rp->dedup && ab_strset_has(&rp->seen, s->ev->id)) {
        ab_replay_slot_clear(s);
        rp->dupes++;
        return 0;
    }
    if (rp->dedup) {
        ab_strset_add(&rp->seen, s->ev->id);
    }
    s->state = rp->dd ? SLOT_CHECK : SLOT_WAITING;
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
void ab_replay_on_pump(evutil_socket_t fd, short what, void *arg)
{
    struct replay *rp = arg;
    int refused = 0;
    while (!rp->stopping && !rp->eof && rp->count < WINDOW && read_one(rp) >= 0) {
    }
    for (size_t i = 0; i < rp->count && !refused && !rp->stopping; i++) {
        struct slot *s = &rp->ring[(rp->head + i) % WINDOW];
        if (s->state == SLOT_CHECK) {
            check(rp, s);
        }
        if (s->state != SLOT_WAITING) {
            continue;
        }
        if (rate_budget(rp) <= 0) {
            ab_replay_schedule_pump(rp, 10);
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
            ab_replay_schedule_pump(rp, 100);
        }
    } else {
        rp->refused_since = 0;
    }
    ab_replay_maybe_finish(rp);
}
