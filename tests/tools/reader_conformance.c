/* The shared conformance test of the contract's read side (core/sink.h), run against a real
 * backend by tests/e2e/test_reader_conformance.py:
 *
 *   reader_conformance [the daemon's sink options: --sink, --file, --kafka-brokers, --redis,
 *                       --route ...]
 *
 * Through the contract only (the backend is found by name in the registry), it
 *  1. writes N events with the backend's own writer and waits for every acknowledgement;
 *  2. reads from a time just before they were written: exactly the same N lines come back,
 *     in the order written (one partition, one stream, one file), each with a printable
 *     position and, where the backend keeps one, the right id beside it;
 *  3. reads again from the position of event K: exactly events K+1..N come back;
 *  4. with that reader at the end (AB_READ_IDLE), writes M more: they come to the same
 *     reader while it waits, and a reader opened from the last position sees nothing more;
 *  5. a reader opened at the end of a route that holds nothing says AB_READ_IDLE, no error.
 * Prints one line per check and exits 0 when every check held, 1 otherwise. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "config.h"
#include "event.h"
#include "log.h"
#include "mem.h"
#include "route.h"
#include "sink.h"
#include "sinks/registry.h"

#define N 40
#define K 17
#define M 5
#define READ_MS 30000

extern char **environ;

static int failures;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            failures++;                                                                        \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                             \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
        }                                                                                      \
    } while (0)

struct writer {
    const struct ab_sink_ops *ops;
    struct ab_sink_conf *conf;
    struct event_base *base;
    struct ab_sink *sink;
    struct ab_route *route;
    int acked, failed;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_done(int status, const char *errstr, void *opaque)
{
    struct writer *w = opaque;
    if (status == AB_SINK_OK) {
        w->acked++;
    } else {
        w->failed++;
        printf("write failed: %s\n", errstr ? errstr : ab_sink_status_str(status));
    }
}

/* A webhook with id `id`, its CloudEvent built by the daemon's own normaliser. */
static struct ab_event *make_event(const char *id)
{
    char body[512], err[256], now[32];
    struct ab_event *ev = NULL;
    time_t t = time(NULL);
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    snprintf(body, sizeof(body),
             "{\"id\":\"%s\",\"action\":\"LOAN\",\"institution\":{\"value\":\"01AB_INST\"},"
             "\"event\":{\"value\":\"LOAN_CREATED\"},\"time\":\"%s\","
             "\"item_loan\":{\"loan_id\":%s,\"note\":\"a \\\"quoted\\\" \\u00e9 note\"}}",
             id, now, id);
    if (ab_event_from_body(AB_FORMAT_JSON, body, strlen(body), &ev, err, sizeof(err)) != 0) {
        printf("cannot build an event: %s\n", err);
        exit(2);
    }
    return ev;
}

/* Write events [from, to) of evs and wait for every acknowledgement. */
static int write_events(struct writer *w, struct ab_event **evs, int from, int to)
{
    int want = w->acked + (to - from);
    for (int i = from; i < to; i++) {
        char *route = ab_route_expand(w->route, evs[i]);
        struct ab_sink_msg m = {.id = evs[i]->id, .type = evs[i]->type,
                                .source = evs[i]->source, .route = route,
                                .value = evs[i]->json, .value_len = evs[i]->json_len,
                                .event = evs[i]};
        int64_t until = wall_ms() + 20000;
        while (w->ops->submit(w->sink, &m, on_done, w) != 0 && wall_ms() < until) {
            struct timeval tv = {0, 100000};
            event_base_loopexit(w->base, &tv);
            event_base_dispatch(w->base); /* not connected yet: let it connect */
        }
        free(route);
    }
    int64_t until = wall_ms() + 60000;
    while (w->acked + w->failed < want && wall_ms() < until) {
        event_base_loop(w->base, EVLOOP_ONCE);
    }
    return w->acked == want ? 0 : -1;
}

static int printable(const char *s)
{
    for (; s && *s; s++) {
        if (!isprint((unsigned char)*s)) {
            return 0;
        }
    }
    return s != NULL;
}

/* Read with r until `want` events came or READ_MS passed; the positions go to pos[]. */
static int read_events(struct ab_sink_reader *r, char **lines, char **pos, const char **ids,
                       int want)
{
    int got = 0;
    char err[512];
    int64_t until = wall_ms() + READ_MS;
    while (got < want && wall_ms() < until) {
        struct ab_read_event ev;
        int rc = ab_reader_next(r, &ev, 1000, err, sizeof(err));
        if (rc == AB_READ_ERROR) {
            printf("read error: %s\n", err);
            continue;
        }
        if (rc == AB_READ_IDLE) {
            continue;
        }
        lines[got] = ab_strndup(ev.value, ev.len);
        pos[got] = ab_strdup(ev.position ? ev.position : "");
        ids[got] = NULL;
        if (ev.id) {
            static char idbuf[N + M][64];
            snprintf(idbuf[got % (N + M)], sizeof(idbuf[0]), "%s", ev.id);
            ids[got] = idbuf[got % (N + M)];
        }
        got++;
    }
    return got;
}

static void free_all(char **v, int n)
{
    for (int i = 0; i < n; i++) {
        free(v[i]);
        v[i] = NULL;
    }
}

/* The lines read are evs[first..first+n), in that order. */
static void same_lines(const char *what, char **lines, int n, struct ab_event **evs, int first)
{
    for (int i = 0; i < n; i++) {
        const struct ab_event *e = evs[first + i];
        int same = strlen(lines[i]) == e->json_len && memcmp(lines[i], e->json, e->json_len) == 0;
        CHECK(same, "%s: event %d differs:\n  wrote %s\n  read  %s", what, first + i, e->json,
              lines[i]);
        if (!same) {
            return;
        }
    }
    printf("ok   %s: %d events, byte for byte, in order\n", what, n);
}

int main(int argc, char **argv)
{
    struct ab_config cfg;
    struct ab_sink_setup setup;
    struct writer w = {0};
    char err[1024];
    void *shared = NULL;
    struct ab_event *evs[N + M];
    char *lines[N + M] = {0}, *pos[N + M] = {0};
    const char *ids[N + M];

    evthread_use_pthreads();
    ab_log_level_min = AB_LOG_ERROR + 1;
    if (ab_config_load(&cfg, ab_sinks, argc, argv, environ, err, sizeof(err)) != AB_CONFIG_OK) {
        fprintf(stderr, "reader_conformance: %s\n", err);
        return 2;
    }
    w.ops = ab_sink_reader_find(cfg.sink, "reader_conformance", err, sizeof(err));
    if (w.ops == NULL) {
        fprintf(stderr, "reader_conformance: %s\n", err);
        return 2;
    }
    ab_sink_setup_init(&setup, &cfg, w.ops);
    w.conf = &setup.conf;
    w.route = ab_route_compile(cfg.route ? cfg.route : w.ops->default_route, err, sizeof(err));
    w.base = event_base_new();
    if (w.route == NULL ||
        (w.ops->global_init && w.ops->global_init(w.conf, &shared, err, sizeof(err)) != 0) ||
        (w.sink = w.ops->open(w.conf, shared, w.base, err, sizeof(err))) == NULL) {
        fprintf(stderr, "reader_conformance: %s\n", err);
        return 2;
    }
    /* events carry their time in whole seconds (the file's reader goes by it): start the
     * reading a second before the second they were made in */
    int64_t t0 = wall_ms();
    int64_t since = t0 - t0 % 1000 - 1000;
    int64_t base_id = t0 * 1000 + (getpid() % 1000);
    for (int i = 0; i < N + M; i++) {
        char id[32];
        snprintf(id, sizeof(id), "%" PRId64, base_id * 100 + i);
        evs[i] = make_event(id);
    }
    char *route = ab_route_expand(w.route, evs[0]);

    /* 1. write */
    CHECK(write_events(&w, evs, 0, N) == 0, "%d of %d acknowledged", w.acked, N);

    /* 2. read back from a time just before */
    struct ab_read_from from = {.route = *route ? route : NULL, .since_ms = since};
    struct ab_sink_reader *r = w.ops->reader_open(w.conf, &from, err, sizeof(err));
    CHECK(r != NULL, "reader_open: %s", err);
    if (r == NULL) {
        return 1;
    }
    int got = read_events(r, lines, pos, ids, N);
    CHECK(got == N, "read %d of %d", got, N);
    same_lines("read from a time", lines, got, evs, 0);
    int ok = 1;
    for (int i = 0; i < got; i++) {
        ok &= printable(pos[i]) && (i == 0 || strcmp(pos[i], pos[i - 1]) != 0);
        ok &= ids[i] == NULL || strcmp(ids[i], evs[i]->id) == 0;
    }
    CHECK(ok, "positions printable and distinct, ids beside the events right");
    if (ok) {
        printf("ok   positions printable and distinct (e.g. \"%s\"), ids %s\n", pos[0],
               ids[0] ? "beside the events right" : "only in the events");
    }
    ab_reader_close(r);
    char *resume_at = ab_strdup(got > K ? pos[K - 1] : "");
    free_all(lines, got);
    free_all(pos, got);

    /* 3. resume from event K's position */
    from = (struct ab_read_from){.route = from.route, .position = resume_at};
    r = w.ops->reader_open(w.conf, &from, err, sizeof(err));
    CHECK(r != NULL, "reader_open at %s: %s", resume_at, err);
    if (r == NULL) {
        return 1;
    }
    got = read_events(r, lines, pos, ids, N - K);
    CHECK(got == N - K, "resumed: read %d of %d", got, N - K);
    same_lines("resumed after a position", lines, got, evs, K);
    free_all(lines, got);
    free_all(pos, got);

    /* 4. at the end: idle, then the next writes come to the same reader */
    struct ab_read_event ev;
    int rc = ab_reader_next(r, &ev, 0, err, sizeof(err));
    CHECK(rc == AB_READ_IDLE, "at the end: %d (%s)", rc, rc < 0 ? err : "an event");
    CHECK(write_events(&w, evs, N, N + M) == 0, "the later %d acknowledged", M);
    got = read_events(r, lines, pos, ids, M);
    CHECK(got == M, "followed: read %d of %d", got, M);
    same_lines("followed while waiting", lines, got, evs, N);
    char *last = ab_strdup(got > 0 ? pos[got - 1] : "");
    free_all(lines, got);
    free_all(pos, got);
    ab_reader_close(r);
    from.position = last;
    r = w.ops->reader_open(w.conf, &from, err, sizeof(err));
    CHECK(r != NULL && ab_reader_next(r, &ev, 1000, err, sizeof(err)) == AB_READ_IDLE,
          "from the last position: nothing more");
    ab_reader_close(r);

    /* 5. an empty route (file: the whole file from now on) */
    if (from.route != NULL) {
        char empty[128];
        snprintf(empty, sizeof(empty), "%s-empty-%" PRId64, route, base_id);
        from = (struct ab_read_from){.route = empty, .since_ms = t0};
        r = w.ops->reader_open(w.conf, &from, err, sizeof(err));
        CHECK(r != NULL, "reader_open on an empty route: %s", err);
        rc = r ? ab_reader_next(r, &ev, 500, err, sizeof(err)) : AB_READ_ERROR;
        CHECK(rc == AB_READ_IDLE, "an empty route is idle: %d %s", rc, rc < 0 ? err : "");
        ab_reader_close(r);
    }

    w.ops->close(w.sink, 5000);
    if (w.ops->global_free) {
        w.ops->global_free(shared);
    }
    for (int i = 0; i < N + M; i++) {
        ab_event_free(evs[i]);
    }
    free(route);
    free(resume_at);
    free(last);
    ab_route_free(w.route);
    event_base_free(w.base);
    ab_config_free(&cfg);
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
