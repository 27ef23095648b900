/* Deduplication: the guard around one write, the key, the metrics. See dedupe.h.
 *
 * A ticket is one copy of a key on its way through the guard:
 *
 *   CLAIM --NEW--> WRITE --ok--> MARK --stored--> (done) freed
 *     |              |  \--failed: release the claim, joined copies 503, freed
 *     |              \--unknown (timeout): LATE --late ok/failed--> as above
 *     |--STORED--> verdict SKIP_OK, freed
 *     |--INFLIGHT (another worker or replica)--> WATCH: claim again every POLL_MS until
 *     |      NEW (the first failed: this copy writes), STORED (200) or the deadline (503)
 *     \--ERROR--> WRITE unchecked (on-error accept) or REFUSED
 *
 * A copy whose key is already in flight ON THIS WORKER joins the first ticket (JOINED) and
 * gets the first's outcome without asking the store. Verdicts are delivered from the
 * ticket's own event, never from inside ab_dedupe_check.
 *
 * Threads: a guard and its tickets belong to one loop thread; the counters are atomics. */
#include "dedupe.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "event.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "route.h"

#define POLL_MS 50
#define TABLE_SIZE 1024 /* buckets of a worker's in-flight table (a power of two) */

/* ---- counters ----------------------------------------------------------------------- */

static const double lat_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,   1.0};
#define N_LAT (sizeof(lat_bounds) / sizeof(lat_bounds[0]))

static struct {
    atomic_long dup[AB_DEDUPE_CAUSES];
    atomic_long unchecked, refused, errors, calls;
    atomic_long lat_bucket[N_LAT + 1];
    atomic_llong lat_sum_us;
    atomic_int down; /* 1 from the first failed store call until one succeeds */
    const struct ab_dedupe_setup *setup;
} m;

static const char *const cause_names[AB_DEDUPE_CAUSES] = {"in_flight", "after_ack", "forwarder",
                                                          "replay", "reconcile"};

void ab_dedupe_count_duplicate(enum ab_dedupe_cause cause)
{
    atomic_fetch_add(&m.dup[cause], 1);
}

static void observe(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double s = (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
    size_t i = 0;
    while (i < N_LAT && s > lat_bounds[i]) {
        i++;
    }
    atomic_fetch_add(&m.lat_bucket[i], 1);
    atomic_fetch_add(&m.lat_sum_us, (long long)(s * 1e6));
    atomic_fetch_add(&m.calls, 1);
}

/* A store call failed (err) or succeeded (NULL): count it, log once per outage. */
static void store_outcome(const struct ab_dedupe_setup *setup, const char *err)
{
    if (err) {
        atomic_fetch_add(&m.errors, 1);
        if (atomic_exchange(&m.down, 1) == 0) {
            ab_error("dedupe store %s: %s; %s until it answers again", setup->ops->name, err,
                     setup->refuse ? "webhooks are refused (503, --dedupe-on-error refuse)"
                                   : "events are stored unchecked (--dedupe-on-error accept)");
        }
    } else if (atomic_exchange(&m.down, 0) == 1) {
        ab_info("dedupe store %s answers again: deduplication resumed", setup->ops->name);
    }
}

static char *render_metrics(void)
{
    const struct ab_dedupe_setup *setup = m.setup;
    char *out = ab_asprintf(
        "# HELP almabridge_dedupe_duplicates_total Copies of a stored or in-flight webhook "
        "that were not written again, by cause.\n"
        "# TYPE almabridge_dedupe_duplicates_total counter\n");
    for (int c = 0; c < AB_DEDUPE_CAUSES; c++) {
        char *o = out;
        out = ab_asprintf("%salmabridge_dedupe_duplicates_total{cause=\"%s\"} %ld\n", o,
                          cause_names[c], atomic_load(&m.dup[c]));
        free(o);
    }
    char *o = out;
    out = ab_asprintf(
        "%s# HELP almabridge_dedupe_unchecked_total Events stored without a deduplication "
        "check because the store was unreachable (--dedupe-on-error accept).\n"
        "# TYPE almabridge_dedupe_unchecked_total counter\n"
        "almabridge_dedupe_unchecked_total %ld\n"
        "# HELP almabridge_dedupe_refused_total Webhooks answered 503 because the store was "
        "unreachable (--dedupe-on-error refuse).\n"
        "# TYPE almabridge_dedupe_refused_total counter\n"
        "almabridge_dedupe_refused_total %ld\n"
        "# HELP almabridge_dedupe_store_errors_total Store calls that failed.\n"
        "# TYPE almabridge_dedupe_store_errors_total counter\n"
        "almabridge_dedupe_store_errors_total %ld\n"
        "# HELP almabridge_dedupe_ids_held Keys held by the store (-1: not known cheaply).\n"
        "# TYPE almabridge_dedupe_ids_held gauge\n"
        "almabridge_dedupe_ids_held %ld\n"
        "# HELP almabridge_dedupe_store_seconds Round-trip time of store calls.\n"
        "# TYPE almabridge_dedupe_store_seconds histogram\n",
        o, atomic_load(&m.unchecked), atomic_load(&m.refused), atomic_load(&m.errors),
        setup->ops->held ? setup->ops->held(setup->shared) : -1L);
    free(o);
    long cum = 0;
    for (size_t i = 0; i <= N_LAT; i++) {
        cum += atomic_load(&m.lat_bucket[i]);
        char le[24];
        if (i < N_LAT) {
            snprintf(le, sizeof(le), "%g", lat_bounds[i]);
        } else {
            snprintf(le, sizeof(le), "+Inf");
        }
        o = out;
        out = ab_asprintf("%salmabridge_dedupe_store_seconds_bucket{le=\"%s\"} %ld\n", o, le, cum);
        free(o);
    }
    o = out;
    out = ab_asprintf("%salmabridge_dedupe_store_seconds_sum %.6f\n"
                      "almabridge_dedupe_store_seconds_count %ld\n",
                      o, (double)atomic_load(&m.lat_sum_us) / 1e6, atomic_load(&m.calls));
    free(o);
    return out;
}

void ab_dedupe_metrics_init(const struct ab_dedupe_setup *setup)
{
    if (m.setup == NULL) {
        m.setup = setup;
        ab_metrics_add_source(render_metrics);
    }
}

const struct ab_dedupe_setup *ab_dedupe_active(void)
{
    return m.setup;
}

/* ---- durations and keys ------------------------------------------------------------- */

long ab_dedupe_parse_duration(const char *s)
{
    if (s == NULL || !isdigit((unsigned char)*s)) {
        return -1;
    }
    char *end = NULL;
    double v = strtod(s, &end);
    static const struct {
        const char *unit;
        double ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000},
                 {"d", 86400000}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) == 0) {
            double ms = v * units[i].ms;
            return ms >= 1 && ms <= 366.0 * 86400000 ? (long)ms : -1;
        }
    }
    return -1;
}

int ab_dedupe_check_duration(const char *value, char *why, size_t whylen)
{
    if (ab_dedupe_parse_duration(value) < 0) {
        snprintf(why, whylen, "is not a duration from 1ms to 366d (such as 500ms, 10s, 6h, 2d)");
        return -1;
    }
    return 0;
}

/* The job instance id of a JOB_END CloudEvent ("data":{"job_instance":{"id":...}}) as
 * written, a number's digits included (a double would round Alma's 17-digit ids), into buf
 * as "job:<id>". Returns 1, or 0 when there is none. The line is minified JSON: the key
 * "job_instance" outside a string can only be a key, and "id" is taken at its top level. */
static int job_instance_id(const struct ab_event *ev, char *buf, size_t len)
{
    const char *p = strstr(ev->json, "\"job_instance\":{");
    if (p == NULL) {
        return 0;
    }
    p += strlen("\"job_instance\":{");
    int depth = 1, in_str = 0, key_next = 1;
    for (; *p && depth > 0; p++) {
        if (in_str) {
            if (*p == '\\' && p[1]) {
                p++; /* an escaped character, a quote included */
            } else if (*p == '"') {
                in_str = 0;
            }
            continue;
        }
        if (depth == 1 && key_next && strncmp(p, "\"id\":", 5) == 0) {
            const char *v = p + 5, *end;
            if (*v == '"') {
                end = strchr(++v, '"');
            } else {
                end = v + strspn(v, "-0123456789.eE+");
            }
            if (end == NULL || end == v || (size_t)(end - v) + 5 > len) {
                return 0;
            }
            snprintf(buf, len, "job:%.*s", (int)(end - v), v);
            return 1;
        }
        if (*p == '"') {
            in_str = 1;
            key_next = 0;
        } else if (*p == '{' || *p == '[') {
            depth++;
        } else if (*p == '}' || *p == ']') {
            depth--;
        } else if (*p == ',') {
            key_next = 1;
        }
    }
    return 0;
}

void ab_dedupe_key(const struct ab_dedupe_setup *setup, const struct ab_event *ev, char *buf,
                   size_t len)
{
    if (setup->key) {
        char *k = ab_route_expand_raw(setup->key, ev);
        snprintf(buf, len, "%s", k);
        free(k);
        return;
    }
    /* the institution's, since ids are only known to be unique within one (a consortium's
     * members share the listener): "<institution>/<id>", "<institution>/job:<instance>" */
    char own[256];
    const char *k = ev->id;
    if (ev->action && strcmp(ev->action, "JOB_END") == 0 && job_instance_id(ev, own, sizeof(own))) {
        k = own;
    }
    if (ev->institution && ev->institution[0]) {
        snprintf(buf, len, "%s/%s", ev->institution, k);
    } else {
        snprintf(buf, len, "%s", k);
    }
}

void ab_dedupe_spool_key(const struct ab_dedupe_setup *setup, const struct ab_event *ev,
                         char *buf, size_t len)
{
    size_t p = setup->sink_atomic ? 0 : strlen(AB_DEDUPE_FWD);
    snprintf(buf, len, "%s", setup->sink_atomic ? "" : AB_DEDUPE_FWD);
    if (p < len) {
        ab_dedupe_key(setup, ev, buf + p, len - p);
    }
}

/* ---- the guard ---------------------------------------------------------------------- */

enum phase { P_CLAIM, P_JOINED, P_WATCH, P_WRITE, P_LATE, P_MARK, P_DELIVER };

struct ab_dedupe_ticket {
    struct ab_dedupe_guard *g;
    struct ab_dedupe_ticket *next;    /* hash chain (owners) or the owner's joined list */
    struct ab_dedupe_ticket *joined;  /* copies waiting on this one (same worker) */
    struct ab_dedupe_ticket *all_prev, *all_next; /* every ticket of the guard */
    char *key;
    enum ab_dedupe_cause cause;
    enum phase phase;
    int in_table;  /* this ticket owns key in the worker's in-flight table */
    int unchecked; /* written without a check (store down, on-error accept) */
    int verdict;   /* to deliver (P_DELIVER) */
    ab_dedupe_verdict_cb cb;
    void *opaque;
    void (*done)(void *opaque);
    void *done_arg;
    struct timespec call_start;
    struct timespec deadline;
    struct event *ev; /* delivers the verdict; the next poll while WATCHing */
};

struct ab_dedupe_guard {
    const struct ab_dedupe_setup *setup;
    struct ab_dedupe *store;
    struct event_base *base;
    struct ab_dedupe_ticket *table[TABLE_SIZE];
    struct ab_dedupe_ticket *all;
    int closing;
};

static uint32_t hash_key(const char *k)
{
    uint32_t h = 2166136261u;
    for (; *k; k++) {
        h = (h ^ (unsigned char)*k) * 16777619u;
    }
    return h & (TABLE_SIZE - 1);
}

static struct ab_dedupe_ticket *table_find(struct ab_dedupe_guard *g, const char *key)
{
    for (struct ab_dedupe_ticket *t = g->table[hash_key(key)]; t; t = t->next) {
        if (strcmp(t->key, key) == 0) {
            return t;
        }
    }
    return NULL;
}

static void table_remove(struct ab_dedupe_ticket *t)
{
    if (!t->in_table) {
        return;
    }
    struct ab_dedupe_ticket **pp = &t->g->table[hash_key(t->key)];
    while (*pp != t) {
        pp = &(*pp)->next;
    }
    *pp = t->next;
    t->next = NULL;
    t->in_table = 0;
}

static void ticket_free(struct ab_dedupe_ticket *t)
{
    struct ab_dedupe_guard *g = t->g;
    table_remove(t);
    if (t->all_prev) {
        t->all_prev->all_next = t->all_next;
    } else {
        g->all = t->all_next;
    }
    if (t->all_next) {
        t->all_next->all_prev = t->all_prev;
    }
    event_free(t->ev);
    free(t->key);
    free(t);
}

/* Deliver verdict v from the ticket's event (later, on the loop). */
static void deliver_later(struct ab_dedupe_ticket *t, int v)
{
    t->phase = P_DELIVER;
    t->verdict = v;
    struct timeval tv = {0, 0};
    evtimer_add(t->ev, &tv);
}

/* The owner's outcome is known: hand it to every copy that joined it. */
static void resolve_joined(struct ab_dedupe_ticket *owner, int v)
{
    struct ab_dedupe_ticket *j = owner->joined;
    owner->joined = NULL;
    while (j) {
        struct ab_dedupe_ticket *next = j->next;
        j->next = NULL;
        if (v == AB_DEDUPE_SKIP_OK) {
            atomic_fetch_add(&m.dup[AB_DEDUPE_CAUSE_INFLIGHT], 1);
        }
        deliver_later(j, v);
        j = next;
    }
}

static void start_claim(struct ab_dedupe_ticket *t);

/* Loop thread: the ticket's event: deliver the verdict, or poll the claim again. */
static void on_ticket_ev(evutil_socket_t fd, short what, void *arg)
{
    struct ab_dedupe_ticket *t = arg;
    if (t->phase == P_WATCH) {
        start_claim(t);
        return;
    }
    int v = t->verdict;
    if (v == AB_DEDUPE_WRITE) {
        t->phase = P_WRITE;
        t->cb(v, t, t->opaque);
        return;
    }
    ab_dedupe_verdict_cb cb = t->cb;
    void *opaque = t->opaque;
    ticket_free(t);
    cb(v, NULL, opaque);
}

static int past(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* The store could not answer a claim. */
static void claim_failed(struct ab_dedupe_ticket *t, const char *err)
{
    const struct ab_dedupe_setup *setup = t->g->setup;
    store_outcome(setup, err);
    if (setup->refuse) {
        atomic_fetch_add(&m.refused, 1);
        table_remove(t);
        resolve_joined(t, AB_DEDUPE_REFUSED);
        deliver_later(t, AB_DEDUPE_REFUSED);
        return;
    }
    atomic_fetch_add(&m.unchecked, 1);
    t->unchecked = 1;
    deliver_later(t, AB_DEDUPE_WRITE);
}

/* Loop thread: the store's answer to a claim. */
static void on_claim(int state, const char *errstr, void *opaque)
{
    struct ab_dedupe_ticket *t = opaque;
    observe(&t->call_start);
    if (state == AB_DEDUPE_ERROR) {
        claim_failed(t, errstr ? errstr : "error");
        return;
    }
    store_outcome(t->g->setup, NULL);
    if (state == AB_DEDUPE_NEW) {
        deliver_later(t, AB_DEDUPE_WRITE);
    } else if (state == AB_DEDUPE_STORED) {
        atomic_fetch_add(&m.dup[t->phase == P_WATCH ? AB_DEDUPE_CAUSE_INFLIGHT : t->cause], 1);
        table_remove(t);
        resolve_joined(t, AB_DEDUPE_SKIP_OK);
        deliver_later(t, AB_DEDUPE_SKIP_OK);
    } else if (past(&t->deadline) || t->g->closing) {
        table_remove(t);
        resolve_joined(t, AB_DEDUPE_SKIP_FAILED);
        deliver_later(t, AB_DEDUPE_SKIP_FAILED);
    } else {
        t->phase = P_WATCH; /* in flight elsewhere: ask again shortly */
        struct timeval tv = {0, POLL_MS * 1000};
        evtimer_add(t->ev, &tv);
    }
}

static void start_claim(struct ab_dedupe_ticket *t)
{
    struct ab_dedupe_guard *g = t->g;
    clock_gettime(CLOCK_MONOTONIC, &t->call_start);
    if (g->store->ops->claim(g->store, t->key, on_claim, t) != 0) {
        char d[160] = "not connected";
        if (g->store->ops->describe) {
            g->store->ops->describe(g->store, d, sizeof(d));
        }
        claim_failed(t, d);
    }
}

void ab_dedupe_check(struct ab_dedupe_guard *g, const char *key, enum ab_dedupe_cause cause,
                     ab_dedupe_verdict_cb cb, void *opaque)
{
    struct ab_dedupe_ticket *t = ab_calloc(1, sizeof(*t));
    t->g = g;
    t->key = ab_strdup(key);
    t->cause = cause;
    t->cb = cb;
    t->opaque = opaque;
    t->ev = evtimer_new(g->base, on_ticket_ev, t);
    clock_gettime(CLOCK_MONOTONIC, &t->deadline);
    long ms = g->setup->ack_timeout_ms;
    t->deadline.tv_sec += ms / 1000;
    t->deadline.tv_nsec += (ms % 1000) * 1000000;
    if (t->deadline.tv_nsec >= 1000000000) {
        t->deadline.tv_sec++;
        t->deadline.tv_nsec -= 1000000000;
    }
    t->all_next = g->all;
    if (g->all) {
        g->all->all_prev = t;
    }
    g->all = t;
    struct ab_dedupe_ticket *owner = table_find(g, key);
    if (owner) {
        t->phase = P_JOINED;
        t->next = owner->joined;
        owner->joined = t;
        return;
    }
    uint32_t h = hash_key(key);
    t->next = g->table[h];
    g->table[h] = t;
    t->in_table = 1;
    t->phase = P_CLAIM;
    if (g->setup->sink_atomic) {
        deliver_later(t, AB_DEDUPE_WRITE); /* the sink's own script claims */
        return;
    }
    start_claim(t);
}

const char *ab_dedupe_ticket_key(const struct ab_dedupe_ticket *t)
{
    return t->key;
}

/* Loop thread: the store's answer to "stored". */
static void on_marked(int state, const char *errstr, void *opaque)
{
    struct ab_dedupe_ticket *t = opaque;
    observe(&t->call_start);
    store_outcome(t->g->setup, state == AB_DEDUPE_ERROR ? (errstr ? errstr : "error") : NULL);
    table_remove(t);
    resolve_joined(t, AB_DEDUPE_SKIP_OK);
    void (*done)(void *) = t->done;
    void *arg = t->done_arg;
    ticket_free(t);
    if (done) {
        done(arg);
    }
}

void ab_dedupe_outcome(struct ab_dedupe_ticket *t, int ok, void (*done)(void *opaque),
                       void *opaque)
{
    struct ab_dedupe_guard *g = t->g;
    if (ok < 0) {
        /* Unknown yet: the copies waiting here get 503 now (their deadline is this one's);
         * later copies ask the store, where the claim stays until the late answer. */
        table_remove(t);
        resolve_joined(t, AB_DEDUPE_SKIP_FAILED);
        t->phase = P_LATE;
        return;
    }
    if (g->setup->sink_atomic) {
        /* the sink stored the key with the event, or wrote nothing: nothing to tell */
        table_remove(t);
        resolve_joined(t, ok ? AB_DEDUPE_SKIP_OK : AB_DEDUPE_SKIP_FAILED);
        ticket_free(t);
        if (ok && done) {
            done(opaque);
        }
        return;
    }
    if (ok == 0) {
        if (g->store->ops->mark(g->store, t->key, 0, NULL, NULL) != 0) {
            ab_debug("dedupe: could not release the claim of a failed write; it expires");
        }
        table_remove(t);
        resolve_joined(t, AB_DEDUPE_SKIP_FAILED);
        ticket_free(t);
        return;
    }
    t->phase = P_MARK;
    t->done = done;
    t->done_arg = opaque;
    clock_gettime(CLOCK_MONOTONIC, &t->call_start);
    if (g->store->ops->mark(g->store, t->key, 1, on_marked, t) != 0) {
        /* the store refused at once: the event is stored, tell the caller now (counted) */
        store_outcome(g->setup, "not connected");
        table_remove(t);
        resolve_joined(t, AB_DEDUPE_SKIP_OK);
        void (*d)(void *) = t->done;
        void *arg = t->done_arg;
        ticket_free(t);
        if (d) {
            d(arg);
        }
    }
}

struct ab_dedupe_guard *ab_dedupe_guard_new(const struct ab_dedupe_setup *setup,
                                            struct event_base *base, char *errstr,
                                            size_t errlen)
{
    struct ab_dedupe_guard *g = ab_calloc(1, sizeof(*g));
    g->setup = setup;
    g->base = base;
    g->store = setup->ops->open(&setup->conf, setup->shared, base, errstr, errlen);
    if (g->store == NULL) {
        free(g);
        return NULL;
    }
    return g;
}

int ab_dedupe_guard_ready(struct ab_dedupe_guard *g, char *buf, size_t len)
{
    if (g->store->ops->ready(g->store)) {
        return 1;
    }
    char d[200] = "not ready";
    if (g->store->ops->describe) {
        g->store->ops->describe(g->store, d, sizeof(d));
    }
    snprintf(buf, len, "deduplication %s: %s",
             g->setup->refuse ? "store unreachable, webhooks refused" : "unchecked", d);
    return !g->setup->refuse;
}

void ab_dedupe_guard_free(struct ab_dedupe_guard *g)
{
    if (g == NULL) {
        return;
    }
    g->closing = 1;
    g->store->ops->close(g->store); /* outstanding calls answer ERROR now */
    g->store = NULL;
    /* What is left waits on its event or on a caller (WRITE, LATE): answer the waiting
     * copies, forget the rest (their callers are gone with the sink). */
    while (g->all) {
        struct ab_dedupe_ticket *t = g->all;
        if (t->phase == P_WATCH || t->phase == P_JOINED || t->phase == P_DELIVER) {
            int v = t->phase == P_DELIVER ? t->verdict : AB_DEDUPE_SKIP_FAILED;
            ab_dedupe_verdict_cb cb = t->cb;
            void *opaque = t->opaque;
            ticket_free(t);
            if (v != AB_DEDUPE_WRITE) {
                cb(v, NULL, opaque);
            } else {
                cb(AB_DEDUPE_SKIP_FAILED, NULL, opaque);
            }
        } else {
            ticket_free(t);
        }
    }
    free(g);
}

/* ---- asking the store from a command-line program ----------------------------------- */

struct ab_dedupe_query {
    const struct ab_dedupe_setup *setup;
    struct event_base *base;
    struct event *tick; /* wakes the loop while a call is refused (the store connecting) */
    struct ab_dedupe *store;
    int done, state;
    char err[160];
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_query_tick(evutil_socket_t fd, short what, void *arg)
{
}

static void on_peeked(int state, const char *errstr, void *opaque)
{
    struct ab_dedupe_query *q = opaque;
    q->done = 1;
    q->state = state;
    snprintf(q->err, sizeof(q->err), "%s", errstr ? errstr : "");
}

struct ab_dedupe_query *ab_dedupe_query_new(const struct ab_dedupe_setup *setup, char *errstr,
                                            size_t errlen)
{
    struct ab_dedupe_query *q = ab_calloc(1, sizeof(*q));
    struct timeval tv = {0, 20 * 1000};
    q->setup = setup;
    q->base = event_base_new();
    q->tick = event_new(q->base, -1, EV_PERSIST, on_query_tick, q);
    event_add(q->tick, &tv);
    q->store = setup->ops->open(&setup->conf, setup->shared, q->base, errstr, errlen);
    if (q->store == NULL) {
        ab_dedupe_query_free(q);
        return NULL;
    }
    return q;
}

/* One batch: ask until the store takes the call (it may still be connecting), then wait for
 * its answer. Returns 0 or -1 with errstr. */
static int query_batch(struct ab_dedupe_query *q, const char *const *keys, size_t n,
                       int *states, char *errstr, size_t errlen)
{
    long wait_ms = q->setup->conf.timeout_ms > 3000 ? q->setup->conf.timeout_ms : 3000;
    int64_t deadline = mono_ms() + wait_ms;
    q->done = 0;
    while (q->store->ops->peek(q->store, keys, n, states, on_peeked, q) != 0) {
        if (mono_ms() >= deadline) {
            char d[200] = "not ready";
            q->store->ops->describe(q->store, d, sizeof(d));
            snprintf(errstr, errlen, "the deduplication store does not answer: %s", d);
            return -1;
        }
        event_base_loop(q->base, EVLOOP_ONCE);
    }
    while (!q->done) {
        event_base_loop(q->base, EVLOOP_ONCE); /* the store's own deadline ends the call */
    }
    if (q->state == AB_DEDUPE_ERROR) {
        snprintf(errstr, errlen, "the deduplication store failed: %s", q->err);
        return -1;
    }
    return 0;
}

int ab_dedupe_query_states(struct ab_dedupe_query *q, const char *const *keys, size_t n,
                           int *states, char *errstr, size_t errlen)
{
    for (size_t i = 0; i < n; i += AB_DEDUPE_PEEK_MAX) {
        size_t k = n - i < AB_DEDUPE_PEEK_MAX ? n - i : AB_DEDUPE_PEEK_MAX;
        if (query_batch(q, keys + i, k, states + i, errstr, errlen) != 0) {
            return -1;
        }
    }
    return 0;
}

void ab_dedupe_query_describe(struct ab_dedupe_query *q, char *buf, size_t len)
{
    q->store->ops->describe(q->store, buf, len);
}

void ab_dedupe_query_free(struct ab_dedupe_query *q)
{
    if (q == NULL) {
        return;
    }
    if (q->store) {
        q->store->ops->close(q->store);
    }
    event_free(q->tick);
    event_base_free(q->base);
    free(q);
}
