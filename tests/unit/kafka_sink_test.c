/* Tests for sinks/kafka.c: the sink contract and fault handling, in process, against
 * librdkafka's mock cluster (rdkafka_mock.h), which is here only for fault injection. The
 * end-to-end tests (tests/e2e/test_kafka.py) run against a real Apache Kafka.
 *
 * Contract: submit() returns 0 and the callback runs exactly once, later (never inside
 * submit), on the submitting loop thread; or it returns non-zero and never calls back. */
#include "log.h"
#include "sink.h"
#include "sinks/kafka.h"
#include "loop.h"
#include "test.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define ACK_MS 1500
#define API_PRODUCE 0 /* Kafka protocol ApiKey of Produce */
#define MAXREQ 256

static __thread pthread_t loop_thread; /* per thread: test_shared runs two loops */
static __thread int in_submit; /* set around a submit: a callback seeing it broke the contract */

struct req {
    int calls;
    int status;
    int on_loop_thread;
    int during_submit;
    int64_t submitted_ms, done_ms;
};

static void on_done(int status, const char *errstr, void *opaque)
{
    struct req *r = opaque;
    r->calls++;
    r->status = status;
    r->on_loop_thread = pthread_equal(pthread_self(), loop_thread);
    r->during_submit = in_submit;
    r->done_ms = now_ms();
    if (status != AB_SINK_OK && errstr == NULL) {
        r->status = -1; /* an error without a reason breaks the contract */
    }
}

/* ---- harness ------------------------------------------------------------------------ */

struct fixture {
    struct event_base *base;
    struct event *tick; /* wakes the loop so run_until can check its condition */
    struct ab_kafka_conf opts;
    struct ab_sink_conf cfg;
    char *conf[4];
    struct ab_sink *sink;
};

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

static int open_sink(struct fixture *f, const char *brokers, long ack_ms, char **conf, size_t nconf,
                     char *errstr, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    f->tick = event_new(f->base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(f->tick, &tv);
    f->opts.brokers = (char *)brokers;
    f->opts.conf.v = conf;
    f->opts.conf.n = nconf;
    f->cfg.opts = &f->opts;
    f->cfg.ack_timeout_ms = ack_ms;
    f->sink = ab_sink_kafka.open(&f->cfg, NULL, f->base, errstr, errlen);
    return f->sink ? 0 : -1;
}

static void close_fixture(struct fixture *f)
{
    if (f->sink) {
        ab_sink_kafka.close(f->sink, 2000);
        f->sink = NULL;
    }
    event_free(f->tick);
    event_base_free(f->base);
}

/* Run the loop until *count >= want or timeout_ms passed; returns 1 if reached. */
static int run_until_count(struct fixture *f, const int *count, int want, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    while (*count < want && now_ms() < end) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    return *count >= want;
}

/* Run the loop until ready() == want or timeout_ms passed; returns 1 if reached. */
static int run_until_ready(struct fixture *f, int want, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    while (ab_sink_ready(f->sink) != want && now_ms() < end) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    return ab_sink_ready(f->sink) == want;
}

/* Run the loop for ms milliseconds. */
static void run_fixture_for(struct fixture *f, int ms)
{
    int64_t end = now_ms() + ms;
    while (now_ms() < end) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
}

static int total_calls(struct req *reqs, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++) {
        c += reqs[i].calls;
    }
    return c;
}

/* Run the loop until the n requests have had want callbacks between them or timeout_ms
 * passed; returns how many they have had. */
static int run_until_calls(struct fixture *f, struct req *reqs, int n, int want, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    while (total_calls(reqs, n) < want && now_ms() < end) {
        event_base_loop(f->base, EVLOOP_ONCE);
    }
    return total_calls(reqs, n);
}

/* Submit one message for id; returns submit()'s result. */
static int submit_one(struct fixture *f, const char *topic, const char *id, struct req *r)
{
    char value[256], type[] = "com.exlibrisgroup.alma.loan.loan_created";
    snprintf(value, sizeof(value),
             "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"urn:alma:01TEST_INST\","
             "\"type\":\"%s\",\"datacontenttype\":\"application/json\",\"data\":{}}", id, type);
    struct ab_sink_msg m = {
        .id = id,
        .type = type,
        .source = "urn:alma:01TEST_INST",
        .route = topic,
        .key = id,
        .value = value,
        .value_len = strlen(value),
    };
    memset(r, 0, sizeof(*r));
    r->submitted_ms = now_ms();
    in_submit = 1;
    int rc = ab_sink_submit(f->sink, &m, on_done, r);
    in_submit = 0;
    return rc;
}

/* Submit the message with id "<prefix>-<i>"; returns submit()'s result. */
static int submit_nth(struct fixture *f, const char *topic, const char *prefix, int i,
                      struct req *r)
{
    char id[64];
    snprintf(id, sizeof(id), "%s-%d", prefix, i);
    return submit_one(f, topic, id, r);
}

/* Every accepted request was answered within the ack timeout, plus a probe's margin. */
static void check_answered_in_time(const struct req *reqs, const int *accepted, int n)
{
    for (int i = 0; i < n; i++) {
        if (accepted[i]) {
            CHECK(reqs[i].done_ms - reqs[i].submitted_ms <= ACK_MS + 1100);
        }
    }
}

/* Every accepted request was called back exactly once, outside submit, on the loop
 * thread; returns how many had status want. */
static int check_contract(struct req *reqs, const int *accepted, int n, int want)
{
    int with_status = 0;
    for (int i = 0; i < n; i++) {
        if (!accepted[i]) {
            CHECK(reqs[i].calls == 0);
            continue;
        }
        CHECK(reqs[i].calls == 1);
        CHECK(reqs[i].on_loop_thread);
        CHECK(!reqs[i].during_submit);
        CHECK(reqs[i].status != -1);
        with_status += reqs[i].status == want;
    }
    return with_status;
}

/* ---- the mock cluster and a consumer to read it back -------------------------------- */

struct mock {
    rd_kafka_t *rk; /* owns the cluster */
    rd_kafka_mock_cluster_t *mc;
    const char *bootstrap;
};

static void mock_new(struct mock *m)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
    m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    m->mc = rd_kafka_mock_cluster_new(m->rk, 1);
    m->bootstrap = rd_kafka_mock_cluster_bootstraps(m->mc);
    /* One partition each, so that reading partition 0 reads everything. */
    const char *topics[] = {"alma.loan", "alma.retry", "alma.updown", "alma.close",
                            "alma.gate", "alma.shared"};
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++) {
        rd_kafka_mock_topic_create(m->mc, topics[i], 1, 1);
    }
}

static void mock_free(struct mock *m)
{
    rd_kafka_mock_cluster_destroy(m->mc);
    rd_kafka_destroy(m->rk);
}

/* A new mock cluster and a sink open on it, run until ready; returns 0, the mock freed,
 * when the sink did not open. */
static int open_on_mock(struct mock *m, struct fixture *f, long ack_ms, char **conf,
                        size_t nconf)
{
    char err[512] = "";
    mock_new(m);
    CHECK(open_sink(f, m->bootstrap, ack_ms, conf, nconf, err, sizeof(err)) == 0);
    if (f->sink == NULL) {
        fprintf(stderr, "  open: %s\n", err);
        mock_free(m);
        return 0;
    }
    CHECK(run_until_ready(f, 1, 5000));
    return 1;
}

struct consumed {
    int n;
    char keys[MAXREQ * 2][64];
    int headers_ok; /* every message had the expected headers */
};

static int header_is(rd_kafka_headers_t *h, const char *name, const char *want)
{
    const void *v = NULL;
    size_t len = 0;
    if (rd_kafka_header_get_last(h, name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        return 0;
    }
    return want == NULL || (len == strlen(want) && memcmp(v, want, len) == 0);
}

/* Read partition 0 of topic from the beginning to its end, and on until at least min
 * messages were read (the mock can report the end before all of a large batch was read),
 * then 500 ms more for any extra. */
static void consume_min(const char *bootstrap, const char *topic, struct consumed *out, int min)
{
    char err[256];
    memset(out, 0, sizeof(*out));
    out->headers_ok = 1;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof(err));
    rd_kafka_conf_set(conf, "group.id", "kafka_sink_test", err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err));
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    rd_kafka_poll_set_consumer(c);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(c, parts);
    rd_kafka_topic_partition_list_destroy(parts);
    int64_t end = now_ms() + 10000;
    while (now_ms() < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 100);
        if (m == NULL) {
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF && out->n >= min) {
            rd_kafka_message_destroy(m);
            if (min == 0) {
                break;
            }
            int64_t more = now_ms() + 500;
            end = end < more ? end : more;
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && out->n < MAXREQ * 2) {
            snprintf(out->keys[out->n], sizeof(out->keys[0]), "%.*s", (int)m->key_len,
                     (const char *)m->key);
            rd_kafka_headers_t *h = NULL;
            if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
                !header_is(h, "content-type", "application/json") || /* binary mode */
                !header_is(h, "ce_id", out->keys[out->n]) ||
                !header_is(h, "ce_type", "com.exlibrisgroup.alma.loan.loan_created") ||
                !header_is(h, "ce_source", "urn:alma:01TEST_INST") ||
                !header_is(h, "ce_specversion", "1.0")) {
                out->headers_ok = 0;
            }
            out->n++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
}

static void consume_all(const char *bootstrap, const char *topic, struct consumed *out)
{
    consume_min(bootstrap, topic, out, 0);
}

/* Every id "<prefix>-<i>" for i < n appears exactly once. */
static int exactly_once(const struct consumed *c, const char *prefix, int n)
{
    int ok = c->n == n;
    for (int i = 0; i < n; i++) {
        char id[64];
        snprintf(id, sizeof(id), "%s-%d", prefix, i);
        int seen = 0;
        for (int j = 0; j < c->n; j++) {
            seen += strcmp(c->keys[j], id) == 0;
        }
        if (seen != 1) {
            fprintf(stderr, "  id %s seen %d times\n", id, seen);
            ok = 0;
        }
    }
    return ok;
}

/* ---- tests -------------------------------------------------------------------------- */

/* Delivered: OK exactly once per submit, outside submit, on the loop thread; the messages
 * carry key and headers; describe() and ready() say up. */
static void test_success(void)
{
    struct mock m;
    struct fixture f;
    if (!open_on_mock(&m, &f, ACK_MS, NULL, 0)) {
        return;
    }
    char d[256];
    ab_sink_kafka.describe(f.sink, d, sizeof(d));
    CHECK(strstr(d, ": up") != NULL);

    enum { N = 50 };
    static struct req reqs[N];
    int accepted[N];
    for (int i = 0; i < N; i++) {
        accepted[i] = submit_nth(&f, "alma.loan", "ok", i, &reqs[i]) == 0;
        CHECK(accepted[i]);
        CHECK(reqs[i].calls == 0); /* never inside submit */
    }
    CHECK(run_until_calls(&f, reqs, N, N, 5000) == N);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == N);
    run_fixture_for(&f, 100); /* nothing more arrives */
    CHECK(total_calls(reqs, N) == N);
    close_fixture(&f);

    struct consumed c;
    consume_all(m.bootstrap, "alma.loan", &c);
    CHECK(exactly_once(&c, "ok", N));
    CHECK(c.headers_ok);
    mock_free(&m);
}

/* Retriable Produce errors are retried by librdkafka: every submit still ends OK, once,
 * and the topic holds each message exactly once (idempotence keeps order and sequence). */
static void test_retriable_errors(void)
{
    struct mock m;
    struct fixture f;
    if (!open_on_mock(&m, &f, 6000, NULL, 0)) {
        return;
    }
    /* Six failed Produce answers in a row from broker 1 (the partition leader). */
    rd_kafka_mock_broker_push_request_error_rtts(
        m.mc, 1, API_PRODUCE, 6, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, 0,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, 0, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, 0,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, 0, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, 0,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, 0);
    enum { N = 40 };
    static struct req reqs[N];
    int accepted[N];
    for (int i = 0; i < N; i++) {
        accepted[i] = submit_nth(&f, "alma.retry", "retry", i, &reqs[i]) == 0;
        CHECK(accepted[i]);
        if (i % 10 == 9) {
            run_fixture_for(&f, 50); /* several Produce requests, so several injected errors */
        }
    }
    run_until_calls(&f, reqs, N, N, 8000);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == N);
    size_t left = 99;
    rd_kafka_mock_broker_error_stack_cnt(m.mc, 1, API_PRODUCE, &left);
    CHECK(left == 0); /* every injected error was hit and retried */
    close_fixture(&f);

    struct consumed c;
    consume_all(m.bootstrap, "alma.retry", &c);
    CHECK(exactly_once(&c, "retry", N));
    mock_free(&m);
}

/* A Produce the broker handles at once but answers after the client's request timeout:
 * librdkafka disconnects and sends it again; every submit still completes exactly once
 * with OK. (librdkafka 2.0's mock checks sequence numbers for transactional producers
 * only, so it keeps the resent copy; against a real broker idempotence drops it, which the
 * end-to-end broker-kill test checks.) */
static void test_late_ack(void)
{
    struct mock m;
    struct fixture f;
    char *conf[] = {(char *)"socket.timeout.ms=300"};
    if (!open_on_mock(&m, &f, 6000, conf, 1)) {
        return;
    }
    rd_kafka_mock_broker_push_request_error_rtts(m.mc, 1, API_PRODUCE, 1,
                                                 RD_KAFKA_RESP_ERR_NO_ERROR, 2500);
    enum { N = 10 };
    static struct req reqs[N];
    int accepted[N];
    for (int i = 0; i < N; i++) {
        accepted[i] = submit_nth(&f, "alma.retry", "late", i, &reqs[i]) == 0;
        CHECK(accepted[i]);
    }
    run_until_calls(&f, reqs, N, N, 8000);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == N);
    run_fixture_for(&f, 200);
    CHECK(total_calls(reqs, N) == N);
    CHECK(ab_sink_ready(f.sink) == 1); /* the reconnect does not leave it down */
    close_fixture(&f);
    mock_free(&m);
}

/* Nothing listens at the brokers' address: ready() stays 0, describe() says down, and
 * every submit is answered well inside the ack timeout: refused at once, or (the first
 * while connecting, one probe a second once down) called back with an error in time. */
static void test_no_broker(void)
{
    struct fixture f;
    char err[512] = "";
    CHECK(open_sink(&f, "127.0.0.1:1", ACK_MS, NULL, 0, err, sizeof(err)) == 0);
    if (f.sink == NULL) {
        fprintf(stderr, "  open: %s\n", err);
        return;
    }
    enum { N = 30 };
    static struct req reqs[N];
    int accepted[N], n_accepted = 0;
    int64_t t0 = now_ms();
    for (int i = 0; i < N; i++) {
        accepted[i] = submit_nth(&f, "alma.loan", "nob", i, &reqs[i]) == 0;
        n_accepted += accepted[i];
        CHECK(ab_sink_ready(f.sink) == 0);
        run_fixture_for(&f, 100);
    }
    int64_t elapsed = now_ms() - t0;
    /* 3 s of submits: those while connecting and in the 500 ms grace, then about one
     * probe a second */
    CHECK(n_accepted >= 1 && n_accepted <= 7 + (int)(elapsed / 1000));
    CHECK(n_accepted < N / 2);
    CHECK(run_until_calls(&f, reqs, N, n_accepted, ACK_MS + 1500) == n_accepted);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == 0);
    check_answered_in_time(reqs, accepted, N);
    char d[256];
    ab_sink_kafka.describe(f.sink, d, sizeof(d));
    CHECK(strstr(d, "brokers 127.0.0.1:1: down (") == d);
    CHECK(ab_sink_ready(f.sink) == 0);
    close_fixture(&f);
}

/* The broker goes down: ready() turns 0 and submits fail fast; it comes back: the same
 * instance recovers (ready() 1, deliveries OK) without being reopened. */
static void test_broker_down_and_back(void)
{
    struct mock m;
    struct fixture f;
    if (!open_on_mock(&m, &f, ACK_MS, NULL, 0)) {
        return;
    }
    static struct req r0;
    CHECK(submit_one(&f, "alma.updown", "updown-0", &r0) == 0);
    CHECK(run_until_count(&f, &r0.calls, 1, 3000));
    CHECK(r0.status == AB_SINK_OK);

    rd_kafka_mock_broker_set_down(m.mc, 1);
    int64_t t_down = now_ms();
    CHECK(run_until_ready(&f, 0, 3000));
    fprintf(stderr, "  down noticed after %lld ms\n", (long long)(now_ms() - t_down));

    enum { N = 20 };
    static struct req reqs[N];
    int accepted[N], n_accepted = 0;
    int64_t t0 = now_ms();
    for (int i = 0; i < N; i++) {
        accepted[i] = submit_nth(&f, "alma.updown", "down", i, &reqs[i]) == 0;
        n_accepted += accepted[i];
        run_fixture_for(&f, 100);
    }
    /* the 500 ms grace, then only the probes */
    CHECK(n_accepted <= 7 + (int)((now_ms() - t0) / 1000));
    CHECK(n_accepted < N / 2);
    run_until_calls(&f, reqs, N, n_accepted, ACK_MS + 1500);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == 0);
    check_answered_in_time(reqs, accepted, N);

    rd_kafka_mock_broker_set_up(m.mc, 1);
    int64_t t_up = now_ms();
    CHECK(run_until_ready(&f, 1, 5000));
    fprintf(stderr, "  recovery noticed after %lld ms\n", (long long)(now_ms() - t_up));
    static struct req r1;
    CHECK(submit_one(&f, "alma.updown", "updown-1", &r1) == 0);
    CHECK(run_until_count(&f, &r1.calls, 1, 3000));
    CHECK(r1.status == AB_SINK_OK);
    close_fixture(&f);
    mock_free(&m);
}

/* close() completes what is still outstanding, with AB_SINK_CLOSED, before it returns. */
static void test_close_completes_outstanding(void)
{
    struct mock m;
    struct fixture f;
    if (!open_on_mock(&m, &f, 5000, NULL, 0)) {
        return;
    }
    /* Produce answers are held back for 3 s: the messages stay in flight. */
    rd_kafka_mock_broker_push_request_error_rtts(m.mc, 1, API_PRODUCE, 1,
                                                 RD_KAFKA_RESP_ERR_NO_ERROR, 3000);
    enum { N = 5 };
    static struct req reqs[N];
    for (int i = 0; i < N; i++) {
        CHECK(submit_nth(&f, "alma.close", "close", i, &reqs[i]) == 0);
    }
    run_fixture_for(&f, 200);
    CHECK(total_calls(reqs, N) == 0);
    int64_t t0 = now_ms();
    ab_sink_kafka.close(f.sink, 100);
    f.sink = NULL;
    CHECK(now_ms() - t0 < 2000);
    for (int i = 0; i < N; i++) {
        CHECK(reqs[i].calls == 1);
        CHECK(reqs[i].status == AB_SINK_CLOSED);
        CHECK(reqs[i].on_loop_thread);
    }
    close_fixture(&f);
    mock_free(&m);
}

/* A full local queue is an immediate refusal: submit() returns non-zero, never calls back,
 * and describe() says why; what was taken is still delivered. */
static void test_queue_full(void)
{
    struct mock m;
    struct fixture f;
    char *conf[] = {(char *)"queue.buffering.max.messages=3"};
    if (!open_on_mock(&m, &f, 5000, conf, 1)) {
        return;
    }
    enum { N = 10 };
    static struct req reqs[N];
    int accepted[N], n_accepted = 0;
    for (int i = 0; i < N; i++) {
        accepted[i] = submit_nth(&f, "alma.loan", "full", i, &reqs[i]) == 0;
        n_accepted += accepted[i];
    }
    CHECK(n_accepted == 3);
    char d[256];
    ab_sink_kafka.describe(f.sink, d, sizeof(d));
    CHECK(strstr(d, "local queue full") != NULL);
    run_until_calls(&f, reqs, N, n_accepted, 5000);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == 3);
    close_fixture(&f);
    mock_free(&m);
}

/* The gate: while a message is out, the next ones wait in the sink and then leave together,
 * all delivered exactly once; one whose webhook was answered meanwhile (timed out) is never
 * written, so Alma's retry after that 503 does not make a duplicate. A Produce is answered
 * after 3 s, past the 2 s ack timeout (message.timeout.ms raised so that librdkafka itself
 * still waits for it). */
static void test_gate(void)
{
    struct mock m;
    struct fixture f;
    char *conf[] = {(char *)"message.timeout.ms=8000", (char *)"socket.timeout.ms=8000"};
    if (!open_on_mock(&m, &f, 2000, conf, 2)) {
        return;
    }
    static struct req warm;
    int warm_ok = submit_one(&f, "alma.gate", "warm", &warm) == 0; /* the topic's metadata */
    CHECK(run_until_calls(&f, &warm, 1, 1, 5000) == 1);
    CHECK(check_contract(&warm, &warm_ok, 1, AB_SINK_OK) == 1);
    enum { N = 40 };
    static struct req reqs[N];
    int accepted[N];
    for (int i = 0; i < N; i++) { /* in one loop iteration: one goes, the rest wait */
        accepted[i] = submit_nth(&f, "alma.gate", "batch", i, &reqs[i]) == 0;
        CHECK(accepted[i]);
    }
    CHECK(run_until_calls(&f, reqs, N, N, 5000) == N);
    CHECK(check_contract(reqs, accepted, N, AB_SINK_OK) == N);

    rd_kafka_mock_broker_push_request_error_rtts(m.mc, 1, API_PRODUCE, 1,
                                                 RD_KAFKA_RESP_ERR_NO_ERROR, 3000);
    enum { M = 10 };
    static struct req late[M];
    int late_ok[M];
    late_ok[0] = submit_nth(&f, "alma.gate", "late", 0, &late[0]) == 0;
    run_fixture_for(&f, 100); /* late-0 is out, waiting for its slow answer */
    for (int i = 1; i < M; i++) {
        late_ok[i] = submit_nth(&f, "alma.gate", "late", i, &late[i]) == 0;
        CHECK(late_ok[i]);
    }
    CHECK(run_until_calls(&f, late, M, M, 4000) == M);
    CHECK(check_contract(late, late_ok, M, AB_SINK_TIMEOUT) == M);
    run_fixture_for(&f, 1500); /* late-0's answer comes; the held ones must not be sent */
    close_fixture(&f);
    static struct consumed c, batch;
    consume_min(m.bootstrap, "alma.gate", &c, N + 2);
    CHECK(c.n == N + 2 && strcmp(c.keys[0], "warm") == 0);
    CHECK(strcmp(c.keys[N + 1], "late-0") == 0); /* and no other late-i */
    batch.n = N; /* what came in between */
    memcpy(batch.keys, c.keys + 1, N * sizeof(c.keys[0]));
    CHECK(exactly_once(&batch, "batch", N));
    mock_free(&m);
}

/* One producer shared by two instances on two loop threads (global_init's shared, as the
 * workers use it): every callback on the thread that submitted, exactly once; each
 * instance's messages reach the partition in its submission order (the shared gate hands
 * them over in order); the instance whose loop serves the queue closes while the other keeps
 * going, its close waiting for its own messages only and the other's answers still
 * coming. */
enum { SHARED_N = 120, SHARED_BURST = 12 };

struct shared_side {
    const struct ab_sink_conf *cfg;
    void *shared;
    const char *prefix;
    int close_early; /* close right after the last submit (its messages still out) */
    struct req reqs[SHARED_N];
    int accepted, opened, ready, calls, on_own_thread, outside_submit, ok;
    atomic_int open_done;
};

static void *shared_side_main(void *arg)
{
    struct shared_side *s = arg;
    char err[512];
    loop_thread = pthread_self();
    struct event_base *base = event_base_new();
    struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 10000};
    event_add(tick, &tv);
    struct ab_sink *sink = ab_sink_kafka.open(s->cfg, s->shared, base, err, sizeof(err));
    s->opened = sink != NULL;
    atomic_store(&s->open_done, 1);
    int64_t end = now_ms() + 5000;
    while (sink && !ab_sink_ready(sink) && now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE);
    }
    s->ready = sink && ab_sink_ready(sink);
    struct fixture f = {.base = base, .sink = sink};
    for (int i = 0; sink && i < SHARED_N; i++) { /* bursts in one loop iteration each */
        s->accepted += submit_nth(&f, "alma.shared", s->prefix, i, &s->reqs[i]) == 0;
        if (i % SHARED_BURST == SHARED_BURST - 1) {
            event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        }
    }
    if (sink && !s->close_early) {
        run_until_calls(&f, s->reqs, SHARED_N, SHARED_N, 10000);
    }
    if (sink) {
        ab_sink_kafka.close(sink, 10000);
    }
    for (int i = 0; i < SHARED_N; i++) {
        s->calls += s->reqs[i].calls;
        s->on_own_thread += s->reqs[i].on_loop_thread;
        s->outside_submit += !s->reqs[i].during_submit;
        s->ok += s->reqs[i].calls == 1 && s->reqs[i].status == AB_SINK_OK;
    }
    event_free(tick);
    event_base_free(base);
    return NULL;
}

/* The ids "<prefix>-<i>" appear in increasing i. */
static int in_order(const struct consumed *c, const char *prefix)
{
    int last = -1, ok = 1;
    size_t pl = strlen(prefix);
    for (int j = 0; j < c->n; j++) {
        if (strncmp(c->keys[j], prefix, pl) == 0 && c->keys[j][pl] == '-') {
            int i = atoi(c->keys[j] + pl + 1);
            ok = ok && i > last;
            last = i;
        }
    }
    return ok;
}

static void test_shared(void)
{
    struct mock m;
    mock_new(&m);
    struct ab_kafka_conf opts = {.brokers = (char *)m.bootstrap};
    struct ab_sink_conf cfg = {.opts = &opts, .ack_timeout_ms = 5000};
    void *shared = NULL;
    char err[512] = "";
    CHECK(ab_sink_kafka.global_init(&cfg, &shared, err, sizeof(err)) == 0);
    static struct shared_side side[2];
    memset(side, 0, sizeof(side));
    side[0] = (struct shared_side){.cfg = &cfg, .shared = shared, .prefix = "a", .close_early = 1};
    side[1] = (struct shared_side){.cfg = &cfg, .shared = shared, .prefix = "b"};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) { /* "a" opens first: its loop serves the queue, and its
                                   * early close hands that over to the dispatcher thread */
        pthread_create(&t[i], NULL, shared_side_main, &side[i]);
        while (!atomic_load(&side[i].open_done)) {
            usleep(1000);
        }
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
    }
    ab_sink_kafka.global_free(shared);
    for (int i = 0; i < 2; i++) {
        CHECK(side[i].opened && side[i].ready);
        CHECK(side[i].accepted == SHARED_N);
        CHECK(side[i].calls == SHARED_N);        /* exactly once each */
        CHECK(side[i].on_own_thread == SHARED_N); /* on the thread that submitted */
        CHECK(side[i].outside_submit == SHARED_N);
        CHECK(side[i].ok == SHARED_N); /* the early close waited for its own */
    }
    static struct consumed c, part;
    consume_min(m.bootstrap, "alma.shared", &c, 2 * SHARED_N);
    CHECK(c.n == 2 * SHARED_N && c.headers_ok);
    CHECK(in_order(&c, "a") && in_order(&c, "b"));
    for (int i = 0; i < 2; i++) {
        part.n = 0;
        for (int j = 0; j < c.n; j++) {
            if (c.keys[j][0] == side[i].prefix[0]) {
                memcpy(part.keys[part.n++], c.keys[j], sizeof(c.keys[0]));
            }
        }
        CHECK(exactly_once(&part, side[i].prefix, SHARED_N));
    }
    mock_free(&m);
}

/* --kafka-conf: applied last; a bad entry is a start-up error naming the key, never the
 * value of a secret. */
static void test_conf_errors(void)
{
    struct fixture f;
    char err[512] = "";
    char *unknown[] = {(char *)"no.such.property=1"};
    CHECK(open_sink(&f, "127.0.0.1:1", ACK_MS, unknown, 1, err, sizeof(err)) != 0);
    CHECK(strstr(err, "no.such.property") != NULL);
    close_fixture(&f);

    char *secret[] = {(char *)"my.secret.thing=hunter2"};
    CHECK(open_sink(&f, "127.0.0.1:1", ACK_MS, secret, 1, err, sizeof(err)) != 0);
    CHECK(strstr(err, "my.secret.thing") != NULL);
    CHECK(strstr(err, "hunter2") == NULL);
    close_fixture(&f);

    char *noeq[] = {(char *)"acks=all", (char *)"sasl.password"};
    CHECK(open_sink(&f, "127.0.0.1:1", ACK_MS, noeq, 2, err, sizeof(err)) != 0);
    CHECK(strstr(err, "entry 2 is not key=value") != NULL);
    close_fixture(&f);

    char *bad[] = {(char *)"acks=sometimes"};
    CHECK(open_sink(&f, "127.0.0.1:1", ACK_MS, bad, 1, err, sizeof(err)) != 0);
    CHECK(strstr(err, "acks") != NULL);
    close_fixture(&f);

    /* Valid overrides are accepted (and win over the defaults). */
    char *ok[] = {(char *)"compression.type=zstd", (char *)"sasl.password=hunter2"};
    CHECK(open_sink(&f, "127.0.0.1:1", ACK_MS, ok, 2, err, sizeof(err)) == 0);
    close_fixture(&f);

    CHECK(open_sink(&f, "", ACK_MS, NULL, 0, err, sizeof(err)) != 0);
    CHECK(strstr(err, "--kafka-brokers") != NULL);
    close_fixture(&f);

    /* global_init (also behind --check-config) checks what only rd_kafka_new() checks. */
    struct ab_kafka_conf opts = {.brokers = (char *)"127.0.0.1:1"};
    struct ab_sink_conf cfg = {.opts = &opts, .ack_timeout_ms = ACK_MS};
    void *shared = (void *)&cfg;
    CHECK(ab_sink_kafka.global_init(&cfg, &shared, err, sizeof(err)) == 0);
    CHECK(shared != NULL && shared != (void *)&cfg); /* the shared producer, not started */
    ab_sink_kafka.global_free(shared);
    char *conflict[] = {(char *)"acks=1"};
    opts.conf.v = conflict;
    opts.conf.n = 1;
    CHECK(ab_sink_kafka.global_init(&cfg, &shared, err, sizeof(err)) != 0);
    CHECK(strstr(err, "acks") != NULL && strstr(err, "idempotence") != NULL);
    char *tls[] = {(char *)"security.protocol=SSL", (char *)"ssl.ca.location=/nonexistent/ca"};
    opts.conf.v = tls;
    opts.conf.n = 2;
    CHECK(ab_sink_kafka.global_init(&cfg, &shared, err, sizeof(err)) != 0);
    CHECK(strstr(err, "ssl.ca.location") != NULL || strstr(err, "/nonexistent/ca") != NULL);
}

/* Routes become legal topic names (issue 8 item 8): [a-zA-Z0-9._-], at most 249 bytes. */
static void test_topic_names(void)
{
    char t[AB_KAFKA_TOPIC_MAX + 1];
    ab_kafka_topic_name("alma.loan", t);
    CHECK_STR(t, "alma.loan");
    ab_kafka_topic_name("alma:01:x y/\xc3\xa4", t);
    CHECK_STR(t, "alma_01_x_y___");
    ab_kafka_topic_name(".", t);
    CHECK_STR(t, "_");
    ab_kafka_topic_name("..", t);
    CHECK_STR(t, "__");
    ab_kafka_topic_name("", t);
    CHECK_STR(t, "none");
    char long_route[400], other[400], t2[AB_KAFKA_TOPIC_MAX + 1];
    memset(long_route, 'a', 399);
    long_route[399] = '\0';
    memcpy(other, long_route, sizeof(other));
    other[398] = 'b';
    ab_kafka_topic_name(long_route, t);
    ab_kafka_topic_name(other, t2);
    CHECK(strlen(t) == AB_KAFKA_TOPIC_MAX && strlen(t2) == AB_KAFKA_TOPIC_MAX);
    CHECK(strncmp(t, long_route, 240) == 0 && t[240] == '-');
    CHECK(strcmp(t, t2) != 0); /* distinct routes, distinct topics */
    memset(long_route, 'x', AB_KAFKA_TOPIC_MAX);
    long_route[AB_KAFKA_TOPIC_MAX] = '\0';
    ab_kafka_topic_name(long_route, t);
    CHECK_STR(t, long_route); /* exactly 249: kept */

    /* a --route whose own text cannot be in a topic name is a start-up error */
    struct ab_kafka_conf opts = {.brokers = (char *)"127.0.0.1:1"};
    struct ab_sink_conf cfg = {.opts = &opts, .ack_timeout_ms = ACK_MS, .route = "alma {action}"};
    void *shared = NULL;
    char err[256] = "";
    CHECK(ab_sink_kafka.global_init(&cfg, &shared, err, sizeof(err)) != 0);
    CHECK(strstr(err, "' ' cannot be in a Kafka topic name") != NULL);
    cfg.route = "alma.{action}-{institution}_x";
    CHECK(ab_sink_kafka.global_init(&cfg, &shared, err, sizeof(err)) == 0);
    ab_sink_kafka.global_free(shared);
}

int main(void)
{
    loop_thread = pthread_self();
    if (getenv("AB_TEST_DEBUG") == NULL) {
        ab_log_level_min = AB_LOG_ERROR + 1; /* librdkafka's connection errors are expected */
    }
    CHECK(strcmp(ab_sink_kafka.name, "kafka") == 0);
    CHECK(strcmp(ab_sink_kafka.default_route, "alma.{action}") == 0);
    RUN(test_conf_errors);
    RUN(test_topic_names);
    RUN(test_success);
    RUN(test_retriable_errors);
    RUN(test_late_ack);
    RUN(test_no_broker);
    RUN(test_broker_down_and_back);
    RUN(test_close_completes_outstanding);
    RUN(test_queue_full);
    RUN(test_gate);
    RUN(test_shared);
    return TEST_SUMMARY();
}
