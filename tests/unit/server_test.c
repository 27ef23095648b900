/* The HTTP layer in process (libevent's regress_http.c way): a worker on a socket bound to
 * port 0 of 127.0.0.1 in its own thread, a sink of our own that acknowledges on the next
 * loop turn, and raw sockets from the test thread for what no HTTP client library sends:
 * duplicate Content-Length, chunk extensions, pipelining, half-close, trickling, garbage. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "acl.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "route.h"
#include "server.h"
#include "share.h"
#include "signature.h"
#include "sink.h"
#include "test.h"

#define SECRET "s3cret"

/* ---- a sink that acknowledges every event on the next loop turn ---------------------- */

struct mem_sink {
    struct ab_sink base;
    struct event_base *evb;
};

struct mem_done {
    ab_sink_done_cb cb;
    void *opaque;
};

static atomic_int stored;

static void on_mem_ack(evutil_socket_t fd, short what, void *arg)
{
    struct mem_done *d = arg;
    atomic_fetch_add(&stored, 1);
    d->cb(AB_SINK_OK, NULL, d->opaque);
    free(d);
}

static struct ab_sink *mem_open(const struct ab_sink_conf *conf, void *shared,
                                struct event_base *base, char *errstr, size_t errlen);
static int mem_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                      void *opaque)
{
    struct mem_done *d = malloc(sizeof(*d));
    d->cb = cb;
    d->opaque = opaque;
    struct timeval tv = {0, 0};
    event_base_once(((struct mem_sink *)s)->evb, -1, EV_TIMEOUT, on_mem_ack, d, &tv);
    return 0;
}
static int mem_ready(struct ab_sink *s)
{
    return 1;
}
static void mem_describe(struct ab_sink *s, char *buf, size_t len)
{
    snprintf(buf, len, "memory sink at /secret/place");
}
static void mem_close(struct ab_sink *s, int timeout_ms)
{
    free(s);
}
static const struct ab_sink_ops mem_ops = {
    .name = "mem",
    .default_route = "x",
    .open = mem_open,
    .submit = mem_submit,
    .ready = mem_ready,
    .describe = mem_describe,
    .close = mem_close,
};
static struct ab_sink *mem_open(const struct ab_sink_conf *conf, void *shared,
                                struct event_base *base, char *errstr, size_t errlen)
{
    struct mem_sink *s = calloc(1, sizeof(*s));
    s->base.ops = &mem_ops;
    s->evb = base;
    return &s->base;
}

/* ---- a server in a thread ----------------------------------------------------------- */

struct server {
    struct ab_config cfg;
    struct ab_app app;
    struct ab_metrics *metrics[1];
    struct ab_worker *workers[1];
    pthread_t thread;
    int port;
};

static void *server_main(void *arg)
{
    ab_worker_run(arg);
    return NULL;
}

/* Start a one-worker server with the given options (NULL-terminated). */
static struct server *server_start(const char *opt, ...)
{
    struct server *s = calloc(1, sizeof(*s));
    char *argv[32] = {(char *)"almabridge", (char *)"--listen", (char *)"127.0.0.1:0"};
    int argc = 3;
    va_list ap;
    va_start(ap, opt);
    for (const char *o = opt; o && argc < 31; o = va_arg(ap, const char *)) {
        argv[argc++] = (char *)o;
    }
    va_end(ap);
    char *envp[] = {NULL};
    char err[512];
    if (ab_config_load(&s->cfg, NULL, argc, argv, envp, err, sizeof(err)) != AB_CONFIG_OK) {
        fprintf(stderr, "config: %s\n", err);
        abort();
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    listen(fd, 1024);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    s->port = ntohs(sa.sin_port);
    s->app.cfg = &s->cfg;
    s->app.sink_ops = &mem_ops;
    s->app.route = ab_route_compile("x", err, sizeof(err));
    if (s->cfg.allow.n) {
        s->app.allow = ab_acl_new((const char *const *)s->cfg.allow.v, s->cfg.allow.n, err,
                                  sizeof(err));
    }
    if (s->cfg.trusted_proxy.n) {
        s->app.trusted = ab_acl_new((const char *const *)s->cfg.trusted_proxy.v,
                                    s->cfg.trusted_proxy.n, err, sizeof(err));
    }
    s->app.listen_fd = fd;
    s->app.n_workers = 1;
    s->app.workers = s->workers;
    s->app.metrics = s->metrics;
    s->metrics[0] = ab_metrics_new();
    CHECK(ab_server_check_limits(&s->app, 1, err, sizeof(err)) == 0);
    struct ab_secrets *secrets = ab_secrets_load(NULL, SECRET, err, sizeof(err));
    s->workers[0] = ab_worker_new(&s->app, 0, fd, secrets, NULL, err, sizeof(err));
    ab_secrets_free(secrets);
    if (s->workers[0] == NULL) {
        fprintf(stderr, "worker: %s\n", err);
        abort();
    }
    pthread_create(&s->thread, NULL, server_main, s->workers[0]);
    return s;
}

static void server_stop(struct server *s)
{
    ab_worker_stop(s->workers[0], 2);
    pthread_join(s->thread, NULL);
    ab_worker_free(s->workers[0]);
    ab_metrics_free(s->metrics[0]);
    if (s->app.listen_fd >= 0) {
        close(s->app.listen_fd);
    }
    ab_route_free(s->app.route);
    ab_acl_free(s->app.allow);
    ab_acl_free(s->app.trusted);
    ab_share_free(s->app.share);
    ab_config_free(&s->cfg);
    CHECK(atomic_load(&ab_metrics_g.connections) == 0);
    CHECK(atomic_load(&ab_metrics_g.buffered) == 0);
    free(s);
}

/* ---- raw client --------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial_rcvbuf(struct server *s, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
    }
    return fd;
}

static int dial(struct server *s)
{
    return dial_rcvbuf(s, 0);
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Read until the peer closes or `timeout` seconds pass; returns a new NUL-terminated
 * string; *closed tells whether the peer closed. */
static char *read_until_close(int fd, double timeout, int *closed)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    double end = now_s() + timeout;
    *closed = 0;
    for (;;) {
        double left = end - now_s();
        if (left <= 0) {
            break;
        }
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) {
            continue;
        }
        if (len + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0) {
            *closed = 1;
            break;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

/* Read one complete answer (head + Content-Length body) within timeout; NULL if none. */
static char *read_answer(int fd, double timeout)
{
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    double end = now_s() + timeout;
    for (;;) {
        buf[len] = '\0';
        char *he = strstr(buf, "\r\n\r\n");
        if (he) {
            const char *cl = strcasestr(buf, "Content-Length:");
            size_t want = (size_t)(he + 4 - buf) + (cl && cl < he ? strtoul(cl + 15, NULL, 10) : 0);
            if (len >= want) {
                return buf;
            }
        }
        double left = end - now_s();
        struct pollfd p = {fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) <= 0) {
            break;
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0) {
            break;
        }
        len += (size_t)n;
    }
    free(buf);
    return NULL;
}

static int count_str(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p++) {
        n++;
    }
    return n;
}

static int status_of(const char *answer)
{
    return answer && strncmp(answer, "HTTP/1.1 ", 9) == 0 ? atoi(answer + 9) : -1;
}

static const char *BODY =
    "{\"id\":\"1\",\"action\":\"LOAN\",\"event\":{\"value\":\"LOAN_CREATED\"}}";

/* A signed webhook POST head for body (Content-Length framing). */
static void post_head(char *out, size_t cap, const char *body, const char *extra)
{
    char sig[AB_SIGNATURE_B64_LEN + 1];
    ab_signature_compute(SECRET, strlen(SECRET), body, strlen(body), sig);
    snprintf(out, cap,
             "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "X-Exl-Signature: %s\r\n%sContent-Length: %zu\r\n\r\n",
             sig, extra ? extra : "", strlen(body));
}

/* GET path on a new connection; the answer, or NULL. */
static char *get(struct server *s, const char *path, const char *extra)
{
    int fd = dial(s);
    char req[1024];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, extra ? extra : "");
    send_str(fd, req);
    char *a = read_answer(fd, 5);
    close(fd);
    return a;
}

/* ---- the cases ---------------------------------------------------------------------- */

static void test_webhook_and_keepalive(void)
{
    struct server *s = server_start(NULL);
    int fd = dial(s);
    char head[512];
    for (int i = 0; i < 3; i++) {
        post_head(head, sizeof(head), BODY, NULL);
        send_str(fd, head);
        send_str(fd, BODY);
        char *a = read_answer(fd, 5);
        CHECK(status_of(a) == 200);
        CHECK(a && strstr(a, "{\"id\":\"1\",\"status\":\"accepted\"}"));
        CHECK(a && strstr(a, "\r\nDate: ") && !strstr(a, "Connection: close"));
        free(a);
    }
    close(fd);
    server_stop(s);
}

static void test_duplicate_content_length(void)
{
    struct server *s = server_start(NULL);
    int fd = dial(s);
    /* the rest of the body would be a second request if the first value won */
    send_str(fd, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                 "Content-Length: 50\r\n\r\nabcdGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    int closed;
    char *all = read_until_close(fd, 5, &closed);
    CHECK(status_of(all) == 400 && closed);
    CHECK(count_str(all, "HTTP/1.1 ") == 1);
    CHECK(strstr(all, "Content-Length") && strstr(all, "Connection: close"));
    CHECK(strstr(all, "more than one Content-Length"));
    free(all);
    close(fd);
    server_stop(s);
}

static void test_chunk_extensions(void)
{
    struct server *s = server_start(NULL);
    char sig[AB_SIGNATURE_B64_LEN + 1];
    ab_signature_compute(SECRET, strlen(SECRET), BODY, strlen(BODY), sig);
    char req[1024];
    size_t half = strlen(BODY) / 2;
    snprintf(req, sizeof(req),
             "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
             "X-Exl-Signature: %s\r\n\r\n%zx;name=value\r\n%.*s\r\n%zx;a=\"b;c\"\r\n%s\r\n"
             "0;last\r\nX-Trailer: t\r\n\r\n",
             sig, half, (int)half, BODY, strlen(BODY) - half, BODY + half);
    int fd = dial(s);
    send_str(fd, req);
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    free(a);
    close(fd);
    server_stop(s);
}

static void test_head_keeps_framing(void)
{
    struct server *s = server_start(NULL);
    int fd = dial(s);
    send_str(fd, "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
                 "Connection: close\r\n\r\n");
    int closed;
    char *all = read_until_close(fd, 5, &closed);
    /* two answers: the HEAD one with Content-Length but no body, then the GET one */
    CHECK(count_str(all, "HTTP/1.1 200 OK") == 2);
    const char *second = strstr(all + 1, "HTTP/1.1 200");
    CHECK(second && strstr(all, "Content-Length: 15\r\n") < second);
    CHECK(second && strstr(second, "\r\n\r\n{\"status\":\"ok\"}"));
    CHECK(strstr(all, "{\"status\":\"ok\"}") == strstr(second ? second : all, "{\"status"));
    free(all);
    close(fd);
    server_stop(s);
}

static void test_half_close_answers_everything(void)
{
    struct server *s = server_start(NULL);
    int fd = dial(s);
    char head[512];
    char req[8192] = "";
    for (int i = 0; i < 3; i++) {
        strcat(req, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        post_head(head, sizeof(head), BODY, NULL);
        strcat(req, head);
        strcat(req, BODY);
    }
    strcat(req, "GET /webhook?challenge=last HTTP/1.1\r\nHost: x\r\n\r\n");
    send_str(fd, req);
    shutdown(fd, SHUT_WR);
    int closed;
    char *all = read_until_close(fd, 5, &closed);
    CHECK(closed);
    CHECK(count_str(all, "HTTP/1.1 200 OK") == 7);
    CHECK(count_str(all, "\"accepted\"") == 3);
    CHECK(strstr(all, "{\"challenge\":\"last\"}") != NULL);
    free(all);
    close(fd);
    server_stop(s);
}

static void test_malformed_gets_json_answer(void)
{
    struct server *s = server_start(NULL);
    const char *bad[] = {
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n\r\n",          /* no Host */
        "GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n", /* 505 */
        "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", /* 501 */
        "POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", /* 400 */
    };
    const int want[] = {400, 400, 400, 505, 501, 400};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int fd = dial(s);
        send_str(fd, bad[i]);
        int closed;
        char *all = read_until_close(fd, 5, &closed);
        CHECK(status_of(all) == want[i]);
        CHECK(closed && strstr(all, "Content-Length: ") && strstr(all, "{\"error\":\""));
        CHECK(strstr(all, "application/json") != NULL);
        free(all);
        close(fd);
    }
    /* HTTP/1.0 needs no Host */
    int fd = dial(s);
    send_str(fd, "GET /healthz HTTP/1.0\r\n\r\n");
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    free(a);
    close(fd);
    /* each counted once in the metrics, like every other answer */
    char *m = get(s, "/metrics", NULL);
    CHECK(m && strstr(m, "almabridge_requests_total{status=\"400\",action=\"\",event=\"\"} 4"));
    CHECK(m && strstr(m, "almabridge_requests_total{status=\"505\",action=\"\",event=\"\"} 1"));
    free(m);
    server_stop(s);
}

static void test_challenge(void)
{
    struct server *s = server_start(NULL);
    char *a = get(s, "/webhook?x=1&challenge=h%C3%A9llo+%22w%22%00", NULL);
    CHECK(status_of(a) == 200);
    CHECK(a && strstr(a, "{\"challenge\":\"h\xc3\xa9llo \\\"w\\\"\\u0000\"}"));
    free(a);
    a = get(s, "/webhook?challenge=%ff", NULL);
    CHECK(status_of(a) == 400 && strstr(a, "UTF-8"));
    free(a);
    a = get(s, "/webhook?challenge=%f", NULL);
    CHECK(status_of(a) == 400);
    free(a);
    a = get(s, "/webhook?challenge=", NULL);
    CHECK(status_of(a) == 200 && strstr(a, "{\"challenge\":\"\"}"));
    free(a);
    server_stop(s);
}

static void test_unknown_path_counted_once(void)
{
    struct server *s = server_start(NULL);
    free(get(s, "/nope", NULL));
    char *m = get(s, "/metrics", NULL);
    CHECK(m && strstr(m, "almabridge_requests_total{status=\"404\",action=\"\",event=\"\"} 1\n"));
    CHECK(m && strstr(m, "almabridge_build_info{version=\""));
    CHECK(m && strstr(m, "process_resident_memory_bytes ") && strstr(m, "process_open_fds "));
    CHECK(m && strstr(m, "process_cpu_seconds_total ") && strstr(m, "process_start_time_seconds "));
    free(m);
    server_stop(s);
}

static void test_request_deadline_not_reset_by_trickle(void)
{
    struct server *s = server_start("--read-timeout", "1", "--idle-timeout", "30", NULL);
    int fd = dial(s);
    const char *req = "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa";
    double t0 = now_s();
    int closed = 0;
    for (size_t i = 0; req[i] && !closed; i++) {
        send_all(fd, req + i, 1);
        char *got = read_until_close(fd, 0.2, &closed);
        free(got);
    }
    double took = now_s() - t0;
    CHECK(closed);
    CHECK(took < 2.5);
    close(fd);
    server_stop(s);
}

static void test_idle_timeout(void)
{
    struct server *s = server_start("--read-timeout", "30", "--idle-timeout", "1", NULL);
    int fd = dial(s);
    double t0 = now_s();
    int closed;
    free(read_until_close(fd, 5, &closed));
    CHECK(closed && now_s() - t0 < 3);
    close(fd);
    /* also after a keep-alive answer */
    fd = dial(s);
    send_str(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    free(a);
    t0 = now_s();
    free(read_until_close(fd, 5, &closed));
    CHECK(closed && now_s() - t0 < 3);
    close(fd);
    server_stop(s);
}

static void test_max_buffered(void)
{
    struct server *s = server_start("--max-buffered", "100000", "--max-body", "1000000", NULL);
    /* announced over the budget: 503 at once, before any body byte */
    int fd = dial(s);
    send_str(fd, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n");
    double t0 = now_s();
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 503 && strstr(a, "Retry-After: ") && strstr(a, "max-buffered"));
    CHECK(now_s() - t0 < 1);
    free(a);
    close(fd);
    /* two bodies received in part: the one that does not fit gets 503 */
    int f1 = dial(s), f2 = dial(s);
    char big[70001];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    send_str(f1, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n\r\n");
    send_str(f1, big);
    usleep(200000);
    send_str(f2, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n\r\n");
    send_str(f2, big);
    a = read_answer(f2, 5);
    CHECK(status_of(a) == 503);
    free(a);
    CHECK(atomic_load(&ab_metrics_g.buffered) <= 100000);
    close(f1);
    close(f2);
    server_stop(s);
}

static void test_max_connections_exact(void)
{
    struct server *s = server_start("--max-connections", "5", NULL);
    int fds[12];
    for (int i = 0; i < 12; i++) {
        fds[i] = dial(s);
    }
    usleep(300000);
    CHECK(atomic_load(&ab_metrics_g.connections) <= 5);
    for (int i = 0; i < 12; i++) {
        close(fds[i]);
    }
    /* room again: served */
    double end = now_s() + 5;
    char *a = NULL;
    while (now_s() < end && status_of(a) != 200) {
        free(a);
        a = get(s, "/healthz", NULL);
    }
    CHECK(status_of(a) == 200);
    free(a);
    server_stop(s);
}

static void test_forwarded_lines_combined(void)
{
    struct server *s = server_start("--allow", "10.1.2.3", "--trusted-proxy", "127.0.0.1", NULL);
    char head[768];
    /* the client's own line first, the proxy's line after: the proxy's counts */
    post_head(head, sizeof(head), BODY,
              "X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-For: 8.8.8.8\r\n");
    int fd = dial(s);
    send_str(fd, head);
    send_str(fd, BODY);
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 403 && strstr(a, "8.8.8.8"));
    free(a);
    close(fd);
    post_head(head, sizeof(head), BODY,
              "X-Forwarded-For: 8.8.8.8\r\nX-Forwarded-For: 10.1.2.3\r\n");
    fd = dial(s);
    send_str(fd, head);
    send_str(fd, BODY);
    a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    free(a);
    close(fd);
    /* /readyz: details for loopback and --allow clients only */
    a = get(s, "/readyz", NULL);
    CHECK(status_of(a) == 200 && strstr(a, "/secret/place"));
    free(a);
    a = get(s, "/readyz", "X-Forwarded-For: 8.8.8.8\r\n");
    CHECK(status_of(a) == 200 && strstr(a, "{\"status\":\"ready\"}") && !strstr(a, "secret"));
    free(a);
    a = get(s, "/readyz", "X-Forwarded-For: 10.1.2.3\r\n");
    CHECK(status_of(a) == 200 && strstr(a, "/secret/place"));
    free(a);
    server_stop(s);
}

static void test_rfc7239_forwarded(void)
{
    struct server *s = server_start("--allow", "2001:db8::1", "--trusted-proxy", "127.0.0.1",
                                    "--proxy-header", "forwarded", NULL);
    char head[768];
    post_head(head, sizeof(head), BODY,
              "Forwarded: for=10.9.9.9\r\nForwarded: for=\"[2001:db8::1]:4711\";proto=https\r\n"
              "X-Forwarded-For: 8.8.8.8\r\n");
    int fd = dial(s);
    send_str(fd, head);
    send_str(fd, BODY);
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    free(a);
    close(fd);
    post_head(head, sizeof(head), BODY, "Forwarded: for=\"[2001:db8::1]\", for=unknown\r\n");
    fd = dial(s);
    send_str(fd, head);
    send_str(fd, BODY);
    a = read_answer(fd, 5);
    CHECK(status_of(a) == 403);
    free(a);
    close(fd);
    server_stop(s);
}

static void test_expect_continue(void)
{
    struct server *s = server_start(NULL);
    char head[768];
    post_head(head, sizeof(head), BODY, "Expect: 100-continue\r\n");
    int fd = dial(s);
    send_str(fd, head);
    char *a = read_answer(fd, 5);
    CHECK(a && strncmp(a, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    free(a);
    send_str(fd, BODY);
    a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    free(a);
    close(fd);
    server_stop(s);
}

static void test_oversize_and_header_limit(void)
{
    struct server *s = server_start("--max-body", "100", "--max-headers-size", "1024", NULL);
    int fd = dial(s);
    send_str(fd, "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n");
    int closed;
    char *all = read_until_close(fd, 5, &closed);
    CHECK(status_of(all) == 413 && closed && strstr(all, "100 bytes"));
    free(all);
    close(fd);
    fd = dial(s);
    char big[3000];
    snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: x\r\nX: %02000d\r\n\r\n", 0);
    send_str(fd, big);
    all = read_until_close(fd, 5, &closed);
    CHECK(status_of(all) == 400 && strstr(all, "1024 bytes"));
    free(all);
    close(fd);
    server_stop(s);
}

static void test_trickling_clients_do_not_starve_webhooks(void)
{
    struct server *s = server_start("--max-connections", "50", "--read-timeout", "30", NULL);
    int fds[200];
    for (int i = 0; i < 200; i++) {
        fds[i] = dial(s);
        send_str(fds[i], "P");
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 200; i++) {
            send_str(fds[i], "O");
        }
        usleep(100000);
    }
    CHECK(atomic_load(&ab_metrics_g.connections) <= 50);
    double t0 = now_s();
    char head[512];
    post_head(head, sizeof(head), BODY, NULL);
    int fd = dial(s);
    send_str(fd, head);
    send_str(fd, BODY);
    char *a = read_answer(fd, 5);
    CHECK(status_of(a) == 200);
    CHECK(now_s() - t0 < 2);
    free(a);
    close(fd);
    CHECK(atomic_load(&ab_metrics_g.evicted) >= 150);
    for (int i = 0; i < 200; i++) {
        close(fds[i]);
    }
    server_stop(s);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Out of descriptors: accept() fails with EMFILE; the worker pauses instead of spinning,
 * and serves again once descriptors are free. */
static void test_emfile_pauses_accepting(void)
{
    struct server *s = server_start(NULL);
    int socks[20];
    for (int i = 0; i < 20; i++) {
        socks[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    }
    struct rlimit saved, low;
    getrlimit(RLIMIT_NOFILE, &saved);
    int lowest = dup(0);
    close(lowest);
    low = saved;
    low.rlim_cur = (rlim_t)lowest; /* no new descriptor can be made */
    long pauses = atomic_load(&ab_metrics_g.accept_pauses);
    setrlimit(RLIMIT_NOFILE, &low);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 20; i++) {
        connect(socks[i], (struct sockaddr *)&sa, sizeof(sa));
    }
    double cpu0 = cpu_seconds();
    usleep(1000000);
    double used = cpu_seconds() - cpu0;
    setrlimit(RLIMIT_NOFILE, &saved);
    CHECK(atomic_load(&ab_metrics_g.accept_pauses) > pauses);
    CHECK(atomic_load(&ab_metrics_g.accept_pauses) - pauses < 30); /* ~10 per second */
    CHECK(used < 0.3);
    /* descriptors again: the connections waiting in the backlog are served */
    send_str(socks[0], "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    char *a = read_answer(socks[0], 5);
    CHECK(status_of(a) == 200);
    free(a);
    for (int i = 0; i < 20; i++) {
        close(socks[i]);
    }
    server_stop(s);
}

struct sender {
    int fd;
    const char *p;
    size_t n;
};

static void *send_thread(void *arg)
{
    struct sender *snd = arg;
    send_all(snd->fd, snd->p, snd->n);
    return NULL;
}

/* Thousands of pipelined requests from a client that reads nothing for a while: the
 * server stops taking requests while answers wait to be sent (nothing grows without
 * bound), and every answer arrives, in order, once the client reads. */
static void test_pipelining_backpressure(void)
{
    struct server *s = server_start(NULL);
    int fd = dial_rcvbuf(s, 4096); /* small: the server's output really backs up */
    int n = 3000;
    size_t one = strlen("GET /webhook?challenge=00000 HTTP/1.1\r\nHost: x\r\n\r\n");
    char *req = malloc(one * (size_t)n + 128), *p = req;
    for (int i = 0; i < n; i++) {
        p += sprintf(p, "GET /webhook?challenge=%05d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    }
    p += sprintf(p, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    struct sender snd = {fd, req, (size_t)(p - req)};
    pthread_t t;
    pthread_create(&t, NULL, send_thread, &snd);
    usleep(500000); /* read nothing meanwhile */
    int closed;
    char *all = read_until_close(fd, 20, &closed);
    int got = 0, in_order = 1;
    const char *q = all;
    for (int i = 0; i < n; i++) {
        char want[40];
        snprintf(want, sizeof(want), "{\"challenge\":\"%05d\"}", i);
        const char *hit = strstr(q, want);
        if (hit == NULL) {
            in_order = 0;
            break;
        }
        got++;
        q = hit + 1;
    }
    CHECK(closed && strstr(q, "{\"status\":\"ok\"}") != NULL);
    free(all);
    pthread_join(t, NULL);
    CHECK(got == n);
    CHECK(in_order);
    free(req);
    close(fd);
    server_stop(s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    char err[64];
    ab_log_configure("warn", NULL, err, sizeof(err));
    RUN(test_webhook_and_keepalive);
    RUN(test_duplicate_content_length);
    RUN(test_chunk_extensions);
    RUN(test_head_keeps_framing);
    RUN(test_half_close_answers_everything);
    RUN(test_malformed_gets_json_answer);
    RUN(test_challenge);
    RUN(test_unknown_path_counted_once);
    RUN(test_request_deadline_not_reset_by_trickle);
    RUN(test_idle_timeout);
    RUN(test_max_buffered);
    RUN(test_max_connections_exact);
    RUN(test_forwarded_lines_combined);
    RUN(test_rfc7239_forwarded);
    RUN(test_expect_continue);
    RUN(test_oversize_and_header_limit);
    RUN(test_trickling_clients_do_not_starve_webhooks);
    RUN(test_emfile_pauses_accepting);
    RUN(test_pipelining_backpressure);
    return TEST_SUMMARY();
}
