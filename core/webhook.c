/* The webhook pipeline: admit, parse, submit, answer. See webhook.h. */
#include "webhook.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>


#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "acl.h"
#include "config.h"
#include "dedupe.h"
#include "event.h"
#include "http1.h"
#include "institutions.h"
#include "log.h"
#include "mem.h"
#include "redact.h"
#include "metrics.h"
#include "pending.h"
#include "route.h"
#include "server.h"
#include "signature.h"
#include "sink.h"

/* Webhooks of every worker waiting on a sink: what --max-inflight decides on, enforced in
 * submit(); metrics read it through the handler's inflight_total. */
static atomic_long inflight_all;

struct ab_webhook {
    struct ab_app *app;
    const struct ab_config *cfg;
    struct ab_metrics *metrics;
    struct ab_sink *sink;
    struct ab_secrets *secrets;
    struct ab_inst_view insts;    /* consortium mode: this worker's hold on the profiles */
    struct ab_inst_budget budget; /* for telling forgeries from bad signatures */
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
    struct ab_inst_stats *stats; /* consortium mode: the institution's counters, or NULL */
    struct timespec start;
    struct ab_dedupe_ticket *ticket; /* deduplication on: the claim this write holds */
    char *route;                     /* while waiting on the deduplication store */
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
                   int status, const char *err, const char *traceparent)
{
    char trace_id[33] = "";
    struct ab_answer a = {.status = status, .error = err};
    if (ev && ev->traceparent) {
        traceparent = ev->traceparent;
    }
    if (traceparent) {
        memcpy(trace_id, traceparent + 3, 32); /* 00-<trace id>-<span id>-<flags> */
        trace_id[32] = '\0';
        a.trace_id = trace_id;
    }
    if (status == 200) {
        a.k1 = "id", a.v1 = ev->id, a.k2 = "status", a.v2 = "accepted";
    } else {
        a.k1 = "error", a.v1 = err;
        a.close = status == 503;
    }
    if (ev) {
        a.id = ev->id, a.action = ev->action, a.event = ev->event;
        a.sink = wh->app->sink_name;
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
    ab_inst_stats_answer(p->stats, status == AB_SINK_OK || status == AB_SINK_DUPLICATE ? 200
                                   : status == AB_SINK_TOO_BIG                        ? 413
                                                                                      : 503);
    if (status == AB_SINK_OK || status == AB_SINK_DUPLICATE) {
        answer(wh, p->req, p->ev, 200, NULL, NULL);
    } else if (status == AB_SINK_TOO_BIG) {
        char msg[512];
        snprintf(msg, sizeof(msg), "the event can never be stored by the %s sink: %s",
                 wh->app->sink_name, errstr ? errstr : "too big");
        answer(wh, p->req, p->ev, 413, msg, NULL);
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "the %s sink could not store the event (%s%s%s); retry later",
                 wh->app->sink_name, ab_sink_status_str(status), errstr ? ": " : "",
                 errstr ? errstr : "");
        answer(wh, p->req, p->ev, 503, msg, NULL);
    }
    ab_event_free(p->ev);
    if (p->ticket && status == AB_SINK_TIMEOUT) {
        p->ev = NULL, p->req = NULL; /* kept for the late answer: on_late_answer frees it */
    } else {
        free(p);
    }
    wh->inflight--;
    atomic_fetch_sub(&inflight_all, 1);
}

/* Hand the event to the sink; on success the pending owns ev and the answer comes from
 * on_sink_done. route: its topic / stream (taken: freed here); stats: the institution's
 * counters in consortium mode, else NULL; ticket: the deduplication claim it holds, or NULL.
 * Returns 0, or 503 with msg filled in (ev not taken). */
static int submit(struct ab_webhook *wh, struct ab_req *r, struct ab_event *ev, char *route,
                  struct ab_inst_stats *stats, struct ab_dedupe_ticket *ticket, char *msg,
                  size_t msglen)
{
    const struct ab_config *cfg = wh->cfg;
    if (cfg->max_inflight > 0 && atomic_load(&inflight_all) >= cfg->max_inflight) {
        snprintf(msg, msglen,
                 "too many webhooks waiting on the sink (--max-inflight); retry later");
        free(route);
        return 503;
    }
    struct ab_sink_msg m = {.id = ev->id, .type = ev->type, .source = ev->source, .route = route,
                            .value = ev->json, .value_len = ev->json_len, .event = ev};
    if (ticket && wh->app->dedupe->sink_atomic) {
        m.dedupe_key = ab_dedupe_ticket_key(ticket);
        m.dedupe_window_ms = wh->app->dedupe->conf.window_ms;
    }
    struct pending *p = ab_calloc(1, sizeof(*p));
    *p = (struct pending){
        .wh = wh, .req = r, .ev = ev, .start = r->start, .ticket = ticket, .stats = stats};
    int rc = ab_sink_submit(wh->sink, &m, on_sink_done, p);
    free(route);
    if (rc != 0) {
        char d[128] = "not ready";
        ab_webhook_sink_describe(wh, d, sizeof(d));
        snprintf(msg, msglen, "the %s sink cannot take writes now (%s); retry later",
                 wh->app->sink_name, d);
        free(p);
        return 503;
    }
    wh->inflight++;
    atomic_fetch_add(&inflight_all, 1);
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

/* ---- the dead letter ------------------------------------------------------------------- */

/* A signed body that cannot become an event, waiting on the sink's dead letter. */
struct dead {
    struct ab_webhook *wh;
    struct ab_req *req;
    char id[64];
    size_t bytes;
    char reason[160];
};

/* Loop thread: the sink's answer for a dead-letter record. */
static void on_dead_letter_done(int status, const char *errstr, void *opaque)
{
    struct dead *d = opaque;
    struct ab_webhook *wh = d->wh;
    struct ab_answer a = {.status = 200, .k1 = "id", .v1 = d->id, .k2 = "status",
                          .v2 = "dead-lettered", .id = d->id, .sink = wh->app->sink_name};
    char msg[256];
    if (status == AB_SINK_OK) {
        atomic_fetch_add(&ab_metrics_g.dead_letters, 1);
        ab_warn("dead letter: a signed request from %s (%zu bytes) could not become an event "
                "(%s); stored raw as %s in %s",
                d->req->client, d->bytes, d->reason, d->id,
                wh->cfg->dead_letter_route ? wh->cfg->dead_letter_route : "the dead letter");
    } else {
        atomic_fetch_add(&ab_metrics_g.dead_letter_failures, 1);
        snprintf(msg, sizeof(msg), "the %s sink could not store the dead letter (%s%s%s); "
                 "retry later", wh->app->sink_name, ab_sink_status_str(status),
                 errstr ? ": " : "", errstr ? errstr : "");
        ab_error("dead letter: could not store a signed request from %s that could not become "
                 "an event (%s): %s; answered 503",
                 d->req->client, d->reason, msg);
        a = (struct ab_answer){.status = 503, .k1 = "error", .v1 = msg, .error = msg,
                               .close = 1};
    }
    ab_req_answer(d->req, &a);
    free(d);
    wh->inflight--;
    atomic_fetch_sub(&inflight_all, 1);
}

/* The dead-letter record of r: a CloudEvent of type com.exlibrisgroup.alma.deadletter whose
 * data_base64 is the body as received, with the reason and the headers needed to process it
 * again (Content-Type, X-Exl-Signature), and in consortium mode the code of the institution
 * whose secrets verified it (inst; NULL with one pool of secrets). Its id is derived from
 * the body, so Alma's retries of one body share it. Returns the JSON (caller frees) and
 * fills id. */
static char *dead_letter_record(struct ab_req *r, int status, const char *reason,
                                const char *inst, char *id, size_t idlen)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)r->body, r->body_len, md);
    int n = snprintf(id, idlen, "deadletter-");
    for (int i = 0; i < 16 && (size_t)n + 2 < idlen; i++) {
        n += snprintf(id + n, idlen - (size_t)n, "%02x", md[i]);
    }
    char *b64 = ab_malloc(4 * ((r->body_len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)r->body, (int)r->body_len);
    char now[40];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t tl = strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(now + tl, sizeof(now) - tl, ".%03ldZ", ts.tv_nsec / 1000000);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "specversion", "1.0");
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "source", "urn:almabridge:deadletter");
    cJSON_AddStringToObject(o, "type", "com.exlibrisgroup.alma.deadletter");
    cJSON_AddStringToObject(o, "time", now);
    cJSON_AddStringToObject(o, "datacontenttype", "application/octet-stream");
    cJSON_AddStringToObject(o, "deadletterreason", reason);
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    cJSON_AddStringToObject(o, "deadletterstatus", st);
    const char *ct = ab_http_field(&r->head, "Content-Type");
    const char *sig = ab_http_field(&r->head, "X-Exl-Signature");
    if (ct && ct[0]) {
        cJSON_AddStringToObject(o, "almacontenttype", ct);
    }
    if (sig && sig[0]) {
        cJSON_AddStringToObject(o, "almasignature", sig);
    }
    if (inst) {
        cJSON_AddStringToObject(o, "almainstitution", inst);
    }
    cJSON_AddStringToObject(o, "data_base64", b64);
    free(b64);
    char *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return json;
}

/* A signed request whose body cannot become an event (status and reason: what it would have
 * been answered): store it raw in the dead letter and answer 200 once stored, 503 if that
 * fails. Returns 0 when it took the request (an answer follows), -1 when it does not apply
 * (--dead-letter off, not signed by a configured secret): the caller answers as before. */
/* 1 when the request is signed well enough to keep its body as a dead letter. With one
 * pool of secrets: the signature verifies. In consortium mode the body names no usable
 * institution, so only a URL that names one ({path}/{code}, ?institution=) can bind it:
 * the institution's allow must admit the client and the signature must verify under its
 * own secrets; code (AB_INST_CODE_MAX + 1 bytes) gets the institution, for the record. */
static int signed_for_dead_letter(struct ab_webhook *wh, const struct ab_institutions *insts,
                                  struct ab_req *r, char *code)
{
    const char *sig = ab_http_field(&r->head, "X-Exl-Signature");
    if (insts == NULL) {
        return ab_signature_verify(wh->secrets, sig, r->body, r->body_len);
    }
    if (ab_institutions_url_code(wh->cfg->path, r->head.path, r->head.query, code) != 1) {
        return 0;
    }
    const struct ab_institution *inst = ab_institutions_find(insts, code);
    const struct ab_institution *signer = NULL;
    const struct ab_acl *allow = inst ? ab_institution_allow(inst) : NULL;
    return inst && (allow == NULL || ab_acl_match(allow, r->client)) &&
           ab_institutions_verify(insts, inst, sig, r->body, r->body_len, &wh->budget,
                                  &signer) == AB_INST_VALID;
}

static int dead_letter(struct ab_webhook *wh, const struct ab_institutions *insts,
                       struct ab_req *r, int status, const char *reason)
{
    const struct ab_config *cfg = wh->cfg;
    char code[AB_INST_CODE_MAX + 1];
    if (cfg->dead_letter == NULL || strcmp(cfg->dead_letter, "on") != 0 ||
        !signed_for_dead_letter(wh, insts, r, code)) {
        return -1; /* unsigned requests (--insecure-skip-signature) are never stored */
    }
    struct dead *d = ab_calloc(1, sizeof(*d));
    *d = (struct dead){.wh = wh, .req = r, .bytes = r->body_len};
    snprintf(d->reason, sizeof(d->reason), "%s", reason);
    char *json = dead_letter_record(r, status, reason, insts ? code : NULL, d->id,
                                    sizeof(d->id));
    ab_req_drop_body(r);
    struct ab_sink_msg m = {.id = d->id,
                            .type = "com.exlibrisgroup.alma.deadletter",
                            .source = "urn:almabridge:deadletter",
                            .route = cfg->dead_letter_route ? cfg->dead_letter_route
                                                            : "alma.deadletter",
                            .key = d->id,
                            .value = json,
                            .value_len = strlen(json),
                            .dead_letter = 1};
    int rc = cfg->max_inflight > 0 && atomic_load(&inflight_all) >= cfg->max_inflight
                 ? -1
                 : ab_sink_submit(wh->sink, &m, on_dead_letter_done, d);
    cJSON_free(json);
    if (rc != 0) {
        char msg[256], desc[128] = "not ready";
        ab_webhook_sink_describe(wh, desc, sizeof(desc));
        snprintf(msg, sizeof(msg), "the %s sink cannot take the dead letter now (%s); retry "
                 "later", wh->app->sink_name, desc);
        atomic_fetch_add(&ab_metrics_g.dead_letter_failures, 1);
        answer(wh, r, NULL, 503, msg, NULL);
        free(d);
        return 0;
    }
    wh->inflight++;
    atomic_fetch_add(&inflight_all, 1);
    return 0;
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
    atomic_fetch_sub(&inflight_all, 1);
    if (verdict == AB_DEDUPE_WRITE) {
        code = submit(wh, p->req, p->ev, p->route, p->stats, t, msg, sizeof(msg));
        p->route = NULL; /* submit took it */
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
        ab_inst_stats_answer(p->stats, code);
        answer(wh, p->req, p->ev, code, code == 200 ? NULL : msg, NULL);
    }
    ab_event_free(p->ev);
    free(p->route);
    free(p);
}

/* Ask the guard about ev (route and stats as for submit, taken); the answer comes from
 * on_verdict (or later from on_sink_done). */
static void dedupe_check(struct ab_webhook *wh, struct ab_req *r, struct ab_event *ev,
                         char *route, struct ab_inst_stats *stats)
{
    char key[512];
    ab_dedupe_key(wh->app->dedupe, ev, key, sizeof(key));
    struct pending *p = ab_calloc(1, sizeof(*p));
    *p = (struct pending){
        .wh = wh, .req = r, .ev = ev, .start = r->start, .route = route, .stats = stats};
    wh->inflight++; /* waiting on the store counts as in flight for the drain */
    atomic_fetch_add(&inflight_all, 1);
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

static int ready_note(void *ctx, char *buf, size_t len)
{
    return ab_webhook_dedupe_ready(ctx, buf, len);
}

/* ---- admit and parse ---------------------------------------------------------------- */

/* Media type of the body (webhook.h). */
int ab_webhook_body_format(const char *ctype, const char *body, size_t len)
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

/* Before parsing: shutting down, allowlist, signature over the raw bytes (not in
 * consortium mode: bind_institution() checks it after parsing), media type.
 * Returns 0 and the body format, or the status to answer with msg filled in. */
static int admit(struct ab_webhook *wh, struct ab_req *r, int consortium, int *fmt, char *msg,
                 size_t msglen)
{
    if (ab_app_draining(wh->app) && wh->stopping) {
        snprintf(msg, msglen, "almabridge is shutting down; retry later");
        return 503;
    }
    if (wh->app->allow && !ab_acl_match(wh->app->allow, r->client)) {
        snprintf(msg, msglen, "webhooks from %s are not allowed (see --allow)", r->client);
        return 403;
    }
    const char *sig = ab_http_field(&r->head, "X-Exl-Signature");
    if (!wh->cfg->insecure_skip_signature && !consortium &&
        !ab_signature_verify(wh->secrets, sig, r->body, r->body_len)) {
        snprintf(msg, msglen, "%s",
                 sig ? "X-Exl-Signature does not match the body under any configured secret"
                     : "missing X-Exl-Signature header");
        return 401;
    }
    *fmt = ab_webhook_body_format(ab_http_field(&r->head, "Content-Type"), r->body, r->body_len);
    if (*fmt < 0) {
        snprintf(msg, msglen, "unsupported Content-Type: send application/json, "
                              "application/xml or text/xml");
        return 415;
    }
    return 0;
}

/* 1 (msg filled in) when the URL names an institution ({path}/{code}, ?institution=)
 * other than code, the one the body names (NULL: none), or names no valid code. */
static int url_names_another(struct ab_webhook *wh, struct ab_req *r, const char *code,
                             char *msg, size_t msglen)
{
    char url[AB_INST_CODE_MAX + 1];
    int named = ab_institutions_url_code(wh->cfg->path, r->head.path, r->head.query, url);
    if (named < 0) {
        snprintf(msg, msglen, "the URL names no valid institution code, or two different ones "
                              "(path and ?institution=)");
    } else if (named && (code == NULL || strcmp(url, code) != 0)) {
        snprintf(msg, msglen, "the URL names institution %s but the webhook names %s", url,
                 code == NULL                       ? "no institution"
                 : ab_institutions_code_valid(code) ? code
                                                    : "an invalid code");
    }
    return named < 0 || (named && (code == NULL || strcmp(url, code) != 0));
}

/* Consortium mode, after parsing: the institution the body names must have a profile
 * (else 503, or 401 with --unknown-institution refuse), be the one the URL names (if it
 * names one), allow the client, and have signed the raw body with one of its own secrets.
 * Returns 0 with *out set, or the status with msg filled in (*out set when the profile is
 * known, for its counters). */
static int bind_institution(struct ab_webhook *wh, const struct ab_institutions *set,
                            struct ab_req *r, const struct ab_event *ev,
                            const struct ab_institution **out, char *msg, size_t msglen)
{
    static struct ab_ratelimit forgery_rl;
    const char *code = ev->institution;
    const struct ab_institution *inst = *out = ab_institutions_find(set, code);
    struct ab_inst_stats *stats = ab_institution_stats(inst);
    const char *shown = ab_institutions_code_valid(code) ? code : "(not a valid code)";
    if (url_names_another(wh, r, code, msg, msglen)) {
        ab_inst_stats_refused(stats, AB_INST_R_URL);
        return 401;
    }
    if (code == NULL) {
        snprintf(msg, msglen, "the webhook names no institution (institution.value), which "
                              "every webhook must in consortium mode (--institutions)");
        return 401;
    }
    if (inst == NULL) {
        int refuse = strcmp(wh->cfg->unknown_institution, "refuse") == 0;
        ab_institutions_unknown(code, r->client, refuse);
        snprintf(msg, msglen, "institution %s has no profile here%s", shown,
                 refuse ? "" : " yet; retry later");
        return refuse ? 401 : 503;
    }
    const struct ab_acl *allow = ab_institution_allow(inst);
    if (allow && !ab_acl_match(allow, r->client)) {
        ab_inst_stats_refused(stats, AB_INST_R_ALLOW);
        snprintf(msg, msglen, "webhooks of institution %s from %s are not allowed (see its "
                              "allow in --institutions)", code, r->client);
        return 403;
    }
    const struct ab_institution *signer = NULL;
    const char *sig = ab_http_field(&r->head, "X-Exl-Signature");
    switch (ab_institutions_verify(set, inst, sig, r->body, r->body_len, &wh->budget, &signer)) {
    case AB_INST_VALID:
        return 0;
    case AB_INST_FORGERY:
        ab_inst_stats_refused(stats, AB_INST_R_FORGERY);
        ab_log_limited(&forgery_rl, AB_LOG_WARN,
                       "forgery refused: a webhook from %s names institution %s but is signed "
                       "with the secret of institution %s", r->client, code,
                       ab_institution_code(signer));
        break;
    default:
        ab_inst_stats_refused(stats, AB_INST_R_SIGNATURE);
        break;
    }
    if (sig == NULL) {
        snprintf(msg, msglen, "missing X-Exl-Signature header");
    } else {
        snprintf(msg, msglen,
                 "X-Exl-Signature does not match the body under the secrets of institution %s",
                 code);
    }
    return 401;
}

/* --log-bodies (debugging an integration only): the body as it will be written, after
 * --redact, when it parsed; a body that did not parse is logged only without --redact. */
static void log_body(const struct ab_webhook *wh, const struct ab_req *r,
                     const struct ab_event *ev)
{
    const char *b = ev ? ev->json + ev->data_off : r->body;
    size_t n = ev ? ev->data_len : r->body_len;
    if (ev == NULL && wh->app->redact != NULL) {
        ab_debug("body from %s (%zu bytes) not logged: it did not parse, so --redact could "
                 "not be applied", r->client, r->body_len);
        return;
    }
    ab_debug("body from %s (%zu bytes): %.*s", r->client, r->body_len,
             (int)(n < 1800 ? n : 1800), b);
}

/* Loop thread: a webhook. Every path ends in exactly one answer. */
static void handle_post(struct ab_webhook *wh, struct ab_req *r)
{
    char msg[256], tp[56];
    int fmt = AB_FORMAT_JSON;
    const struct ab_institutions *insts = ab_inst_view_get(&wh->insts);
    const struct ab_institution *inst = NULL;
    ab_event_trace(ab_http_field(&r->head, "traceparent"), tp);
    int code = admit(wh, r, insts != NULL, &fmt, msg, sizeof(msg));
    if (code == 415 && dead_letter(wh, insts, r, code, msg) == 0) {
        return; /* signed, but not JSON or XML */
    }
    if (code != 0) {
        answer(wh, r, NULL, code, msg, tp);
        return;
    }
    struct ab_event *ev = NULL;
    const char *base = wh->cfg->dataschema_base;
    struct ab_event_opts o = {
        .redact = wh->app->redact,
        .schema_base = base && *base ? base : NULL,
        .traceparent = tp,
        .tracestate = ab_event_tracestate(ab_http_field(&r->head, "tracestate")),
    };
    int rc = ab_event_build(fmt, r->body, r->body_len, &o, &ev, msg, sizeof(msg));
    if (wh->cfg->log_bodies) {
        log_body(wh, r, ev);
    }
    code = rc == AB_EVENT_MALFORMED ? 400 : 422;
    if (rc != AB_EVENT_OK && dead_letter(wh, insts, r, code, msg) == 0) {
        return; /* signed, but no event can be made of it */
    }
    if (rc != AB_EVENT_OK) {
        answer(wh, r, NULL, code, msg, tp);
        return;
    }
    if (insts && (code = bind_institution(wh, insts, r, ev, &inst, msg, sizeof(msg))) != 0) {
        ab_inst_stats_answer(ab_institution_stats(inst), code);
        answer(wh, r, ev, code, msg, NULL);
        ab_event_free(ev);
        return;
    }
    ab_req_drop_body(r);
    char *route = ab_institution_route_expand(inst, wh->app->route, ev);
    struct ab_inst_stats *stats = ab_institution_stats(inst);
    if (wh->dd) {
        dedupe_check(wh, r, ev, route, stats); /* answers, or submits once the key is claimed */
        return;
    }
    code = submit(wh, r, ev, route, stats, NULL, msg, sizeof(msg));
    if (code != 0) {
        ab_inst_stats_answer(ab_institution_stats(inst), code);
        answer(wh, r, ev, code, msg, NULL);
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
    ab_inst_view_release(&wh->insts);
    free(wh);
}

/* ---- the server's handler interface ------------------------------------------------ */

static void *on_context_init(struct ab_app *app, struct event_base *base,
                             struct ab_metrics *metrics, char *errstr, size_t errlen)
{
    return ab_webhook_new(app, base, metrics, errstr, errlen);
}

static void on_req(void *ctx, struct ab_req *r)
{
    ab_webhook_handle(ctx, r);
}

static void on_secrets(void *ctx, struct ab_secrets *secrets)
{
    ab_webhook_set_secrets(ctx, secrets);
}

static void on_stopping(void *ctx)
{
    ab_webhook_set_stopping(ctx);
}

static int ready(void *ctx)
{
    return ab_webhook_sink_ready(ctx);
}

static void describe(void *ctx, char *buf, size_t len)
{
    ab_webhook_sink_describe(ctx, buf, len);
}

static long inflight(void *ctx)
{
    return ab_webhook_inflight(ctx);
}

long ab_webhook_inflight_total(void)
{
    return atomic_load(&inflight_all);
}

static void on_close(void *ctx, int timeout_ms)
{
    ab_webhook_close_sink(ctx, timeout_ms);
}

static void on_context_dispose(void *ctx)
{
    ab_webhook_free(ctx);
}

const struct ab_handler ab_webhook_handler = {
    .on_context_init = on_context_init,
    .on_req = on_req,
    .on_secrets = on_secrets,
    .on_stopping = on_stopping,
    .ready = ready,
    .ready_note = ready_note,
    .describe = describe,
    .inflight = inflight,
    .inflight_total = ab_webhook_inflight_total,
    .on_close = on_close,
    .on_context_dispose = on_context_dispose,
};
