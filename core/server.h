/* The HTTP server: one ab_worker per thread, each with its own event base, listener on the
 * shared socket, connections and webhook pipeline (webhook.h); all share one ab_app
 * (immutable configuration plus atomics), so the request path takes no lock shared
 * between threads.
 *
 * HTTP/1.1 is served by our own small layer on libevent bufferevents (TLS through
 * bufferevent_openssl), with the request syntax in http1.c. Every limit is enforced here,
 * in one place, and holds exactly:
 *   --max-connections  counted when a connection is accepted and when it is freed, both in
 *                      this file; capped at start-up by RLIMIT_NOFILE minus what the daemon
 *                      needs itself (ab_server_check_limits);
 *   --read-timeout     a deadline for a whole request (head and body) from its first byte;
 *   --idle-timeout     a deadline for a connection with no request in progress;
 *   --max-headers-size, --max-body: per request; --max-buffered: every request body being
 *                      received or held, over all connections and threads.
 *
 * Endpoints: {path} (webhook.h), GET /healthz, /readyz, /metrics (404 here when
 * --admin-listen moves them to their own port, admin.h; a successful /healthz or /readyz
 * is written to the access log at debug level only). Every answer has a
 * status line, Content-Length and a JSON body (metrics: Prometheus text), is counted in
 * the metrics once and written to the access log once (metrics scrapes excepted). */
#ifndef AB_SERVER_H
#define AB_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#include <event2/util.h>

#include "http1.h"

struct ab_config;
struct ab_route;
struct ab_sink_ops;
struct ab_sink_conf;
struct ab_secrets;
struct ab_acl;
struct ab_share;
struct ab_metrics;
struct ab_worker;
struct ab_conn;
struct ab_app;
struct ab_req;
struct event_base;
struct ab_dedupe_setup;
typedef struct ssl_ctx_st SSL_CTX;

/* The handler of the configured --path, registered by the program (h2o's h2o_handler_t:
 * on_context_init, on_context_dispose, on_req): the server calls it through this table and
 * knows nothing of what it does (the webhook pipeline, core/webhook.h, is one). Each worker
 * has its own context: on_context_init creates it on the worker's loop at start-up (the
 * webhook pipeline opens its sink instance there); every other callback runs on that
 * worker's loop thread. */
struct ab_handler {
    void *(*on_context_init)(struct ab_app *app, struct event_base *base,
                             struct ab_metrics *metrics, char *errstr, size_t errlen);
    /* A request for the path: end it with exactly one ab_req_answer(), now or later. */
    void (*on_req)(void *ctx, struct ab_req *r);
    void (*on_secrets)(void *ctx, struct ab_secrets *secrets); /* takes a reference */
    void (*on_stopping)(void *ctx);      /* the worker drains: refuse new work */
    int (*ready)(void *ctx);             /* for /readyz */
    /* Optional, for /readyz once ready() said 1: 0 when a dependency the handler needs is
     * out (e.g. the deduplication store with --dedupe-on-error refuse), or 1; a note in buf
     * ("" for none) says why, or that it serves degraded (deduplication unchecked). */
    int (*ready_note)(void *ctx, char *buf, size_t len);
    void (*describe)(void *ctx, char *buf, size_t len);
    long (*inflight)(void *ctx);         /* requests it still has to answer */
    long (*inflight_total)(void);        /* the same over every worker, for metrics */
    void (*on_close)(void *ctx, int timeout_ms); /* answer what it holds, let go of the sink */
    void (*on_context_dispose)(void *ctx);
};

/* Process-wide state, filled by cmd/ before workers start. Read-only afterwards, except
 * for the atomics and what the workers pick up through ab_worker_reload(). */
struct ab_app {
    const struct ab_config *cfg;
    const struct ab_handler *handler;     /* of --path (the program registers it) */
    const struct ab_sink_ops *sink_ops;   /* the backend, or a decorator (spool) in front */
    const char *sink_name;                /* the backend's name, for metrics and logs */
    const struct ab_sink_conf *sink_conf; /* what the sink's open() is given */
    void *sink_shared;
    struct ab_route *route;   /* topic / stream template */
    struct ab_redact *redact; /* --redact, NULL: nothing */
    struct ab_acl *allow;     /* NULL = everyone may POST */
    struct ab_acl *trusted;   /* peers whose X-Forwarded-For / Forwarded is believed */
    struct ab_worker **workers;
    size_t n_workers;
    struct ab_metrics **metrics; /* one table per worker, for /metrics */
    evutil_socket_t listen_fd;   /* shared; closed by the last worker to stop accepting */
    atomic_long stopped_accepting;
    long max_connections;        /* effective: --max-connections capped by RLIMIT_NOFILE */
    struct ab_share *share;      /* --max-buffered-per-client (share.h), NULL = unbounded;
                                  * made by ab_server_check_limits(), freed by its owner */
    /* The state the server's limits decide on, owned and enforced here (metrics read it):
     * open connections (--max-connections), bytes of bodies held (--max-buffered), and
     * draining (/readyz 503; the handler refuses new work), set by ab_app_drain(). */
    atomic_long connections;
    atomic_long buffered;
    atomic_int draining;
    const struct ab_dedupe_setup *dedupe; /* NULL: deduplication off (core/dedupe.h) */
};

/* From any thread: the process is shutting down (/readyz answers 503 from now on). */
void ab_app_drain(struct ab_app *app);
/* 1 once ab_app_drain() was called. Any thread. */
int ab_app_draining(const struct ab_app *app);

/* /readyz's status while the handler's ready_note says so (the deduplication store), the
 * same on the main listener and the admin listener. */
#define AB_READY_DEDUPE_REFUSED "deduplication store unreachable"
#define AB_READY_DEDUPE_UNCHECKED "ready, deduplication unchecked"
/* The handler's ready_note as the workers last saw it (each every half second), for the
 * admin listener, which runs on no worker: 2 when a worker refuses webhooks for it (the
 * deduplication store unreachable with --dedupe-on-error refuse), 1 when one serves
 * degraded (deduplication unchecked), else 0; the last note in buf ("" for none). Any
 * thread. */
int ab_app_ready_note(const struct ab_app *app, char *buf, size_t len);
/* The Prometheus text of /metrics (the public port's and --admin-listen's); caller frees.
 * Any thread. */
char *ab_app_metrics_text(const struct ab_app *app);

/* Start-up, after the descriptor limit was raised and before workers start: check that
 * the limits above can hold (the libevent found at run time has what this layer uses; the
 * open-file limit leaves room for connections), cap --max-connections at RLIMIT_NOFILE
 * minus the descriptors the daemon needs itself for n_workers threads, and log the result.
 * Returns 0, or -1 with one line in errstr (the daemon then exits 2). */
int ab_server_check_limits(struct ab_app *app, long n_workers, char *errstr, size_t errlen);

/* Create worker `index` on the listening socket fd (shared by all workers). The worker
 * takes a reference to secrets and ssl_ctx (NULL = plain HTTP). Start-up thread. */
struct ab_worker *ab_worker_new(struct ab_app *app, int index, evutil_socket_t fd,
                                struct ab_secrets *secrets, SSL_CTX *ssl_ctx, char *errstr,
                                size_t errlen);
/* Run the worker's loop until it has drained; returns when stopped. Its own thread. */
void ab_worker_run(struct ab_worker *w);
/* From any thread: hand the worker new secrets and/or TLS context (NULL = keep). The
 * worker swaps them in on its own thread; connections already open keep their TLS. */
void ab_worker_reload(struct ab_worker *w, struct ab_secrets *secrets, SSL_CTX *ssl_ctx);
/* From any thread: stop accepting new connections, then stop the loop once the webhooks
 * in flight are answered (or after timeout_s). */
void ab_worker_stop(struct ab_worker *w, int timeout_s);
/* After ab_worker_run returned: close the sink and free everything. */
void ab_worker_free(struct ab_worker *w);

/* One request, from its first byte to its answer. Made by the server when the request is
 * complete and handed to a handler, which must end it with exactly one ab_req_answer()
 * (now or later, on the worker's thread); that call frees it. */
struct ab_req {
    struct ab_worker *w;
    struct ab_conn *conn;       /* NULL once the client has gone: the answer is only logged */
    struct ab_http_head head;   /* method, path, query, fields */
    char *head_buf;             /* what head points into */
    char *body;                 /* the body, NUL-terminated; "" when there is none */
    size_t body_len, body_cap;  /* body_cap is charged to --max-buffered */
    size_t bytes_in;            /* the body's length as received (for the access log) */
    char peer[64];              /* the TCP peer */
    char client[64];            /* the client: peer, or from trusted proxies' headers */
    long share_held;            /* body bytes charged to client in app->share */
    struct timespec start;      /* the first byte */
};

/* What to answer. The body is either given (body, len) or built as the JSON object
 * {"k1":"v1"[,"k2":"v2"]} with the values escaped. */
struct ab_answer {
    int status;
    const char *ctype;          /* NULL = application/json */
    const char *body;
    size_t len;
    const char *k1, *v1, *k2, *v2;
    size_t v1_len;              /* 0: strlen(v1) (a challenge may hold a NUL) */
    const char *allow;          /* Allow header (405), or NULL */
    int close;                  /* close the connection after this answer */
    int quiet;                  /* a metrics scrape: neither counted nor logged */
    /* for the access log and the metrics labels; NULL when not applicable */
    const char *error, *id, *action, *event, *sink;
    const char *trace_id; /* the W3C trace id (32 hex digits) of the webhook, or NULL */
};

/* Answer r and free it. Loop thread. */
void ab_req_answer(struct ab_req *r, const struct ab_answer *a);
/* Answer {"error": msg} with status (503 adds Retry-After and closes). */
void ab_req_error(struct ab_req *r, int status, const char *msg);
/* Free the body early (after parsing) and give its bytes back to --max-buffered. */
void ab_req_drop_body(struct ab_req *r);

/* Process set-up, start-up thread: bind the listening socket every worker shares
 * (HOST:PORT, [v6]:PORT, :PORT), -1 with one line in err; raise RLIMIT_NOFILE to its hard
 * limit (idle and slow connections each hold a descriptor); libevent's own warnings in our
 * log format, rate-limited (event_set_log_callback). */
evutil_socket_t ab_server_listen(const char *hostport, char *err, size_t errlen);
void ab_server_raise_fd_limit(void);
void ab_server_libevent_log(int severity, const char *msg);

#endif
