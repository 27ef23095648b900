/* The webhook pipeline of one worker: admit (draining, allowlist, signature over the raw
 * bytes, media type), parse (ab_event_from_body), submit (to this worker's sink instance,
 * the only place that calls the sink) and answer (200 after the sink's acknowledgement,
 * 503 + Retry-After for every transient failure). Also Alma's challenge GET.
 *
 * Threads: everything runs on the owning worker's loop thread. */
#ifndef AB_WEBHOOK_H
#define AB_WEBHOOK_H

#include <stddef.h>

struct ab_app;
struct ab_handler;
struct ab_req;
struct ab_metrics;
struct ab_secrets;
struct event_base;

struct ab_webhook;

/* Open this worker's sink instance on base. Returns NULL with one line in errstr. */
struct ab_webhook *ab_webhook_new(struct ab_app *app, struct event_base *base,
                                  struct ab_metrics *metrics, char *errstr, size_t errlen);
/* Use secrets from now on (takes a reference, drops the previous one). */
void ab_webhook_set_secrets(struct ab_webhook *wh, struct ab_secrets *secrets);
/* The worker is stopping: new webhooks get 503 while the process drains. */
void ab_webhook_set_stopping(struct ab_webhook *wh);

/* A request for the webhook path: POST is a webhook, GET/HEAD the challenge, others 405.
 * Ends r with exactly one ab_req_answer(), now or when the sink has answered. */
void ab_webhook_handle(struct ab_webhook *wh, struct ab_req *r);

/* The sink instance's state, for /readyz and the sink_ready gauge. */
int ab_webhook_sink_ready(struct ab_webhook *wh);
void ab_webhook_sink_describe(struct ab_webhook *wh, char *buf, size_t len);
/* Deduplication's state, for /readyz: 0 when webhooks are refused (store unreachable and
 * --dedupe-on-error refuse); a detail in buf when the store is unreachable ("" when fine). */
int ab_webhook_dedupe_ready(struct ab_webhook *wh, char *buf, size_t len);
/* Webhooks of this worker waiting on the sink. */
long ab_webhook_inflight(const struct ab_webhook *wh);
/* Webhooks of every worker waiting on a sink (what --max-inflight limits). Any thread. */
long ab_webhook_inflight_total(void);

/* Close the sink (completing what it holds: those requests are answered 503) and free. */
void ab_webhook_close_sink(struct ab_webhook *wh, int timeout_ms);
void ab_webhook_free(struct ab_webhook *wh);

/* Media type of a body: AB_FORMAT_JSON or AB_FORMAT_XML (event.h), from its Content-Type
 * (ctype, may be NULL) or, when that is absent or generic, from its first non-blank byte;
 * -1 for a type the webhook path does not take (415). Pure; any thread. */
int ab_webhook_body_format(const char *ctype, const char *body, size_t len);

/* The pipeline as the server's handler (server.h): the program registers it as
 * ab_app.handler; each worker's context is an ab_webhook. */
extern const struct ab_handler ab_webhook_handler;

#endif
