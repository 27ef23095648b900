/* The HTTP front end: one ab_worker per thread, each with its own event base, evhttp and
 * sink instance; all share one ab_app (immutable configuration plus atomics), so the
 * request path takes no lock shared between threads.
 *
 * Endpoints: GET {path}?challenge=X, POST {path} (the webhook), GET /healthz, /readyz,
 * /metrics. Every answer is JSON (metrics: Prometheus text). */
#ifndef AB_HTTP_H
#define AB_HTTP_H

#include <stdatomic.h>
#include <stddef.h>

#include <event2/util.h>

struct ab_config;
struct ab_route;
struct ab_sink_ops;
struct ab_sink_conf;
struct ab_secrets;
struct ab_shared_secrets;
struct ab_acl;
struct ab_metrics;
struct ab_worker;
typedef struct ssl_ctx_st SSL_CTX;

/* Process-wide state, filled by cmd/ before workers start. Read-only afterwards, except
 * for what the workers pick up through ab_worker_reload(). */
struct ab_app {
    const struct ab_config *cfg;
    const struct ab_sink_ops *sink_ops;
    const struct ab_sink_conf *sink_conf; /* what the sink's open() is given */
    void *sink_shared;
    struct ab_route *route;   /* topic / stream template */
    struct ab_acl *allow;     /* NULL = everyone may POST */
    struct ab_acl *trusted;   /* peers whose X-Forwarded-For is believed */
    struct ab_worker **workers;
    size_t n_workers;
    struct ab_metrics **metrics; /* one table per worker, for /metrics */
    evutil_socket_t listen_fd;   /* shared; closed by the last worker to stop accepting */
    atomic_long stopped_accepting;
};

/* Create worker `index` on the listening socket fd (shared by all workers). The worker
 * takes a reference to secrets and ssl_ctx (NULL = plain HTTP). Start-up thread. */
struct ab_worker *ab_worker_new(struct ab_app *app, int index, evutil_socket_t fd,
                                struct ab_shared_secrets *secrets, SSL_CTX *ssl_ctx, char *errstr,
                                size_t errlen);
/* Run the worker's loop until it has drained; returns when stopped. Its own thread. */
void ab_worker_run(struct ab_worker *w);
/* From any thread: hand the worker new secrets and/or TLS context (NULL = keep). The
 * worker swaps them in on its own thread; connections already open keep theirs. */
void ab_worker_reload(struct ab_worker *w, struct ab_shared_secrets *secrets, SSL_CTX *ssl_ctx);
/* From any thread: stop accepting new connections, then stop the loop once the webhooks
 * in flight are answered (or after timeout_s). */
void ab_worker_stop(struct ab_worker *w, int timeout_s);
/* After ab_worker_run returned: close the sink and free everything. */
void ab_worker_free(struct ab_worker *w);

/* Secrets shared between workers, reference-counted so that a reload frees the old set
 * only when the last worker has let go of it. new() takes ownership of s (refs = 1). */
struct ab_shared_secrets;
struct ab_shared_secrets *ab_shared_secrets_new(struct ab_secrets *s);
void ab_shared_secrets_unref(struct ab_shared_secrets *ss);

#endif
