/* What cmd/replay.c (the command) and cmd/replay_window.c (the window of events between
 * reading and acknowledgement) share. Single-threaded: everything runs on the replay's
 * loop. */
#ifndef AB_CMD_REPLAY_H
#define AB_CMD_REPLAY_H

#include <stdint.h>

#include <event2/util.h>

#include "config.h"
#include "sink.h"
#include "dedupe.h"
#include "strset.h"
#include "sinks/registry.h"

struct ab_institutions;
struct ab_route;
struct ab_redact;
struct ab_secrets;

#define WINDOW 1000          /* events in flight at most */
#define MAX_TRIES 5          /* attempts per event before the replay gives up */
#define UNREACHABLE_MS 20000 /* a sink that refuses everything this long: exit 2 */

/* With a deduplication store: CHECK (to be asked) -> CHECKING (the guard's verdict due) ->
 * WAITING (claimed) -> INFLIGHT -> DONE (delivered and marked, or stored already). */
enum slot_state { SLOT_WAITING, SLOT_INFLIGHT, SLOT_DONE, SLOT_CHECK, SLOT_CHECKING };

struct replay;

/* One event between reading and acknowledgement. */
struct slot {
    struct replay *rp;
    long line;
    enum slot_state state;
    int tries;
    struct ab_event *ev; /* decoded from the line (the codec), owns the line */
    char *route;
    struct ab_dedupe_ticket *ticket; /* the store's claim, while its write is not answered */
    int there;                       /* the sink's atomic claim found it stored already */
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
    struct ab_strset seen;      /* ids sent, or already in a stream/topic */
    struct ab_strset loaded;    /* streams/topics whose ids have been read */
    int dedup;
    int all; /* --all: a spool's forwarded events too */
    int spool; /* the input is a spool directory: its keys are the forwarder's, "fwd:<key>" */
    struct ab_dedupe_setup dd_setup; /* --dedupe-store (core/dedupe.h) */
    struct ab_dedupe_guard *dd;      /* NULL: no store (or --no-dedup) */
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
    /* --dead-letters (replay_dead.c): the input is a dead letter, processed again */
    int dead;
    const char *content_type;  /* --content-type: take every body as this (NULL: its own) */
    struct ab_secrets *secrets; /* what the stored signatures are checked against */
    struct ab_redact *redact;   /* --redact, as the daemon applies it */
    struct ab_institutions *insts; /* --institutions: the profiles the records are bound to */
    long dl_read, dl_events, dl_failing, dl_unsigned, dl_other, dl_unbound;
};


/* The window (replay_window.c). */
void ab_replay_slot_clear(struct slot *s);
void ab_replay_schedule_pump(struct replay *rp, long ms);
/* The first line not yet acknowledged: where --start-line resumes. */
long ab_replay_resume_line(const struct replay *rp);
void ab_replay_report(struct replay *rp, int final);
void ab_replay_maybe_finish(struct replay *rp);
/* Drop acknowledged slots from the front of the ring. */
void ab_replay_ring_advance(struct replay *rp);
/* The pump timer: send what is waiting, then read more, within the window and the rate. */
void ab_replay_on_pump(evutil_socket_t fd, short what, void *arg);


/* --dead-letters (replay_dead.c). */
/* The secrets, --redact, and the input: the dead letter at from (a file), else the sink's
 * own (--dead-letter-route, the file sink's "<file>.deadletter"). -1 with err. */
int ab_replay_dead_open(struct replay *rp, const char *from, char *err, size_t errlen);
/* Fill s from a dead-letter record: 0 when its body now makes an event, -1 when it is
 * skipped (reported on stderr and counted). */
int ab_replay_dead_fill(struct replay *rp, struct slot *s, const char *line, size_t len);
/* The dead letters' summary on stderr; 1 when some are still not processed. */
int ab_replay_dead_summary(struct replay *rp);
void ab_replay_dead_free(struct replay *rp);

#endif
