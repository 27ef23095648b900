/* The pending-request list. See pending.h.
 *
 * An entry is LIVE (on the live list, in deadline order), then QUEUED (completed, on the
 * done queue waiting for its callback), then FINISHED (callback ran). A FINISHED entry that
 * the backend still holds sits on the held list until released. */
#include "pending.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "mem.h"

enum req_state { REQ_LIVE, REQ_QUEUED, REQ_FINISHED };

struct ab_pending_req {
    struct ab_pending *pl;
    struct ab_pending_req *prev, *next; /* live list, or held list once FINISHED */
    struct ab_pending_req *done_next;   /* done queue */
    int64_t deadline_ms;
    ab_sink_done_cb cb;
    void *opaque;
    enum req_state state;
    int status;
    int holds;
    int late_told;   /* the late watcher heard of this entry's late answer */
    int late_queued; /* 1 + a late answer that came before the timeout's callback ran */
    char *errstr;
    alignas(max_align_t) unsigned char extra[];
};

struct req_list {
    struct ab_pending_req *head, *tail;
};

struct ab_pending {
    struct event_base *base;
    long timeout_ms;
    struct req_list live, held;
    struct ab_pending_req *done_head, **done_tail;
    size_t n_live;
    struct event *timer;   /* armed for the head of the live list */
    struct event *done_ev; /* runs the done queue */
    int running;           /* inside run_done: a nested run would reorder */
    void (*on_expire)(void *arg);
    void *expire_arg;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void list_push(struct req_list *l, struct ab_pending_req *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail) {
        l->tail->next = r;
    } else {
        l->head = r;
    }
    l->tail = r;
}

static void list_unlink(struct req_list *l, struct ab_pending_req *r)
{
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        l->head = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    } else {
        l->tail = r->prev;
    }
    r->prev = r->next = NULL;
}

static ab_sink_done_cb late_match;
static void (*late_fn)(void *opaque, int status);

void ab_pending_watch_late(ab_sink_done_cb cb, void (*late)(void *opaque, int status))
{
    late_match = cb;
    late_fn = late;
}

/* Tell the late watcher (once) what became of an entry that timed out. */
static void tell_late(struct ab_pending_req *r, int status)
{
    if (late_fn && r->cb == late_match && r->state != REQ_LIVE && r->status == AB_SINK_TIMEOUT &&
        !r->late_told) {
        r->late_told = 1;
        late_fn(r->opaque, status);
    }
}

static void req_free(struct ab_pending_req *r)
{
    tell_late(r, -1);
    free(r->errstr);
    free(r);
}

/* Arm the timer for the head's deadline (none when the list is empty). */
static void arm(struct ab_pending *pl)
{
    if (pl->live.head == NULL) {
        evtimer_del(pl->timer);
        return;
    }
    int64_t ms = pl->live.head->deadline_ms - now_ms();
    if (ms < 0) {
        ms = 0;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(pl->timer, &tv);
}

/* Run the callbacks of the done queue in completion order. Entries completed by those
 * callbacks (a callback that submits again, and so on) join the queue and run too. */
static void run_done(struct ab_pending *pl)
{
    if (pl->running) {
        return;
    }
    pl->running = 1;
    while (pl->done_head) {
        struct ab_pending_req *r = pl->done_head;
        pl->done_head = r->done_next;
        if (pl->done_head == NULL) {
            pl->done_tail = &pl->done_head;
        }
        r->state = REQ_FINISHED;
        r->cb(r->status, r->errstr, r->opaque);
        if (r->late_queued) {
            tell_late(r, r->late_queued - 1);
        }
        if (r->holds > 0) {
            list_push(&pl->held, r);
        } else {
            req_free(r);
        }
    }
    pl->running = 0;
}

static void on_done_ev(evutil_socket_t fd, short what, void *arg)
{
    run_done(arg);
}

/* Loop thread: the head's deadline passed. Complete every entry whose deadline passed,
 * tell the backend, run the callbacks, re-arm for the new head. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct ab_pending *pl = arg;
    int64_t now = now_ms();
    int expired = 0;
    char msg[96];
    snprintf(msg, sizeof(msg), "no acknowledgement within %ld ms (--ack-timeout)",
             pl->timeout_ms);
    while (pl->live.head && pl->live.head->deadline_ms <= now) {
        ab_pending_complete(pl->live.head, AB_SINK_TIMEOUT, msg);
        expired++;
    }
    if (expired && pl->on_expire) {
        pl->on_expire(pl->expire_arg);
    }
    run_done(pl);
    arm(pl);
}

struct ab_pending *ab_pending_new(struct event_base *base, long timeout_ms)
{
    struct ab_pending *pl = ab_calloc(1, sizeof(*pl));
    pl->base = base;
    pl->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    pl->done_tail = &pl->done_head;
    pl->timer = evtimer_new(base, on_timer, pl);
    pl->done_ev = event_new(base, -1, 0, on_done_ev, pl);
    return pl;
}

void ab_pending_on_expire(struct ab_pending *pl, void (*fn)(void *arg), void *arg)
{
    pl->on_expire = fn;
    pl->expire_arg = arg;
}

struct ab_pending_req *ab_pending_add(struct ab_pending *pl, ab_sink_done_cb cb, void *opaque,
                                      size_t extra)
{
    struct ab_pending_req *r = ab_calloc(1, sizeof(*r) + extra);
    r->pl = pl;
    r->cb = cb;
    r->opaque = opaque;
    r->holds = 1;
    r->state = REQ_LIVE;
    r->deadline_ms = now_ms() + pl->timeout_ms;
    int was_empty = pl->live.head == NULL;
    list_push(&pl->live, r);
    pl->n_live++;
    if (was_empty) {
        arm(pl);
    }
    return r;
}

void *ab_pending_extra(struct ab_pending_req *r)
{
    return r->extra;
}

void ab_pending_cancel(struct ab_pending_req *r)
{
    struct ab_pending *pl = r->pl;
    if (r->state == REQ_LIVE) {
        list_unlink(&pl->live, r);
        pl->n_live--;
        req_free(r);
    }
}

void ab_pending_complete(struct ab_pending_req *r, int status, const char *errstr)
{
    struct ab_pending *pl = r->pl;
    if (r->state != REQ_LIVE) {
        if (r->state == REQ_FINISHED) {
            tell_late(r, status); /* the timeout's callback ran: a late answer */
        } else if (r->late_queued == 0) {
            r->late_queued = 1 + status; /* told once the timeout's callback has run */
        }
        return;
    }
    list_unlink(&pl->live, r);
    pl->n_live--;
    r->state = REQ_QUEUED;
    r->status = status;
    r->errstr = errstr ? ab_strdup(errstr) : NULL;
    r->done_next = NULL;
    int wake = pl->done_head == NULL;
    *pl->done_tail = r;
    pl->done_tail = &r->done_next;
    if (wake && !pl->running) {
        event_active(pl->done_ev, EV_READ, 0);
    }
}

int ab_pending_is_complete(const struct ab_pending_req *r)
{
    return r->state != REQ_LIVE;
}

void ab_pending_hold(struct ab_pending_req *r)
{
    r->holds++;
}

void ab_pending_release(struct ab_pending_req *r)
{
    if (--r->holds > 0 || r->state != REQ_FINISHED) {
        return; /* a LIVE or QUEUED entry is freed after its callback */
    }
    list_unlink(&r->pl->held, r);
    req_free(r);
}

void ab_pending_done(struct ab_pending_req *r, int status, const char *errstr)
{
    ab_pending_complete(r, status, errstr);
    ab_pending_release(r);
}

size_t ab_pending_count(const struct ab_pending *pl)
{
    return pl->n_live;
}

void ab_pending_flush(struct ab_pending *pl)
{
    run_done(pl);
}

void ab_pending_close(struct ab_pending *pl, int status, const char *errstr)
{
    run_done(pl); /* answers already in keep their status */
    while (pl->live.head) {
        ab_pending_complete(pl->live.head, status, errstr);
    }
    evtimer_del(pl->timer);
    run_done(pl);
    event_del(pl->done_ev);
}

void ab_pending_free(struct ab_pending *pl)
{
    if (pl == NULL) {
        return;
    }
    ab_pending_close(pl, AB_SINK_CLOSED, "sink closed");
    while (pl->held.head) {
        struct ab_pending_req *r = pl->held.head;
        list_unlink(&pl->held, r);
        req_free(r);
    }
    event_free(pl->timer);
    event_free(pl->done_ev);
    free(pl);
}
