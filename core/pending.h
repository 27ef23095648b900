/* The pending-request list of one sink instance: the single owner of the request deadline
 * and of the completion rules of the sink contract (sink.h), shared by every backend.
 *
 * A backend adds one entry per accepted submission and hands the entry to whatever answers
 * it later (a librdkafka message opaque, hiredis privdata, a file job). The list
 * guarantees, whatever the backend does:
 *  - the callback runs EXACTLY ONCE, LATER (from the list's own event, never from inside
 *    the call that completed the entry, so also never from inside submit), on the loop
 *    thread of the instance;
 *  - an entry not completed within the timeout (--ack-timeout) is completed with
 *    AB_SINK_TIMEOUT; the backend's answer that comes after that is ignored;
 *  - ab_pending_close() completes what is left with AB_SINK_CLOSED and runs every
 *    callback before it returns.
 *
 * Every entry of one list has the same timeout, so the entries are in deadline order
 * (FIFO) and one timer, armed for the head, serves the whole list.
 *
 * Memory: an entry stays allocated until its callback has run AND the backend has let go
 * of it (ab_pending_release, or ab_pending_done which completes and lets go), so a late
 * answer always finds it. ab_pending_free() frees whatever the backend still holds; call it
 * only once nothing can answer any more (producer destroyed, connection freed).
 *
 * Threads: everything on the loop thread that created the list. */
#ifndef AB_PENDING_H
#define AB_PENDING_H

#include <stddef.h>

#include "sink.h"

struct event_base;
struct ab_pending;
struct ab_pending_req;

/* A list on base whose entries time out after timeout_ms (>= 1). */
struct ab_pending *ab_pending_new(struct event_base *base, long timeout_ms);

/* Called once per timer round that expired entries, after they were completed with
 * AB_SINK_TIMEOUT and before their callbacks run (the Redis sink drops a stuck connection
 * there). Optional. */
void ab_pending_on_expire(struct ab_pending *pl, void (*fn)(void *arg), void *arg);

/* A new entry for one accepted submission, held once by the backend. `extra` bytes of
 * zeroed, suitably aligned space for the backend come with it (ab_pending_extra). */
struct ab_pending_req *ab_pending_add(struct ab_pending *pl, ab_sink_done_cb cb, void *opaque,
                                      size_t extra);
void *ab_pending_extra(struct ab_pending_req *r);
/* Take back an entry whose submission was refused after all (submit returns non-zero): it
 * is freed and its callback never runs. Only before anything else was done with it. */
void ab_pending_cancel(struct ab_pending_req *r);

/* Complete r with status (errstr is copied; NULL for none) unless it is complete already
 * (then nothing happens: the first answer wins). The callback runs later. */
void ab_pending_complete(struct ab_pending_req *r, int status, const char *errstr);
/* 1 once r is complete (answered, expired or closed). */
int ab_pending_is_complete(const struct ab_pending_req *r);

/* One more hold by the backend (a second command that answers for the same entry). */
void ab_pending_hold(struct ab_pending_req *r);
/* The backend lets go of r; the last hold of a completed entry frees it once its callback
 * has run. */
void ab_pending_release(struct ab_pending_req *r);
/* ab_pending_complete then ab_pending_release: the usual single answer. */
void ab_pending_done(struct ab_pending_req *r, int status, const char *errstr);

/* Entries not completed yet. */
size_t ab_pending_count(const struct ab_pending *pl);

/* Run the callbacks of completed entries now (close paths, where the loop no longer runs). */
void ab_pending_flush(struct ab_pending *pl);

/* Complete every entry left with status (AB_SINK_CLOSED) and errstr, and run every
 * callback due, before returning. Entries the backend still holds stay allocated. */
void ab_pending_close(struct ab_pending *pl, int status, const char *errstr);

/* Late answers, for deduplication (core/dedupe.h): for every entry whose callback is cb
 * and that was completed with AB_SINK_TIMEOUT, late(opaque, status) runs exactly once more,
 * on the loop thread: with the backend's own answer when it comes after all, or with -1
 * when the entry is freed without one. The caller keeps opaque alive until then. Start-up
 * thread, before any list exists; one watcher per process. */
void ab_pending_watch_late(ab_sink_done_cb cb, void (*late)(void *opaque, int status));

/* Close (if not closed) and free the list and every entry, held or not. NULL is a no-op. */
void ab_pending_free(struct ab_pending *pl);

#endif
