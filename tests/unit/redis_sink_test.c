/* The sink contract (core/sink.h) for the Redis sink, against a real redis-server that
 * this test starts on a free loopback port (hiredis test.sh does the same): submit either
 * refuses at once or its callback runs exactly once, later, on the loop thread, with OK,
 * ERROR, TIMEOUT or CLOSED; plus URL validation. And the Redis deduplication store
 * (sinks/dedupe_redis.c) on the same server: its key states and the commands it sends.
 * Needs redis-server on PATH. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "dedupe.h"
#include "dedupe_store.h"
#include "log.h"
#include "sink.h"
#include "sinks/redis.h"
#include "test.h"

static int redis_port;
static pid_t redis_pid = -1;
static char redis_dir[64];

/* ---- a throw-away redis-server ------------------------------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

static redisContext *sync_conn(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

static int redis_start(void)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", redis_port);
    redis_pid = fork();
    if (redis_pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", "--dir", redis_dir, "--daemonize", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        redisContext *c = sync_conn();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            redisFree(c);
            if (ok) {
                return 0;
            }
        }
        int st;
        if (waitpid(redis_pid, &st, WNOHANG) == redis_pid) {
            fprintf(stderr, "redis-server exited (is it installed? `make setup`)\n");
            return -1;
        }
        usleep(10000);
    }
    return -1;
}

static void redis_kill(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL); /* also kills a stopped server, without letting it run */
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

static long long redis_int(const char *cmd)
{
    redisContext *c = sync_conn();
    if (c == NULL) {
        return -1;
    }
    redisReply *r = redisCommand(c, cmd);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    redisFree(c);
    return v;
}

/* ---- driving a sink instance --------------------------------------------------------- */

struct done {
    int calls;
    int status;
    char err[160];
};

static int in_submit; /* set around submit(): a callback from inside it breaks the contract */
static int inside_calls;

static void on_done(int status, const char *errstr, void *opaque)
{
    struct done *d = opaque;
    if (in_submit) {
        inside_calls++;
    }
    d->calls++;
    d->status = status;
    snprintf(d->err, sizeof(d->err), "%s", errstr ? errstr : "");
}

struct harness {
    struct ab_redis_conf opts;
    struct ab_sink_conf cfg;
    void *shared;
    struct event_base *base;
    struct event *tick;
    struct ab_sink *s;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

static int h_open(struct harness *h, const char *url, long ack_ms, long wait)
{
    char err[256] = "";
    memset(h, 0, sizeof(*h));
    h->opts.url = (char *)url;
    h->opts.wait = wait;
    h->cfg.opts = &h->opts;
    h->cfg.ack_timeout_ms = ack_ms;
    if (ab_sink_redis.global_init(&h->cfg, &h->shared, err, sizeof(err)) != 0) {
        fprintf(stderr, "global_init: %s\n", err);
        return -1;
    }
    h->base = event_base_new();
    struct timeval tv = {0, 10000};
    h->tick = event_new(h->base, -1, EV_PERSIST, on_tick, NULL);
    event_add(h->tick, &tv);
    h->s = ab_sink_redis.open(&h->cfg, h->shared, h->base, err, sizeof(err));
    return h->s ? 0 : -1;
}

static void h_close(struct harness *h, int timeout_ms)
{
    ab_sink_redis.close(h->s, timeout_ms);
    event_free(h->tick);
    event_base_free(h->base);
    ab_sink_redis.global_free(h->shared);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* Run the loop until cond(arg) or timeout_ms; returns cond's last value. */
static int run_until(struct harness *h, int (*cond)(struct harness *, void *), void *arg,
                     int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (!cond(h, arg) && now_ms() < end) {
        event_base_loop(h->base, EVLOOP_ONCE);
    }
    return cond(h, arg);
}

static int is_ready(struct harness *h, void *arg)
{
    return ab_sink_ready(h->s);
}

struct batch {
    struct done *d;
    int n;
};

/* SIGSTOP is delivered asynchronously: wait until the kernel shows the server stopped,
 * so that no command sent afterwards can still be answered. */
static void stop_redis(void)
{
    kill(redis_pid, SIGSTOP);
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)redis_pid);
    for (int i = 0; i < 500; i++) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (f) {
            fclose(f);
        }
        buf[n] = '\0';
        const char *paren = strrchr(buf, ')');
        if (paren && paren[1] == ' ' && paren[2] == 'T') {
            return;
        }
        usleep(2000);
    }
}

static int all_called(struct harness *h, void *arg)
{
    struct batch *b = arg;
    for (int i = 0; i < b->n; i++) {
        if (b->d[i].calls == 0) {
            return 0;
        }
    }
    return 1;
}

static int submit_one(struct harness *h, const char *id, struct done *d)
{
    static const char json[] = "{\"specversion\":\"1.0\",\"id\":\"x\"}";
    struct ab_sink_msg m = {.id = id, .type = "com.exlibrisgroup.alma.loan",
                            .source = "urn:alma:X", .route = "alma:loan",
                            .value = json, .value_len = sizeof(json) - 1};
    in_submit = 1;
    int rc = ab_sink_submit(h->s, &m, on_done, d);
    in_submit = 0;
    return rc;
}

/* ---- tests --------------------------------------------------------------------------- */

static void test_urls(void)
{
    static const struct {
        const char *url, *err; /* err NULL = valid */
    } cases[] = {
        {"redis://127.0.0.1:6379", NULL},
        {"redis://localhost", NULL},
        {"redis://:pw@127.0.0.1/3", NULL},
        {"redis://alice:p%40ss@[::1]:7000/0", NULL},
        {"redis://u:p@w:d@host:1/", NULL},
        {"rediss://h:1", "not supported"},
        {"unix:///tmp/redis.sock", "expected a URL"},
        {"redis://h:0", "port"},
        {"redis://h:65536", "port"},
        {"redis://h:6379/abc", "database"},
        {"redis://:Top%2Secret@h", "percent-escape"},
        {"redis://:Top%00Secret@h", "percent-escape"},
        {"redis://h?db=1", "query"},
        {"redis://[::1", "IPv6"},
        {"redis://:TopSecret@/1", "no host"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ab_redis_conf opts = {.url = (char *)cases[i].url};
        struct ab_sink_conf cfg = {.opts = &opts, .ack_timeout_ms = 1000};
        char err[256] = "";
        void *sh = NULL;
        int rc = ab_sink_redis.global_init(&cfg, &sh, err, sizeof(err));
        if (cases[i].err == NULL) {
            if (rc != 0) {
                fprintf(stderr, "  %s: %s\n", cases[i].url, err);
            }
            CHECK(rc == 0);
            ab_sink_redis.global_free(sh);
        } else {
            CHECK(rc == -1);
            if (strstr(err, cases[i].err) == NULL) {
                fprintf(stderr, "  %s: \"%s\" lacks \"%s\"\n", cases[i].url, err, cases[i].err);
                CHECK(0);
            }
            CHECK(strstr(err, "Secret") == NULL); /* never the password */
        }
    }
}

static void test_refused_at_once_while_down(void)
{
    struct harness h;
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", free_port());
    CHECK(h_open(&h, url, 500, 0) == 0);
    struct done d = {0};
    CHECK(!ab_sink_ready(h.s));
    CHECK(submit_one(&h, "down-1", &d) != 0);
    event_base_loop(h.base, EVLOOP_ONCE);
    char buf[256];
    ab_sink_redis.describe(h.s, buf, sizeof(buf));
    CHECK(strstr(buf, "disconnected (cannot connect") != NULL);
    CHECK(strstr(buf, "retrying in") != NULL);
    h_close(&h, 100);
    CHECK(d.calls == 0); /* refused: the callback never runs */
}

/* h_open on the test's Redis server (no WAIT), run until the sink is ready. */
static int h_open_local(struct harness *h, long ack_ms)
{
    static char url[64]; /* the sink's options point to it */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", redis_port);
    return h_open(h, url, ack_ms, 0) == 0 && run_until(h, is_ready, NULL, 3000) ? 0 : -1;
}

static void test_ok_exactly_once_later(void)
{
    struct harness h;
    CHECK(h_open_local(&h, 2000) == 0);
    enum { N = 300 };
    static struct done d[N];
    memset(d, 0, sizeof(d));
    inside_calls = 0;
    for (int i = 0; i < N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "ok-%d", i);
        CHECK(submit_one(&h, id, &d[i]) == 0);
    }
    struct batch b = {d, N};
    CHECK(run_until(&h, all_called, &b, 3000));
    /* a little longer: nothing may be called twice */
    double end = now_ms() + 50;
    while (now_ms() < end) {
        event_base_loop(h.base, EVLOOP_ONCE);
    }
    for (int i = 0; i < N; i++) {
        CHECK(d[i].calls == 1 && d[i].status == AB_SINK_OK);
    }
    CHECK(inside_calls == 0);
    CHECK(redis_int("XLEN alma:loan") == N);
    h_close(&h, 100);
}

static void test_timeout_when_stuck_then_recovers(void)
{
    struct harness h;
    CHECK(h_open_local(&h, 300) == 0);
    stop_redis();
    struct done d[3] = {{0}};
    double t0 = now_ms();
    for (int i = 0; i < 3; i++) {
        CHECK(submit_one(&h, "stuck", &d[i]) == 0);
    }
    struct batch b = {d, 3};
    CHECK(run_until(&h, all_called, &b, 2000));
    double took = now_ms() - t0;
    if (!(took >= 280 && took < 1500)) {
        fprintf(stderr, "  took %.0f ms for a 300 ms timeout\n", took);
    }
    CHECK(took >= 280 && took < 1500);
    /* the first times out; the connection is dropped, the others fail with it */
    int timeouts = 0;
    for (int i = 0; i < 3; i++) {
        CHECK(d[i].calls == 1 && d[i].status != AB_SINK_OK);
        timeouts += d[i].status == AB_SINK_TIMEOUT;
    }
    CHECK(timeouts >= 1);
    CHECK(!ab_sink_ready(h.s));
    struct done late = {0};
    CHECK(submit_one(&h, "late", &late) != 0);
    kill(redis_pid, SIGCONT);
    CHECK(run_until(&h, is_ready, NULL, 5000));
    struct done after = {0};
    CHECK(submit_one(&h, "after", &after) == 0);
    struct batch b2 = {&after, 1};
    CHECK(run_until(&h, all_called, &b2, 2000));
    CHECK(after.calls == 1 && after.status == AB_SINK_OK);
    for (int i = 0; i < 3; i++) {
        CHECK(d[i].calls == 1);
    }
    h_close(&h, 100);
}

static void test_close_completes_outstanding_with_closed(void)
{
    struct harness h;
    CHECK(h_open_local(&h, 5000) == 0);
    stop_redis();
    struct done d[5] = {{0}};
    for (int i = 0; i < 5; i++) {
        CHECK(submit_one(&h, "closing", &d[i]) == 0);
    }
    event_base_loop(h.base, EVLOOP_NONBLOCK); /* the commands go out */
    double t0 = now_ms();
    h_close(&h, 100);
    CHECK(now_ms() - t0 < 1000); /* bounded by the timeout given */
    for (int i = 0; i < 5; i++) {
        CHECK(d[i].calls == 1 && d[i].status == AB_SINK_CLOSED);
    }
    kill(redis_pid, SIGCONT);
}

static void test_connection_lost_is_error_then_reconnects(void)
{
    struct harness h;
    CHECK(h_open_local(&h, 2000) == 0);
    stop_redis();
    struct done d[20] = {{0}};
    for (int i = 0; i < 20; i++) {
        CHECK(submit_one(&h, "lost", &d[i]) == 0);
    }
    event_base_loop(h.base, EVLOOP_NONBLOCK);
    redis_kill();
    struct batch b = {d, 20};
    CHECK(run_until(&h, all_called, &b, 1000)); /* well before the 2 s timeout */
    for (int i = 0; i < 20; i++) {
        CHECK(d[i].calls == 1 && d[i].status == AB_SINK_ERROR);
        CHECK(strstr(d[i].err, "connection to redis lost") != NULL);
    }
    CHECK(!ab_sink_ready(h.s));
    CHECK(redis_start() == 0);
    CHECK(run_until(&h, is_ready, NULL, 6000)); /* backoff is at most 5 s */
    h_close(&h, 100);
}

static void test_wait_without_replica_is_error(void)
{
    struct harness h;
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/1", redis_port);
    CHECK(h_open(&h, url, 400, 1) == 0);
    CHECK(run_until(&h, is_ready, NULL, 3000));
    struct done d = {0};
    CHECK(submit_one(&h, "wait", &d) == 0);
    struct batch b = {&d, 1};
    CHECK(run_until(&h, all_called, &b, 2000));
    CHECK(d.calls == 1 && d.status == AB_SINK_ERROR);
    CHECK(strstr(d.err, "only 0 of 1 replicas") != NULL);
    h_close(&h, 100);
}

/* The requests are formatted by the sink itself (ab_redis_command_argv): entries of any
 * size (on the stack below 4 KB, allocated above) and any bytes, through XADD and through
 * the claim-and-write script, come back from XRANGE as they went in. */
static void test_entry_bytes_round_trip(void)
{
    struct harness h;
    CHECK(h_open_local(&h, 2000) == 0);
    static const size_t sizes[] = {1, 9, 99, 4000, 4096, 5000, 70000};
    enum { NS = sizeof(sizes) / sizeof(sizes[0]) };
    static char value[70000];
    for (size_t i = 0; i < sizeof(value); i++) {
        value[i] = (char)(i * 7 + i / 256); /* every byte value, \0 and \r\n among them */
    }
    struct done d[2 * NS] = {{0}};
    for (int k = 0; k < 2 * NS; k++) {
        char key[32];
        snprintf(key, sizeof(key), "rt-%d", k);
        struct ab_sink_msg m = {.id = key, .route = "alma:rt", .value = value,
                                .value_len = sizes[k % NS],
                                .dedupe_key = k >= NS ? key : NULL,
                                .dedupe_window_ms = 60000};
        CHECK(ab_sink_submit(h.s, &m, on_done, &d[k]) == 0);
    }
    struct batch b = {d, 2 * NS};
    CHECK(run_until(&h, all_called, &b, 3000));
    redisContext *c = sync_conn();
    redisReply *r = c ? redisCommand(c, "XRANGE alma:rt - +") : NULL;
    CHECK(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 * NS);
    for (size_t k = 0; r && k < r->elements && k < 2 * NS; k++) {
        const redisReply *f = r->element[k]->element[1];
        CHECK(d[k].calls == 1 && d[k].status == AB_SINK_OK);
        CHECK(f->elements == 2 && strcmp(f->element[0]->str, "event") == 0);
        CHECK(f->element[1]->len == sizes[k % NS] &&
              memcmp(f->element[1]->str, value, sizes[k % NS]) == 0);
    }
    freeReplyObject(r);
    redisFree(c);
    h_close(&h, 100);
}

/* ---- the Redis deduplication store (sinks/dedupe_redis.c) -------------------------------- */

struct dcall {
    int calls;
    int state;
};

static void on_dcall(int state, const char *errstr, void *opaque)
{
    struct dcall *d = opaque;
    d->calls++;
    d->state = state;
}

static int dcall_done(struct harness *h, void *arg)
{
    return ((struct dcall *)arg)->calls > 0;
}

static int store_ready(struct harness *h, void *arg)
{
    struct ab_dedupe *st = arg;
    return st->ops->ready(st);
}

/* One store call, waited for: op 'c' claim, 's' mark stored, 'r' release. Returns the
 * state its callback gave, or -1 (refused, or no single answer within 2 s). */
static int store_call(struct harness *h, struct ab_dedupe *st, const char *key, char op)
{
    struct dcall d = {0, -1};
    int rc = op == 'c' ? st->ops->claim(st, key, on_dcall, &d)
                       : st->ops->mark(st, key, op == 's', on_dcall, &d);
    if (rc != 0) {
        return -1;
    }
    run_until(h, dcall_done, &d, 2000);
    return d.calls == 1 ? d.state : -1;
}

/* The value (GETRANGE: not counted as a GET below) and PTTL of a key, on a connection of
 * its own: value into buf ("" when none). */
static long long key_state(const char *key, char *buf, size_t len)
{
    redisContext *c = sync_conn();
    long long pttl = -3;
    buf[0] = '\0';
    if (c == NULL) {
        return pttl;
    }
    redisReply *r = redisCommand(c, "GETRANGE %s 0 -1", key);
    if (r && r->type == REDIS_REPLY_STRING) {
        snprintf(buf, len, "%s", r->str);
    }
    freeReplyObject(r);
    r = redisCommand(c, "PTTL %s", key);
    pttl = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -3;
    freeReplyObject(r);
    redisFree(c);
    return pttl;
}

/* The calls of one command since CONFIG RESETSTAT (INFO commandstats, which counts the
 * commands a script runs too); 0 when it did not run. */
static long long cmd_calls(const char *cmd)
{
    redisContext *c = sync_conn();
    long long n = -1;
    if (c == NULL) {
        return n;
    }
    redisReply *r = redisCommand(c, "INFO commandstats");
    char pat[64];
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", cmd);
    if (r && r->type == REDIS_REPLY_STRING) {
        const char *p = strstr(r->str, pat);
        n = p ? atoll(p + strlen(pat)) : 0;
    }
    freeReplyObject(r);
    redisFree(c);
    return n;
}

/* The store's documented key states (docs/DEDUPLICATION.md): a claim takes a free key as
 * "1" for claim_ms; a second claim sees it in flight; stored is "2" for the window, which
 * a claim then reports; a release frees a claim but never a stored key. On Redis >= 7.0
 * every claim is one SET NX GET: no script, no GET. */
static void test_dedupe_store_claims_with_set_nx_get(void)
{
    char url[64], err[256] = "", v[16];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", redis_port);
    struct ab_dedupe_conf conf = {.url = url, .window_ms = 600000, .claim_ms = 30000,
                                  .timeout_ms = 2000};
    void *shared = NULL;
    CHECK(ab_dedupe_redis.global_init(&conf, &shared, err, sizeof(err)) == 0);
    struct harness h = {0};
    h.base = event_base_new();
    struct ab_dedupe *st = ab_dedupe_redis.open(&conf, shared, h.base, err, sizeof(err));
    CHECK(st != NULL && run_until(&h, store_ready, st, 3000));
    redis_int("CONFIG RESETSTAT");
    CHECK(store_call(&h, st, "inst/k1", 'c') == AB_DEDUPE_NEW);
    long long pttl = key_state(AB_DEDUPE_REDIS_PREFIX "inst/k1", v, sizeof(v));
    CHECK(strcmp(v, "1") == 0 && pttl > 0 && pttl <= 30000);
    CHECK(store_call(&h, st, "inst/k1", 'c') == AB_DEDUPE_INFLIGHT);
    CHECK(store_call(&h, st, "inst/k1", 's') == AB_DEDUPE_STORED);
    pttl = key_state(AB_DEDUPE_REDIS_PREFIX "inst/k1", v, sizeof(v));
    CHECK(strcmp(v, "2") == 0 && pttl > 30000 && pttl <= 600000);
    CHECK(store_call(&h, st, "inst/k1", 'c') == AB_DEDUPE_STORED);
    CHECK(cmd_calls("set") == 4 && cmd_calls("get") == 0);
    CHECK(cmd_calls("evalsha") == 0 && cmd_calls("eval") == 0);
    /* a release deletes a claim only */
    CHECK(store_call(&h, st, "inst/k2", 'c') == AB_DEDUPE_NEW);
    CHECK(store_call(&h, st, "inst/k2", 'r') == AB_DEDUPE_NEW);
    CHECK(key_state(AB_DEDUPE_REDIS_PREFIX "inst/k2", v, sizeof(v)) == -2 && v[0] == '\0');
    CHECK(store_call(&h, st, "inst/k2", 'c') == AB_DEDUPE_NEW);
    CHECK(store_call(&h, st, "inst/k1", 'r') == AB_DEDUPE_NEW);
    CHECK(store_call(&h, st, "inst/k1", 'c') == AB_DEDUPE_STORED);
    /* a key of another type is an error, not a claim */
    redis_int("LPUSH " AB_DEDUPE_REDIS_PREFIX "inst/k4 x");
    CHECK(store_call(&h, st, "inst/k4", 'c') == AB_DEDUPE_ERROR);
    ab_dedupe_redis.close(st);
    event_base_free(h.base);
    ab_dedupe_redis.global_free(shared);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    ab_log_configure("error", "text", NULL, 0);
    RUN(test_urls);
    RUN(test_refused_at_once_while_down);
    snprintf(redis_dir, sizeof(redis_dir), "/tmp/almabridge-redis-test-XXXXXX");
    redis_port = free_port();
    if (mkdtemp(redis_dir) == NULL || redis_start() != 0) {
        fprintf(stderr, "cannot start redis-server for the contract tests\n");
        t_failed++;
        return TEST_SUMMARY();
    }
    RUN(test_ok_exactly_once_later);
    RUN(test_entry_bytes_round_trip);
    RUN(test_timeout_when_stuck_then_recovers);
    RUN(test_close_completes_outstanding_with_closed);
    RUN(test_connection_lost_is_error_then_reconnects);
    RUN(test_wait_without_replica_is_error);
    RUN(test_dedupe_store_claims_with_set_nx_get);
    redis_kill();
    rmdir(redis_dir);
    return TEST_SUMMARY();
}
