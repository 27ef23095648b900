/* The HTTP server on libevent bufferevents. See server.h.
 *
 * A connection goes IDLE -> HEAD (first byte: the --read-timeout deadline starts) -> BODY
 * -> WAIT (the request is with its handler; nothing more is read from it) -> IDLE again
 * after a keep-alive answer, or CLOSING (the answer is flushed) -> LINGER (our side is
 * shut down, input is read and dropped for a moment so that the client gets the answer
 * instead of a reset) -> freed. Requests on a connection are handled one at a time in
 * order; pipelined ones wait in the input buffer, which is bounded by a read watermark. A
 * client that half-closes still gets an answer to every complete request it sent.
 *
 * Connections are only freed from event callbacks (never inside conn_process), and a
 * request handed to a handler survives its connection (req->conn is cleared). */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/queue.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>

#include "acl.h"
#include "admin.h"
#include "config.h"
#include "institutions.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "share.h"
#include "normalise.h"
#include "signature.h"
#include "sink.h"

#define RETRY_AFTER "30"
#define LINGER_MS 2000          /* read and drop after a closing answer, at most this long */
#define BODY_CHUNK 65536        /* first allocation for a body of unknown or large size */
#define ACCEPT_PAUSE_MS 100     /* after EMFILE and friends */
#define OUTPUT_HIGH 65536       /* answers waiting to be sent before pipelined requests wait */
#define FDS_PER_WORKER 8        /* event base, notify pipes, sink sockets and files */
#define ACCEPT_YIELD_MS 2       /* see on_accept_again() */
#define FDS_FIXED 32            /* stdio, listener, main loop, logs, librdkafka's own, spare */

enum conn_state { S_IDLE, S_HEAD, S_BODY, S_WAIT, S_CLOSING, S_LINGER };

struct ab_conn {
    struct ab_worker *w;
    struct bufferevent *bev;
    struct event *timer;
    TAILQ_ENTRY(ab_conn) link; /* in the worker's conns */
    enum conn_state state;
    int eof;                /* the client sends no more */
    int busy;               /* inside conn_process: an answer does not recurse into it */
    struct ab_req *req;     /* being received, or with its handler (S_WAIT) */
    size_t scanned;         /* how far the head was searched for its end */
    int64_t body_left;      /* Content-Length bytes still to come */
    int chunked;
    struct ab_chunked ch;
    int plain;              /* no TLS: answers may go straight to the socket */
    char peer[64];
};

struct ab_worker {
    struct ab_app *app;
    const struct ab_config *cfg;
    int index;
    struct event_base *base;
    struct evconnlistener *listener;
    void *hctx; /* the handler's context for this worker (app->handler) */
    struct ab_metrics *metrics;
    SSL_CTX *ssl_ctx; /* this thread's reference, NULL = plain HTTP */
    /* cross-thread hand-over (reload, stop): guarded by mu, picked up by ctl_ev */
    pthread_mutex_t mu;
    struct ab_secrets *new_secrets;
    SSL_CTX *new_ssl_ctx;
    int stop_requested, stop_timeout_s;
    struct event *ctl_ev;
    struct event *drain_ev; /* polls until in-flight webhooks are answered */
    struct event *pause_ev; /* resumes accepting after a pause */
    struct event *accept_again_ev; /* re-enables the listener after one accept */
    struct event *ready_ev; /* samples the sink's readiness */
    int stopping;
    time_t stop_deadline;
    int ready, ready_known; /* this worker's share of ab_metrics_g.sink_ready */
    int note_state;         /* this worker's share of notes[]: 0 none, 1 degraded, 2 refusing */
    TAILQ_HEAD(conn_list, ab_conn) conns; /* every open connection, the least recently active first */
    time_t date_at;
    char date[40];          /* the Date header value for date_at */
};

static char empty_body[1]; /* the body of a request without one; never written */

/* The handlers' ready_note over the workers (ab_app_ready_note): workers per state (1
 * degraded, 2 refusing; [0] unused), the last note given. */
static atomic_long notes[3];
static pthread_mutex_t note_mu = PTHREAD_MUTEX_INITIALIZER;
static char note_text[256];

/* Lines a remote party can trigger repeatedly: at most one per interval each. */
static struct ab_ratelimit rl_accept, rl_timeout, rl_buffered, rl_evict, rl_share;

static void conn_process(struct ab_conn *c);
static void share_full(struct ab_conn *c);
static void conn_free(struct ab_conn *c);

/* ---- the connection list, least recently active first -------------------------------- */

static void list_unlink(struct ab_conn *c)
{
    TAILQ_REMOVE(&c->w->conns, c, link);
}

static void list_append(struct ab_conn *c)
{
    TAILQ_INSERT_TAIL(&c->w->conns, c, link);
}

/* c starts a request or goes idle: it is now the most recently active. */
static void list_touch(struct ab_conn *c)
{
    if (TAILQ_LAST(&c->w->conns, conn_list) != c) {
        list_unlink(c);
        list_append(c);
    }
}

void ab_app_drain(struct ab_app *app)
{
    atomic_store(&app->draining, 1);
}

int ab_app_draining(const struct ab_app *app)
{
    return atomic_load(&app->draining);
}

/* ---- limits ----------------------------------------------------------------------- */

int ab_server_check_limits(struct ab_app *app, long n_workers, char *errstr, size_t errlen)
{
    /* what this layer relies on: bufferevent watermarks and triggers, evconnlistener error
     * callbacks, OpenSSL bufferevents with dirty shutdown (all in 2.1.1 and later) */
    if (event_get_version_number() < 0x02010100) {
        snprintf(errstr, errlen, "libevent %s is too old: 2.1.1 or later is needed",
                 event_get_version());
        return -1;
    }
    if (app->share == NULL) {
        app->share = ab_share_new(app->cfg->max_buffered_per_client);
    }
    struct rlimit rl;
    long want = app->cfg->max_connections;
    long own = FDS_FIXED + FDS_PER_WORKER * n_workers;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
        app->max_connections = want;
        return 0;
    }
    long room = (long)rl.rlim_cur - own;
    if (room < 1) {
        snprintf(errstr, errlen,
                 "the open-file limit (ulimit -n %ld) leaves no room for connections: the "
                 "daemon needs %ld descriptors itself; raise it to at least %ld",
                 (long)rl.rlim_cur, own, own + 64);
        return -1;
    }
    app->max_connections = want < room ? want : room;
    if (app->max_connections < want) {
        ab_warn("--max-connections %ld capped at %ld: the open-file limit is %ld and the "
                "daemon needs %ld descriptors itself",
                want, app->max_connections, (long)rl.rlim_cur, own);
    } else {
        ab_info("max connections %ld (open-file limit %ld, %ld kept for the daemon)",
                app->max_connections, (long)rl.rlim_cur, own);
    }
    return 0;
}

/* Charge cap - r->body_cap more bytes to --max-buffered (and, while the body is being
 * received, to the client's share of it) and grow the body to cap. Returns 0, -1 when the
 * budget has no room, -2 when the client's share has none (nothing changed either way). */
static int body_grow(struct ab_req *r, size_t cap)
{
    long delta = (long)(cap - r->body_cap);
    long max = r->w->cfg->max_buffered;
    if (ab_share_charge(r->w->app->share, r->client, delta) != 0) {
        return -2;
    }
    if (atomic_fetch_add(&r->w->app->buffered, delta) + delta > max) {
        atomic_fetch_sub(&r->w->app->buffered, delta);
        ab_share_release(r->w->app->share, r->client, delta);
        return -1;
    }
    r->share_held += r->w->app->share ? delta : 0;
    r->body = ab_realloc(r->body_cap ? r->body : NULL, cap);
    r->body_cap = cap;
    return 0;
}

/* Room for `need` body bytes (plus the NUL). limit is the most the body can be. */
static int body_reserve(struct ab_req *r, size_t need, size_t limit)
{
    if (need + 1 <= r->body_cap) {
        return 0;
    }
    size_t cap = r->body_cap ? r->body_cap * 2 : BODY_CHUNK;
    if (cap > limit + 1) {
        cap = limit + 1;
    }
    if (cap < need + 1) {
        cap = need + 1;
    }
    return body_grow(r, cap);
}

void ab_req_drop_body(struct ab_req *r)
{
    if (r->body_cap) {
        atomic_fetch_sub(&r->w->app->buffered, (long)r->body_cap);
        free(r->body);
        r->body_cap = 0;
    }
    r->body = empty_body;
    r->body_len = 0;
}

/* The body is complete: its bytes no longer count against the client's share (a signed
 * request is then answered by the sink, an unsigned one at once). */
static void share_release(struct ab_req *r)
{
    ab_share_release(r->w->app->share, r->client, r->share_held);
    r->share_held = 0;
}

static void req_free(struct ab_req *r)
{
    if (r) {
        share_release(r);
        ab_req_drop_body(r);
        free(r->head_buf);
        free(r);
    }
}

/* ---- answers ---------------------------------------------------------------------- */

static const char *reason_phrase(int code)
{
    switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return code < 400 ? "OK" : code < 500 ? "Bad Request" : "Internal Server Error";
    }
}

static size_t put(char *p, const char *s)
{
    size_t n = strlen(s);
    memcpy(p, s, n);
    return n;
}

static size_t put_ulong(char *p, unsigned long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) {
        p[i] = tmp[n - 1 - i];
    }
    return n;
}

/* The JSON body {"k1":"v1"[,"k2":"v2"]} into a new buffer, its length in *len. */
static char *json_body(const struct ab_answer *a, size_t *len)
{
    const char *v1 = a->v1 ? a->v1 : "", *v2 = a->v2 ? a->v2 : "";
    size_t n1 = a->v1_len ? a->v1_len : strlen(v1), n2 = strlen(v2);
    size_t cap = 16 + strlen(a->k1) + 6 * n1 + (a->k2 ? strlen(a->k2) + 6 * n2 : 0);
    char *b = ab_malloc(cap), *p = b;
    p += put(p, "{\"");
    p += put(p, a->k1);
    p += put(p, "\":\"");
    p += ab_json_escape(p, v1, n1);
    if (a->k2) {
        p += put(p, "\",\"");
        p += put(p, a->k2);
        p += put(p, "\":\"");
        p += ab_json_escape(p, v2, n2);
    }
    p += put(p, "\"}");
    *len = (size_t)(p - b);
    return b;
}

/* The Date header value, formatted once a second per worker. */
static const char *http_date(struct ab_worker *w)
{
    time_t now = time(NULL);
    if (now != w->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(w->date, sizeof(w->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        w->date_at = now;
    }
    return w->date;
}

/* Status line, headers and body into the connection's output buffer. */
static void write_answer(struct ab_conn *c, const struct ab_req *r, const struct ab_answer *a,
                         const char *body, size_t len, int keep)
{
    char h[512 + 64];
    char *p = h;
    const char *ctype = a->ctype ? a->ctype : "application/json";
    p += put(p, "HTTP/1.1 ");
    p += put_ulong(p, (unsigned long)a->status);
    *p++ = ' ';
    p += put(p, reason_phrase(a->status));
    p += put(p, "\r\nContent-Type: ");
    p += put(p, ctype);
    p += put(p, "\r\nContent-Length: ");
    p += put_ulong(p, len);
    p += put(p, "\r\nCache-Control: no-store\r\nDate: ");
    p += put(p, http_date(c->w));
    if (a->status == 503) {
        p += put(p, "\r\nRetry-After: " RETRY_AFTER);
    }
    if (a->allow) {
        p += put(p, "\r\nAllow: ");
        p += put(p, a->allow);
    }
    if (!keep) {
        p += put(p, "\r\nConnection: close");
    } else if (r->head.minor == 0) {
        p += put(p, "\r\nConnection: keep-alive");
    }
    p += put(p, "\r\n\r\n");
    size_t hlen = (size_t)(p - h);
    if (r->head.method && strcmp(r->head.method, "HEAD") == 0) {
        len = 0;
    }
    struct evbuffer *out = bufferevent_get_output(c->bev);
    size_t sent = 0;
    if (c->plain && evbuffer_get_length(out) == 0) {
        /* Nothing queued before it: straight to the socket, as h2o does. The answer nearly
         * always fits the socket buffer, which saves the bufferevent's round (arm the write
         * event, wake up, write, disarm: two epoll_ctl and a loop iteration per request).
         * What does not go out (a full buffer, an error the bufferevent then reports)
         * is queued below as before. */
        struct iovec iov[2] = {{h, hlen}, {(void *)body, len}};
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = len ? 2 : 1};
        ssize_t n = sendmsg(bufferevent_getfd(c->bev), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        sent = n > 0 ? (size_t)n : 0;
    }
    if (sent < hlen) {
        evbuffer_add(out, h + sent, hlen - sent);
    }
    if (len && sent < hlen + len) {
        size_t skip = sent > hlen ? sent - hlen : 0;
        evbuffer_add(out, body + skip, len - skip);
    }
}

static double elapsed_ms(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) * 1e3 +
           (double)(now.tv_nsec - start->tv_nsec) / 1e6;
}

static void timer_set(struct ab_conn *c, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Close once the output is flushed, then linger (on_write, also called, deferred, when
 * there is nothing left to write). */
static void conn_close_after_write(struct ab_conn *c)
{
    c->state = S_CLOSING;
    timer_set(c, c->w->cfg->read_timeout_s * 1000);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        bufferevent_trigger(c->bev, EV_WRITE,
                            BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
    }
}

void ab_req_answer(struct ab_req *r, const struct ab_answer *a)
{
    struct ab_conn *c = r->conn;
    size_t len = a->len;
    char *built = NULL;
    const char *body = a->body;
    if (body == NULL) {
        body = built = json_body(a, &len);
    }
    int keep = 0;
    if (c) {
        keep = !a->close && r->head.keep_alive && !c->w->stopping;
        write_answer(c, r, a, body, len, keep);
    }
    if (!a->quiet) {
        ab_metrics_request(r->w->metrics, a->status, a->action, a->event);
    }
    if (!a->quiet && !(ab_log_level_min > AB_LOG_DEBUG &&
                       ab_admin_quiet_probe(r->head.path, a->status))) {
        struct ab_access acc = {
            .client = r->client[0] ? r->client : r->peer,
            .method = r->head.method ? r->head.method : "-",
            .path = r->head.path ? r->head.path : "-",
            .status = a->status,
            .latency_ms = elapsed_ms(&r->start),
            .bytes_in = r->bytes_in,
            .id = a->id,
            .action = a->action,
            .event = a->event,
            .sink = a->sink,
            .error = a->error,
            .trace_id = a->trace_id,
        };
        ab_log_access(&acc);
    }
    free(built);
    req_free(r);
    if (c == NULL) {
        return;
    }
    c->req = NULL;
    if (!keep) {
        conn_close_after_write(c);
    } else {
        c->state = S_IDLE;
        list_touch(c);
        if (!c->busy) {
            conn_process(c);
        }
    }
}

void ab_req_error(struct ab_req *r, int status, const char *msg)
{
    struct ab_answer a = {.status = status, .k1 = "error", .v1 = msg, .error = msg};
    a.close = status == 503;
    ab_req_answer(r, &a);
}

/* ---- the endpoints of the server itself ------------------------------------------- */

static void handle_readyz(struct ab_worker *w, struct ab_req *r)
{
    char d[512] = "";
    const char *st = "ready";
    int code = 200;
    if (ab_app_draining(w->app)) {
        st = "draining", code = 503;
    } else if (!w->app->handler->ready(w->hctx)) {
        st = "sink not ready", code = 503;
    }
    char dd[256] = "";
    if (code == 200 && w->app->handler->ready_note &&
        !w->app->handler->ready_note(w->hctx, dd, sizeof(dd))) {
        st = AB_READY_DEDUPE_REFUSED, code = 503;
    } else if (code == 200 && dd[0]) {
        st = AB_READY_DEDUPE_UNCHECKED;
    }
    /* the sink's state names files, brokers and errors: for loopback and --allow only */
    int details = ab_acl_is_loopback(r->client) ||
                  (w->app->allow && ab_acl_match(w->app->allow, r->client));
    struct ab_answer a = {.status = code, .k1 = "status", .v1 = st};
    if (details) {
        w->app->handler->describe(w->hctx, d, sizeof(d));
        if (dd[0]) {
            size_t n = strlen(d);
            snprintf(d + n, sizeof(d) - n, "; %s", dd);
        }
        a.k2 = "sink", a.v2 = d;
    }
    ab_req_answer(r, &a);
}

char *ab_app_metrics_text(const struct ab_app *app)
{
    struct ab_metrics_gauges g = {.inflight = app->handler->inflight_total(),
                                  .connections = atomic_load(&app->connections),
                                  .buffered = atomic_load(&app->buffered),
                                  .draining = ab_app_draining(app)};
    return ab_metrics_render(app->metrics, app->n_workers, app->sink_name, &g);
}

static void handle_metrics(struct ab_worker *w, struct ab_req *r)
{
    char *text = ab_app_metrics_text(w->app);
    struct ab_answer a = {.status = 200, .ctype = "text/plain; version=0.0.4; charset=utf-8",
                          .body = text, .len = strlen(text), .quiet = 1};
    ab_req_answer(r, &a);
    free(text);
}

/* Route a complete request. Runs on the loop thread; the handler answers now or later. */
static void dispatch(struct ab_worker *w, struct ab_req *r)
{
    const char *path = r->head.path, *m = r->head.method;
    if (strcmp(path, w->cfg->path) == 0 || ab_institutions_path_match(w->cfg->path, path)) {
        w->app->handler->on_req(w->hctx, r); /* {path}/{code}: consortium mode only */
        return;
    }
    int ours = !strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics");
    if (ours && w->cfg->admin_listen) {
        ab_req_error(r, 404, "not found: /healthz, /readyz and /metrics are on --admin-listen");
        return;
    }
    if (!ours) {
        ab_req_error(r, 404, "not found: webhooks go to the configured --path");
        return;
    }
    if (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0) {
        struct ab_answer a = {.status = 405, .k1 = "error", .v1 = "method not allowed: use GET",
                              .allow = "GET, HEAD"};
        a.error = a.v1;
        ab_req_answer(r, &a);
    } else if (strcmp(path, "/healthz") == 0) {
        struct ab_answer a = {.status = 200, .k1 = "status", .v1 = "ok"};
        ab_req_answer(r, &a);
    } else if (strcmp(path, "/readyz") == 0) {
        handle_readyz(w, r);
    } else {
        handle_metrics(w, r);
    }
}

/* The client address: the peer, or, from a trusted proxy, the right-most untrusted
 * address of every X-Forwarded-For line combined (or of Forwarded: for=, per
 * --proxy-header). */
static void client_address(struct ab_worker *w, struct ab_req *r)
{
    const char *name = w->cfg->proxy_header && strcasecmp(w->cfg->proxy_header, "forwarded") == 0
                           ? "Forwarded"
                           : "X-Forwarded-For";
    char combined[4096];
    int truncated = 0;
    size_t lines = 0;
    if (w->app->trusted && ab_acl_match(w->app->trusted, r->peer)) {
        lines = ab_http_field_all(&r->head, name, combined, sizeof(combined), &truncated);
    }
    if (lines == 0) {
        snprintf(r->client, sizeof(r->client), "%s", r->peer);
        return;
    }
    /* a truncated list lost its right end, which is what counts: trust nothing of it */
    ab_acl_client_addr(w->app->trusted, r->peer, truncated ? "unknown" : combined,
                       name[0] == 'F', r->client, sizeof(r->client));
}

/* ---- reading requests ----------------------------------------------------------------- */

/* An error found while receiving: answer it and close. */
static void conn_fail(struct ab_conn *c, int status, const char *msg)
{
    struct ab_req *r = c->req;
    if (r == NULL) {
        r = c->req = ab_calloc(1, sizeof(*r));
        r->w = c->w;
        r->conn = c;
        r->body = empty_body;
        clock_gettime(CLOCK_MONOTONIC, &r->start);
        snprintf(r->peer, sizeof(r->peer), "%s", c->peer);
    }
    if (r->client[0] == '\0') {
        snprintf(r->client, sizeof(r->client), "%s", c->peer);
    }
    c->state = S_WAIT;
    struct ab_answer a = {.status = status, .k1 = "error", .v1 = msg, .error = msg, .close = 1};
    ab_req_answer(r, &a);
}

/* S_IDLE/S_HEAD: look for a complete head. Returns 1 when one was taken. */
static int read_head(struct ab_conn *c)
{
    struct ab_worker *w = c->w;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    if (len == 0) {
        return 0;
    }
    if (c->state == S_IDLE) {
        /* the first byte: the whole request is due within --read-timeout */
        c->state = S_HEAD;
        list_touch(c);
        c->scanned = 0;
        c->req = ab_calloc(1, sizeof(*c->req));
        c->req->w = w;
        c->req->conn = c;
        c->req->body = empty_body;
        clock_gettime(CLOCK_MONOTONIC, &c->req->start);
        snprintf(c->req->peer, sizeof(c->req->peer), "%s", c->peer);
        timer_set(c, w->cfg->read_timeout_s * 1000);
    }
    size_t limit = (size_t)w->cfg->max_headers_size;
    size_t look = len < limit ? len : limit;
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
    size_t end = ab_http_head_end(data, look, &c->scanned);
    if (end == 0) {
        if (!ab_http_head_plausible(data, look < 64 ? look : 64)) {
            conn_fail(c, 400, "not an HTTP request (TLS to the plain HTTP port?)");
        } else if (look >= limit) {
            char msg[160];
            snprintf(msg, sizeof(msg), "request line and headers larger than the limit of %ld "
                     "bytes (--max-headers-size)", w->cfg->max_headers_size);
            conn_fail(c, 400, msg);
        }
        return 0;
    }
    struct ab_req *r = c->req;
    r->head_buf = ab_malloc(end + 1);
    evbuffer_remove(in, r->head_buf, end);
    r->head_buf[end] = '\0';
    char err[160];
    int rc = ab_http_parse_head(r->head_buf, end, &r->head, err, sizeof(err));
    if (rc != 0) {
        conn_fail(c, rc, err);
        return 0;
    }
    return 1;
}

/* A head was parsed: set up the body, or refuse it at once. Returns 0 to go on. */
static int start_body(struct ab_conn *c)
{
    struct ab_worker *w = c->w;
    struct ab_req *r = c->req;
    int64_t cl = r->head.content_length;
    char msg[200];
    c->chunked = r->head.chunked;
    c->body_left = cl > 0 ? cl : 0;
    if (cl > w->cfg->max_body) {
        snprintf(msg, sizeof(msg), "request body is larger than the limit of %ld bytes",
                 w->cfg->max_body);
        conn_fail(c, 413, msg);
        return -1;
    }
    client_address(w, r); /* the share is per client, known from the head */
    if (cl > 0 && w->app->share &&
        ab_share_held(w->app->share, r->client) + cl > w->cfg->max_buffered_per_client) {
        share_full(c);
        return -1;
    }
    if (cl > 0 && atomic_load(&w->app->buffered) + cl > w->cfg->max_buffered) {
        ab_log_limited(&rl_buffered, AB_LOG_WARN,
                       "--max-buffered (%ld bytes) is full: answering 503 to new bodies",
                       w->cfg->max_buffered);
        conn_fail(c, 503, "too many request bodies being received (--max-buffered); retry later");
        return -1;
    }
    if (c->chunked) {
        ab_chunked_init(&c->ch, (size_t)w->cfg->max_headers_size);
    }
    if (r->head.expect_continue && (c->chunked || cl > 0)) {
        evbuffer_add(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    c->state = S_BODY;
    return 0;
}

/* The client's share of --max-buffered is taken by bodies still arriving: answer 503. */
static void share_full(struct ab_conn *c)
{
    ab_log_limited(&rl_share, AB_LOG_WARN,
                   "client %s holds its share of bodies being received "
                   "(--max-buffered-per-client, %ld bytes): answering 503 to more",
                   c->req->client, c->w->cfg->max_buffered_per_client);
    conn_fail(c, 503, "too many request bodies being received from your address "
                      "(--max-buffered-per-client); retry later");
}

/* Move n body bytes from p into the request. Returns 0, or -1 after answering. */
static int take_body(struct ab_conn *c, const void *p, size_t n, size_t limit)
{
    struct ab_req *r = c->req;
    long max = c->w->cfg->max_body;
    if ((long)(r->body_len + n) > max) {
        char msg[160];
        snprintf(msg, sizeof(msg), "request body is larger than the limit of %ld bytes", max);
        conn_fail(c, 413, msg);
        return -1;
    }
    int rc = body_reserve(r, r->body_len + n, limit);
    if (rc == -2) {
        share_full(c);
        return -1;
    }
    if (rc != 0) {
        ab_log_limited(&rl_buffered, AB_LOG_WARN,
                       "--max-buffered (%ld bytes) is full: answering 503 to new bodies",
                       c->w->cfg->max_buffered);
        conn_fail(c, 503, "too many request bodies being received (--max-buffered); retry later");
        return -1;
    }
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    r->bytes_in = r->body_len;
    r->body[r->body_len] = '\0';
    return 0;
}

/* S_BODY: read what has arrived. Returns 1 when the body is complete, 0 for more, -1 after
 * an answer. */
static int read_body(struct ab_conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!c->chunked) {
        size_t limit = (size_t)c->req->head.content_length;
        while (c->body_left > 0) {
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) {
                return 0;
            }
            size_t n = v.iov_len < (size_t)c->body_left ? v.iov_len : (size_t)c->body_left;
            if (take_body(c, v.iov_base, n, limit) != 0) {
                return -1;
            }
            evbuffer_drain(in, n);
            c->body_left -= (int64_t)n;
        }
        return 1;
    }
    size_t limit = (size_t)c->w->cfg->max_body;
    for (;;) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) {
            return 0;
        }
        size_t used = 0, dlen = 0;
        const char *data = NULL, *err = NULL;
        int rc = ab_chunked_decode(&c->ch, v.iov_base, v.iov_len, &used, &data, &dlen, &err);
        if (dlen && take_body(c, data, dlen, limit) != 0) {
            return -1;
        }
        evbuffer_drain(in, used);
        if (rc == AB_CHUNKED_ERROR) {
            char msg[160];
            snprintf(msg, sizeof(msg), "malformed chunked body: %s", err);
            conn_fail(c, 400, msg);
            return -1;
        }
        if (rc == AB_CHUNKED_DONE) {
            return 1;
        }
    }
}

/* Handle what the input buffer holds: heads, bodies, then the request to its handler;
 * again for pipelined requests while answers come at once. Never frees c. */
static void conn_process(struct ab_conn *c)
{
    c->busy = 1;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    while (c->state == S_IDLE || c->state == S_HEAD || c->state == S_BODY) {
        if (c->state == S_IDLE && evbuffer_get_length(out) > OUTPUT_HIGH) {
            break; /* a client that does not read its answers: on_write resumes */
        }
        if (c->state != S_BODY) {
            if (!read_head(c) || start_body(c) != 0) {
                break;
            }
        }
        int rc = read_body(c);
        if (rc <= 0) {
            break;
        }
        struct ab_req *r = c->req;
        c->state = S_WAIT;
        evtimer_del(c->timer);
        client_address(c->w, r);
        share_release(r);
        dispatch(c->w, r); /* may answer now: the state is then S_IDLE or S_CLOSING */
    }
    c->busy = 0;
    if (c->state == S_IDLE && evbuffer_get_length(out) > OUTPUT_HIGH) {
        timer_set(c, c->w->cfg->read_timeout_s * 1000);
    } else if (c->state == S_IDLE && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        if (c->eof || c->w->stopping) {
            conn_close_after_write(c);
        } else {
            timer_set(c, c->w->cfg->idle_timeout_s * 1000);
        }
    } else if ((c->state == S_HEAD || c->state == S_BODY) && c->eof) {
        conn_close_after_write(c); /* the client ended in the middle of a request */
    }
}

/* ---- connection events ---------------------------------------------------------------- */

static void start_linger(struct ab_conn *c)
{
    c->state = S_LINGER;
    if (c->eof) {
        conn_free(c);
        return;
    }
    shutdown(bufferevent_getfd(c->bev), SHUT_WR);
    evbuffer_drain(bufferevent_get_input(c->bev), (size_t)-1);
    bufferevent_enable(c->bev, EV_READ);
    timer_set(c, LINGER_MS);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct ab_conn *c = arg;
    if (c->state == S_LINGER || c->state == S_CLOSING) {
        evbuffer_drain(bufferevent_get_input(bev), (size_t)-1);
        return;
    }
    if (c->state != S_WAIT) {
        conn_process(c);
    }
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct ab_conn *c = arg;
    if (c->state == S_CLOSING) {
        start_linger(c);
    } else if (c->state == S_IDLE) {
        conn_process(c); /* answers are out: go on with pipelined requests */
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct ab_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
        c->eof = 1;
        switch (c->state) {
        case S_LINGER:
            conn_free(c);
            return;
        case S_WAIT:
        case S_CLOSING:
            return; /* the answer comes; then we close */
        default:
            conn_process(c);
            return;
        }
    }
    conn_free(c); /* a socket or TLS error, or the write timeout */
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    struct ab_conn *c = arg;
    if (c->state == S_IDLE && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
        /* idle, but answers are still going out to a slow reader: the bufferevent's write
         * timeout (--read-timeout without progress) bounds that, not the idle timeout */
        timer_set(c, c->w->cfg->idle_timeout_s * 1000);
        return;
    }
    if (c->state == S_HEAD || c->state == S_BODY) {
        atomic_fetch_add(&ab_metrics_g.request_timeouts, 1);
        ab_log_limited(&rl_timeout, AB_LOG_INFO,
                       "closed a connection from %s: request not complete within "
                       "--read-timeout (%ld s)",
                       c->peer, c->w->cfg->read_timeout_s);
    }
    conn_free(c);
}

static void conn_free(struct ab_conn *c)
{
    if (c->req) {
        if (c->state == S_WAIT) {
            c->req->conn = NULL; /* its handler answers it later, to nobody */
        } else {
            req_free(c->req);
        }
    }
    list_unlink(c);
    event_free(c->timer);
    bufferevent_free(c->bev);
    /* the one place where a connection stops counting */
    atomic_fetch_sub(&c->w->app->connections, 1);
    ab_metrics_connections(c->w->metrics, -1);
    free(c);
}

/* ---- accepting -------------------------------------------------------------------- */

static void pause_accepting(struct ab_worker *w, long ms)
{
    if (w->listener) {
        evconnlistener_disable(w->listener);
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        event_add(w->pause_ev, &tv);
    }
}

/* Loop thread, while accepting is paused: resume below the connection limit. */
static void on_pause_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    if (w->listener && atomic_load(&w->app->connections) < w->app->max_connections) {
        evconnlistener_enable(w->listener);
        event_del(w->pause_ev);
    }
}

/* Loop thread, after a connection was accepted (EV_READ), or a moment later (EV_TIMEOUT):
 * take the next one, unless accepting is paused. A worker holding more than its share of
 * the connections (one over the mean) first leaves the waiting ones to the others for
 * ACCEPT_YIELD_MS, then takes them if nobody did (nginx's accept_disabled, by count). */
static void on_accept_again(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    if (w->listener == NULL || event_pending(w->pause_ev, EV_TIMEOUT, NULL)) {
        return;
    }
    long n = (long)w->app->n_workers;
    long mine = ab_metrics_connections(w->metrics, 0);
    if (!(what & EV_TIMEOUT) && mine * n > atomic_load(&w->app->connections) + n) {
        struct timeval tv = {0, ACCEPT_YIELD_MS * 1000};
        event_add(w->accept_again_ev, &tv);
        return;
    }
    evconnlistener_enable(w->listener);
}

static void format_peer(const struct sockaddr *sa, char *out, size_t len)
{
    out[0] = '\0';
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)len);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            inet_ntop(AF_INET, &a->s6_addr[12], out, (socklen_t)len);
        } else {
            inet_ntop(AF_INET6, a, out, (socklen_t)len);
        }
    }
}

/* The connection to give up for a newcomer at the limit: the least recently active one
 * of this worker that is idle or still receiving its request (one whose request is with
 * its handler, or that is closing, is never taken). NULL if there is none. */
static struct ab_conn *eviction_victim(struct ab_worker *w)
{
    struct ab_conn *c;
    TAILQ_FOREACH(c, &w->conns, link) {
        if (c->state == S_IDLE || c->state == S_HEAD || c->state == S_BODY) {
            return c;
        }
    }
    return NULL;
}

/* Loop thread: a new connection. At the connection limit the least recently active
 * connection that has no request with a handler is closed to make room: clients that
 * hold connections open without completing requests (slowloris) cannot keep a real
 * webhook out. When there is no such connection, the newcomer is closed and accepting
 * pauses briefly (the kernel backlog holds the next ones). Either way the number of
 * connections never exceeds the limit. */
static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    struct ab_worker *w = arg;
    long n = atomic_fetch_add(&w->app->connections, 1) + 1;
    if (n > w->app->max_connections) {
        struct ab_conn *victim = eviction_victim(w);
        if (victim == NULL) {
            atomic_fetch_sub(&w->app->connections, 1);
            evutil_closesocket(fd);
            pause_accepting(w, 50);
            return;
        }
        atomic_fetch_add(&ab_metrics_g.evicted, 1);
        ab_log_limited(&rl_evict, AB_LOG_WARN,
                       "--max-connections (%ld) reached: closed the least recently active "
                       "connection (from %s) for a new one",
                       w->app->max_connections, victim->peer);
        conn_free(victim);
    }
    struct ab_conn *c = ab_calloc(1, sizeof(*c));
    c->w = w;
    ab_metrics_connections(w->metrics, 1);
    format_peer(sa, c->peer, sizeof(c->peer));
    if (w->ssl_ctx) {
        c->bev = bufferevent_openssl_socket_new(w->base, fd, SSL_new(w->ssl_ctx),
                                                BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
        bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    } else {
        c->bev = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
        c->plain = 1;
    }
    c->timer = evtimer_new(w->base, on_conn_timer, c);
    list_append(c);
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, (size_t)w->cfg->max_headers_size + 16384);
    struct timeval wt = {w->cfg->read_timeout_s, 0};
    bufferevent_set_timeouts(c->bev, NULL, &wt);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    timer_set(c, w->cfg->idle_timeout_s * 1000);
    /* One connection per wake-up. The workers share the listening socket, and libevent's
     * listener accepts every waiting connection on the first worker to wake: with
     * --threads 2 all 50 of wrk's connections landed on one worker, the other idle. Here
     * the listener is disabled, and enabled again by on_accept_again() once this loop has
     * run the callbacks it woke for, while the other workers, woken by the same
     * readiness, take their turn. */
    if (w->app->n_workers > 1) {
        evconnlistener_disable(l);
        event_active(w->accept_again_ev, EV_READ, 0);
    }
}

/* Loop thread: accept() failed with something other than a retriable error. Out of
 * descriptors (EMFILE, ENFILE) or memory: pause accepting briefly instead of spinning. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    struct ab_worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    atomic_fetch_add(&ab_metrics_g.accept_pauses, 1);
    ab_log_limited(&rl_accept, AB_LOG_WARN, "accept: %s; pausing accepting for %d ms",
                   evutil_socket_error_to_string(err), ACCEPT_PAUSE_MS);
    pause_accepting(w, ACCEPT_PAUSE_MS);
}

/* Loop thread: publish the handler's ready_note for the admin listener. */
static void publish_note(struct ab_worker *w)
{
    char dd[256] = "";
    int st = 0;
    if (w->hctx && w->app->handler->ready_note) {
        st = !w->app->handler->ready_note(w->hctx, dd, sizeof(dd)) ? 2 : dd[0] ? 1 : 0;
    }
    if (st != w->note_state) {
        atomic_fetch_sub(&notes[w->note_state], w->note_state != 0);
        atomic_fetch_add(&notes[st], st != 0);
        w->note_state = st;
    }
    if (st) {
        pthread_mutex_lock(&note_mu);
        snprintf(note_text, sizeof(note_text), "%s", dd);
        pthread_mutex_unlock(&note_mu);
    }
}

int ab_app_ready_note(const struct ab_app *app, char *buf, size_t len)
{
    int st = atomic_load(&notes[2]) > 0 ? 2 : atomic_load(&notes[1]) > 0 ? 1 : 0;
    pthread_mutex_lock(&note_mu);
    snprintf(buf, len, "%s", st ? note_text : "");
    pthread_mutex_unlock(&note_mu);
    return st;
}

/* Loop thread: publish this worker's sink readiness (ready() may only be asked on the
 * owning thread) into the process-wide gauge, every half second; log each change with the
 * sink's own description (which /readyz shows only to trusted clients). */
static void on_ready_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    int r = w->hctx ? w->app->handler->ready(w->hctx) : 0;
    if (r != w->ready) {
        atomic_fetch_add(&ab_metrics_g.sink_ready, r - w->ready);
        if (w->ready_known || !r) {
            char d[256] = "";
            w->app->handler->describe(w->hctx, d, sizeof(d));
            ab_log(r ? AB_LOG_INFO : AB_LOG_WARN, "worker %d: sink %s%s%s", w->index,
                   r ? "ready again" : "not ready", d[0] ? ": " : "", d);
        }
        w->ready = r;
    }
    w->ready_known = 1;
    publish_note(w);
}

/* ---- control: reload and stop from other threads ------------------------------------ */

static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    long inflight = w->app->handler->inflight(w->hctx);
    if (inflight == 0 || time(NULL) >= w->stop_deadline) {
        if (inflight) {
            ab_warn("worker %d: %ld webhooks still waiting on the sink at the deadline",
                    w->index, inflight);
        }
        event_base_loopexit(w->base, NULL);
    }
}

/* Stop accepting; close idle connections (the others close after their answer). */
static void begin_stop(struct ab_worker *w)
{
    w->stopping = 1;
    w->stop_deadline = time(NULL) + w->stop_timeout_s;
    w->app->handler->on_stopping(w->hctx);
    if (w->listener) {
        evconnlistener_free(w->listener);
        w->listener = NULL;
        event_del(w->pause_ev);
        /* The last worker to stop accepting closes the shared socket, so that new
         * connections are refused at once instead of waiting in the backlog. */
        if (atomic_fetch_add(&w->app->stopped_accepting, 1) + 1 == (long)w->app->n_workers) {
            evutil_closesocket(w->app->listen_fd);
            w->app->listen_fd = -1;
        }
    }
    for (struct ab_conn *c = TAILQ_FIRST(&w->conns), *next; c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state == S_IDLE && evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
            conn_free(c);
        }
    }
    struct timeval tv = {0, 20000};
    w->drain_ev = event_new(w->base, -1, EV_PERSIST, on_drain_tick, w);
    event_add(w->drain_ev, &tv);
}

static void on_control(evutil_socket_t fd, short what, void *arg)
{
    struct ab_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    struct ab_secrets *ns = w->new_secrets;
    SSL_CTX *nctx = w->new_ssl_ctx;
    int stop = w->stop_requested && !w->stopping;
    w->new_secrets = NULL;
    w->new_ssl_ctx = NULL;
    pthread_mutex_unlock(&w->mu);
    if (ns) {
        w->app->handler->on_secrets(w->hctx, ns);
        ab_secrets_free(ns);
    }
    if (nctx) {
        SSL_CTX_free(w->ssl_ctx);
        w->ssl_ctx = nctx;
    }
    if (stop) {
        begin_stop(w);
    }
}

void ab_worker_reload(struct ab_worker *w, struct ab_secrets *secrets, SSL_CTX *ssl_ctx)
{
    pthread_mutex_lock(&w->mu);
    if (secrets) {
        ab_secrets_free(w->new_secrets);
        w->new_secrets = ab_secrets_ref(secrets);
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
                                struct ab_secrets *secrets, SSL_CTX *ssl_ctx, char *errstr,
                                size_t errlen)
{
    struct ab_worker *w = ab_calloc(1, sizeof(*w));
    w->app = app;
    w->cfg = app->cfg;
    w->index = index;
    TAILQ_INIT(&w->conns);
    w->metrics = app->metrics[index];
    pthread_mutex_init(&w->mu, NULL);
    if (app->max_connections <= 0) {
        app->max_connections = app->cfg->max_connections;
    }
    w->base = event_base_new();
    if (w->base == NULL) {
        snprintf(errstr, errlen, "cannot create an event base");
        goto fail;
    }
    w->ctl_ev = event_new(w->base, -1, 0, on_control, w);
    w->pause_ev = event_new(w->base, -1, EV_PERSIST, on_pause_tick, w);
    w->accept_again_ev = event_new(w->base, -1, 0, on_accept_again, w);
    w->ready_ev = event_new(w->base, -1, EV_PERSIST, on_ready_tick, w);
    if (ssl_ctx) {
        SSL_CTX_up_ref(ssl_ctx);
        w->ssl_ctx = ssl_ctx;
    }
    w->listener = evconnlistener_new(w->base, on_accept, w, LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (w->listener == NULL) {
        snprintf(errstr, errlen, "cannot accept on the listening socket");
        goto fail;
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    w->hctx = app->handler->on_context_init(app, w->base, w->metrics, errstr, errlen);
    if (w->hctx == NULL) {
        goto fail;
    }
    app->handler->on_secrets(w->hctx, secrets);
    return w;
fail:
    ab_worker_free(w);
    return NULL;
}

void ab_worker_run(struct ab_worker *w)
{
    struct timeval half = {0, 500000};
    struct ab_log_batch *access_lines = ab_log_batch_new(w->base);
    on_ready_tick(-1, 0, w);
    event_add(w->ready_ev, &half);
    event_base_dispatch(w->base);
    event_del(w->ready_ev);
    atomic_fetch_sub(&ab_metrics_g.sink_ready, w->ready);
    w->ready = 0;
    atomic_fetch_sub(&notes[w->note_state], w->note_state != 0);
    w->note_state = 0;
    /* Stopped: close the sink on this thread (its close() completes what is left, whose
     * callbacks answer their requests), then give the answers a moment to go out. */
    /* what is left of --shutdown-timeout (the drain used the rest), so that the process
     * exits within it whatever the sink does */
    long ms = w->cfg->shutdown_timeout_s * 1000;
    if (w->stopping) {
        ms = ((long)(w->stop_deadline - time(NULL))) * 1000;
        ms = ms < 0 ? 0 : ms;
    }
    w->app->handler->on_close(w->hctx, (int)ms);
    struct timeval tv = {0, 300000};
    event_base_loopexit(w->base, &tv);
    event_base_dispatch(w->base);
    ab_log_batch_free(access_lines);
}

void ab_worker_free(struct ab_worker *w)
{
    if (w == NULL) {
        return;
    }
    /* The sink first: its close() completes every outstanding submission, whose callbacks
     * answer their requests while the connections still exist. */
    if (w->hctx) {
        w->app->handler->on_close(w->hctx, (int)(w->cfg->shutdown_timeout_s * 1000));
    }
    while (!TAILQ_EMPTY(&w->conns)) {
        struct ab_conn *c = TAILQ_FIRST(&w->conns);
        if (c->state == S_WAIT && c->req) {
            c->state = S_HEAD; /* nobody will answer it any more: free it with c */
        }
        conn_free(c);
    }
    if (w->listener) {
        evconnlistener_free(w->listener);
    }
    if (w->hctx) {
        w->app->handler->on_context_dispose(w->hctx);
    }
    if (w->drain_ev) {
        event_free(w->drain_ev);
    }
    if (w->accept_again_ev) {
        event_free(w->accept_again_ev);
    }
    if (w->pause_ev) {
        event_free(w->pause_ev);
    }
    if (w->ready_ev) {
        event_free(w->ready_ev);
    }
    if (w->ctl_ev) {
        event_free(w->ctl_ev);
    }
    ab_secrets_free(w->new_secrets);
    SSL_CTX_free(w->ssl_ctx);
    SSL_CTX_free(w->new_ssl_ctx);
    if (w->base) {
        event_base_free(w->base);
    }
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* ---- process set-up for the program (cmd/almabridge.c) ------------------------------ */

/* Bind the listening socket (shared by every worker). */
evutil_socket_t ab_server_listen(const char *hostport, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    snprintf(host, sizeof(host), "%.*s", (int)(colon - hostport), hostport);
    const char *port = colon + 1;
    char *h = host;
    if (h[0] == '[') {
        h++;
        h[strlen(h) - 1] = '\0';
    }
    struct evutil_addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_PASSIVE;
    int rc = evutil_getaddrinfo(*h ? h : NULL, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "--listen %s: %s", hostport, evutil_gai_strerror(rc));
        return -1;
    }
    evutil_socket_t fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 4096) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", hostport, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        fd = -1;
    }
    evutil_freeaddrinfo(res);
    return fd;
}

/* Idle and slow connections each hold a descriptor: allow as many as the hard limit. */
void ab_server_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* libevent's own warnings, in our log format; rate-limited, since a client can cause
 * some of them (TLS and socket errors) over and over. */
void ab_server_libevent_log(int severity, const char *msg)
{
    static struct ab_ratelimit rl;
    int level = severity == EVENT_LOG_DEBUG ? AB_LOG_DEBUG
                : severity == EVENT_LOG_MSG ? AB_LOG_INFO
                : severity == EVENT_LOG_WARN ? AB_LOG_WARN
                                             : AB_LOG_ERROR;
    ab_log_limited(&rl, level, "libevent: %s", msg);
}
