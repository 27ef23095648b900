/* The webhook pipeline: admit, parse, submit, answer. See webhook.h. */
#include "webhook.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>


#include "acl.h"
#include "config.h"
#include "dedupe.h"
#include "event.h"
#include "http1.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "pending.h"
#include "route.h"
#include "server.h"
#include "signature.h"
#include "sink.h"

struct ab_webhook {
    struct ab_app *app;
    const struct ab_config *cfg;
    struct ab_metrics *metrics;
    struct ab_sink *sink;
    struct ab_secrets *secrets;
    int stopping;
    long inflight; /* webhooks of this worker waiting on the sink */
    struct ab_dedupe_guard *dd; /* NULL: deduplication off */
};

/* One webhook waiting on the sink. Freed when the sink's callback runs: exactly once, by
 * the contract, at the latest when --ack-timeout expires (the sink's pending list owns
 * that deadline, core/pending.h). */
struct pending {
    struct ab_webhook *wh;
    struct ab_req *req;
    struct ab_event *ev;
    struct timespec start;
    struct ab_dedupe_ticket *ticket; /* deduplication on: the claim this write holds */
};

static double elapsed_s(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* ---- answering -------------------------------------------------------------------- */

/* A webhook's answer, with the event's fields in the access log and the metrics. */
static void answer(struct ab_webhook *wh, struct ab_req *r, const struct ab_event *ev,
                   int status, const char *err)
{
    struct ab_answer a = {.status = status, .error = err};
    if (status == 200) {
        a.k1 = "id", a.v1 = ev->id, a.k2 = "status", a.v2 = "accepted";
    } else {
        a.k1 = "error", a.v1 = err;
        a.close = status == 503;
    }
    if (ev) {
        a.id = ev->id, a.action = ev->action, a.event = ev->event;
        a.sink = wh->app->sink_ops->name;
    }
    ab_req_answer(r, &a);
}

/* ---- the sink: the only code that calls it ------------------------------------------ */

static int dedupe_sink_done(struct pending *p, int status);

/* Loop thread: the sink's completion (exactly once per accepted submit). */
static void on_sink_done(int status, const char *errstr, void *opaque)
{
    struct pending *p = opaque;
    struct ab_webhook *wh = p->wh;
    if (p->ticket && dedupe_sink_done(p, status)) {
        return; /* answered once the store holds the key */
    }
    ab_metrics_ack(wh->metrics, elapsed_s(&p->start), status == AB_SINK_OK);
    if (status == AB_SINK_OK || status == AB_SINK_DUPLICATE) {
        answer(wh, p->req, p->ev, 200, NULL);
    } else if (status == AB_SINK_TOO_BIG) {
        char msg[512];
        snprintf(msg, sizeof(msg), "the event can never be stored by the %s sink: %s",
                 wh->app->sink_ops->name, errstr ? errstr : "too big");
        answer(wh, p->req, p->ev, 413, msg);
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "the %s sink could not store the event (%s%s%s); retry later",
                 wh->app->sink_ops->name, ab_sink_status_str(status), errstr ? ": " : "",
                 errstr ? errstr : "");
        answer(wh, p->req, p->ev, 503, msg);
    }
    ab_event_free(p->ev);
    if (p->ticket && status == AB_SINK_TIMEOUT) {
        p->ev = NULL, p->req = NULL; /* kept for the late answer: on_late_answer frees it */
    } else {
        free(p);
    }
    wh->inflight--;
    atomic_fetch_sub(&ab_metrics_g.inflight, 1);
}

/* Hand the event to the sink; on success the pending owns ev and the answer comes from
 * on_sink_done. Returns 0, or 503 with msg filled in (ev not taken). */
static int submit(struct ab_webhook *wh, struct ab_req *r, struct ab_event *ev,
                  struct ab_dedupe_ticket *ticket, char *msg, size_t msglen)
{
    const struct ab_config *cfg = wh->cfg;
    if (cfg->max_inflight > 0 && atomic_load(&ab_metrics_g.inflight) >= cfg->max_inflight) {
        snprintf(msg, msglen,
                 "too many webhooks waiting on the sink (--max-inflight); retry later");
        return 503;
    }
    char *route = ab_route_expand(wh->app->route, ev);
    struct ab_sink_msg m = {.id = ev->id, .type = ev->type, .source = ev->source, .route = route,
                            .value = ev->json, .value_len = ev->json_len, .event = ev};
    if (ticket && wh->app->dedupe->sink_atomic) {
        m.dedupe_key = ab_dedupe_ticket_key(ticket);
        m.dedupe_window_ms = wh->app->dedupe->conf.window_ms;
    }
    struct pending *p = ab_calloc(1, sizeof(*p));
    *p = (struct pending){.wh = wh, .req = r, .ev = ev, .start = r->start, .ticket = ticket};
    int rc = ab_sink_submit(wh->sink, &m, on_sink_done, p);
    free(route);
    if (rc != 0) {
        char d[128] = "not ready";
        ab_webhook_sink_describe(wh, d, sizeof(d));
        snprintf(msg, msglen, "the %s sink cannot take writes now (%s); retry later",
                 wh->app->sink_ops->name, d);
        free(p);
        return 503;
    }
    wh->inflight++;
    atomic_fetch_add(&ab_metrics_g.inflight, 1);
    return 0;
}

int ab_webhook_sink_ready(struct ab_webhook *wh)
{
    return wh->sink ? ab_sink_ready(wh->sink) : 0;
}

void ab_webhook_sink_describe(struct ab_webhook *wh, char *buf, size_t len)
{
    if (wh->sink && wh->sink->ops->describe) {
        wh->sink->ops->describe(wh->sink, buf, len);
    }
}

void ab_webhook_close_sink(struct ab_webhook *wh, int timeout_ms)
{
    if (wh && wh->sink) {
        wh->sink->ops->close(wh->sink, timeout_ms);
        wh->sink = NULL;
    }
}

/* ---- deduplication (core/dedupe.h): the guard around submit ------------------------- */

/* Loop thread: the guard's verdict for one webhook (p: its pending, not submitted yet). */
static void on_verdict(int verdict, struct ab_dedupe_ticket *t, void *opaque)
{
    struct pending *p = opaque;
    struct ab_webhook *wh = p->wh;
    char msg[256] = "";
    int code = 0;
    wh->inflight--;
    atomic_fetch_sub(&ab_metrics_g.inflight, 1);
    if (verdict == AB_DEDUPE_WRITE) {
        code = submit(wh, p->req, p->ev, t, msg, sizeof(msg));
        if (code != 0) {
            ab_dedupe_outcome(t, 0, NULL, NULL); /* not written: release the claim */
        } else {
            p->ev = NULL; /* the submitted pending owns it */
        }
    } else if (verdict == AB_DEDUPE_SKIP_OK) {
        code = 200; /* a copy of a stored webhook: nothing written */
    } else if (verdict == AB_DEDUPE_SKIP_FAILED) {
        code = 503;
        snprintf(msg, sizeof(msg), "another copy of this webhook was being stored and did not "
                                   "finish in time; retry later");
    } else {
        code = 503;
        snprintf(msg, sizeof(msg), "the deduplication store is unreachable "
                                   "(--dedupe-on-error refuse); retry later");
    }
    if (code != 0) {
        answer(wh, p->req, p->ev, code, code == 200 ? NULL : msg);
    }
    ab_event_free(p->ev);
    free(p);
}

/* Ask the guard about ev; the answer comes from on_verdict (or later from on_sink_done). */
static void dedupe_check(struct ab_webhook *wh, struct ab_req *r, struct ab_event *ev)
{
    char key[512];
    ab_dedupe_key(wh->app->dedupe, ev, key, sizeof(key));
    struct pending *p = ab_calloc(1, sizeof(*p));
    *p = (struct pending){.wh = wh, .req = r, .ev = ev, .start = r->start};
    wh->inflight++; /* waiting on the store counts as in flight for the drain */
    atomic_fetch_add(&ab_metrics_g.inflight, 1);
    ab_dedupe_check(wh->dd, key, AB_DEDUPE_CAUSE_AFTER_ACK, on_verdict, p);
}

/* Loop thread: the store holds the key of a stored event: answer 200 now. */
static void on_key_stored(void *opaque)
{
    struct pending *p = opaque;
    p->ticket = NULL;
    on_sink_done(AB_SINK_OK, NULL, p);
}

/* The sink answered a write that holds a claim. Returns 1 when the answer waits for the
 * store (success: the key is marked stored before the 200 leaves), 0 to answer now. */
static int dedupe_sink_done(struct pending *p, int status)
{
    if (status == AB_SINK_DUPLICATE) {
        ab_dedupe_count_duplicate(AB_DEDUPE_CAUSE_AFTER_ACK); /* the sink found it stored */
        status = AB_SINK_OK;
    }
    if (status == AB_SINK_OK) {
        ab_dedupe_outcome(p->ticket, 1, on_key_stored, p);
        return 1;
    }
    /* a timeout's outcome is unknown: the claim stays for the late answer */
    ab_dedupe_outcome(p->ticket, status == AB_SINK_TIMEOUT ? -1 : 0, NULL, NULL);
    if (status != AB_SINK_TIMEOUT) {
        p->ticket = NULL;
    }
    return 0;
}

/* Loop thread, from the pending list (ab_pending_watch_late): the late answer of a write
 * answered 503 at its deadline. A success marks the key stored, so Alma's retry gets 200
 * without a second write; a failure (or none) releases the claim. */
static void on_late_answer(void *opaque, int status)
{
    struct pending *p = opaque;
    ab_dedupe_outcome(p->ticket, status == AB_SINK_OK ? 1 : 0, NULL, NULL);
    free(p);
}

int ab_webhook_dedupe_ready(struct ab_webhook *wh, char *buf, size_t len)
{
    return wh->dd ? ab_dedupe_guard_ready(wh->dd, buf, len) : 1;
}

/* ---- admit and parse ---------------------------------------------------------------- */

/* Media type of the body: JSON or XML, from Content-Type or, when it is absent or generic,
 * from the first non-blank byte. Returns -1 for a type we do not take (415). */
static int body_format(const char *ctype, const char *body, size_t len)
{
    const char *s = ctype ? ctype + strspn(ctype, " \t") : "";
    size_t ml = strcspn(s, ";");
    while (ml > 0 && (s[ml - 1] == ' ' || s[ml - 1] == '\t')) {
        ml--;
    }
#define IS(lit) (ml == sizeof(lit) - 1 && strncasecmp(s, lit, ml) == 0)
    if (IS("application/json") || IS("text/json") ||
        (ml > 5 && strncasecmp(s + ml - 5, "+json", 5) == 0)) {
        return AB_FORMAT_JSON;
    }
    if (IS("application/xml") || IS("text/xml") ||
        (ml > 4 && strncasecmp(s + ml - 4, "+xml", 4) == 0)) {
        return AB_FORMAT_XML;
    }
    if (ml && !IS("application/octet-stream") && !IS("text/plain") &&
        !IS("application/x-www-form-urlencoded") && !(ml == 3 && strncmp(s, "*/*", 3) == 0)) {
        return -1;
    }
#undef IS
    size_t i = 0;
    if (len >= 3 && memcmp(body, "\xEF\xBB\xBF", 3) == 0) {
        i = 3;
    }
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) {
        i++;
    }
    if (i < len && (body[i] == '{' || body[i] == '[')) {
        return AB_FORMAT_JSON;
    }
    if (i < len && body[i] == '<') {
        return AB_FORMAT_XML;
    }
    return -1;
}

/* Before parsing: shutting down, allowlist, signature over the raw bytes, media type.
 * Returns 0 and the body format, or the status to answer with msg filled in. */
static int admit(struct ab_webhook *wh, struct ab_req *r, int *fmt, char *msg, size_t msglen)
{
    if (atomic_load(&ab_metrics_g.draining) && wh->stopping) {
        snprintf(msg, msglen, "almabridge is shutting down; retry later");
        return 503;
    }
    if (wh->app->allow && !ab_acl_match(wh->app->allow, r->client)) {
        snprintf(msg, msglen, "webhooks from %s are not allowed (see --allow)", r->client);
        return 403;
    }
    const char *sig = ab_http_field(&r->head, "X-Exl-Signature");
    if (!wh->cfg->insecure_skip_signature &&
        !ab_signature_verify(wh->secrets, sig, r->body, r->body_len)) {
        snprintf(msg, msglen, "%s",
                 sig ? "X-Exl-Signature does not match the body under any configured secret"
                     : "missing X-Exl-Signature header");
        return 401;
    }
    *fmt = body_format(ab_http_field(&r->head, "Content-Type"), r->body, r->body_len);
    if (*fmt < 0) {
        snprintf(msg, msglen, "unsupported Content-Type: send application/json, "
                              "application/xml or text/xml");
        return 415;
    }
    return 0;
}

/* Loop thread: a webhook. Every path ends in exactly one answer. */
static void handle_post(struct ab_webhook *wh, struct ab_req *r)
{
    char msg[256];
    int fmt = AB_FORMAT_JSON;
    if (wh->cfg->log_bodies) {
        /* --log-bodies, for debugging an integration only: bodies hold personal data */
        ab_debug("body from %s (%zu bytes): %.*s", r->client, r->body_len,
                 (int)(r->body_len < 1800 ? r->body_len : 1800), r->body);
    }
    int code = admit(wh, r, &fmt, msg, sizeof(msg));
    if (code != 0) {
        answer(wh, r, NULL, code, msg);
        return;
    }
    struct ab_event *ev = NULL;
    int rc = ab_event_from_body(fmt, r->body, r->body_len, &ev, msg, sizeof(msg));
    ab_req_drop_body(r);
    if (rc != AB_EVENT_OK) {
        answer(wh, r, NULL, rc == AB_EVENT_MALFORMED ? 400 : 422, msg);
        return;
    }
    if (wh->dd) {
        dedupe_check(wh, r, ev); /* answers, or submits once the key is claimed */
        return;
    }
    code = submit(wh, r, ev, NULL, msg, sizeof(msg));
    if (code != 0) {
        answer(wh, r, ev, code, msg);
        ab_event_free(ev);
    }
}

/* ---- the challenge ----------------------------------------------------------------- */

/* GET {path}?challenge=X: echo X as JSON. The value is percent-decoded ('+' is a space);
 * what does not decode to UTF-8 is refused with 400, so the echo is always valid JSON. */
static void handle_challenge(struct ab_req *r)
{
    const char *q = r->head.query;
    const char *v = NULL;
    size_t vlen = 0;
    while (q && *q) {
        size_t n = strcspn(q, "&;");
        if (n >= 10 && strncmp(q, "challenge", 9) == 0 && q[9] == '=') {
            v = q + 10;
            vlen = n - 10;
            break;
        }
        if (n == 9 && strncmp(q, "challenge", 9) == 0) {
            v = q + 9;
            break;
        }
        q += n + (q[n] != '\0');
    }
    if (v == NULL) {
        ab_req_error(r, 400, "missing challenge parameter: Alma sends GET ?challenge=<text>");
        return;
    }
    char small[256];
    char *out = vlen < sizeof(small) ? small : ab_malloc(vlen + 1);
    long n = ab_url_decode(v, vlen, out, 1);
    if (n < 0) {
        ab_req_error(r, 400, "the challenge parameter has a malformed %-escape");
    } else if (!ab_utf8_valid(out, (size_t)n)) {
        ab_req_error(r, 400, "the challenge parameter is not valid UTF-8");
    } else {
        struct ab_answer a = {.status = 200, .k1 = "challenge", .v1 = out};
        a.v1_len = (size_t)n; /* a decoded NUL is sent escaped, not cut short */
        ab_req_answer(r, &a);
    }
    if (out != small) {
        free(out);
    }
}

void ab_webhook_handle(struct ab_webhook *wh, struct ab_req *r)
{
    const char *m = r->head.method;
    if (strcmp(m, "POST") == 0) {
        handle_post(wh, r);
    } else if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0) {
        handle_challenge(r);
    } else {
        struct ab_answer a = {
            .status = 405,
            .k1 = "error",
            .v1 = "method not allowed: use POST for webhooks, GET for the challenge",
            .allow = "GET, HEAD, POST",
        };
        a.error = a.v1;
        ab_req_answer(r, &a);
    }
}

/* ---- life cycle ------------------------------------------------------------------- */

struct ab_webhook *ab_webhook_new(struct ab_app *app, struct event_base *base,
                                  struct ab_metrics *metrics, char *errstr, size_t errlen)
{
    struct ab_webhook *wh = ab_calloc(1, sizeof(*wh));
    wh->app = app;
    wh->cfg = app->cfg;
    wh->metrics = metrics;
    wh->sink = app->sink_ops->open(app->sink_conf, app->sink_shared, base, errstr, errlen);
    if (wh->sink == NULL) {
        free(wh);
        return NULL;
    }
    if (app->dedupe) {
        ab_pending_watch_late(on_sink_done, on_late_answer); /* start-up thread */
        wh->dd = ab_dedupe_guard_new(app->dedupe, base, errstr, errlen);
        if (wh->dd == NULL) {
            ab_webhook_close_sink(wh, 0);
            free(wh);
            return NULL;
        }
    }
    return wh;
}

void ab_webhook_set_secrets(struct ab_webhook *wh, struct ab_secrets *secrets)
{
    ab_secrets_ref(secrets);
    ab_secrets_free(wh->secrets);
    wh->secrets = secrets;
}

void ab_webhook_set_stopping(struct ab_webhook *wh)
{
    wh->stopping = 1;
}

long ab_webhook_inflight(const struct ab_webhook *wh)
{
    return wh->inflight;
}

void ab_webhook_free(struct ab_webhook *wh)
{
    if (wh == NULL) {
        return;
    }
    ab_webhook_close_sink(wh, (int)(wh->cfg->shutdown_timeout_s * 1000));
    ab_dedupe_guard_free(wh->dd); /* after the sink: its last answers still mark or release */
    ab_secrets_free(wh->secrets);
    free(wh);
}
