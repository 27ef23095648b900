/* Tests for core/pending.c: the completion rules of the sink contract that every backend
 * gets from its pending list. Exactly once, later (never inside the completing call),
 * TIMEOUT at the deadline and the late answer ignored, CLOSED on close, holds. */
#include "pending.h"

#include "loop.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <event2/event.h>

struct done {
    int calls;
    int status;
    char err[128];
    int order;
};

static int completing; /* set around calls that complete: a callback inside breaks the rule */
static int inside_calls;
static int order_counter;

static void on_done(int status, const char *errstr, void *opaque)
{
    struct done *d = opaque;
    inside_calls += completing;
    d->calls++;
    d->status = status;
    d->order = ++order_counter;
    snprintf(d->err, sizeof(d->err), "%s", errstr ? errstr : "");
}

static void complete(struct ab_pending_req *r, int status, const char *err)
{
    completing = 1;
    ab_pending_done(r, status, err);
    completing = 0;
}

static void test_exactly_once_later_in_order(void)
{
    struct event_base *base = event_base_new();
    struct ab_pending *pl = ab_pending_new(base, 5000);
    struct done d[3] = {{0}};
    struct ab_pending_req *r[3];
    inside_calls = 0;
    order_counter = 0;
    for (int i = 0; i < 3; i++) {
        r[i] = ab_pending_add(pl, on_done, &d[i], 0);
    }
    CHECK(ab_pending_count(pl) == 3);
    complete(r[1], AB_SINK_OK, NULL);
    complete(r[0], AB_SINK_ERROR, "refused");
    CHECK(d[0].calls == 0 && d[1].calls == 0); /* later, not inside */
    CHECK(ab_pending_count(pl) == 1);
    run_for(base, 20);
    CHECK(d[1].calls == 1 && d[1].status == AB_SINK_OK && d[1].order == 1);
    CHECK(d[0].calls == 1 && d[0].status == AB_SINK_ERROR && d[0].order == 2);
    CHECK_STR(d[0].err, "refused");
    CHECK(d[2].calls == 0);
    ab_pending_close(pl, AB_SINK_CLOSED, "closed");
    CHECK(d[2].calls == 1 && d[2].status == AB_SINK_CLOSED);
    CHECK_STR(d[2].err, "closed");
    ab_pending_free(pl); /* r[2] is still held by the "backend": freed here */
    CHECK(inside_calls == 0);
    for (int i = 0; i < 3; i++) {
        CHECK(d[i].calls == 1);
    }
    event_base_free(base);
}

static int expire_calls;
static void on_expire(void *arg)
{
    struct ab_pending *pl = arg;
    expire_calls++;
    CHECK(ab_pending_count(pl) == 0 || ab_pending_count(pl) == 1);
}

static void test_timeout_once_and_late_answer_ignored(void)
{
    struct event_base *base = event_base_new();
    struct ab_pending *pl = ab_pending_new(base, 100);
    ab_pending_on_expire(pl, on_expire, pl);
    struct done a = {0}, b = {0}, c = {0};
    expire_calls = 0;
    int64_t t0 = now_ms();
    struct ab_pending_req *ra = ab_pending_add(pl, on_done, &a, 0);
    struct ab_pending_req *rb = ab_pending_add(pl, on_done, &b, 0);
    run_for(base, 60);
    int64_t tc = now_ms();
    struct ab_pending_req *rc = ab_pending_add(pl, on_done, &c, 0); /* deadline ~t0+160 */
    complete(rb, AB_SINK_OK, NULL); /* answered before its deadline */
    while (a.calls == 0 && now_ms() - t0 < 2000) {
        run_for(base, 5);
    }
    int64_t took = now_ms() - t0;
    CHECK(took >= 95 && took < 2000);
    CHECK(a.calls == 1 && a.status == AB_SINK_TIMEOUT);
    CHECK(strstr(a.err, "100 ms") != NULL);
    CHECK(b.calls == 1 && b.status == AB_SINK_OK);
    /* its own deadline is later (unless a loaded machine paused this thread past it) */
    CHECK(c.calls == 0 || now_ms() - tc >= 100);
    complete(ra, AB_SINK_OK, NULL); /* the late answer: ignored, entry freed */
    while (c.calls == 0 && now_ms() - t0 < 2000) {
        run_for(base, 5);
    }
    CHECK(now_ms() - t0 >= 150);
    CHECK(c.calls == 1 && c.status == AB_SINK_TIMEOUT);
    run_for(base, 30);
    CHECK(a.calls == 1 && a.status == AB_SINK_TIMEOUT);
    CHECK(expire_calls == 2);
    complete(rc, AB_SINK_ERROR, "late"); /* frees it */
    ab_pending_free(pl);
    event_base_free(base);
}

static void test_holds_and_cancel(void)
{
    struct event_base *base = event_base_new();
    struct ab_pending *pl = ab_pending_new(base, 5000);
    struct done d = {0}, never = {0};
    /* two commands answer for one entry (XADD and WAIT): the first answer wins */
    struct ab_pending_req *r = ab_pending_add(pl, on_done, &d, 16);
    unsigned char *extra = ab_pending_extra(r);
    CHECK(extra[0] == 0 && extra[15] == 0);
    ab_pending_hold(r);
    ab_pending_complete(r, AB_SINK_ERROR, "first");
    CHECK(ab_pending_is_complete(r));
    ab_pending_release(r);
    run_for(base, 10);
    CHECK(d.calls == 1 && d.status == AB_SINK_ERROR);
    ab_pending_done(r, AB_SINK_OK, NULL); /* the second answer, then the last hold goes */
    run_for(base, 10);
    CHECK(d.calls == 1 && d.status == AB_SINK_ERROR);
    /* a refused submission is taken back without a callback */
    struct ab_pending_req *x = ab_pending_add(pl, on_done, &never, 0);
    ab_pending_cancel(x);
    CHECK(ab_pending_count(pl) == 0);
    ab_pending_close(pl, AB_SINK_CLOSED, "closed");
    CHECK(never.calls == 0);
    ab_pending_free(pl);
    event_base_free(base);
}

/* A callback may submit again: the new entry completes later, never inside. */
struct resubmit {
    struct ab_pending *pl;
    struct done second;
    struct ab_pending_req *r2;
};

static void on_first(int status, const char *errstr, void *opaque)
{
    struct resubmit *rs = opaque;
    rs->r2 = ab_pending_add(rs->pl, on_done, &rs->second, 0);
    completing = 1;
    ab_pending_done(rs->r2, AB_SINK_OK, NULL);
    completing = 0;
}

static void test_callback_submits_again(void)
{
    struct event_base *base = event_base_new();
    struct resubmit rs = {.pl = ab_pending_new(base, 5000)};
    inside_calls = 0;
    struct ab_pending_req *r = ab_pending_add(rs.pl, on_first, &rs, 0);
    ab_pending_done(r, AB_SINK_OK, NULL);
    run_for(base, 20);
    CHECK(rs.second.calls == 1 && rs.second.status == AB_SINK_OK);
    CHECK(inside_calls == 0);
    ab_pending_free(rs.pl);
    event_base_free(base);
}

/* Many entries, one timer: every one times out exactly once, in order. */
static void test_many_expire_in_order(void)
{
    enum { N = 2000 };
    struct event_base *base = event_base_new();
    struct ab_pending *pl = ab_pending_new(base, 50);
    static struct done d[N];
    memset(d, 0, sizeof(d));
    order_counter = 0;
    for (int i = 0; i < N; i++) {
        ab_pending_add(pl, on_done, &d[i], 0);
    }
    int64_t t0 = now_ms();
    while (ab_pending_count(pl) > 0 && now_ms() - t0 < 3000) {
        run_for(base, 5);
    }
    run_for(base, 10);
    int in_order = 1;
    for (int i = 0; i < N; i++) {
        CHECK(d[i].calls == 1 && d[i].status == AB_SINK_TIMEOUT);
        in_order &= d[i].order == i + 1;
    }
    CHECK(in_order);
    ab_pending_free(pl); /* frees every entry still held */
    event_base_free(base);
}

int main(void)
{
    RUN(test_exactly_once_later_in_order);
    RUN(test_timeout_once_and_late_answer_ignored);
    RUN(test_holds_and_cancel);
    RUN(test_callback_submits_again);
    RUN(test_many_expire_in_order);
    return TEST_SUMMARY();
}
