/* Reconciliation with Alma's Jobs API: see reconcile.h. */
#include "reconcile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include "alma_api.h"
#include "dedupe.h"
#include "event.h"
#include "mem.h"
#include "route.h"
#include "sink.h"

#define JOB_END_TYPE "com.exlibrisgroup.alma.job_end"
#define ORIGIN ",\"almaorigin\":\"api\""
#define DAY_MS (24 * 3600 * 1000LL)
#define BATCH 100        /* events written (and fsync'd) together */
#define REFUSED_MS 10000 /* how long a writer tries a sink that refuses submissions */

/* ---- a set of ids: sorted on first look-up, binary search ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void ab_reconcile_ids_add(struct ab_reconcile_ids *ids, const char *id)
{
    if (ids->n == ids->cap) {
        ids->cap = ids->cap ? ids->cap * 2 : 256;
        ids->v = ab_realloc(ids->v, ids->cap * sizeof(*ids->v));
    }
    ids->v[ids->n++] = ab_strdup(id);
    ids->sorted = 0;
}

int ab_reconcile_ids_has(struct ab_reconcile_ids *ids, const char *id)
{
    if (!ids->sorted && ids->n) {
        qsort(ids->v, ids->n, sizeof(*ids->v), cmp_str);
        ids->sorted = 1;
    }
    return ids->n && bsearch(&id, ids->v, ids->n, sizeof(*ids->v), cmp_str) != NULL;
}

void ab_reconcile_ids_free(struct ab_reconcile_ids *ids)
{
    for (size_t i = 0; i < ids->n; i++) {
        free(ids->v[i]);
    }
    free(ids->v);
    memset(ids, 0, sizeof(*ids));
}

/* ---- reading a CloudEvent line without losing digits (interim, see reconcile.h) ---- */

/* Index just past the JSON value at s[i] (the line is valid JSON: the sink wrote it). */
static size_t value_end(const char *s, size_t n, size_t i)
{
    for (int depth = 0; i < n; i++) {
        if (s[i] == '"') {
            for (i++; i < n && s[i] != '"'; i += 1 + (s[i] == '\\')) {
            }
        } else if (s[i] == '{' || s[i] == '[') {
            depth++;
        } else if ((s[i] == '}' || s[i] == ']') && --depth < 0) {
            return i;
        } else if (depth == 0 && strchr(", \t\r\n", s[i])) {
            return i;
        }
        if (depth == 0 && (s[i] == '"' || s[i] == '}' || s[i] == ']')) {
            return i + 1;
        }
    }
    return n;
}

/* Narrow [*off, *off + *len), an object, to the value of its member key; 0, or -1. */
static int member(const char *s, size_t *off, size_t *len, const char *key)
{
    size_t n = *off + *len, klen = strlen(key);
    size_t i = *off + strspn(s + *off, " \t\r\n");
    if (i >= n || s[i] != '{') {
        return -1;
    }
    for (i++; i < n;) {
        i += strspn(s + i, " \t\r\n,");
        if (i >= n || s[i] != '"') {
            return -1;
        }
        size_t kend = value_end(s, n, i);
        int hit = kend - i == klen + 2 && memcmp(s + i + 1, key, klen) == 0;
        i = kend + strspn(s + kend, " \t\r\n:");
        size_t vend = value_end(s, n, i);
        if (hit) {
            *off = i;
            *len = vend - i;
            return 0;
        }
        i = vend;
    }
    return -1;
}

/* The text of the string or number at path, unquoted (escapes in ids are not expected:
 * a string holding a backslash is returned as NULL). */
static char *text_at(const char *line, size_t n, const char *const *path, size_t depth)
{
    size_t off = 0, len = n;
    for (size_t d = 0; d < depth; d++) {
        if (member(line, &off, &len, path[d]) != 0) {
            return NULL;
        }
    }
    if (len >= 2 && line[off] == '"') {
        return memchr(line + off, '\\', len) ? NULL : ab_strndup(line + off + 1, len - 2);
    }
    return len > 0 && (line[off] == '-' || (line[off] >= '0' && line[off] <= '9'))
               ? ab_strndup(line + off, len)
               : NULL;
}

#define TEXT(line, len, ...)                                                                   \
    text_at((line), (len), (const char *const[]){__VA_ARGS__},                                 \
            sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

int64_t ab_reconcile_time_ms(const char *t)
{
    struct tm tm = {0};
    char rest[32] = "";
    if (t == NULL || sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d%31s", &tm.tm_year, &tm.tm_mon,
                            &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, rest) < 6) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    const char *p = rest;
    if (*p == '.') {
        int digits = 0;
        int64_t frac = 0;
        for (p++; *p >= '0' && *p <= '9'; p++) {
            frac = digits < 3 ? frac * 10 + (*p - '0') : frac;
            digits++;
        }
        for (; digits < 3; digits++) {
            frac *= 10;
        }
        ms += frac;
    }
    int oh = 0, om = 0;
    if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d", &oh, &om) == 2) {
        ms -= (*p == '+' ? 1 : -1) * ((int64_t)oh * 3600000 + (int64_t)om * 60000);
    }
    return ms;
}

int ab_reconcile_is_job_end(const char *line, size_t len)
{
    char *type = TEXT(line, len, "type");
    char *action = type && strcmp(type, JOB_END_TYPE) == 0 ? NULL : TEXT(line, len, "almaaction");
    int yes = (type && strcmp(type, JOB_END_TYPE) == 0) ||
              (action && strcasecmp(action, "JOB_END") == 0);
    free(type);
    free(action);
    return yes;
}

char *ab_reconcile_job_end_instance(const char *line, size_t len, int64_t *time_ms)
{
    if (!ab_reconcile_is_job_end(line, len)) {
        return NULL;
    }
    char *id = TEXT(line, len, "data", "job_instance", "id");
    if (time_ms) {
        char *t = TEXT(line, len, "time");
        *time_ms = ab_reconcile_time_ms(t);
        free(t);
    }
    return id;
}

/* ---- the event ---- */

/* ms since the epoch as "2026-12-07T03:04:05.678Z". */
static void iso_time(int64_t ms, char *out, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    char day[32];
    gmtime_r(&s, &tm);
    strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, len, "%s.%03dZ", day, (int)(ms % 1000));
}

struct ab_event *ab_reconcile_event(const cJSON *instance, const char *institution, char *err,
                                    size_t errlen)
{
    const char *id = ab_alma_str(instance, "id"), *end = ab_alma_str(instance, "end_time");
    char now[40];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    iso_time((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, now, sizeof(now));
    if (id == NULL || !*id) {
        snprintf(err, errlen, "a job instance without an id");
        return NULL;
    }
    /* the webhook Alma sends at the end of a job: its id is the instance's */
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "id", id);
    cJSON_AddStringToObject(body, "action", "JOB_END");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(body, "institution"), "value", institution);
    cJSON_AddStringToObject(body, "time", end && *end ? end : now);
    cJSON_AddNullToObject(body, "event");
    cJSON_AddItemToObject(body, "job_instance", cJSON_Duplicate(instance, 1));
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    struct ab_event *ev = NULL;
    char why[256];
    if (ab_event_from_body(AB_FORMAT_JSON, text, strlen(text), &ev, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "job instance %s: %s", id, why);
        free(text);
        return NULL;
    }
    free(text);
    /* the extension attribute, among the others, before "data" (the first `,"data":` of
     * the line is the attribute's: quotes inside attribute values are escaped) */
    char *data = strstr(ev->json, ",\"data\":");
    size_t at = (size_t)(data - ev->json), add = strlen(ORIGIN);
    ev->json = ab_realloc(ev->json, ev->json_len + add + 1);
    memmove(ev->json + at + add, ev->json + at, ev->json_len - at + 1);
    memcpy(ev->json + at, ORIGIN, add);
    ev->json_len += add;
    ev->data_off += add;
    /* and among the event's attributes, for the binary content mode */
    ev->ext_name[ev->n_ext] = ab_strdup("almaorigin");
    ev->ext_value[ev->n_ext++] = ab_strdup("api");
    return ev;
}

/* ---- one run ---- */

struct ended {
    char *job, *id, *status;
};

struct run {
    const char *job;
    struct ended *v;
    size_t n, cap;
    long listed;
};

static int on_instance(const cJSON *instance, void *arg)
{
    struct run *r = arg;
    r->listed++;
    if (!ab_alma_instance_ended(instance)) {
        return 0;
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->v = ab_realloc(r->v, r->cap * sizeof(*r->v));
    }
    const char *status = ab_alma_str(instance, "status");
    r->v[r->n++] = (struct ended){ab_strdup(r->job), ab_strdup(ab_alma_str(instance, "id")),
                                  ab_strdup(status ? status : "")};
    return 0;
}

static void day_of(int64_t ms, char *out, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, len, "%Y-%m-%d", &tm);
}

/* Write the batch and say so: what was written counts in rep->written, what the
 * deduplication store had already (a webhook's copy, come since the sink was read) in
 * rep->present. 0, or -1 with err. */
static int flush(const struct ab_reconcile_opts *o, const struct ab_reconcile_sink *sink,
                 struct ab_event **evs, size_t *n, struct ab_reconcile_report *rep, char *err,
                 size_t errlen)
{
    unsigned char skipped[BATCH] = {0};
    int rc = *n ? sink->write(sink->ctx, evs, *n, skipped, err, errlen) : 0;
    for (size_t i = 0; i < *n; i++) {
        if (rc == 0 && o->out) {
            fprintf(o->out, skipped[i] ? "JOB_END for instance %s stored already (the "
                                         "deduplication store)\n"
                                       : "wrote JOB_END for instance %s (ended %s)\n",
                    evs[i]->id, evs[i]->time ? evs[i]->time : "?");
        }
        if (rc == 0) {
            *(skipped[i] ? &rep->present : &rep->written) += 1;
        }
        ab_event_free(evs[i]);
    }
    *n = 0;
    return rc;
}

/* Fetch the missing instances in full and write their JOB_END events, BATCH at a time.
 * 0, or -1 with err. */
static int fill(struct ab_alma_api *api, const struct ab_reconcile_opts *o,
                const struct ab_reconcile_sink *sink, const struct ended *missing, size_t n,
                struct ab_reconcile_report *rep, char *err, size_t errlen)
{
    struct ab_event *evs[BATCH];
    size_t k = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        cJSON *full = NULL;
        if (ab_alma_job_instance(api, missing[i].job, missing[i].id, &full, err, errlen) != 0 ||
            (evs[k] = ab_reconcile_event(full, o->institution, err, errlen)) == NULL) {
            rc = -1;
        } else if (++k == BATCH) {
            rc = flush(o, sink, evs, &k, rep, err, errlen);
        }
        cJSON_Delete(full);
    }
    if (rc == 0) {
        return flush(o, sink, evs, &k, rep, err, errlen);
    }
    char keep[512];
    snprintf(keep, sizeof(keep), "%s", err);
    flush(o, sink, evs, &k, rep, err, errlen); /* what was fetched before the error */
    snprintf(err, errlen, "%s", keep);
    return -1;
}

int ab_reconcile_run(struct ab_alma_api *api, const struct ab_reconcile_opts *o,
                     const struct ab_reconcile_sink *sink, struct ab_reconcile_report *rep,
                     char *err, size_t errlen)
{
    struct run r = {0};
    struct ab_reconcile_ids ids = {0};
    char from[16], to[16];
    int rc = -1;
    memset(rep, 0, sizeof(*rep));
    day_of(o->now_ms - o->since_ms, from, sizeof(from));
    day_of(o->now_ms, to, sizeof(to));
    /* the API first, the sink after: a webhook arriving meanwhile is then seen */
    for (size_t j = 0; j < o->njobs; j++) {
        size_t before = r.n;
        long listed = r.listed;
        r.job = o->jobs[j];
        if (ab_alma_job_instances(api, r.job, from, to, on_instance, &r, err, errlen) != 0) {
            goto done;
        }
        if (o->out) {
            fprintf(o->out, "job %s: %ld instance(s) submitted %s .. %s (UTC), %zu ended\n",
                    r.job, r.listed - listed, from, to, r.n - before);
        }
    }
    rep->listed = r.listed;
    rep->ended = (long)r.n;
    /* a JOB_END is at or after its instance's submission, which is within the window's days */
    int64_t since = ab_reconcile_time_ms(from) >= 0 ? ab_reconcile_time_ms(from) : o->now_ms - o->since_ms;
    if (sink->job_ends(sink->ctx, since - DAY_MS, &ids, err, errlen) != 0) {
        goto done;
    }
    /* the missing ones to the front */
    size_t nmissing = 0;
    for (size_t i = 0; i < r.n; i++) {
        if (ab_reconcile_ids_has(&ids, r.v[i].id)) {
            rep->present++;
        } else {
            struct ended e = r.v[nmissing];
            r.v[nmissing++] = r.v[i];
            r.v[i] = e;
        }
    }
    rc = fill(api, o, sink, r.v, nmissing, rep, err, errlen);
done:
    for (size_t i = 0; i < r.n; i++) {
        free(r.v[i].job);
        free(r.v[i].id);
        free(r.v[i].status);
    }
    free(r.v);
    ab_reconcile_ids_free(&ids);
    return rc;
}

/* ---- one instance, polled (wait --fallback-after) ---- */

struct ab_reconcile_poll {
    struct ab_alma_api *api;
    char *job, *instance, *institution;
    int64_t next_ms, every_ms;
    int stopped;
};

struct ab_reconcile_poll *ab_reconcile_poll_new(struct ab_alma_api *api, const char *job,
                                                const char *instance, const char *institution,
                                                int64_t first_ms, int64_t every_ms)
{
    struct ab_reconcile_poll *p = ab_calloc(1, sizeof(*p));
    p->api = api;
    p->job = ab_strdup(job);
    p->instance = ab_strdup(instance);
    p->institution = ab_strdup(institution ? institution : "unknown");
    p->next_ms = first_ms;
    p->every_ms = every_ms;
    return p;
}

int ab_reconcile_poll_step(struct ab_reconcile_poll *p, int64_t now_ms, struct ab_event **ev,
                           char *err, size_t errlen)
{
    cJSON *inst = NULL;
    *ev = NULL;
    if (p->stopped || now_ms < p->next_ms) {
        return 0;
    }
    p->next_ms = now_ms + p->every_ms;
    int rc = ab_alma_job_instance(p->api, p->job, p->instance, &inst, err, errlen);
    if (rc != AB_ALMA_OK) {
        p->stopped = rc != AB_ALMA_DOWN && rc != AB_ALMA_THRESHOLD;
        return -1;
    }
    int ended = ab_alma_instance_ended(inst);
    if (ended && (*ev = ab_reconcile_event(inst, p->institution, err, errlen)) == NULL) {
        p->stopped = 1;
        ended = -1;
    }
    cJSON_Delete(inst);
    return ended;
}

int ab_reconcile_poll_stopped(const struct ab_reconcile_poll *p)
{
    return p->stopped;
}

void ab_reconcile_poll_free(struct ab_reconcile_poll *p)
{
    if (p == NULL) {
        return;
    }
    free(p->job);
    free(p->instance);
    free(p->institution);
    free(p);
}

/* ---- a blocking writer over the sink contract ---- */

struct slot {
    struct ab_reconcile_writer *w;
    int status;
    int verdict;                /* deduplication on: the guard's (core/dedupe.h) */
    int submitted;
    struct ab_dedupe_ticket *t; /* the claim, while the write it holds is not answered */
    unsigned char *skipped;     /* 1: stored already (the store or the sink's claim says) */
};

struct ab_reconcile_writer {
    const struct ab_sink_ops *ops;
    struct ab_sink *sink;
    struct event_base *base;
    const struct ab_route *route;
    const struct ab_dedupe_setup *dd_setup; /* NULL: deduplication off */
    struct ab_dedupe_guard *dd;
    size_t waiting;
    char why[256]; /* the first failure's reason */
};

struct ab_reconcile_writer *ab_reconcile_writer_open(const struct ab_sink_ops *ops,
                                                     const struct ab_sink_conf *conf,
                                                     void *shared, const struct ab_route *route,
                                                     char *err, size_t errlen)
{
    struct ab_reconcile_writer *w = ab_calloc(1, sizeof(*w));
    w->ops = ops;
    w->route = route;
    w->base = event_base_new();
    if (w->base == NULL || !(w->sink = ops->open(conf, shared, w->base, err, errlen))) {
        ab_reconcile_writer_close(w);
        return NULL;
    }
    return w;
}

int ab_reconcile_writer_dedupe(struct ab_reconcile_writer *w, const struct ab_dedupe_setup *setup,
                               char *err, size_t errlen)
{
    w->dd_setup = setup;
    w->dd = ab_dedupe_guard_new(setup, w->base, err, errlen);
    return w->dd ? 0 : -1;
}

static void note_failure(struct ab_reconcile_writer *w, const char *what, const char *errstr)
{
    if (!w->why[0]) {
        snprintf(w->why, sizeof(w->why), "%s%s%s", what, errstr ? ": " : "",
                 errstr ? errstr : "");
    }
}

static void slot_done(struct ab_reconcile_writer *w)
{
    if (--w->waiting == 0) {
        event_base_loopbreak(w->base);
    }
}

/* Loop thread: the store holds the key of a written event. */
static void on_marked(void *opaque)
{
    struct slot *s = opaque;
    slot_done(s->w);
}

/* Loop thread: the sink's answer (exactly once per accepted submit). With a claim, a
 * success is marked stored before the slot is done (before put() reports success). */
static void on_written(int status, const char *errstr, void *opaque)
{
    struct slot *s = opaque;
    struct ab_dedupe_ticket *t = s->t;
    s->t = NULL;
    if (t && status == AB_SINK_DUPLICATE) {
        ab_dedupe_count_duplicate(AB_DEDUPE_CAUSE_RECONCILE); /* the sink's claim had it */
        *s->skipped = 1;
        status = AB_SINK_OK;
    }
    s->status = status;
    if (t && status == AB_SINK_OK) {
        ab_dedupe_outcome(t, 1, on_marked, s);
        return;
    }
    if (t) {
        /* a timeout's outcome is unknown: the claim stays until it lapses */
        ab_dedupe_outcome(t, status == AB_SINK_TIMEOUT ? -1 : 0, NULL, NULL);
    }
    if (status != AB_SINK_OK) {
        note_failure(s->w, ab_sink_status_str(status), errstr);
    }
    slot_done(s->w);
}

/* Loop thread: the guard's verdict for one event. */
static void on_verdict(int verdict, struct ab_dedupe_ticket *t, void *opaque)
{
    struct slot *s = opaque;
    s->verdict = verdict;
    s->t = t;
    if (verdict == AB_DEDUPE_SKIP_OK) {
        *s->skipped = 1; /* a webhook's copy is stored (counted by the guard) */
    } else if (verdict == AB_DEDUPE_SKIP_FAILED) {
        note_failure(s->w, "a webhook's copy of a JOB_END was being stored and did not finish "
                           "in time; try again", NULL);
    } else if (verdict == AB_DEDUPE_REFUSED) {
        note_failure(s->w, "the deduplication store is unreachable (--dedupe-on-error refuse)",
                     NULL);
    }
    slot_done(s->w);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Submit one event, trying again while the sink refuses (for at most REFUSED_MS). */
static int submit_one(struct ab_reconcile_writer *w, const struct ab_event *ev, struct slot *s)
{
    char *route = ab_route_expand(w->route, ev);
    struct ab_sink_msg m = {.id = ev->id, .type = ev->type, .source = ev->source, .route = route,
                            .value = ev->json, .value_len = ev->json_len, .event = ev};
    if (s->t && w->dd_setup->sink_atomic) {
        m.dedupe_key = ab_dedupe_ticket_key(s->t);
        m.dedupe_window_ms = w->dd_setup->conf.window_ms;
    }
    int64_t until = mono_ms() + REFUSED_MS;
    int rc;
    while ((rc = w->ops->submit(w->sink, &m, on_written, s)) != 0 && mono_ms() < until) {
        struct timeval tick = {0, 100000};
        event_base_loopexit(w->base, &tick);
        event_base_dispatch(w->base);
    }
    free(route);
    return rc;
}

static void wait_all(struct ab_reconcile_writer *w)
{
    while (w->waiting > 0) {
        event_base_loop(w->base, EVLOOP_ONCE);
    }
}

int ab_reconcile_writer_put(struct ab_reconcile_writer *w, struct ab_event *const *evs, size_t n,
                            unsigned char *skipped, char *err, size_t errlen)
{
    struct slot *slots = ab_calloc(n ? n : 1, sizeof(*slots));
    unsigned char *sk = skipped ? skipped : ab_calloc(n ? n : 1, 1);
    int refused = 0;
    memset(sk, 0, n);
    w->why[0] = '\0';
    w->waiting = 0;
    for (size_t i = 0; i < n; i++) {
        slots[i] = (struct slot){.w = w, .skipped = &sk[i]};
    }
    if (w->dd) { /* every key claimed (or found stored) first: the verdicts come on the loop */
        char key[512];
        for (size_t i = 0; i < n; i++) {
            ab_dedupe_key(w->dd_setup, evs[i], key, sizeof(key));
            w->waiting++;
            ab_dedupe_check(w->dd, key, AB_DEDUPE_CAUSE_RECONCILE, on_verdict, &slots[i]);
        }
        wait_all(w);
    }
    for (size_t i = 0; i < n && !refused; i++) {
        if (w->dd && slots[i].verdict != AB_DEDUPE_WRITE) {
            continue;
        }
        w->waiting++;
        if (submit_one(w, evs[i], &slots[i]) != 0) {
            w->waiting--;
            refused = 1;
        } else {
            slots[i].submitted = 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (slots[i].t && !slots[i].submitted) {
            ab_dedupe_outcome(slots[i].t, 0, NULL, NULL); /* not written: release the claim */
            slots[i].t = NULL;
        }
    }
    wait_all(w);
    free(slots);
    if (sk != skipped) {
        free(sk);
    }
    if (refused && !w->why[0]) {
        snprintf(w->why, sizeof(w->why), "refuses writes");
        if (w->ops->describe) {
            w->ops->describe(w->sink, w->why, sizeof(w->why));
        }
    }
    if (w->why[0]) {
        snprintf(err, errlen, "%s sink: %s", w->ops->name, w->why);
        return -1;
    }
    return 0;
}

char *ab_reconcile_job_end_route(const struct ab_route *r, const char *institution, char *err,
                                 size_t errlen)
{
    static char one[] = "1", two[] = "2", job_end[] = "JOB_END";
    struct ab_event a = {.id = one, .action = job_end, .institution = (char *)institution};
    struct ab_event b = a;
    b.id = two;
    char *ra = ab_route_expand(r, &a), *rb = ab_route_expand(r, &b);
    if (strcmp(ra, rb) != 0) {
        snprintf(err, errlen, "--route holds {id}: reconcile cannot find the JOB_END events");
        free(ra);
        ra = NULL;
    }
    free(rb);
    return ra;
}

void ab_reconcile_writer_close(struct ab_reconcile_writer *w)
{
    if (w == NULL) {
        return;
    }
    if (w->sink) {
        w->ops->close(w->sink, 5000);
    }
    ab_dedupe_guard_free(w->dd); /* after the sink: its last answers still mark or release */
    if (w->base) {
        event_base_free(w->base);
    }
    free(w);
}
