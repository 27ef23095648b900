/* The HTTP front end on libevent's evhttp. See http.h. */
#include "http.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "acl.h"
#include "config.h"
#include "event.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "route.h"
#include "signature.h"
#include "sink.h"

#define RETRY_AFTER "30"

struct ab_shared_secrets {
    atomic_int refs;
    struct ab_secrets *s;
};

struct ab_worker {
    struct ab_app *app;
    const struct ab_config *cfg;
    int index;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    struct ab_sink *sink;
    struct ab_metrics *metrics;
    struct ab_shared_secrets *secrets; /* this thread's reference */
    SSL_CTX *ssl_ctx;                  /* this thread's reference, NULL = plain HTTP */
    /* cross-thread hand-over (reload, stop): guarded by mu, picked up by ctl_ev */
    pthread_mutex_t mu;
    struct ab_shared_secrets *new_secrets;
    SSL_CTX *new_ssl_ctx;
    int stop_requested, stop_timeout_s;
    struct event *ctl_ev;
    struct event *drain_ev; /* polls until in-flight webhooks are answered */
    int stopping;
    time_t stop_deadline;
    long inflight; /* webhooks of this worker waiting on the sink */
    struct event *pause_ev; /* polls to resume accepting below --max-connections */
    struct event *ready_ev; /* samples the sink's readiness for the sink_ready gauge */
    int ready;              /* this worker's share of ab_metrics_g.sink_ready */
};

/* One webhook waiting on the sink. Freed when the sink's callback runs (exactly once, by
 * the contract, at the latest when --ack-timeout expires: the sink's pending list owns the
 * deadline). */
struct pending {
    struct ab_worker *w;
    struct evhttp_request *req; /* NULL once answered */
    struct ab_event *ev;
    struct timespec start;
    size_t bytes_in;
    char client[64];
};

/* ---- secrets ---------------------------------------------------------------------- */

struct ab_shared_secrets *ab_shared_secrets_new(struct ab_secrets *s)
{
    struct ab_shared_secrets *ss = ab_calloc(1, sizeof(*ss));
    atomic_init(&ss->refs, 1);
    ss->s = s;
    return ss;
}

static struct ab_shared_secrets *secrets_ref(struct ab_shared_secrets *ss)
{
    if (ss) {
        atomic_fetch_add(&ss->refs, 1);
    }
    return ss;
}

void ab_shared_secrets_unref(struct ab_shared_secrets *ss)
{
    if (ss && atomic_fetch_sub(&ss->refs, 1) == 1) {
        ab_secrets_free(ss->s);
        free(ss);
    }
}

/* ---- answering -------------------------------------------------------------------- */

static double elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) * 1e3 + (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

static const char *reason_phrase(int code)
{
    switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return code < 400 ? "OK" : code < 500 ? "Bad Request" : "Internal Server Error";
    }
}

/* Send `body` (len bytes) with the given content type. Every request ends in exactly one
 * call here (or to send_json), also when the client is gone: evhttp then frees it. */
static void send_body(struct evhttp_request *req, int code, const char *ctype, const char *body,
                      size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (code == 503) {
        evhttp_add_header(h, "Retry-After", RETRY_AFTER);
    }
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, body, len);
    evhttp_send_reply(req, code, reason_phrase(code), buf);
    evbuffer_free(buf);
}

/* {"<key>":"<value>"[,"<key2>":"<value2>"]}: JSON-escaped by cJSON. */
static void send_json(struct evhttp_request *req, int code, const char *k1, const char *v1,
                      const char *k2, const char *v2)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, k1, v1 ? v1 : "");
    if (k2) {
        cJSON_AddStringToObject(o, k2, v2 ? v2 : "");
    }
    char *s = cJSON_PrintUnformatted(o);
    send_body(req, code, "application/json", s, strlen(s));
    cJSON_free(s);
    cJSON_Delete(o);
}

static void send_error(struct evhttp_request *req, int code, const char *msg)
{
    send_json(req, code, "error", msg, NULL, NULL);
}

/* libevent 2.1 answers errors it detects itself (a body over the size limit, a malformed
 * request line or headers) through evhttp_send_error() with a fixed HTML page. Defining the
 * function here interposes it for libevent too, so those answers are JSON like ours. */
static atomic_long max_body_for_errors, max_headers_for_errors;
void evhttp_send_error(struct evhttp_request *req, int error, const char *reason)
{
    char msg[160];
    if (error == 413) {
        snprintf(msg, sizeof(msg), "request body is larger than the limit of %ld bytes",
                 atomic_load(&max_body_for_errors));
    } else if (error == 400) {
        snprintf(msg, sizeof(msg),
                 "malformed HTTP request, or request line and headers larger than the limit "
                 "of %ld bytes",
                 atomic_load(&max_headers_for_errors));
    } else {
        snprintf(msg, sizeof(msg), "%s", reason ? reason : reason_phrase(error));
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    send_error(req, error, msg);
}

static void access_log(struct ab_worker *w, const char *client, const char *method,
                       const char *path, int status, const struct timespec *start,
                       size_t bytes, const struct ab_event *ev, const char *err)
{
    ab_metrics_request(w->metrics, status, ev ? ev->action : NULL, ev ? ev->event : NULL);
    struct ab_access a = {
        .client = client,
        .method = method,
        .path = path,
        .status = status,
        .latency_ms = elapsed_ms(start),
        .bytes_in = bytes,
        .id = ev ? ev->id : NULL,
        .action = ev ? ev->action : NULL,
        .event = ev ? ev->event : NULL,
        .sink = ev ? w->app->sink_ops->name : NULL,
        .error = err,
    };
    ab_log_access(&a);
}

/* ---- the webhook ------------------------------------------------------------------ */

static void pending_answer(struct pending *p, int status, const char *err)
{
    if (p->req == NULL) {
        return;
    }
    if (status == 200) {
        send_json(p->req, 200, "id", p->ev->id, "status", "accepted");
    } else {
        send_error(p->req, status, err);
    }
    p->req = NULL;
    access_log(p->w, p->client, "POST", p->w->cfg->path, status, &p->start, p->bytes_in, p->ev,
               status == 200 ? NULL : err);
}

/* Loop thread: the sink's completion (exactly once per accepted submit). */
static void on_sink_done(int status, const char *errstr, void *opaque)
{
    struct pending *p = opaque;
    struct ab_worker *w = p->w;
    ab_metrics_ack(w->metrics, elapsed_ms(&p->start) / 1e3, status == AB_SINK_OK);
    if (status == AB_SINK_OK) {
        pending_answer(p, 200, NULL);
    } else if (status == AB_SINK_TOO_BIG) {
        char msg[512];
        snprintf(msg, sizeof(msg), "the event can never be stored by the %s sink: %s",
                 w->app->sink_ops->name, errstr ? errstr : "too big");
        pending_answer(p, 413, msg);
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "the %s sink could not store the event (%s%s%s); retry later",
                 w->app->sink_ops->name, ab_sink_status_str(status), errstr ? ": " : "",
                 errstr ? errstr : "");
        pending_answer(p, 503, msg);
    }
    ab_event_free(p->ev);
    free(p);
    w->inflight--;
    atomic_fetch_sub(&ab_metrics_g.inflight, 1);
}

/* Media type of the body: JSON or XML, from Content-Type or, when it is absent or generic,
 * from the first non-blank byte. Returns -1 for a type we do not take (415). */
static int body_format(const char *ctype, const char *body, size_t len)
{
    char mt[128] = "";
    if (ctype) {
        size_t n = strcspn(ctype, ";");
        while (n > 0 && (ctype[n - 1] == ' ' || ctype[n - 1] == '\t')) {
            n--;
        }
        const char *s = ctype + strspn(ctype, " \t");
        n -= (size_t)(s - ctype) <= n ? (size_t)(s - ctype) : n;
        snprintf(mt, sizeof(mt), "%.*s", (int)n, s);
    }
    size_t ml = strlen(mt);
    if (strcasecmp(mt, "application/json") == 0 || strcasecmp(mt, "text/json") == 0 ||
        (ml > 5 && strcasecmp(mt + ml - 5, "+json") == 0)) {
        return AB_FORMAT_JSON;
    }
    if (strcasecmp(mt, "application/xml") == 0 || strcasecmp(mt, "text/xml") == 0 ||
        (ml > 4 && strcasecmp(mt + ml - 4, "+xml") == 0)) {
        return AB_FORMAT_XML;
    }
    if (ml && strcasecmp(mt, "application/octet-stream") != 0 && strcasecmp(mt, "text/plain") != 0 &&
        strcasecmp(mt, "application/x-www-form-urlencoded") != 0 && strcmp(mt, "*/*") != 0) {
        return -1;
    }
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

/* Answer a POST that ends before the sink: log, count, reply. */
static void reject(struct ab_worker *w, struct evhttp_request *req, const char *client,
                   const struct timespec *start, size_t bytes, const struct ab_event *ev,
                   int code, const char *msg)
{
    if (code == 503) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    }
    send_error(req, code, msg);
    access_log(w, client, "POST", w->cfg->path, code, start, bytes, ev, msg);
}

/* Before parsing: shutting down, allowlist, signature over the raw bytes, media type.
 * Returns 0 and the body format, or the status to answer with msg filled in. */
static int admit(struct ab_worker *w, struct evhttp_request *req, const char *client,
                 const char *body, size_t len, int *fmt, char *msg, size_t msglen)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    if (atomic_load(&ab_metrics_g.draining) && w->stopping) {
        snprintf(msg, msglen, "almabridge is shutting down; retry later");
        return 503;
    }
    if (w->app->allow && !ab_acl_match(w->app->allow, client)) {
        snprintf(msg, msglen, "webhooks from %s are not allowed (see --allow)", client);
        return 403;
    }
    const char *sig = evhttp_find_header(h, "X-Exl-Signature");
    if (!w->cfg->insecure_skip_signature && !ab_signature_verify(w->secrets->s, sig, body, len)) {
        snprintf(msg, msglen, "%s",
                 sig ? "X-Exl-Signature does not match the body under any configured secret"
                     : "missing X-Exl-Signature header");
        return 401;
    }
    *fmt = body_format(evhttp_find_header(h, "Content-Type"), body, len);
    if (*fmt < 0) {
        snprintf(msg, msglen, "unsupported Content-Type: send application/json, "
                              "application/xml or text/xml");
        return 415;
    }
    return 0;
}

/* Hand the event to the sink; on success the pending owns ev and the answer comes from
 * on_sink_done. Returns 0, or 503 with msg filled in (ev not taken). */
static int submit_event(struct ab_worker *w, struct evhttp_request *req, const char *client,
                        const struct timespec *start, size_t len, struct ab_event *ev,
                        char *msg, size_t msglen)
{
    const struct ab_config *cfg = w->cfg;
    if (cfg->max_inflight > 0 && atomic_load(&ab_metrics_g.inflight) >= cfg->max_inflight) {
        snprintf(msg, msglen, "too many webhooks waiting on the sink (--max-inflight); retry later");
        return 503;
    }
    char *route = ab_route_expand(w->app->route, ev);
    struct ab_sink_msg m = {ev->id, ev->type, ev->source, route, NULL, ev->json, ev->json_len, ev};
    struct pending *p = ab_calloc(1, sizeof(*p));
    *p = (struct pending){.w = w, .req = req, .ev = ev, .start = *start, .bytes_in = len};
    snprintf(p->client, sizeof(p->client), "%s", client);
    int rc = ab_sink_submit(w->sink, &m, on_sink_done, p);
    free(route);
    if (rc != 0) {
        char d[128] = "not ready";
        if (w->sink->ops->describe) {
            w->sink->ops->describe(w->sink, d, sizeof(d));
        }
        snprintf(msg, msglen, "the %s sink cannot take writes now (%s); retry later",
                 w->app->sink_ops->name, d);
        free(p);
        return 503;
    }
    w->inflight++;
    atomic_fetch_add(&ab_metrics_g.inflight, 1);
    return 0;
}

/* Loop thread: a webhook. Every path ends in exactly one answer. */
static void handle_post(struct ab_worker *w, struct evhttp_request *req, const char *client,
                        const struct timespec *start)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    char msg[256];
    int fmt = AB_FORMAT_JSON;
    if (w->cfg->log_bodies) {
        /* --log-bodies, for debugging an integration only: bodies hold personal data */
        ab_debug("body from %s (%zu bytes): %.*s", client, len, (int)(len < 1800 ? len : 1800),
                 body);
    }
    int code = admit(w, req, client, body, len, &fmt, msg, sizeof(msg));
    if (code != 0) {
        reject(w, req, client, start, len, NULL, code, msg);
        return;
    }
    struct ab_event *ev = NULL;
    int rc = ab_event_from_body(fmt, body, len, &ev, msg, sizeof(msg));
    if (rc != AB_EVENT_OK) {
        reject(w, req, client, start, len, NULL, rc == AB_EVENT_MALFORMED ? 400 : 422, msg);
        return;
    }
    code = submit_event(w, req, client, start, len, ev, msg, sizeof(msg));
    if (code != 0) {
        reject(w, req, client, start, len, ev, code, msg);
        ab_event_free(ev);
    }
}

/* ---- other endpoints -------------------------------------------------------------- */

static int handle_challenge(struct evhttp_request *req, const struct evhttp_uri *uri)
{
    int code = 200;
    struct evkeyvalq q = {0};
    const char *query = evhttp_uri_get_query(uri);
    const char *challenge = NULL;
    if (query && evhttp_parse_query_str(query, &q) == 0) {
        challenge = evhttp_find_header(&q, "challenge");
    }
    if (challenge == NULL) {
        code = 400;
        send_error(req, code, "missing challenge parameter: Alma sends GET ?challenge=<text>");
    } else {
        send_json(req, code, "challenge", challenge, NULL, NULL);
    }
    evhttp_clear_headers(&q);
    return code;
}

static void handle_metrics(struct ab_worker *w, struct evhttp_request *req)
{
    char *text = ab_metrics_render(w->app->metrics, w->app->n_workers, w->app->sink_ops->name);
    send_body(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
    free(text);
}

static int handle_readyz(struct ab_worker *w, struct evhttp_request *req)
{
    char d[256] = "";
    if (w->sink->ops->describe) {
        w->sink->ops->describe(w->sink, d, sizeof(d));
    }
    if (atomic_load(&ab_metrics_g.draining)) {
        send_json(req, 503, "status", "draining", "sink", d);
        return 503;
    }
    if (!ab_sink_ready(w->sink)) {
        send_json(req, 503, "status", "sink not ready", "sink", d);
        return 503;
    }
    send_json(req, 200, "status", "ready", "sink", d);
    return 200;
}

static void peer_address(struct evhttp_request *req, char *out, size_t len)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    char *addr = NULL;
    ev_uint16_t port = 0;
    out[0] = '\0';
    if (evcon) {
        evhttp_connection_get_peer(evcon, &addr, &port);
        snprintf(out, len, "%s", addr ? addr : "");
    }
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "OTHER";
    }
}

/* Everything but a webhook POST. Returns the status answered, or 0 for a /metrics scrape
 * (neither counted nor logged, so that scrapes do not drown the access log). */
static int answer_other(struct ab_worker *w, struct evhttp_request *req,
                        const struct evhttp_uri *uri, const char *path,
                        enum evhttp_cmd_type method)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    int get = method == EVHTTP_REQ_GET || method == EVHTTP_REQ_HEAD;
    if (strcmp(path, w->cfg->path) == 0) {
        if (get) {
            return handle_challenge(req, uri);
        }
        evhttp_add_header(out, "Allow", "GET, HEAD, POST");
        send_error(req, 405, "method not allowed: use POST for webhooks, GET for the challenge");
        return 405;
    }
    int ours = !strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics");
    if (ours && !get) {
        evhttp_add_header(out, "Allow", "GET, HEAD");
        send_error(req, 405, "method not allowed: use GET");
        return 405;
    }
    if (strcmp(path, "/healthz") == 0) {
        send_json(req, 200, "status", "ok", NULL, NULL);
        return 200;
    }
    if (strcmp(path, "/readyz") == 0) {
        return handle_readyz(w, req);
    }
    if (strcmp(path, "/metrics") == 0) {
        handle_metrics(w, req);
        return 0;
    }
    send_error(req, 404, "not found: webhooks go to the configured --path");
    return 404;
}

/* Loop thread: every request lands here. */
static void on_request(struct evhttp_request *req, void *arg)
{
    struct ab_worker *w = arg;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (path == NULL || *path == '\0') {
        path = "/";
    }
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    char peer[64], client[64];
    peer_address(req, peer, sizeof(peer));
    ab_acl_client_addr(w->app->trusted, peer,
                       evhttp_find_header(evhttp_request_get_input_headers(req), "X-Forwarded-For"),
                       client, sizeof(client));

    if (strcmp(path, w->cfg->path) == 0 && method == EVHTTP_REQ_POST) {
        handle_post(w, req, client, &start);
        return;
    }
    int code = answer_other(w, req, uri, path, method);
    if (code != 0) {
        ab_metrics_request(w->metrics, code, NULL, NULL);
        access_log(w, client, method_name(method), path, code, &start, 0, NULL, NULL);
    }
}

/* ---- TLS and connections ---------------------------------------------------------- */

/* Connection accounting. libevent 2.1's evhttp has no connection limit and no hook for a
 * closing server connection, and a filter bufferevent cannot stand in (2.1 does not pass
 * the socket through it). Every server connection's bufferevent is made by
 * on_new_connection() and freed by evhttp through bufferevent_free(), which, like
 * evhttp_send_error() above, we interpose: count, then call libevent's own. The daemon
 * creates no other bufferevents. */
static void (*real_bufferevent_free)(struct bufferevent *);
static pthread_once_t real_bufferevent_free_once = PTHREAD_ONCE_INIT;
static void find_real_bufferevent_free(void)
{
    real_bufferevent_free = (void (*)(struct bufferevent *))dlsym(RTLD_NEXT, "bufferevent_free");
}

void bufferevent_free(struct bufferevent *bev)
{
    pthread_once(&real_bufferevent_free_once, find_real_bufferevent_free);
    atomic_fetch_sub(&ab_metrics_g.connections, 1);
    real_bufferevent_free(bev);
}

/* Loop thread, while accepting is paused at --max-connections: resume below the limit. */
static void on_pause_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    if (w->bound && atomic_load(&ab_metrics_g.connections) < w->cfg->max_connections) {
        evconnlistener_enable(evhttp_bound_socket_get_listener(w->bound));
        event_del(w->pause_ev);
    }
}

/* Loop thread: a new connection. With TLS, an OpenSSL bufferevent made from this worker's
 * current context (a reload affects new connections only). At --max-connections, pause
 * accepting (the kernel backlog holds newcomers) until on_pause_tick sees room again. */
static struct bufferevent *on_new_connection(struct event_base *base, void *arg)
{
    struct ab_worker *w = arg;
    long n = atomic_fetch_add(&ab_metrics_g.connections, 1) + 1;
    if (w->cfg->max_connections > 0 && n >= w->cfg->max_connections && w->bound) {
        evconnlistener_disable(evhttp_bound_socket_get_listener(w->bound));
        struct timeval tv = {0, 50000};
        event_add(w->pause_ev, &tv);
    }
    if (w->ssl_ctx) {
        return bufferevent_openssl_socket_new(base, -1, SSL_new(w->ssl_ctx),
                                              BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    }
    return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

/* Loop thread: publish this worker's sink readiness (ready() may only be asked on the
 * owning thread) into the process-wide gauge, every half second. */
static void on_ready_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    int r = w->sink ? ab_sink_ready(w->sink) : 0;
    if (r != w->ready) {
        atomic_fetch_add(&ab_metrics_g.sink_ready, r - w->ready);
        w->ready = r;
    }
}

/* ---- control: reload and stop from other threads ------------------------------------ */

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    if (w->inflight == 0 || time(NULL) >= w->stop_deadline) {
        if (w->inflight) {
            ab_warn("worker %d: %ld webhooks still waiting on the sink at the deadline",
                    w->index, w->inflight);
        }
        event_base_loopexit(w->base, NULL);
    }
}

static void on_control(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    struct ab_shared_secrets *ns = w->new_secrets;
    SSL_CTX *nctx = w->new_ssl_ctx;
    int stop = w->stop_requested && !w->stopping;
    w->new_secrets = NULL;
    w->new_ssl_ctx = NULL;
    pthread_mutex_unlock(&w->mu);
    if (ns) {
        ab_shared_secrets_unref(w->secrets);
        w->secrets = ns;
    }
    if (nctx) {
        SSL_CTX_free(w->ssl_ctx);
        w->ssl_ctx = nctx;
    }
    if (stop) {
        w->stopping = 1;
        w->stop_deadline = time(NULL) + w->stop_timeout_s;
        if (w->bound) {
            evhttp_del_accept_socket(w->http, w->bound);
            w->bound = NULL;
            /* The last worker to stop accepting closes the shared socket, so that new
             * connections are refused at once instead of waiting in the backlog. */
            if (atomic_fetch_add(&w->app->stopped_accepting, 1) + 1 == (long)w->app->n_workers) {
                evutil_closesocket(w->app->listen_fd);
                w->app->listen_fd = -1;
            }
        }
        struct timeval tv = {0, 20000};
        w->drain_ev = event_new(w->base, -1, EV_PERSIST, on_drain_tick, w);
        event_add(w->drain_ev, &tv);
    }
}

void ab_worker_reload(struct ab_worker *w, struct ab_shared_secrets *secrets, SSL_CTX *ssl_ctx)
{
    pthread_mutex_lock(&w->mu);
    if (secrets) {
        ab_shared_secrets_unref(w->new_secrets);
        w->new_secrets = secrets_ref(secrets);
    }
    if (ssl_ctx) {
        SSL_CTX_free(w->new_ssl_ctx);
        SSL_CTX_up_ref(ssl_ctx);
        w->new_ssl_ctx = ssl_ctx;
    }
    pthread_mutex_unlock(&w->mu);
    event_active(w->ctl_ev, EV_READ, 0);
}

void ab_worker_stop(struct ab_worker *w, int timeout_s)
{
    pthread_mutex_lock(&w->mu);
    w->stop_requested = 1;
    w->stop_timeout_s = timeout_s;
    pthread_mutex_unlock(&w->mu);
    event_active(w->ctl_ev, EV_READ, 0);
}

/* ---- life cycle ------------------------------------------------------------------- */

struct ab_worker *ab_worker_new(struct ab_app *app, int index, evutil_socket_t fd,
                                struct ab_shared_secrets *secrets, SSL_CTX *ssl_ctx, char *errstr,
                                size_t errlen)
{
    const struct ab_config *cfg = app->cfg;
    struct ab_worker *w = ab_calloc(1, sizeof(*w));
    w->app = app;
    w->cfg = cfg;
    w->index = index;
    pthread_mutex_init(&w->mu, NULL);
    atomic_store(&max_body_for_errors, cfg->max_body);
    atomic_store(&max_headers_for_errors, cfg->max_headers_size);
    w->base = event_base_new();
    if (w->base == NULL) {
        snprintf(errstr, errlen, "cannot create an event base");
        goto fail;
    }
    w->ctl_ev = event_new(w->base, -1, 0, on_control, w);
    w->http = evhttp_new(w->base);
    evhttp_set_max_body_size(w->http, (ev_ssize_t)cfg->max_body);
    evhttp_set_max_headers_size(w->http, (ev_ssize_t)cfg->max_headers_size);
    evhttp_set_timeout(w->http, (int)cfg->read_timeout_s);
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(w->http, on_request, w);
    if (ssl_ctx) {
        SSL_CTX_up_ref(ssl_ctx);
        w->ssl_ctx = ssl_ctx;
    }
    evhttp_set_bevcb(w->http, on_new_connection, w);
    w->pause_ev = event_new(w->base, -1, EV_PERSIST, on_pause_tick, w);
    w->ready_ev = event_new(w->base, -1, EV_PERSIST, on_ready_tick, w);
    w->bound = evhttp_accept_socket_with_handle(w->http, fd);
    if (w->bound == NULL) {
        snprintf(errstr, errlen, "cannot accept on the listening socket");
        goto fail;
    }
    w->sink = app->sink_ops->open(app->sink_conf, app->sink_shared, w->base, errstr, errlen);
    if (w->sink == NULL) {
        goto fail;
    }
    w->secrets = secrets_ref(secrets);
    w->metrics = app->metrics[index];
    return w;
fail:
    ab_worker_free(w);
    return NULL;
}

void ab_worker_run(struct ab_worker *w)
{
    struct timeval half = {0, 500000};
    on_ready_tick(-1, 0, w);
    event_add(w->ready_ev, &half);
    event_base_dispatch(w->base);
    event_del(w->ready_ev);
    atomic_fetch_sub(&ab_metrics_g.sink_ready, w->ready);
    w->ready = 0;
    /* Stopped: close the sink on this thread (its close() completes what is left, whose
     * callbacks answer their requests), then give the answers a moment to go out. */
    if (w->sink) {
        /* what is left of --shutdown-timeout (the drain used the rest), so that the
         * process exits within it whatever the sink does */
        long ms = w->cfg->shutdown_timeout_s * 1000;
        if (w->stopping) {
            ms = ((long)(w->stop_deadline - time(NULL))) * 1000;
            ms = ms < 0 ? 0 : ms;
        }
        w->sink->ops->close(w->sink, (int)ms);
        w->sink = NULL;
    }
    struct timeval tv = {0, 300000};
    event_base_loopexit(w->base, &tv);
    event_base_dispatch(w->base);
}

void ab_worker_free(struct ab_worker *w)
{
    if (w == NULL) {
        return;
    }
    /* The sink first: its close() completes every outstanding submission, whose callbacks
     * answer their requests while the connections still exist. */
    if (w->sink) {
        w->sink->ops->close(w->sink, (int)(w->cfg->shutdown_timeout_s * 1000));
    }
    if (w->drain_ev) {
        event_free(w->drain_ev);
    }
    if (w->pause_ev) {
        event_free(w->pause_ev);
    }
    if (w->ready_ev) {
        event_free(w->ready_ev);
    }
    if (w->http) {
        evhttp_free(w->http);
    }
    if (w->ctl_ev) {
        event_free(w->ctl_ev);
    }
    ab_shared_secrets_unref(w->secrets);
    ab_shared_secrets_unref(w->new_secrets);
    SSL_CTX_free(w->ssl_ctx);
    SSL_CTX_free(w->new_ssl_ctx);
    if (w->base) {
        event_base_free(w->base);
    }
    pthread_mutex_destroy(&w->mu);
    free(w);
}
