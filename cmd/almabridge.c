/* almabridge: receive Ex Libris Alma webhooks and write them durably to a sink.
 *
 * This file is the program: options, start-up checks, the listening socket, worker
 * threads, signals (SIGTERM/SIGINT drain and exit, SIGHUP reload) and the main loop. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "redact.h"
#include "acl.h"
#include "admin.h"
#include "check.h"
#include "cli.h"
#include "config.h"
#include "institutions.h"
#include "dedupe_store.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "normalise.h"
#include "notify.h"
#include "probe.h"
#include "route.h"
#include "server.h"
#include "share.h"
#include "signature.h"
#include "sink.h"
#include "sinks/registry.h"
#include "tls.h"
#include "webhook.h"

extern char **environ;

/* How long Alma waits for an answer to a webhook. */
#define ALMA_TIMEOUT_MS 5000

struct daemon {
    struct ab_config cfg;
    struct ab_app app;
    struct ab_sink_setup sink; /* what the sink's global_init and open are given */
    struct ab_dedupe_setup dedupe;  /* the deduplication store, when app.dedupe is set */
    struct event_base *base;
    struct ab_admin *admin; /* --admin-listen, on base */
    evutil_socket_t fd;
    pthread_t *threads;
    char *env_secret; /* ALMABRIDGE_SECRET, copied before it is wiped from the environment */
    int stopping;
};

static void die(const char *msg)
{
    fprintf(stderr, "almabridge: %s\n", msg);
    exit(AB_CONFIG_ERROR);
}

static void *worker_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ab-worker"); /* ps -L, top -H, /proc/PID/task */
    ab_worker_run(arg);
    return NULL;
}

/* Main thread: SIGHUP. Reopen the event files (log rotation: rename, then kill -HUP), then
 * reload the secret file (or the --institutions profiles) and the TLS certificate; a failed
 * reload keeps everything as it was. */
static void on_sighup(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    char err[512];
    ab_notify("RELOADING=1");
    ab_sink_reopen_files(); /* log rotation */
    struct ab_secrets *s = ab_secrets_for_config(&d->cfg, d->env_secret, err, sizeof(err));
    SSL_CTX *ctx = NULL;
    struct ab_institutions *insts = NULL;
    if (s && d->cfg.institutions &&
        !(insts = ab_institutions_load(d->cfg.institutions, d->cfg.institutions_line, err,
                                       sizeof(err)))) {
        ab_secrets_free(s);
        s = NULL;
    }
    if (s && d->cfg.tls_cert) {
        ctx = ab_tls_ctx_new(d->cfg.tls_cert, d->cfg.tls_key, err, sizeof(err));
    }
    if (s == NULL || (d->cfg.tls_cert && ctx == NULL)) {
        ab_error("reload failed, keeping the current configuration: %s", err);
        ab_secrets_free(s);
        ab_institutions_free(insts);
        atomic_fetch_add(&ab_metrics_g.reload_failures, 1);
        ab_notify("READY=1");
        return;
    }
    for (size_t i = 0; i < d->app.n_workers; i++) {
        ab_worker_reload(d->app.workers[i], s, ctx);
    }
    SSL_CTX_free(ctx);
    atomic_fetch_add(&ab_metrics_g.reloads, 1);
    if (insts) {
        ab_info("reloaded: %zu institution profile(s)%s", ab_institutions_count(insts),
                ctx ? ", TLS certificate" : "");
        ab_institutions_publish(insts); /* the workers move to it on their next webhook */
    } else {
        ab_info("reloaded: %zu secret(s)%s", ab_secrets_count(s), ctx ? ", TLS certificate" : "");
    }
    ab_secrets_free(s);
    ab_notify("READY=1");
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    ab_info("no longer accepting connections; waiting for %ld webhook(s) in flight",
            ab_webhook_inflight_total());
    for (size_t i = 0; i < d->app.n_workers; i++) {
        ab_worker_stop(d->app.workers[i], (int)d->cfg.shutdown_timeout_s);
    }
    event_base_loopexit(d->base, NULL);
}

/* Main thread: SIGTERM or SIGINT. /readyz turns 503 at once; the listener keeps serving for
 * --drain-grace seconds so that a load balancer notices, then the workers stop accepting,
 * finish what is in flight and the sink is flushed. */
static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    if (d->stopping++) {
        ab_warn("second signal: stopping now");
        on_grace_over(-1, 0, d);
        return;
    }
    ab_app_drain(&d->app);
    ab_notify("STOPPING=1");
    ab_info("%s: draining (readyz 503) for %ld s, then stopping",
            sig == SIGINT ? "SIGINT" : "SIGTERM", d->cfg.drain_grace_s);
    struct timeval tv = {d->cfg.drain_grace_s, 0};
    event_base_once(d->base, -1, EV_TIMEOUT, on_grace_over, d, &tv);
}

/* Everything that can be checked before serving; --check-config stops after this. */
static int prepare(struct daemon *d, struct ab_secrets **secrets, SSL_CTX **ctx, char *err,
                   size_t errlen)
{
    struct ab_config *cfg = &d->cfg;
    if (ab_log_configure(cfg->log_level, cfg->log_format, err, errlen) != 0) {
        return -1;
    }
    *secrets = ab_secrets_for_config(&d->cfg, d->env_secret, err, errlen);
    if (*secrets == NULL) {
        return -1;
    }
    if (cfg->institutions && ab_institutions_start(cfg->institutions, cfg->institutions_line,
                                                   err, errlen) != 0) {
        return -1;
    }
    if (cfg->ack_timeout_ms >= ALMA_TIMEOUT_MS) {
        ab_warn("--ack-timeout %ld ms is not below Alma's own %d ms timeout: Alma gives up "
                "before the answer and retries an hour later; use at most 4s",
                cfg->ack_timeout_ms, ALMA_TIMEOUT_MS);
    }
    d->app.cfg = cfg;
    if (ab_sink_setup_build(&d->sink, cfg, err, errlen) != 0) {
        return -1;
    }
    d->app.handler = &ab_webhook_handler; /* the pipeline the server hands --path to */
    d->app.sink_ops = d->sink.ops;
    d->app.sink_name = d->sink.backend->name;
    d->app.sink_conf = &d->sink.conf;
    const char *route = cfg->route ? cfg->route : d->sink.backend->default_route;
    char rerr[256];
    d->app.route = ab_route_compile(route, rerr, sizeof(rerr));
    if (d->app.route == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return -1;
    }
    if (ab_redact_configured((const char *const *)cfg->redact.v, cfg->redact.n, &d->app.redact,
                             rerr, sizeof(rerr)) != 0) {
        snprintf(err, errlen, "--redact: %s", rerr);
        return -1;
    }
    if (cfg->allow.n && !(d->app.allow = ab_acl_new((const char *const *)cfg->allow.v, cfg->allow.n, rerr, sizeof(rerr)))) {
        snprintf(err, errlen, "--allow: %s", rerr);
        return -1;
    }
    if (cfg->trusted_proxy.n && !(d->app.trusted = ab_acl_new((const char *const *)cfg->trusted_proxy.v,
                                                               cfg->trusted_proxy.n, rerr,
                                                               sizeof(rerr)))) {
        snprintf(err, errlen, "--trusted-proxy: %s", rerr);
        return -1;
    }
    if (cfg->tls_cert && !(*ctx = ab_tls_ctx_new(cfg->tls_cert, cfg->tls_key, err, errlen))) {
        return -1;
    }
    return ab_reconcile_daemon_check(cfg, err, errlen); /* --reconcile-every */
}

static void start_workers(struct daemon *d, struct ab_secrets *secrets, SSL_CTX *ctx)
{
    char err[512];
    struct ab_config *cfg = &d->cfg;
    long n = cfg->threads > 0 ? cfg->threads : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) {
        n = 1;
    }
    if (d->app.sink_ops->global_init &&
        d->app.sink_ops->global_init(d->app.sink_conf, &d->app.sink_shared, err, sizeof(err)) != 0) {
        die(err);
    }
    if (ab_server_check_limits(&d->app, n, err, sizeof(err)) != 0) {
        die(err);
    }
    int dd_on = 0;
    if (ab_dedupe_setup_init(&d->dedupe, cfg, &dd_on, err, sizeof(err)) != 0) {
        die(err);
    }
    d->app.dedupe = dd_on ? &d->dedupe : NULL;
    atomic_store(&ab_metrics_g.max_connections, d->app.max_connections);
    d->app.n_workers = (size_t)n;
    d->app.workers = ab_calloc((size_t)n, sizeof(*d->app.workers));
    d->app.metrics = ab_calloc((size_t)n, sizeof(*d->app.metrics));
    d->threads = ab_calloc((size_t)n, sizeof(*d->threads));
    for (long i = 0; i < n; i++) {
        d->app.metrics[i] = ab_metrics_new();
        d->app.workers[i] = ab_worker_new(&d->app, (int)i, d->fd, secrets, ctx, err,
                                          sizeof(err));
        if (d->app.workers[i] == NULL) {
            die(err);
        }
    }
    ab_secrets_free(secrets); /* the workers hold their references */
    atomic_store(&ab_metrics_g.workers, n);
    for (long i = 0; i < n; i++) {
        pthread_create(&d->threads[i], NULL, worker_main, d->app.workers[i]);
    }
}

static void app_free(struct ab_app *app)
{
    ab_route_free(app->route);
    ab_redact_free(app->redact);
    ab_acl_free(app->allow);
    ab_acl_free(app->trusted);
    ab_share_free(app->share);
}

/* --check-config: also run the sink's own start-up checks (the file sink opens, creating,
 * its file; the Kafka sink builds its producer configuration). Exits. */
static void check_config(struct daemon *d, struct ab_secrets *secrets, SSL_CTX *ctx)
{
    char err[1024];
    void *shared = NULL;
    if (d->app.sink_ops->global_init &&
        d->app.sink_ops->global_init(d->app.sink_conf, &shared, err, sizeof(err)) != 0) {
        die(err);
    }
    if (d->app.sink_ops->global_free) {
        d->app.sink_ops->global_free(shared);
    }
    int dd_on = 0;
    if (ab_dedupe_setup_init(&d->dedupe, &d->cfg, &dd_on, err, sizeof(err)) != 0) {
        die(err);
    }
    ab_dedupe_setup_free(&d->dedupe);
    printf("configuration OK\n");
    int rc = d->cfg.check_connect ? ab_check_connect(&d->cfg, d->app.sink_ops, d->app.sink_conf)
                                  : 0;
    ab_secrets_free(secrets);
    SSL_CTX_free(ctx);
    app_free(&d->app);
    ab_config_free(&d->cfg);
    free(d->env_secret);
    exit(rc);
}

static void shutdown_all(struct daemon *d)
{
    for (size_t i = 0; i < d->app.n_workers; i++) {
        pthread_join(d->threads[i], NULL);
        ab_worker_free(d->app.workers[i]);
        ab_metrics_free(d->app.metrics[i]);
    }
    if (d->app.sink_ops->global_free) {
        d->app.sink_ops->global_free(d->app.sink_shared);
    }
    ab_dedupe_setup_free(&d->dedupe);
    app_free(&d->app);
    ab_institutions_publish(NULL);
    free(d->app.workers);
    free(d->app.metrics);
    free(d->threads);
    if (d->env_secret) {
        memset(d->env_secret, 0, strlen(d->env_secret));
        free(d->env_secret);
    }
    if (d->app.listen_fd >= 0) {
        evutil_closesocket(d->app.listen_fd);
    }
    event_base_free(d->base);
    ab_config_free(&d->cfg);
}

/* `almabridge wait|send|challenge|replay ...` runs a subcommand (cmd/<name>.c); anything
 * else, including no argument at all, is the daemon. */
int main(int argc, char **argv)
{
    static struct daemon d;
    char err[1024] = "";
    ab_cli_run_subcommand(argc, argv);
    int probe = ab_probe_main(argc, argv, environ);
    if (probe >= 0) {
        return probe; /* --probe [URL]: a health check of a running daemon, see probe.c */
    }
    d.env_secret = ab_cli_take_env("ALMABRIDGE_SECRET"); /* wiped from the environment */
    if (ab_config_load(&d.cfg, ab_sinks, argc, argv, environ, err, sizeof(err)) != AB_CONFIG_OK) {
        die(err);
    }
    ab_config_scrub_argv(ab_sinks, argc, argv);
    if (d.cfg.help) {
        ab_config_usage(ab_sinks, stdout);
        ab_check_usage_tail(stdout);
        return 0;
    }
    if (d.cfg.version) {
        printf("almabridge %s\n", AB_VERSION);
        return 0;
    }
    if (d.cfg.print_config) {
        ab_config_print(&d.cfg, stdout);
        return 0;
    }
    struct ab_secrets *secrets = NULL;
    SSL_CTX *ctx = NULL;
    ab_normalise_init();
    if (prepare(&d, &secrets, &ctx, err, sizeof(err)) != 0) {
        die(err);
    }
    if (d.cfg.check_config || d.cfg.check_connect) {
        check_config(&d, secrets, ctx);
    }
    if (ab_secrets_count(secrets) == 0 && !d.cfg.institutions) {
        ab_warn("--insecure-skip-signature: webhooks are NOT authenticated; anyone who can "
                "reach this port can inject events");
    }
    signal(SIGPIPE, SIG_IGN);
    event_set_log_callback(ab_server_libevent_log);
    evthread_use_pthreads();
    d.fd = ab_server_listen(d.cfg.listen, err, sizeof(err));
    if (d.fd < 0) {
        die(err);
    }
    d.app.listen_fd = d.fd;
    ab_server_raise_fd_limit();
    d.base = event_base_new();
    /* the handlers are in place before the first request is served: a SIGTERM right after
     * the first answer drains instead of killing (the callbacks run in the loop below) */
    struct event *sigs[3] = {
        evsignal_new(d.base, SIGTERM, on_stop_signal, &d),
        evsignal_new(d.base, SIGINT, on_stop_signal, &d),
        evsignal_new(d.base, SIGHUP, on_sighup, &d),
    };
    for (int i = 0; i < 3; i++) {
        event_add(sigs[i], NULL);
    }
    if (d.cfg.admin_listen &&
        !(d.admin = ab_admin_new(d.base, &d.app, d.cfg.admin_listen, err, sizeof(err)))) {
        die(err);
    }
    start_workers(&d, secrets, ctx);
    SSL_CTX_free(ctx);
    struct ab_reconcile_daemon *rec = ab_reconcile_daemon_start(
        &d.cfg, d.app.sink_ops, d.app.sink_conf, d.app.sink_shared, d.app.dedupe, err,
        sizeof(err));
    if (rec == NULL && d.cfg.reconcile_every) {
        die(err);
    }
    ab_info("almabridge %s listening on %s%s, path %s, sink %s, %zu worker(s)%s%s", AB_VERSION,
            d.cfg.listen, d.cfg.tls_cert ? " (TLS)" : "", d.cfg.path, d.cfg.sink,
            d.app.n_workers, d.admin ? ", admin on " : "", d.admin ? d.cfg.admin_listen : "");
    ab_notify("READY=1"); /* systemd Type=notify: listening */
    event_base_dispatch(d.base);
    ab_admin_free(d.admin); /* refused from now on, not left waiting in the backlog */
    for (int i = 0; i < 3; i++) {
        event_free(sigs[i]);
    }
    ab_reconcile_daemon_stop(rec); /* before the sink's global_free */
    shutdown_all(&d);
    ab_info("stopped");
    return 0;
}
