/* almabridge wait (cmd/wait.c): what is awaited, and the matching of the JOB_END events
 * read from the sink or answered by Alma's API (cmd/wait_match.c). */
#ifndef AB_CMD_WAIT_H
#define AB_CMD_WAIT_H

#include <stddef.h>
#include <stdint.h>

#define NO_MATCH (-1)

struct ab_reconcile_poll;

struct ab_waiter {
    const char *instance; /* --job-instance, or NULL */
    const char *job;      /* --job-id, or NULL */
    const char *success;  /* comma-separated statuses that mean success */
    int64_t start_ms;     /* wall clock when the waiter started */
    int64_t from_ms;      /* start_ms - --since */
    int64_t deadline;     /* monotonic ms, or INT64_MAX */
    int verbose;
    struct ab_reconcile_poll *poll; /* --fallback-after, or NULL */
    int fallback_rc;                /* --fallback-after: the exit code once the API answered,
                                     * else NO_MATCH */
};

/* One event read from the sink: NO_MATCH, or the exit code once it is the awaited one
 * (the event printed). arrival_ms is when the sink got it (-1 when unknown). */
int ab_wait_consider(const struct ab_waiter *w, const char *line, size_t len,
                     int64_t arrival_ms);
/* Report the matching event: CloudEvent on stdout, the outcome as the exit code (0 a
 * success status, 1 another; the status on stderr). */
int ab_wait_finish(const struct ab_waiter *w, const char *line, size_t len);

#endif
