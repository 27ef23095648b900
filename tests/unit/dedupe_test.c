/* Tests for core/dedupe.c (the guard, durations, keys) on the local store
 * (sinks/dedupe_file.c), and for the late answers of core/pending.c: copies on one worker
 * join the first, copies on another watch the store's claim, a success marks the key
 * stored before done runs, a failure releases it, a late success marks it; verdicts are
 * never delivered inside ab_dedupe_check; the local store survives a restart and forgets
 * after the window. */
#include "dedupe.h"
#include "dedupe_store.h"
#include "event.h"
#include "pending.h"
#include "route.h"

#include "fixtures.h"
#include "loop.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

struct verdict {
    int calls;
    int v;
    struct ab_dedupe_ticket *t;
};

static int checking; /* set around ab_dedupe_check: a verdict inside breaks the rule */
static int inside;

static void on_verdict(int v, struct ab_dedupe_ticket *t, void *opaque)
{
    struct verdict *r = opaque;
    inside += checking;
    r->calls++;
    r->v = v;
    r->t = t;
}

static void check(struct ab_dedupe_guard *g, const char *key, struct verdict *r)
{
    checking = 1;
    ab_dedupe_check(g, key, AB_DEDUPE_CAUSE_AFTER_ACK, on_verdict, r);
    checking = 0;
}

static int done_calls;
static void on_done(void *opaque)
{
    done_calls++;
}

static void setup_file(struct ab_dedupe_setup *s, long window_ms, long ack_ms);

/* Run base until cond or 2 s. */
#define RUN_UNTIL(base, cond)                                                                  \
    do {                                                                                       \
        int64_t until_ = now_ms() + 2000;                                                      \
        while (!(cond) && now_ms() < until_) {                                                 \
            run_for(base, 5);                                                                  \
        }                                                                                      \
    } while (0)

/* check, then run the loop until the verdict. */
static void check_wait(struct event_base *base, struct ab_dedupe_guard *g, const char *key,
                       struct verdict *r)
{
    check(g, key, r);
    RUN_UNTIL(base, r->calls);
}

static char dir[256];

/* A loop, the local store and a guard on it. */
#define FX_OPEN(window_ms, ack_ms)                                                             \
    struct event_base *base = event_base_new();                                                \
    struct ab_dedupe_setup s;                                                                  \
    setup_file(&s, (window_ms), (ack_ms));                                                     \
    char err[128];                                                                             \
    struct ab_dedupe_guard *g = ab_dedupe_guard_new(&s, base, err, sizeof(err))
#define FX_CLOSE()                                                                             \
    do {                                                                                       \
        ab_dedupe_guard_free(g);                                                               \
        teardown_file(&s);                                                                     \
        event_base_free(base);                                                                 \
    } while (0)

static void setup_file(struct ab_dedupe_setup *s, long window_ms, long ack_ms)
{
    *s = (struct ab_dedupe_setup){.ops = &ab_dedupe_file, .ack_timeout_ms = ack_ms};
    s->conf = (struct ab_dedupe_conf){.url = dir, .window_ms = window_ms, .claim_ms = 60000,
                                      .timeout_ms = 1000};
    char err[256] = "";
    CHECK(s->ops->global_init(&s->conf, &s->shared, err, sizeof(err)) == 0);
}

static void teardown_file(struct ab_dedupe_setup *s)
{
    s->ops->global_free(s->shared);
}

static void test_durations(void)
{
    CHECK(ab_dedupe_parse_duration("500ms") == 500);
    CHECK(ab_dedupe_parse_duration("10s") == 10000);
    CHECK(ab_dedupe_parse_duration("10") == 10000);
    CHECK(ab_dedupe_parse_duration("6h") == 6 * 3600000L);
    CHECK(ab_dedupe_parse_duration("48h") == 48 * 3600000L);
    CHECK(ab_dedupe_parse_duration("2d") == 2 * 86400000L);
    CHECK(ab_dedupe_parse_duration("1.5m") == 90000);
    const char *bad[] = {"", "h", "5x", "-1s", "0ms", "400d", "10 s", "ms"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(ab_dedupe_parse_duration(bad[i]) == -1);
    }
    char why[128];
    CHECK(ab_dedupe_check_duration("5x", why, sizeof(why)) == -1 && strstr(why, "6h"));
}

static struct ab_event *event_from(const char *path)
{
    size_t len = 0;
    char *body = read_file(path, &len);
    struct ab_event *ev = NULL;
    char err[256];
    CHECK(body && ab_event_from_body(AB_FORMAT_JSON, body, len, &ev, err, sizeof(err)) == 0);
    free(body);
    return ev;
}

static void test_keys(void)
{
    struct ab_dedupe_setup s = {0};
    char key[256];
    struct ab_event *loan = event_from("tests/fixtures/alma/loan_created.json");
    struct ab_event *job = event_from("tests/fixtures/alma/job_end_publishing_failed.json");
    if (loan == NULL || job == NULL) {
        return;
    }
    char want[256];
    ab_dedupe_key(&s, loan, key, sizeof(key));
    snprintf(want, sizeof(want), "%s/%s", loan->institution, loan->id); /* per institution */
    CHECK_STR(key, want);
    ab_dedupe_key(&s, job, key, sizeof(key));
    snprintf(want, sizeof(want), "%s/job:38205463100006421", job->institution);
    CHECK_STR(key, want); /* the job instance id, not the webhook id */
    /* a JSON number of 17 digits: kept as written (a double would merge neighbours) */
    static const char body[] =
        "{\"id\":\"1\",\"action\":\"JOB_END\",\"job_instance\":{\"name\":\"x,\\\"id\\\":7\","
        "\"job_info\":{\"id\":\"M53\"},\"id\":38205463100006423}}";
    struct ab_event *num = NULL;
    char err[128];
    CHECK(ab_event_from_body(AB_FORMAT_JSON, body, strlen(body), &num, err, sizeof(err)) == 0);
    if (num) {
        ab_dedupe_key(&s, num, key, sizeof(key));
        CHECK_STR(key, "job:38205463100006423");
        ab_event_free(num);
    }
    s.key = ab_route_compile("{id}", err, sizeof(err));
    ab_dedupe_key(&s, loan, key, sizeof(key));
    CHECK_STR(key, loan->id);
    ab_route_free(s.key);
    ab_event_free(loan);
    ab_event_free(job);
}

static void test_join_store_and_after_ack(void)
{
    FX_OPEN(60000, 1000);
    struct verdict a = {0}, b = {0}, c = {0};
    inside = 0;
    check(g, "k1", &a);
    CHECK(a.calls == 0); /* later, never inside */
    RUN_UNTIL(base, a.calls);
    CHECK(a.calls == 1 && a.v == AB_DEDUPE_WRITE && a.t);
    check(g, "k1", &b); /* same worker: joins the first, no verdict yet */
    run_for(base, 30);
    CHECK(b.calls == 0);
    done_calls = 0;
    ab_dedupe_outcome(a.t, 1, on_done, NULL);
    RUN_UNTIL(base, done_calls && b.calls);
    CHECK(done_calls == 1);
    CHECK(b.calls == 1 && b.v == AB_DEDUPE_SKIP_OK && b.t == NULL);
    check_wait(base, g, "k1", &c); /* after the 200 */
    CHECK(c.calls == 1 && c.v == AB_DEDUPE_SKIP_OK);
    CHECK(s.ops->held(s.shared) == 1);
    CHECK(inside == 0);
    FX_CLOSE();
}

static void test_failure_releases(void)
{
    FX_OPEN(60000, 1000);
    struct verdict a = {0}, b = {0}, c = {0};
    check_wait(base, g, "k2", &a);
    check(g, "k2", &b);
    ab_dedupe_outcome(a.t, 0, NULL, NULL);
    RUN_UNTIL(base, b.calls);
    CHECK(b.calls == 1 && b.v == AB_DEDUPE_SKIP_FAILED); /* the first failed: 503 */
    check_wait(base, g, "k2", &c); /* Alma's retry: the claim was released, it writes */
    CHECK(c.calls == 1 && c.v == AB_DEDUPE_WRITE);
    ab_dedupe_outcome(c.t, 1, NULL, NULL);
    run_for(base, 10);
    FX_CLOSE();
}

/* Another worker (another guard on the same store) watches the claim: a late success
 * answers it 200; a claim never resolved answers it 503 at its deadline. */
static void test_other_worker_watches_and_late_success(void)
{
    struct event_base *base = event_base_new();
    struct ab_dedupe_setup s;
    setup_file(&s, 60000, 400);
    char err[128];
    struct ab_dedupe_guard *g1 = ab_dedupe_guard_new(&s, base, err, sizeof(err));
    struct ab_dedupe_guard *g2 = ab_dedupe_guard_new(&s, base, err, sizeof(err));
    struct verdict a = {0}, b = {0}, c = {0}, d = {0};
    check_wait(base, g1, "k3", &a);
    ab_dedupe_outcome(a.t, -1, NULL, NULL); /* timed out: unknown, the claim stays */
    check(g2, "k3", &b);
    run_for(base, 120);
    CHECK(b.calls == 0); /* watching the claim */
    ab_dedupe_outcome(a.t, 1, NULL, NULL); /* the late success */
    RUN_UNTIL(base, b.calls);
    CHECK(b.calls == 1 && b.v == AB_DEDUPE_SKIP_OK);
    /* a claim that never resolves: 503 at the ack deadline */
    check_wait(base, g1, "k4", &c);
    int64_t t0 = now_ms();
    check_wait(base, g2, "k4", &d);
    CHECK(d.calls == 1 && d.v == AB_DEDUPE_SKIP_FAILED && now_ms() - t0 >= 350);
    ab_dedupe_outcome(c.t, 0, NULL, NULL);
    ab_dedupe_guard_free(g1);
    ab_dedupe_guard_free(g2);
    teardown_file(&s);
    event_base_free(base);
}

static void test_restart_remembers_then_window_forgets(void)
{
    FX_OPEN(1500, 1000);
    struct verdict a = {0}, b = {0}, c = {0};
    check_wait(base, g, "k5", &a);
    ab_dedupe_outcome(a.t, 1, NULL, NULL);
    run_for(base, 10);
    ab_dedupe_guard_free(g);
    teardown_file(&s); /* a restart: the table is gone, the files stay */
    setup_file(&s, 1500, 1000);
    g = ab_dedupe_guard_new(&s, base, err, sizeof(err));
    check_wait(base, g, "k5", &b);
    CHECK(b.calls == 1 && b.v == AB_DEDUPE_SKIP_OK);
    ab_dedupe_guard_free(g);
    teardown_file(&s);
    usleep(1600 * 1000); /* past the window */
    setup_file(&s, 1500, 1000);
    g = ab_dedupe_guard_new(&s, base, err, sizeof(err));
    check_wait(base, g, "k5", &c);
    CHECK(c.calls == 1 && c.v == AB_DEDUPE_WRITE);
    ab_dedupe_outcome(c.t, 0, NULL, NULL);
    FX_CLOSE();
}

/* core/pending.c: the late watcher hears a timed-out entry's late answer once, or -1 when
 * it is freed without one; other callbacks are not watched. */
static int late_calls, late_status;
static void on_late(void *opaque, int status)
{
    late_calls++;
    late_status = status;
}
static void on_watched(int status, const char *errstr, void *opaque)
{
    *(int *)opaque = status;
}

static void test_pending_late_answers(void)
{
    struct event_base *base = event_base_new();
    ab_pending_watch_late(on_watched, on_late);
    struct ab_pending *pl = ab_pending_new(base, 50);
    int st1 = -1, st2 = -1;
    struct ab_pending_req *r1 = ab_pending_add(pl, on_watched, &st1, 0);
    struct ab_pending_req *r2 = ab_pending_add(pl, on_watched, &st2, 0);
    RUN_UNTIL(base, st1 == AB_SINK_TIMEOUT && st2 == AB_SINK_TIMEOUT);
    CHECK(late_calls == 0);
    ab_pending_done(r1, AB_SINK_OK, NULL); /* the late success */
    CHECK(late_calls == 1 && late_status == AB_SINK_OK);
    ab_pending_release(r2); /* never answered */
    CHECK(late_calls == 2 && late_status == -1);
    CHECK(st1 == AB_SINK_TIMEOUT); /* the callback itself ran once */
    ab_pending_free(pl);
    ab_pending_watch_late(NULL, NULL);
    event_base_free(base);
}

/* The peek (spool inspect): states without claiming, in batches, through the query's own
 * loop; a stored key is STORED, a claimed one INFLIGHT, the rest NEW, and nothing changes. */
static void test_query_states(void)
{
    FX_OPEN(60000, 1000);
    struct verdict a = {0}, b = {0};
    check_wait(base, g, "q-stored", &a);
    done_calls = 0;
    ab_dedupe_outcome(a.t, 1, on_done, NULL);
    RUN_UNTIL(base, done_calls);
    check_wait(base, g, "q-claimed", &b);
    enum { N = AB_DEDUPE_PEEK_MAX + 3 }; /* two batches */
    static char names[N][32];
    const char *keys[N];
    int states[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "q-free-%d", i);
        keys[i] = names[i];
    }
    keys[1] = "q-stored";
    keys[N - 1] = "q-claimed";
    long held = s.ops->held(s.shared);
    struct ab_dedupe_query *q = ab_dedupe_query_new(&s, err, sizeof(err));
    CHECK(q != NULL);
    if (q) {
        CHECK(ab_dedupe_query_states(q, keys, N, states, err, sizeof(err)) == 0);
        CHECK(states[0] == AB_DEDUPE_NEW && states[N - 2] == AB_DEDUPE_NEW);
        CHECK(states[1] == AB_DEDUPE_STORED);
        CHECK(states[N - 1] == AB_DEDUPE_INFLIGHT);
        char d[200] = "";
        ab_dedupe_query_describe(q, d, sizeof(d));
        CHECK(strstr(d, "local store") != NULL);
        ab_dedupe_query_free(q);
    }
    CHECK(s.ops->held(s.shared) == held); /* asking claimed nothing */
    ab_dedupe_outcome(b.t, 0, NULL, NULL);
    FX_CLOSE();
}

int main(void)
{
    snprintf(dir, sizeof(dir), "file:/tmp/ab-dedupe-test-%d", (int)getpid());
    RUN(test_durations);
    RUN(test_keys);
    RUN(test_join_store_and_after_ack);
    RUN(test_failure_releases);
    RUN(test_other_worker_watches_and_late_success);
    RUN(test_restart_remembers_then_window_forgets);
    RUN(test_pending_late_answers);
    RUN(test_query_states);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir + 5);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", dir + 5);
    }
    return TEST_SUMMARY();
}
