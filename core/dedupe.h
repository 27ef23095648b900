/* Deduplication: each webhook stored once, tied to the sink's acknowledgement. See
 * docs/DEDUPLICATION.md.
 *
 * Two parts:
 *  - the STORE contract (struct ab_dedupe_ops): where the state of each key lives, Redis
 *    shared by every replica or a local directory. The stores sit beside the sink
 *    backends (dedupe_redis.c, dedupe_file.c), found by the registry from --dedupe-store;
 *    the core knows none.
 *  - the GUARD (struct ab_dedupe_guard, one per worker): the protocol around one write.
 *    The first copy of a key claims it; a copy that comes while the first is in flight
 *    waits for the first's outcome (same worker: it joins the first's entry; elsewhere: it
 *    polls the store's claim); the write's success marks the key stored (before the 200
 *    leaves), its failure releases the claim; a late success marks it stored.
 *
 * Threads: global_init/global_free on the start-up thread; everything else on the loop
 * thread that opened the instance or guard. */
#ifndef AB_DEDUPE_H
#define AB_DEDUPE_H

#include <stddef.h>

struct event_base;
struct ab_event;
struct ab_route;

/* What a store answers for a key. */
enum ab_dedupe_state {
    AB_DEDUPE_NEW = 0,      /* claim: the key was free and is now claimed by the caller;
                             * peek: the key is free */
    AB_DEDUPE_INFLIGHT = 1, /* claimed by another copy, not stored yet */
    AB_DEDUPE_STORED = 2,   /* stored within the window */
    AB_DEDUPE_ERROR = 3,    /* the store could not answer (down, timeout, error reply) */
};

/* Runs EXACTLY ONCE per accepted call, LATER (never from inside the call), on the loop
 * thread of the instance. errstr: a short reason with AB_DEDUPE_ERROR, else NULL. */
typedef void (*ab_dedupe_cb)(int state, const char *errstr, void *opaque);

struct ab_dedupe_conf {
    const char *url;     /* --dedupe-store as given ("redis://...", "file:DIR") */
    long window_ms;      /* --dedupe-window: how long a stored key is remembered */
    long claim_ms;       /* how long an in-flight claim lives without an outcome */
    long timeout_ms;     /* a store call's deadline */
    int check_only;      /* --check-config: create nothing that lasts */
};

struct ab_dedupe {
    const struct ab_dedupe_ops *ops; /* first member of every store's instance */
};

struct ab_dedupe_ops {
    const char *name;
    const char *scheme; /* "redis://", "file:": the --dedupe-store prefix it takes */
    /* Once per process: validate, create what instances share (the local table). Returns
     * 0 and *shared, or -1 with one line in errstr. */
    int (*global_init)(const struct ab_dedupe_conf *conf, void **shared, char *errstr,
                       size_t errlen);
    void (*global_free)(void *shared);
    /* One instance per loop thread. Never fails for an unreachable store (a readiness
     * matter); NULL with errstr for a bad configuration only. */
    struct ab_dedupe *(*open)(const struct ab_dedupe_conf *conf, void *shared,
                              struct event_base *base, char *errstr, size_t errlen);
    /* Take the key if free (NEW) for claim_ms, else say INFLIGHT or STORED, atomically.
     * Returns non-zero when refused at once (the store is down): then cb never runs.
     * Otherwise cb runs once, later. */
    int (*claim)(struct ab_dedupe *d, const char *key, ab_dedupe_cb cb, void *opaque);
    /* stored = 1: the key is stored, remembered for window_ms (cb: STORED or ERROR, after
     * the store holds it: a SIGKILL after cb does not forget it).
     * stored = 0: release our claim (cb: NEW or ERROR). Same return rules as claim; cb may
     * be NULL (fire and forget). */
    int (*mark)(struct ab_dedupe *d, const char *key, int stored, ab_dedupe_cb cb,
                void *opaque);
    /* Ask, without claiming, the state of n keys (n <= AB_DEDUPE_PEEK_MAX): states[i] gets
     * NEW (free), INFLIGHT or STORED; keys and states stay the caller's until cb. Same
     * return rules as claim; cb(AB_DEDUPE_NEW: states filled, or AB_DEDUPE_ERROR) runs once,
     * later. For `spool inspect` (ab_dedupe_query), never on a webhook's path. */
    int (*peek)(struct ab_dedupe *d, const char *const *keys, size_t n, int *states,
                ab_dedupe_cb cb, void *opaque);
    int (*ready)(struct ab_dedupe *d);
    void (*describe)(struct ab_dedupe *d, char *buf, size_t len);
    /* Keys held (stored or claimed), -1 when the store cannot say cheaply. Any thread. */
    long (*held)(void *shared);
    /* Complete what is outstanding (callbacks with ERROR before it returns) and free. */
    void (*close)(struct ab_dedupe *d);
};

/* The most keys one peek asks (one round trip to the store). */
#define AB_DEDUPE_PEEK_MAX 256

/* ---- process-wide set-up (cmd/ fills it, ab_app points at it) ------------------------ */

enum ab_dedupe_cause {
    AB_DEDUPE_CAUSE_INFLIGHT = 0, /* a copy came while the first was being written */
    AB_DEDUPE_CAUSE_AFTER_ACK,    /* a copy came after the first was stored */
    AB_DEDUPE_CAUSE_FORWARDER,    /* the spool's forwarder skipped a stored event */
    AB_DEDUPE_CAUSE_REPLAY,       /* replay skipped a stored event */
    AB_DEDUPE_CAUSE_RECONCILE,    /* reconcile found its JOB_END stored (a webhook's) */
    AB_DEDUPE_CAUSES
};

/* The Redis store's key prefix, shared with the Redis sink's atomic claim + XADD. */
#define AB_DEDUPE_REDIS_PREFIX "almabridge:dedupe:"

struct ab_dedupe_setup {
    const struct ab_dedupe_ops *ops;
    void *shared;
    struct ab_dedupe_conf conf;
    struct ab_route *key;   /* --dedupe-key compiled; NULL: the id (job instance: JOB_END) */
    int refuse;             /* --dedupe-on-error refuse */
    long ack_timeout_ms;    /* how long a copy may wait for the first's outcome */
    int sink_atomic;        /* the sink claims and writes in one step (msg->dedupe_key): the
                             * guard then asks the store nothing itself */
};

/* Parse a duration: a number and a unit (ms, s, m, h, d); a bare number is seconds.
 * Returns milliseconds, or -1. */
long ab_dedupe_parse_duration(const char *s);
/* Option validator (config.h ab_opt_check_fn) for --dedupe-window. */
int ab_dedupe_check_duration(const char *value, char *why, size_t whylen);

/* The key of an event into buf: --dedupe-key expanded (raw), or the job instance id for
 * JOB_END ("job:<id>"), or the webhook id. */
void ab_dedupe_key(const struct ab_dedupe_setup *setup, const struct ab_event *ev, char *buf,
                   size_t len);

/* The prefix of the spool forwarder's keys: "fwd:<key>" is an event that reached the sink
 * through the spool (or replay, which records what it delivers the same way). */
#define AB_DEDUPE_FWD "fwd:"

/* The key under which the store knows a spooled event as delivered, into buf: "fwd:<key>",
 * or the key itself with a sink that claims atomically (setup->sink_atomic), whose script
 * checks and marks the webhook's own key on every path. */
void ab_dedupe_spool_key(const struct ab_dedupe_setup *setup, const struct ab_event *ev,
                         char *buf, size_t len);

/* Register the dedupe metrics with /metrics and make setup the process's (once, start-up
 * thread). */
void ab_dedupe_metrics_init(const struct ab_dedupe_setup *setup);
/* The process's set-up, NULL when deduplication is off (the spool's forwarder asks). */
const struct ab_dedupe_setup *ab_dedupe_active(void);
/* Count a duplicate that was not written (the forwarder and replay count theirs here). */
void ab_dedupe_count_duplicate(enum ab_dedupe_cause cause);

/* ---- asking the store from a command-line program (spool inspect) -------------------- */

/* A store instance on a loop of its own, for a single-threaded program that asks the store
 * about many keys and waits for the answers. NULL with errstr for a bad configuration. */
struct ab_dedupe_query;
struct ab_dedupe_query *ab_dedupe_query_new(const struct ab_dedupe_setup *setup, char *errstr,
                                            size_t errlen);
/* The states (enum ab_dedupe_state, without claiming) of n keys into states[], in batches of
 * AB_DEDUPE_PEEK_MAX, waiting for each (a store still connecting is given until its call
 * deadline, at least 3 s). Returns 0, or -1 with one line in errstr (the store down). */
int ab_dedupe_query_states(struct ab_dedupe_query *q, const char *const *keys, size_t n,
                           int *states, char *errstr, size_t errlen);
/* The store's description ("redis 127.0.0.1:6379 db 0: connected") into buf. */
void ab_dedupe_query_describe(struct ab_dedupe_query *q, char *buf, size_t len);
void ab_dedupe_query_free(struct ab_dedupe_query *q);

/* ---- the guard --------------------------------------------------------------------- */

/* What the guard decides for one copy. */
enum ab_dedupe_verdict {
    AB_DEDUPE_WRITE = 0,   /* write it (claimed, or the store is down and on-error accept) */
    AB_DEDUPE_SKIP_OK,     /* a duplicate of a stored event: answer 200, write nothing */
    AB_DEDUPE_SKIP_FAILED, /* the first copy failed or did not finish in time: 503 */
    AB_DEDUPE_REFUSED,     /* the store is down and --dedupe-on-error refuse: 503 */
};
struct ab_dedupe_guard;
struct ab_dedupe_ticket;
/* t: with AB_DEDUPE_WRITE, the ticket to report the write's outcome on; else NULL. */
typedef void (*ab_dedupe_verdict_cb)(int verdict, struct ab_dedupe_ticket *t, void *opaque);

/* A guard on base for setup. NULL with errstr when the store cannot be opened. */
struct ab_dedupe_guard *ab_dedupe_guard_new(const struct ab_dedupe_setup *setup,
                                            struct event_base *base, char *errstr,
                                            size_t errlen);
/* Close the store (outstanding tickets get their verdicts/outcomes first) and free. */
void ab_dedupe_guard_free(struct ab_dedupe_guard *g);

/* Decide for one copy of key. cb(verdict, t, opaque) runs exactly once, later, on the
 * loop, within the ack deadline. With AB_DEDUPE_WRITE the caller writes and then MUST report
 * the outcome with ab_dedupe_outcome(t, ...). cause says which duplicate counter a skipped
 * stored copy goes to (AFTER_ACK for webhooks, FORWARDER, REPLAY); a copy that waited on an
 * in-flight first one counts as INFLIGHT. */
void ab_dedupe_check(struct ab_dedupe_guard *g, const char *key, enum ab_dedupe_cause cause,
                     ab_dedupe_verdict_cb cb, void *opaque);

/* The outcome of the write of a WRITE ticket: ok = 1 stored, 0 failed (claim released),
 * -1 unknown yet (a timeout: the claim stays until ab_dedupe_outcome is called again with
 * the late answer, or until it expires). After ok = 1, done(opaque) runs once the store
 * holds the key (or could not be told: counted as an error), later, on the loop; done may
 * be NULL. The ticket is freed once the final outcome (0 or 1) is reported. */
void ab_dedupe_outcome(struct ab_dedupe_ticket *t, int ok, void (*done)(void *opaque),
                       void *opaque);

/* The key a WRITE ticket holds (for msg->dedupe_key). */
const char *ab_dedupe_ticket_key(const struct ab_dedupe_ticket *t);

/* For /readyz: 1 when the webhooks may be taken (store ready, or on-error accept), and a
 * detail ("deduplication unchecked: ...") in buf when something is wrong. */
int ab_dedupe_guard_ready(struct ab_dedupe_guard *g, char *buf, size_t len);

#endif
