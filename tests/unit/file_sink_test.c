/* The sink contract, checked on the file sink: submit() either fails at once or the
 * callback runs exactly once, later (never inside submit), on the submitting loop thread;
 * close() completes what is left. Plus the file sink's own promises: one line per event,
 * appended, and a path that cannot be opened is a start-up error. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "log.h"
#include "sink.h"
#include "sinks/file.h"
#include "sinks/kafka.h"
#include "sinks/redis.h"
#include "sinks/registry.h"
#include "test.h"

struct probe {
    int calls;
    int status;
    int in_submit;
    int wrong_thread;
    pthread_t loop_thread;
};

static int submitting;

static void on_done(int status, const char *errstr, void *opaque)
{
    struct probe *p = opaque;
    p->calls++;
    p->status = status;
    p->in_submit |= submitting;
    p->wrong_thread |= !pthread_equal(pthread_self(), p->loop_thread);
}

/* The file sink's configuration for path, in *opts, handed over by *cfg. */
static void config_for(struct ab_sink_conf *cfg, struct ab_file_conf *opts, const char *path)
{
    *opts = (struct ab_file_conf){.path = (char *)path, .fsync = 1};
    *cfg = (struct ab_sink_conf){.opts = opts, .ack_timeout_ms = 4000};
}

/* A file sink on a fresh temporary file and event base. */
struct fixture {
    char path[64];
    struct ab_file_conf opts;
    struct ab_sink_conf cfg;
    void *shared;
    struct event_base *base;
    struct ab_sink *s;
};

static void fixture_open(struct fixture *f)
{
    char err[256];
    snprintf(f->path, sizeof(f->path), "/tmp/ab_file_sink_XXXXXX");
    int fd = mkstemp(f->path);
    close(fd);
    config_for(&f->cfg, &f->opts, f->path);
    f->shared = NULL;
    CHECK(ab_sink_file.global_init(&f->cfg, &f->shared, err, sizeof(err)) == 0);
    f->base = event_base_new();
    f->s = ab_sink_file.open(&f->cfg, f->shared, f->base, err, sizeof(err));
    CHECK(f->s != NULL);
}

/* Close the sink (if still open), free everything, remove the file. */
static void fixture_close(struct fixture *f)
{
    if (f->s) {
        ab_sink_file.close(f->s, 2000);
    }
    ab_sink_file.global_free(f->shared);
    event_base_free(f->base);
    unlink(f->path);
    char lock[96];
    snprintf(lock, sizeof(lock), "%s.lock", f->path);
    unlink(lock);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

static void run_loop_until(struct event_base *base, struct probe *p, int n, int want, int rounds)
{
    for (int i = 0; i < rounds; i++) {
        int done = 0;
        for (int k = 0; k < n; k++) {
            done += p[k].calls > 0;
        }
        if (done >= want) {
            return;
        }
        struct timeval tv = {0, 5000};
        event_base_once(base, -1, EV_TIMEOUT, on_timeout, base, &tv);
        event_base_dispatch(base);
    }
}

static void test_contract_exactly_once_later_on_loop_thread(void)
{
    struct fixture f;
    fixture_open(&f);
    CHECK(ab_sink_ready(f.s));
    enum { N = 50 };
    struct probe p[N];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < N; i++) {
        char value[64];
        int len = snprintf(value, sizeof(value), "{\"id\":\"%d\"}", i);
        struct ab_sink_msg m = {.id = "x", .value = value, .value_len = (size_t)len};
        p[i].loop_thread = pthread_self();
        submitting = 1;
        CHECK(ab_sink_submit(f.s, &m, on_done, &p[i]) == 0);
        submitting = 0;
        CHECK(p[i].calls == 0); /* never from inside submit */
    }
    run_loop_until(f.base, p, N, N, 1000);
    /* a little longer (50 ms): no second call may arrive */
    run_loop_until(f.base, p, N, N + 1, 10);
    for (int i = 0; i < N; i++) {
        CHECK(p[i].calls == 1);
        CHECK(p[i].status == AB_SINK_OK);
        CHECK(!p[i].in_submit);
        CHECK(!p[i].wrong_thread);
    }
    FILE *in = fopen(f.path, "r");
    char line[128];
    int n = 0;
    while (in && fgets(line, sizeof(line), in)) {
        char want[64];
        snprintf(want, sizeof(want), "{\"id\":\"%d\"}\n", n);
        CHECK_STR(line, want); /* one line per event, in submission order */
        n++;
    }
    CHECK(n == N);
    if (in) {
        fclose(in);
    }
    fixture_close(&f);
}

static void test_close_completes_outstanding(void)
{
    struct fixture f;
    fixture_open(&f);
    struct probe p[10];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < 10; i++) {
        struct ab_sink_msg m = {.id = "x", .value = "{}", .value_len = 2};
        p[i].loop_thread = pthread_self();
        CHECK(ab_sink_submit(f.s, &m, on_done, &p[i]) == 0);
    }
    ab_sink_file.close(f.s, 2000); /* without running the loop: close must complete them */
    f.s = NULL;
    for (int i = 0; i < 10; i++) {
        CHECK(p[i].calls == 1);
        CHECK(p[i].status == AB_SINK_OK || p[i].status == AB_SINK_CLOSED);
    }
    fixture_close(&f);
}

static void test_unopenable_path_is_startup_error(void)
{
    struct ab_file_conf opts;
    struct ab_sink_conf cfg;
    config_for(&cfg, &opts, "/nonexistent-dir/events.jsonl");
    char err[256] = "";
    void *shared = NULL;
    CHECK(ab_sink_file.global_init(&cfg, &shared, err, sizeof(err)) != 0);
    CHECK(strstr(err, "/nonexistent-dir/events.jsonl") != NULL);
    CHECK(strstr(err, "No such file") != NULL);
}

/* A file ending in a fragment after a crash: the next event starts on its own line. */
static void test_torn_tail_cut_at_start(void)
{
    struct fixture f;
    snprintf(f.path, sizeof(f.path), "/tmp/ab_file_sink_XXXXXX");
    int fd = mkstemp(f.path);
    CHECK(write(fd, "{\"id\":\"torn", 11) == 11);
    close(fd);
    char err[256], torn[96];
    config_for(&f.cfg, &f.opts, f.path);
    f.shared = NULL;
    CHECK(ab_sink_file.global_init(&f.cfg, &f.shared, err, sizeof(err)) == 0);
    f.base = event_base_new();
    f.s = ab_sink_file.open(&f.cfg, f.shared, f.base, err, sizeof(err));
    struct probe p = {.loop_thread = pthread_self()};
    struct ab_sink_msg m = {.id = "x", .value = "{\"id\":\"x\"}", .value_len = 10};
    CHECK(ab_sink_submit(f.s, &m, on_done, &p) == 0);
    run_loop_until(f.base, &p, 1, 1, 1000);
    CHECK(p.status == AB_SINK_OK);
    FILE *in = fopen(f.path, "r");
    char line[128] = "";
    CHECK(in && fgets(line, sizeof(line), in));
    CHECK_STR(line, "{\"id\":\"x\"}\n");
    CHECK(!fgets(line, sizeof(line), in));
    fclose(in);
    fixture_close(&f);
    snprintf(torn, sizeof(torn), "%s.torn", f.path);
    unlink(torn);
}

/* A second file sink on the same file is a start-up error naming the file and our pid. */
static void test_second_instance_refused(void)
{
    struct fixture f;
    fixture_open(&f);
    char err[512] = "", pid[32];
    void *other = NULL;
    CHECK(ab_sink_file.global_init(&f.cfg, &other, err, sizeof(err)) != 0);
    CHECK(strstr(err, f.path) != NULL);
    snprintf(pid, sizeof(pid), "pid %ld", (long)getpid());
    CHECK(strstr(err, pid) != NULL);
    fixture_close(&f);
}

/* Close instances while their writes are in flight, many rounds on several threads: every
 * callback exactly once, nothing touched after it is freed (run under TSan and ASan). */
struct stress {
    void *shared;
    struct ab_sink_conf *cfg;
    int bad;
};

static void on_stress_done(int status, const char *errstr, void *opaque)
{
    (*(int *)opaque)++;
}

static void *stress_thread(void *arg)
{
    struct stress *st = arg;
    char err[256];
    for (int r = 0; r < 50; r++) {
        struct event_base *base = event_base_new();
        struct ab_sink *s = ab_sink_file.open(st->cfg, st->shared, base, err, sizeof(err));
        int calls[30] = {0};
        for (int i = 0; i < 30; i++) {
            struct ab_sink_msg m = {.id = "x", .value = "{\"stress\":1}", .value_len = 12};
            st->bad += ab_sink_submit(s, &m, on_stress_done, &calls[i]) != 0;
        }
        ab_sink_file.close(s, r % 2);
        for (int i = 0; i < 30; i++) {
            st->bad += calls[i] != 1;
        }
        event_base_free(base);
    }
    return NULL;
}

static void test_close_while_in_flight_stress(void)
{
    struct fixture f;
    fixture_open(&f);
    ab_sink_file.close(f.s, 0);
    f.s = NULL;
    int level = ab_log_level_min;
    ab_log_level_min = AB_LOG_ERROR;
    struct stress st[3] = {{f.shared, &f.cfg, 0}, {f.shared, &f.cfg, 0}, {f.shared, &f.cfg, 0}};
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        pthread_create(&t[i], NULL, stress_thread, &st[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        CHECK(st[i].bad == 0);
    }
    fixture_close(&f);
    ab_log_level_min = level;
}

static void test_registry(void)
{
    CHECK(ab_sink_find("file") == &ab_sink_file);
    CHECK(ab_sink_find("kafka") == &ab_sink_kafka);
    CHECK(ab_sink_find("redis") == &ab_sink_redis);
    CHECK(ab_sink_find("nope") == NULL);
    CHECK(ab_sink_find(NULL) == NULL);
    CHECK_STR(ab_sink_status_str(AB_SINK_TIMEOUT), "timeout");
}

int main(void)
{
    evthread_use_pthreads();
    RUN(test_contract_exactly_once_later_on_loop_thread);
    RUN(test_close_completes_outstanding);
    RUN(test_unopenable_path_is_startup_error);
    RUN(test_torn_tail_cut_at_start);
    RUN(test_second_instance_refused);
    RUN(test_close_while_in_flight_stress);
    RUN(test_registry);
    return TEST_SUMMARY();
}
