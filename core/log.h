/* Logging to stderr, text or JSON lines. Level-checked macros do not evaluate their
 * arguments when the level is disabled (Redis serverLog). Thread-safe: each write(2) holds
 * whole lines (at most PIPE_BUF bytes, so lines from threads never mix, even on a pipe).
 * Never pass request bodies or secrets. */
#ifndef AB_LOG_H
#define AB_LOG_H

#include <stddef.h>

enum ab_log_level { AB_LOG_DEBUG = 0, AB_LOG_INFO, AB_LOG_WARN, AB_LOG_ERROR, AB_LOG_OFF };

extern int ab_log_level_min;

#define ab_log(level, ...)                                                                     \
    do {                                                                                       \
        if ((level) >= ab_log_level_min) {                                                     \
            ab_log_write((level), __VA_ARGS__);                                                \
        }                                                                                      \
    } while (0)
#define ab_debug(...) ab_log(AB_LOG_DEBUG, __VA_ARGS__)
#define ab_info(...) ab_log(AB_LOG_INFO, __VA_ARGS__)
#define ab_warn(...) ab_log(AB_LOG_WARN, __VA_ARGS__)
#define ab_error(...) ab_log(AB_LOG_ERROR, __VA_ARGS__)

void ab_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Lines that a remote party can trigger over and over (accept errors, timeouts, a full
 * body budget, libevent's own warnings) go through a limiter: at most one line per
 * AB_RATELIMIT_S seconds each, and the next line that passes tells how many were
 * suppressed in between. Zero-initialise a limiter (static storage does). Thread-safe. */
#define AB_RATELIMIT_S 10
struct ab_ratelimit {
    _Atomic long long next_ms; /* monotonic time before which lines are suppressed */
    _Atomic long suppressed;
};
void ab_log_limited(struct ab_ratelimit *rl, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Set level ("debug", "info", "warn", "error") and format ("text", "json").
 * Returns 0, or -1 with a message in errstr. */
int ab_log_configure(const char *level, const char *format, char *errstr, size_t errlen);

/* One access-log line per request, in the configured format. Fields that are NULL are
 * omitted. Logged at info level. */
struct ab_access {
    const char *client;
    const char *method;
    const char *path;
    int status;
    double latency_ms;
    size_t bytes_in;
    const char *id;
    const char *action;
    const char *event;
    const char *sink;
    const char *error;
    const char *trace_id;
};
void ab_log_access(const struct ab_access *a);

/* A loop thread's access lines, gathered and written together when the loop has run the
 * callbacks it woke up for: one write(2) per loop iteration (at most PIPE_BUF bytes each)
 * instead of one per request, with no added delay (nginx's `access_log buffer=`, without
 * the timer). Other lines written on the thread flush what is gathered first, so the order
 * holds. _new() registers the calling thread; _free() (on the same thread) writes what is
 * left and unregisters it. Threads without one write each access line at once. */
struct event_base;
struct ab_log_batch;
struct ab_log_batch *ab_log_batch_new(struct event_base *base);
void ab_log_batch_free(struct ab_log_batch *b);

#endif
