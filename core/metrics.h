/* Prometheus metrics. Each worker thread owns one ab_metrics table (its own mutex, taken
 * only by that thread and by a scrape), so the request path shares no lock between
 * threads; process-wide gauges are atomics. A scrape sums the tables. */
#ifndef AB_METRICS_H
#define AB_METRICS_H

#include <stdatomic.h>
#include <stddef.h>

struct ab_metrics;

/* Process-wide gauges and counters. */
struct ab_metrics_global {
    atomic_long inflight;       /* webhooks waiting on the sink */
    atomic_long connections;    /* open client connections */
    atomic_long tls_handshake_failures;
    atomic_long reloads;        /* successful SIGHUP reloads */
    atomic_long reload_failures;
    atomic_long sink_ready;     /* workers whose sink instance can take writes */
    atomic_long workers;
    atomic_int draining;
    atomic_long buffered;         /* bytes of request bodies held (--max-buffered) */
    atomic_long request_timeouts; /* requests cut at --read-timeout */
    atomic_long accept_pauses;    /* accept() failures (EMFILE...) that paused accepting */
    atomic_long label_overflow;   /* requests counted under action="other" at the cap */
    atomic_long max_connections;  /* the effective limit */
    atomic_long evicted;          /* connections closed at the limit to make room */
    atomic_long dead_letters;     /* signed bodies stored in the dead letter */
    atomic_long dead_letter_failures; /* ... whose dead-letter write failed (503) */
};
extern struct ab_metrics_global ab_metrics_g;

struct ab_metrics *ab_metrics_new(void);
void ab_metrics_free(struct ab_metrics *m);

/* Count one answered request. action/event may be NULL (not a webhook, or no event). */
void ab_metrics_request(struct ab_metrics *m, int status, const char *action, const char *event);
/* A connection of this worker opened (+1) or closed (-1); returns how many are open
 * (delta 0: just that). */
long ab_metrics_connections(struct ab_metrics *m, long delta);
/* Observe one sink acknowledgement (ok or not) after `seconds`. */
void ab_metrics_ack(struct ab_metrics *m, double seconds, int ok);

/* Another module's metrics (the spool's): fn returns Prometheus text (HELP, TYPE and
 * samples) in a new string that the render appends and frees. Start-up thread; at most 4. */
void ab_metrics_add_source(char *(*fn)(void));

/* Render all tables plus the globals in Prometheus text format 0.0.4. Returns a new
 * string owned by the caller. Any thread. */
char *ab_metrics_render(struct ab_metrics *const *tables, size_t n, const char *sink_name);

#endif
