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
#include "event.h"
#include "http1.h"
#include "institutions.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
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
    struct ab_inst_view insts;    /* consortium mode: this worker's hold on the profiles */
    struct ab_inst_budget budget; /* for telling forgeries from bad signatures */
    int stopping;
    long inflight; /* webhooks of this worker waiting on the sink */
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

/* Loop thread: the sink's completion (exactly once per accepted submit). */
static void on_sink_done(int status, const char *errstr, void *opaque)
{
    struct pending *p = opaque;
    struct ab_webhook *wh = p->wh;
    ab_metrics_ack(wh->metrics, elapsed_s(&p->start), status == AB_SINK_OK);
    ab_inst_stats_answer(p->stats, status == AB_SINK_OK         ? 200
                                   : status == AB_SINK_TOO_BIG ? 413
                                                               : 503);
    if (status == AB_SINK_OK) {
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
    free(p);
    wh->inflight--;
    atomic_fetch_sub(&ab_metrics_g.inflight, 1);
}

/* Hand the event to the sink; on success the pending owns ev and the answer comes from
 * on_sink_done. inst: the institution's profile in consortium mode (its route, if it has
 * one, replaces --route), else NULL. Returns 0, or 503 with msg filled in (ev not taken). */
static int submit(struct ab_webhook *wh, struct ab_req *r, struct ab_event *ev,
                  const struct ab_institution *inst, char *msg, size_t msglen)
{
    const struct ab_config *cfg = wh->cfg;
    if (cfg->max_inflight > 0 && atomic_load(&ab_metrics_g.inflight) >= cfg->max_inflight) {
        snprintf(msg, msglen,
                 "too many webhooks waiting on the sink (--max-inflight); retry later");
        return 503;
    }
    const struct ab_route *rt = inst ? ab_institution_route(inst) : NULL;
    char *route = ab_route_expand(rt ? rt : wh->app->route, ev);
    struct ab_sink_msg m = {.id = ev->id,
                            .type = ev->type,
                            .source = ev->source,
                            .route = route,
                            .value = ev->json,
                            .value_len = ev->json_len,
                            .event = ev};
    struct pending *p = ab_calloc(1, sizeof(*p));
    *p = (struct pending){.wh = wh, .req = r, .ev = ev, .start = r->start};
    p->stats = ab_institution_stats(inst);
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
                          .v2 = "dead-lettered", .id = d->id, .sink = wh->app->sink_ops->name};
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
                 "retry later", wh->app->sink_ops->name, ab_sink_status_str(status),
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
    atomic_fetch_sub(&ab_metrics_g.inflight, 1);
}

/* The dead-letter record of r: a CloudEvent of type com.exlibrisgroup.alma.deadletter whose
 * data_base64 is the body as received, with the reason and the headers needed to process it
 * again (Content-Type, X-Exl-Signature). Its id is derived from the body, so Alma's retries
 * of one body share it. Returns the JSON (caller frees) and fills id. */
static char *dead_letter_record(struct ab_req *r, int status, const char *reason, char *id,
                                size_t idlen)
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
 * the signature must verify under that institution's own secrets. */
static int signed_for_dead_letter(struct ab_webhook *wh, const struct ab_institutions *insts,
                                  struct ab_req *r)
{
    const char *sig = ab_http_field(&r->head, "X-Exl-Signature");
    if (insts == NULL) {
        return ab_signature_verify(wh->secrets, sig, r->body, r->body_len);
    }
    char code[AB_INST_CODE_MAX + 1];
    if (ab_institutions_url_code(wh->cfg->path, r->head.path, r->head.query, code) != 1) {
        return 0;
    }
    const struct ab_institution *inst = ab_institutions_find(insts, code);
    const struct ab_institution *signer = NULL;
    return inst && ab_institutions_verify(insts, inst, sig, r->body, r->body_len, &wh->budget,
                                          &signer) == AB_INST_VALID;
}

static int dead_letter(struct ab_webhook *wh, const struct ab_institutions *insts,
                       struct ab_req *r, int status, const char *reason)
{
    const struct ab_config *cfg = wh->cfg;
    if (cfg->dead_letter == NULL || strcmp(cfg->dead_letter, "on") != 0 ||
        !signed_for_dead_letter(wh, insts, r)) {
        return -1; /* unsigned requests (--insecure-skip-signature) are never stored */
    }
    struct dead *d = ab_calloc(1, sizeof(*d));
    *d = (struct dead){.wh = wh, .req = r, .bytes = r->body_len};
    snprintf(d->reason, sizeof(d->reason), "%s", reason);
    char *json = dead_letter_record(r, status, reason, d->id, sizeof(d->id));
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
    int rc = cfg->max_inflight > 0 && atomic_load(&ab_metrics_g.inflight) >= cfg->max_inflight
                 ? -1
                 : ab_sink_submit(wh->sink, &m, on_dead_letter_done, d);
    cJSON_free(json);
    if (rc != 0) {
        char msg[256], desc[128] = "not ready";
        ab_webhook_sink_describe(wh, desc, sizeof(desc));
        snprintf(msg, sizeof(msg), "the %s sink cannot take the dead letter now (%s); retry "
                 "later", wh->app->sink_ops->name, desc);
        atomic_fetch_add(&ab_metrics_g.dead_letter_failures, 1);
        answer(wh, r, NULL, 503, msg);
        free(d);
        return 0;
    }
    wh->inflight++;
    atomic_fetch_add(&ab_metrics_g.inflight, 1);
    return 0;
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

/* Before parsing: shutting down, allowlist, signature over the raw bytes (not in
 * consortium mode: bind_institution() checks it after parsing), media type.
 * Returns 0 and the body format, or the status to answer with msg filled in. */
static int admit(struct ab_webhook *wh, struct ab_req *r, int consortium, int *fmt, char *msg,
                 size_t msglen)
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
    if (!wh->cfg->insecure_skip_signature && !consortium &&
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

/* Loop thread: a webhook. Every path ends in exactly one answer. */
static void handle_post(struct ab_webhook *wh, struct ab_req *r)
{
    char msg[256];
    int fmt = AB_FORMAT_JSON;
    const struct ab_institutions *insts = ab_inst_view_get(&wh->insts);
    const struct ab_institution *inst = NULL;
    if (wh->cfg->log_bodies) {
        /* --log-bodies, for debugging an integration only: bodies hold personal data */
        ab_debug("body from %s (%zu bytes): %.*s", r->client, r->body_len,
                 (int)(r->body_len < 1800 ? r->body_len : 1800), r->body);
    }
    int code = admit(wh, r, insts != NULL, &fmt, msg, sizeof(msg));
    if (code == 415 && dead_letter(wh, insts, r, code, msg) == 0) {
        return; /* signed, but not JSON or XML */
    }
    if (code != 0) {
        answer(wh, r, NULL, code, msg);
        return;
    }
    struct ab_event *ev = NULL;
    int rc = ab_event_from_body(fmt, r->body, r->body_len, &ev, msg, sizeof(msg));
    code = rc == AB_EVENT_MALFORMED ? 400 : 422;
    if (rc != AB_EVENT_OK && dead_letter(wh, insts, r, code, msg) == 0) {
        return; /* signed, but no event can be made of it */
    }
    if (rc != AB_EVENT_OK) {
        answer(wh, r, NULL, code, msg);
        return;
    }
    if (insts && (code = bind_institution(wh, insts, r, ev, &inst, msg, sizeof(msg))) != 0) {
        ab_inst_stats_answer(ab_institution_stats(inst), code);
        answer(wh, r, ev, code, msg);
        ab_event_free(ev);
        return;
    }
    ab_req_drop_body(r);
    code = submit(wh, r, ev, inst, msg, sizeof(msg));
    if (code != 0) {
        ab_inst_stats_answer(ab_institution_stats(inst), code);
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
    ab_secrets_free(wh->secrets);
    ab_inst_view_release(&wh->insts);
    free(wh);
}
