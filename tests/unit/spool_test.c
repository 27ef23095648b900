/* The spool (sinks/spool.c) in front of a scripted broker sink: what is spooled and when,
 * the answers (the sink contract), late acknowledgements counted, forwarding in order with
 * segment removal, the size limit. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "event.h"
#include "eventlog.h"
#include "log.h"
#include "spool.h"
#include "test.h"

/* ---- a scripted broker ---- */

enum mode { REFUSE, ACK, FAIL, HOLD, TOO_BIG };

static enum mode mode;
static int mock_ready;
static char submitted[64][32]; /* ids, in submission order */
static int n_submitted;

struct held {
    ab_sink_done_cb cb;
    void *opaque;
    int status;
};
static struct held held[64];
static int n_held;

struct mock {
    struct ab_sink base;
    struct event_base *evbase;
};

static void on_answer(evutil_socket_t fd, short what, void *arg)
{
    struct held *h = arg;
    h->cb(h->status, h->status ? "scripted failure" : NULL, h->opaque);
    free(h);
}

static int mock_submit(struct ab_sink *s, const struct ab_sink_msg *m, ab_sink_done_cb cb,
                       void *opaque)
{
    struct mock *mk = (struct mock *)s;
    if (mode == REFUSE) {
        return -1;
    }
    snprintf(submitted[n_submitted++ % 64], 32, "%s", m->id);
    if (mode == HOLD) {
        held[n_held++ % 64] = (struct held){cb, opaque, AB_SINK_OK};
        return 0;
    }
    struct held *h = malloc(sizeof(*h));
    *h = (struct held){cb, opaque,
                       mode == ACK       ? AB_SINK_OK
                       : mode == TOO_BIG ? AB_SINK_TOO_BIG
                                         : AB_SINK_ERROR};
    struct timeval tv = {0, 1000};
    event_base_once(mk->evbase, -1, EV_TIMEOUT, on_answer, h, &tv);
    return 0;
}

static struct ab_sink *mock_open(const struct ab_sink_conf *conf, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen);
static int mock_ready_fn(struct ab_sink *s)
{
    return mock_ready;
}
static void mock_close(struct ab_sink *s, int timeout_ms)
{
    for (int i = 0; i < n_held; i++) {
        held[i].cb(AB_SINK_CLOSED, "closed", held[i].opaque);
    }
    n_held = 0;
    free(s);
}

static const struct ab_sink_ops mock_ops = {
    .name = "mock",
    .default_route = "alma.{action}",
    .open = mock_open,
    .submit = mock_submit,
    .ready = mock_ready_fn,
    .close = mock_close,
};

static struct ab_sink *mock_open(const struct ab_sink_conf *conf, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen)
{
    struct mock *mk = calloc(1, sizeof(*mk));
    mk->base.ops = &mock_ops;
    mk->evbase = base;
    return &mk->base;
}

/* ---- fixture ---- */

struct fixture {
    char dir[64];
    struct ab_spool_conf sc;
    struct ab_sink_conf conf;
    const struct ab_sink_ops *ops;
    void *shared;
    struct event_base *base;
    struct ab_sink *s;
};

struct answer {
    int calls, status;
};

static void on_done(int status, const char *errstr, void *opaque)
{
    struct answer *a = opaque;
    a->calls++;
    a->status = status;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

static void run_for(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_once(base, -1, EV_TIMEOUT, on_tick, base, &tv);
    event_base_dispatch(base);
}

/* Run the loop until every answer came (or 5 s). */
static void wait_answers(struct event_base *base, struct answer *a, int n)
{
    for (int round = 0; round < 500; round++) {
        int done = 0;
        for (int i = 0; i < n; i++) {
            done += a[i].calls > 0;
        }
        if (done == n) {
            return;
        }
        run_for(base, 10);
    }
}

static void fixture_open_ack(struct fixture *f, long max_bytes, long ack_ms);

static void fixture_open(struct fixture *f, long max_bytes)
{
    fixture_open_ack(f, max_bytes, 4000);
}

/* With an --ack-timeout of ack_ms for the spool's own answers. */
static void fixture_open_ack(struct fixture *f, long max_bytes, long ack_ms)
{
    char err[256] = "";
    snprintf(f->dir, sizeof(f->dir), "/tmp/ab_spool_XXXXXX");
    CHECK(mkdtemp(f->dir) != NULL);
    strcat(f->dir, "/spool");
    f->sc = (struct ab_spool_conf){.opts = {.dir = f->dir,
                                            .after_ms = 200,
                                            .max_bytes = max_bytes,
                                            .segment_bytes = 100},
                                   .inner = &mock_ops,
                                   .inner_conf = {.ack_timeout_ms = 4000}};
    f->conf = (struct ab_sink_conf){.opts = &f->sc, .ack_timeout_ms = ack_ms};
    f->ops = &ab_sink_spool;
    f->shared = NULL;
    CHECK(f->ops->global_init(&f->conf, &f->shared, err, sizeof(err)) == 0);
    f->base = event_base_new();
    f->s = f->ops->open(&f->conf, f->shared, f->base, err, sizeof(err));
    CHECK(f->s != NULL);
    n_submitted = n_held = 0;
}

/* What the spool directory holds now: its summary (checked to succeed) and the events not
 * yet forwarded, read through the spool's read side (the first one's id too). */
struct spool_view {
    struct ab_spool_summary s;
    long events;
    char oldest_id[64];
};

static struct spool_view summary(const struct fixture *f)
{
    struct spool_view h;
    struct ab_spool_opts opts = {0};
    struct ab_sink_conf conf = {.opts = &opts};
    struct ab_read_from from = {.path = f->dir};
    struct ab_read_event ev;
    char err[128];
    memset(&h, 0, sizeof(h));
    CHECK(ab_spool_summarise(f->dir, &h.s, err, sizeof(err)) == 0);
    struct ab_sink_reader *r = ab_sink_spool.reader_open(&conf, &from, err, sizeof(err));
    CHECK(r != NULL);
    while (r && ab_reader_next(r, &ev, 0, err, sizeof(err)) == AB_READ_EVENT) {
        struct ab_event *e = NULL;
        CHECK(ab_event_from_line(ev.value, ev.len, &e, err, sizeof(err)) == AB_EVENT_OK);
        if (e && h.events++ == 0) {
            snprintf(h.oldest_id, sizeof(h.oldest_id), "%s", e->id);
        }
        ab_event_free(e);
    }
    ab_reader_close(r);
    return h;
}

static void fixture_close(struct fixture *f)
{
    f->ops->close(f->s, 1000);
    f->ops->global_free(f->shared);
    event_base_free(f->base);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %.*s", (int)(strlen(f->dir) - 6), f->dir);
    CHECK(system(cmd) == 0);
}

static int submit(struct fixture *f, const char *id, struct answer *a)
{
    char value[128];
    int n = snprintf(value, sizeof(value),
                     "{\"specversion\":\"1.0\",\"id\":\"%s\",\"almaaction\":\"LOAN\"}", id);
    struct ab_sink_msg m = {.id = id, .value = value, .value_len = (size_t)n};
    return ab_sink_submit(f->s, &m, on_done, a);
}

/* With the broker ready and answering in mode m: submit the event id and wait for its
 * answer in *a (which stays the callback's: later answers land there too). */
static void submit_ready(struct fixture *f, enum mode m, const char *id, struct answer *a)
{
    mode = m;
    mock_ready = 1;
    CHECK(submit(f, id, a) == 0);
    wait_answers(f->base, a, 1);
}

static int segments(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        size_t l = strlen(e->d_name);
        n += l > 4 && strcmp(e->d_name + l - 4, ".seg") == 0; /* not .torn, .crc */
    }
    if (d) {
        closedir(d);
    }
    return n;
}


/* ---- tests ---- */

static void test_refused_is_spooled_and_answered_later(void)
{
    struct fixture f;
    fixture_open(&f, 1 << 20);
    mode = REFUSE;
    mock_ready = 0;
    struct answer a = {0};
    CHECK(submit(&f, "1", &a) == 0);
    CHECK(a.calls == 0); /* never from inside submit */
    wait_answers(f.base, &a, 1);
    CHECK(a.calls == 1 && a.status == AB_SINK_OK);
    struct spool_view s = summary(&f);
    CHECK(s.events == 1);
    CHECK_STR(s.oldest_id, "1");
    fixture_close(&f);
}

static void test_acknowledged_is_not_spooled(void)
{
    struct fixture f;
    fixture_open(&f, 1 << 20);
    struct answer a = {0};
    submit_ready(&f, ACK, "2", &a);
    CHECK(a.calls == 1 && a.status == AB_SINK_OK);
    struct spool_view s = summary(&f);
    CHECK(s.events == 0);
    fixture_close(&f);
}

/* An event the broker can never take is answered 413 (TOO_BIG), not spooled: the
 * forwarder could never deliver it either. */
static void test_too_big_is_not_spooled(void)
{
    struct fixture f;
    fixture_open(&f, 1 << 20);
    struct answer a = {0};
    submit_ready(&f, TOO_BIG, "big", &a);
    CHECK(a.calls == 1 && a.status == AB_SINK_TOO_BIG);
    struct spool_view s = summary(&f);
    CHECK(s.events == 0);
    fixture_close(&f);
}

/* The spool's answer has the --ack-timeout deadline of every sink (core/pending.h): here
 * before --spool-after, so the webhook gets TIMEOUT at the deadline, exactly once. */
static void test_answer_has_the_ack_deadline(void)
{
    struct fixture f;
    fixture_open_ack(&f, 1 << 20, 100);
    struct answer a = {0};
    submit_ready(&f, HOLD, "late", &a);
    CHECK(a.calls == 1 && a.status == AB_SINK_TIMEOUT);
    run_for(f.base, 300); /* --spool-after spools it: no second answer */
    CHECK(a.calls == 1);
    fixture_close(&f);
}

/* No answer within --spool-after: spooled and answered 200; the late broker ack that
 * follows is not a second answer. */
static void test_no_ack_within_spool_after_is_spooled(void)
{
    struct fixture f;
    fixture_open(&f, 1 << 20);
    mode = HOLD;
    mock_ready = 0;
    struct answer a = {0};
    CHECK(submit(&f, "3", &a) == 0);
    run_for(f.base, 100);
    CHECK(a.calls == 0);
    wait_answers(f.base, &a, 1);
    CHECK(a.calls == 1 && a.status == AB_SINK_OK);
    held[0].cb(AB_SINK_OK, NULL, held[0].opaque); /* the late ack */
    n_held = 0;
    CHECK(a.calls == 1);
    struct spool_view s = summary(&f);
    CHECK(s.events == 1);
    fixture_close(&f);
}

/* Spooled events are forwarded in order once the broker is ready; full segments are
 * removed once every event in them was acknowledged. */
static void test_forwarded_in_order_and_segments_removed(void)
{
    struct fixture f;
    fixture_open(&f, 1 << 20);
    mode = REFUSE;
    mock_ready = 0;
    struct answer a[10] = {{0}};
    char id[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "f%d", i);
        CHECK(submit(&f, id, &a[i]) == 0);
        wait_answers(f.base, &a[i], 1);
    }
    for (int i = 0; i < 10; i++) {
        CHECK(a[i].calls == 1 && a[i].status == AB_SINK_OK);
    }
    CHECK(segments(f.dir) > 2); /* 100-byte segments */
    mode = ACK;
    mock_ready = 1;
    for (int round = 0; round < 100 && (n_submitted < 10 || segments(f.dir) > 1); round++) {
        run_for(f.base, 50);
    }
    CHECK(n_submitted == 10);
    for (int i = 0; i < 10 && i < n_submitted; i++) {
        snprintf(id, sizeof(id), "f%d", i);
        CHECK_STR(submitted[i], id);
    }
    CHECK(segments(f.dir) == 1); /* only the one being written */
    struct spool_view s = summary(&f);
    CHECK(s.events == 0);
    fixture_close(&f);
}

/* When the spool has no room: refused at once (503 by the caller), not ready. */
static void test_full_spool_refuses(void)
{
    struct fixture f;
    fixture_open(&f, 80); /* room for one event of about 55 bytes */
    mode = REFUSE;
    mock_ready = 0;
    struct answer a = {0}, b = {0};
    CHECK(submit(&f, "x1", &a) == 0);
    wait_answers(f.base, &a, 1);
    CHECK(a.calls == 1 && a.status == AB_SINK_OK);
    CHECK(ab_sink_ready(f.s));
    CHECK(submit(&f, "x2", &b) != 0);
    CHECK(b.calls == 0);
    CHECK(!ab_sink_ready(f.s));
    char d[512];
    f.s->ops->describe(f.s, d, sizeof(d));
    CHECK(strstr(d, "spool full") != NULL);
    fixture_close(&f);
}

/* The deadline the spool handed to its inner backend's global_init. */
static long inner_ack_ms;

static int capture_global_init(const struct ab_sink_conf *conf, void **shared, char *errstr,
                               size_t errlen)
{
    inner_ack_ms = conf->ack_timeout_ms;
    *shared = NULL;
    return 0;
}

/* A backend that keeps retrying a write on its own (Kafka's idempotent producer) is given
 * 5 minutes for its final answer, librdkafka's own default message.timeout.ms: a write in
 * flight when the broker went down for less than that is retried by the producer, and
 * recognised by the broker, instead of timing out as "possibly persisted" and being
 * forwarded a second time (bench/dedupe_scale.py found one such duplicate when this was
 * 30 s and the broker was down for 36 s). Any other backend keeps --ack-timeout. */
static void test_a_backend_that_retries_late_gets_five_minutes(void)
{
    for (int late = 0; late < 2; late++) {
        const struct ab_sink_ops ops = {.name = "capture",
                                        .default_route = "alma",
                                        .flags = late ? AB_SINK_RETRIES_LATE : 0,
                                        .global_init = capture_global_init,
                                        .open = mock_open,
                                        .submit = mock_submit,
                                        .close = mock_close};
        char dir[64], err[256] = "";
        snprintf(dir, sizeof(dir), "/tmp/ab_spool_XXXXXX");
        CHECK(mkdtemp(dir) != NULL);
        struct ab_spool_conf sc = {.opts = {.dir = dir, .after_ms = 200, .max_bytes = 1 << 20,
                                            .segment_bytes = 1 << 20},
                                   .inner = &ops,
                                   .inner_conf = {.ack_timeout_ms = 4000}};
        struct ab_sink_conf conf = {.opts = &sc, .ack_timeout_ms = 4000};
        void *shared = NULL;
        inner_ack_ms = -1;
        CHECK(ab_sink_spool.global_init(&conf, &shared, err, sizeof(err)) == 0);
        CHECK(late ? inner_ack_ms >= 5 * 60 * 1000 : inner_ack_ms == 4000);
        ab_sink_spool.global_free(shared);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        CHECK(system(cmd) == 0);
    }
}

int main(void)
{
    evthread_use_pthreads();
    ab_log_level_min = AB_LOG_ERROR;
    RUN(test_refused_is_spooled_and_answered_later);
    RUN(test_acknowledged_is_not_spooled);
    RUN(test_too_big_is_not_spooled);
    RUN(test_answer_has_the_ack_deadline);
    RUN(test_no_ack_within_spool_after_is_spooled);
    RUN(test_forwarded_in_order_and_segments_removed);
    RUN(test_full_spool_refuses);
    RUN(test_a_backend_that_retries_late_gets_five_minutes);
    return TEST_SUMMARY();
}
