/* Reconciliation with Alma's Jobs API: write the JOB_END events the sink is missing.
 *
 * For each job given, the instances submitted in the window are listed through the API
 * (core/alma_api.h); those that ended and have no JOB_END in the sink get one, built as a
 * webhook from the institution would be (the same normaliser, the same CloudEvent shape),
 * with the instance as data.job_instance, the instance id as the event id (Alma's JOB_END
 * webhook id is job_instance.id, so a late webhook and this event are the same event for
 * deduplication and for `wait`) and the extension attribute `almaorigin: api`.
 *
 * The sink is reached through two functions only (struct ab_reconcile_sink), so that the
 * logic knows no backend: "which job instances already have a JOB_END since T" and "write
 * this event through the sink's own writer and wait for its acknowledgement". The program
 * provides them (cmd/reconcile.c with the interim readers of the sinks, and
 * ab_reconcile_writer below).
 *
 * Blocking, single-threaded: a command-line program, or a thread of its own. */
#ifndef AB_RECONCILE_H
#define AB_RECONCILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

struct ab_alma_api;
struct ab_event;
struct ab_route;
struct ab_sink_conf;
struct ab_sink_ops;

/* A set of job instance ids (strings). */
struct ab_reconcile_ids {
    char **v;
    size_t n, cap;
    int sorted;
};
void ab_reconcile_ids_add(struct ab_reconcile_ids *ids, const char *id);
int ab_reconcile_ids_has(struct ab_reconcile_ids *ids, const char *id);
void ab_reconcile_ids_free(struct ab_reconcile_ids *ids);

/* The sink as reconcile sees it. */
struct ab_reconcile_sink {
    /* Add to ids the job instance id of every JOB_END event the sink holds that was
     * written (or happened) at or after since_ms. 0, or -1 with one line in err. */
    int (*job_ends)(void *ctx, int64_t since_ms, struct ab_reconcile_ids *ids, char *err,
                    size_t errlen);
    /* Write the n events through the sink's writer and wait for the acknowledgements: 0
     * once the sink holds every one durably, -1 with one line in err. (A batch lets the
     * file sink commit them with one fsync.) skipped[i] = 1 (when skipped is not NULL):
     * not written, the deduplication store (or the sink's atomic claim) says it is stored
     * already (a webhook's copy). */
    int (*write)(void *ctx, struct ab_event *const *evs, size_t n, unsigned char *skipped,
                 char *err, size_t errlen);
    void *ctx;
};

struct ab_reconcile_opts {
    const char *const *jobs; /* --job, at least one */
    size_t njobs;
    int64_t now_ms;
    int64_t since_ms;        /* --since: the window is [now - since, now] */
    const char *institution; /* --institution: the events' source and routing */
    FILE *out;               /* what was found and written, one line each; NULL = quiet */
};

struct ab_reconcile_report {
    long listed;  /* instances submitted in the window */
    long ended;   /* of which ended */
    long present; /* of which already had a JOB_END in the sink (or in the dedupe store) */
    long written; /* JOB_END events written (acknowledged by the sink) */
};

/* Run once. Returns 0 when the sink holds a JOB_END for every ended instance, else -1 with
 * one line in err (an API or a sink error); *rep says how far it came either way. */
int ab_reconcile_run(struct ab_alma_api *api, const struct ab_reconcile_opts *o,
                     const struct ab_reconcile_sink *sink, struct ab_reconcile_report *rep,
                     char *err, size_t errlen);

/* The JOB_END event for an instance (Jobs API JSON), as a webhook from institution would
 * give: NULL with err when the instance cannot be one (no id). */
struct ab_event *ab_reconcile_event(const cJSON *instance, const char *institution, char *err,
                                    size_t errlen);

/* The job instance id of a CloudEvent line when it is a JOB_END (type
 * com.exlibrisgroup.alma.job_end or almaaction JOB_END), digits exactly as written (a
 * 17-digit JSON number does not survive a double); NULL otherwise. Caller frees. Also
 * returns the event's time in *time_ms (-1 when absent) when time_ms is not NULL.
 * INTERIM: ab_event_from_line() (issue 18) replaces this at the merge. */
char *ab_reconcile_job_end_instance(const char *line, size_t len, int64_t *time_ms);
/* Whether an event line is a JOB_END: its type, or its almaaction for an event of another
 * type. */
int ab_reconcile_is_job_end(const char *line, size_t len);

/* "2020-01-26T16:28:05.731Z" (or with +hh:mm) into ms since the epoch; -1 when unreadable. */
int64_t ab_reconcile_time_ms(const char *t);

/* `wait --fallback-after`: one job instance's status asked of the API at a gentle
 * interval, starting after a delay. ab_reconcile_poll_step() is cheap when nothing is due;
 * when due it makes one call (blocking, bounded by the client's timeout). Returns 1 when
 * the instance has ended (*ev: its JOB_END event, as reconcile would write it; caller
 * frees), 0 when not (yet), -1 with err when the call failed: temporarily (no answer, a
 * threshold: asked again at the next interval) or for good (key refused, no such
 * instance, budget used up: ab_reconcile_poll_stopped() is then 1). */
struct ab_reconcile_poll;
struct ab_reconcile_poll *ab_reconcile_poll_new(struct ab_alma_api *api, const char *job,
                                                const char *instance, const char *institution,
                                                int64_t first_ms, int64_t every_ms);
int ab_reconcile_poll_step(struct ab_reconcile_poll *p, int64_t now_ms, struct ab_event **ev,
                           char *err, size_t errlen);
int ab_reconcile_poll_stopped(const struct ab_reconcile_poll *p);
void ab_reconcile_poll_free(struct ab_reconcile_poll *p);

/* A blocking writer over any backend (what reconcile's write() needs): opens an instance of
 * ops on an event base of its own (the program must have called evthread_use_pthreads():
 * the file sink answers from its writer thread); put() submits the n events and runs the
 * base until the sink has called back for each (bounded by the sink's --ack-timeout; a
 * submit refused at once, e.g. while the backend connects, is tried again for up to 10 s).
 * 0 when every one was acknowledged, else -1 with the first failure in err. */
struct ab_reconcile_writer;
struct ab_dedupe_setup;
struct ab_reconcile_writer *ab_reconcile_writer_open(const struct ab_sink_ops *ops,
                                                     const struct ab_sink_conf *conf,
                                                     void *shared, const struct ab_route *route,
                                                     char *err, size_t errlen);
int ab_reconcile_writer_put(struct ab_reconcile_writer *w, struct ab_event *const *evs, size_t n,
                            unsigned char *skipped, char *err, size_t errlen);
/* Write through the deduplication guard of setup (core/dedupe.h), as a webhook is: each
 * event's key (ab_dedupe_key: "<institution>/job:<instance id>" for a JOB_END, the same for
 * the webhook and this event) is claimed first; one stored already is skipped (skipped[i]
 * = 1, counted as a duplicate of cause RECONCILE), one claimed is written and marked stored
 * before put() returns (with the sink's atomic claim: msg.dedupe_key, AB_SINK_DUPLICATE =
 * stored already). setup outlives the writer. 0, or -1 with err (the store cannot be
 * opened). */
int ab_reconcile_writer_dedupe(struct ab_reconcile_writer *w, const struct ab_dedupe_setup *setup,
                               char *err, size_t errlen);
/* The route (Redis stream, Kafka topic) a JOB_END from institution goes to; NULL with err
 * when the route holds {id} (reconcile could not find the JOB_END events). Caller frees. */
char *ab_reconcile_job_end_route(const struct ab_route *r, const char *institution, char *err,
                                 size_t errlen);
void ab_reconcile_writer_close(struct ab_reconcile_writer *w);

#endif
