/* The admin listener: /healthz, /readyz and /metrics on --admin-listen (admin.h). */
#include "admin.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "normalise.h"
#include "server.h"
#include "sink.h"

struct ab_admin {
    struct evhttp *http;
    const struct ab_app *app;
};

int ab_admin_quiet_probe(const char *path, int status)
{
    return status >= 200 && status < 300 && path &&
           (strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0);
}

static double ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

/* Answer req with status and body (JSON unless ctype says otherwise) and log it. */
static void reply(struct evhttp_request *req, const char *path, int status, const char *ctype,
                  const char *body, const char *error, const struct timespec *t0)
{
    struct evbuffer *out = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype ? ctype : "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (status == 405) {
        evhttp_add_header(h, "Allow", "GET, HEAD");
    }
    evbuffer_add(out, body, strlen(body));
    evhttp_send_reply(req, status, status == 200 ? "OK" : status == 404 ? "Not Found"
                                   : status == 405 ? "Method Not Allowed"
                                                   : "Service Unavailable", out);
    evbuffer_free(out);
    int quiet = strcmp(path, "/metrics") == 0 && status == 200;
    if (quiet || (ab_admin_quiet_probe(path, status) && ab_log_level_min > AB_LOG_DEBUG)) {
        return;
    }
    char peer[64] = "-";
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (conn) {
        const char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(conn, (char **)&addr, &port);
        snprintf(peer, sizeof(peer), "%s", addr ? addr : "-");
    }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    struct ab_access acc = {
        .client = peer,
        .method = cmd == EVHTTP_REQ_GET    ? "GET"
                  : cmd == EVHTTP_REQ_HEAD ? "HEAD"
                  : cmd == EVHTTP_REQ_POST ? "POST"
                                           : "OTHER",
        .path = path,
        .status = status,
        .latency_ms = ms_since(t0),
        .sink = "admin",
        .error = error,
    };
    ab_log_access(&acc);
}

/* /readyz: 200 when not draining and every worker's sink instance can take writes, and
 * no worker refuses webhooks for the deduplication store (--dedupe-on-error refuse); the
 * same status words as the main listener's /readyz, with the store's state as "dedupe". */
static void readyz(struct ab_admin *a, struct evhttp_request *req, const struct timespec *t0)
{
    long ready = atomic_load(&ab_metrics_g.sink_ready);
    long workers = atomic_load(&ab_metrics_g.workers);
    char body[2048], note[256] = "", esc[6 * sizeof(note)], dd[sizeof(esc) + 16] = "";
    int status = 503;
    const char *st = "ready";
    int note_st = ab_app_ready_note(a->app, note, sizeof(note));
    if (note_st) {
        esc[ab_json_escape(esc, note, strlen(note))] = '\0';
        snprintf(dd, sizeof(dd), ",\"dedupe\":\"%s\"", esc);
    }
    if (ab_app_draining(a->app)) {
        st = "draining";
    } else if (workers == 0 || ready < workers) {
        st = "sink not ready";
    } else if (note_st == 2) {
        st = AB_READY_DEDUPE_REFUSED;
    } else {
        status = 200;
        st = note_st ? AB_READY_DEDUPE_UNCHECKED : "ready";
    }
    if (status == 503 && !strcmp(st, "draining")) {
        snprintf(body, sizeof(body), "{\"status\":\"draining\"}");
    } else {
        snprintf(body, sizeof(body), "{\"status\":\"%s\",\"sink_ready_workers\":\"%ld/%ld\"%s}",
                 st, ready, workers, dd);
    }
    reply(req, "/readyz", status, NULL, body, status == 200 ? NULL : "not ready", t0);
}

/* base's thread: every request to the admin port. */
static void on_request(struct evhttp_request *req, void *arg)
{
    struct ab_admin *a = arg;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    path = path && *path ? path : "/";
    int known = !strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics");
    if (!known) {
        reply(req, path, 404, NULL, "{\"error\":\"not found: /healthz, /readyz, /metrics\"}",
              "not found", &t0);
    } else if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        reply(req, path, 405, NULL, "{\"error\":\"method not allowed: use GET\"}",
              "method not allowed", &t0);
    } else if (strcmp(path, "/healthz") == 0) {
        reply(req, path, 200, NULL, "{\"status\":\"ok\"}", NULL, &t0);
    } else if (strcmp(path, "/readyz") == 0) {
        readyz(a, req, &t0);
    } else {
        char *text = ab_app_metrics_text(a->app);
        reply(req, path, 200, "text/plain; version=0.0.4; charset=utf-8", text, NULL, &t0);
        free(text);
    }
}

struct ab_admin *ab_admin_new(struct event_base *base, const struct ab_app *app,
                              const char *hostport, char *errstr, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL) {
        snprintf(errstr, errlen, "--admin-listen %s: not HOST:PORT", hostport);
        return NULL;
    }
    int hlen = (int)(colon - hostport);
    if (hlen >= 2 && hostport[0] == '[') {
        snprintf(host, sizeof(host), "%.*s", hlen - 2, hostport + 1);
    } else {
        snprintf(host, sizeof(host), "%.*s", hlen, hostport);
    }
    struct ab_admin *a = ab_calloc(1, sizeof(*a));
    a->app = app;
    a->http = evhttp_new(base);
    if (a->http == NULL ||
        evhttp_bind_socket(a->http, host[0] ? host : "0.0.0.0", (ev_uint16_t)atoi(colon + 1)) !=
            0) {
        snprintf(errstr, errlen, "cannot listen on --admin-listen %s: %s", hostport,
                 strerror(errno));
        ab_admin_free(a);
        return NULL;
    }
    evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    evhttp_set_max_headers_size(a->http, 8192);
    evhttp_set_max_body_size(a->http, 4096);
    evhttp_set_timeout(a->http, 10);
    evhttp_set_gencb(a->http, on_request, a);
    return a;
}

void ab_admin_free(struct ab_admin *a)
{
    if (a == NULL) {
        return;
    }
    if (a->http) {
        evhttp_free(a->http);
    }
    free(a);
}
