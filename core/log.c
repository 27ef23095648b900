#include "log.h"

#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

#include <event2/event.h>

#include "mem.h"
#include "normalise.h"

int ab_log_level_min = AB_LOG_INFO;
static int log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Append s JSON-escaped (ab_json_escape) to buf, as much of it as fits below cap; returns
 * the new length. */
static size_t json_escape(char *buf, size_t len, size_t cap, const char *s)
{
    size_t n = strlen(s);
    if (len + 6 * n < cap) {
        return len + ab_json_escape(buf + len, s, n);
    }
    for (; *s && len + 7 < cap; s++) {
        len += ab_json_escape(buf + len, s, 1);
    }
    return len;
}

/* "2026-01-02T03:04:05.678Z" into buf (cap >= 32). The part up to the seconds is
 * formatted once a second per thread: a line is written for every request. */
static size_t timestamp(char *buf, size_t cap)
{
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char cached[24];
    static _Thread_local size_t cached_len;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        cached_len = strftime(cached, sizeof(cached), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = tv.tv_sec;
    }
    if (cap < cached_len + 6) {
        buf[0] = '\0';
        return 0;
    }
    memcpy(buf, cached, cached_len);
    int ms = (int)(tv.tv_usec / 1000);
    char *p = buf + cached_len;
    p[0] = '.';
    p[1] = (char)('0' + ms / 100);
    p[2] = (char)('0' + ms / 10 % 10);
    p[3] = (char)('0' + ms % 10);
    p[4] = 'Z';
    p[5] = '\0';
    return cached_len + 5;
}

struct ab_log_batch {
    struct event *flush_ev;
    size_t len;
    char buf[PIPE_BUF];
};

static _Thread_local struct ab_log_batch *thread_batch;

static void write_err(const char *p, size_t len)
{
    ssize_t w = write(STDERR_FILENO, p, len);
    (void)w;
}

static void batch_flush(struct ab_log_batch *b)
{
    if (b->len) {
        write_err(b->buf, b->len);
        b->len = 0;
    }
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    batch_flush(arg);
}

struct ab_log_batch *ab_log_batch_new(struct event_base *base)
{
    struct ab_log_batch *b = ab_calloc(1, sizeof(*b));
    if ((b->flush_ev = event_new(base, -1, 0, on_flush, b)) == NULL) {
        free(b);
        return NULL;
    }
    thread_batch = b;
    return b;
}

void ab_log_batch_free(struct ab_log_batch *b)
{
    if (b == NULL) {
        return;
    }
    batch_flush(b);
    if (thread_batch == b) {
        thread_batch = NULL;
    }
    event_free(b->flush_ev);
    free(b);
}

/* End the line in line[0..len) with a newline, cut to fit cap; returns its new length. */
static size_t end_line(char *line, size_t len, size_t cap)
{
    if (len >= cap - 1) {
        len = cap - 2;
    }
    line[len++] = '\n';
    return len;
}

/* Write one complete line (a newline is added) with a single write(2), so lines from
 * threads never mix; after this thread's gathered access lines, if any. */
static void emit(char *line, size_t len, size_t cap)
{
    len = end_line(line, len, cap);
    if (thread_batch) {
        batch_flush(thread_batch);
    }
    write_err(line, len);
}

/* An access line: gathered when the thread has a batch (the first line of an iteration
 * schedules the flush at the end of the loop's active callbacks), else written at once. */
static void emit_access(char *line, size_t len, size_t cap)
{
    struct ab_log_batch *b = thread_batch;
    len = end_line(line, len, cap);
    if (b == NULL) {
        write_err(line, len);
        return;
    }
    if (b->len + len > sizeof(b->buf)) {
        batch_flush(b);
    }
    if (b->len == 0) {
        event_active(b->flush_ev, EV_TIMEOUT, 0);
    }
    memcpy(b->buf + b->len, line, len);
    b->len += len;
}

void ab_log_write(int level, const char *fmt, ...)
{
    char msg[2048], line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    size_t n = 0;
    char ts[40];
    timestamp(ts, sizeof(ts));
    if (log_json) {
        n = (size_t)snprintf(line, sizeof(line), "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                             level_names[level]);
        n = json_escape(line, n, sizeof(line) - 3, msg);
        line[n++] = '"';
        line[n++] = '}';
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s %-5s %s", ts, level_names[level], msg);
    }
    emit(line, n < sizeof(line) ? n : sizeof(line) - 1, sizeof(line));
}

void ab_log_limited(struct ab_ratelimit *rl, int level, const char *fmt, ...)
{
    if (level < ab_log_level_min) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    long long next = atomic_load(&rl->next_ms);
    if (now < next ||
        !atomic_compare_exchange_strong(&rl->next_ms, &next, now + AB_RATELIMIT_S * 1000)) {
        atomic_fetch_add(&rl->suppressed, 1);
        return;
    }
    long suppressed = atomic_exchange(&rl->suppressed, 0);
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (suppressed) {
        ab_log_write(level, "%s (%ld similar lines suppressed in the last %d s)", msg,
                     suppressed, AB_RATELIMIT_S);
    } else {
        ab_log_write(level, "%s", msg);
    }
}

/* The access line is built by hand, without printf: it is written for every request. */
struct line {
    char *p;
    size_t n, cap;
};

static void lput(struct line *l, const char *s, size_t n)
{
    if (l->n + n >= l->cap) {
        n = l->n < l->cap ? l->cap - l->n - 1 : 0;
    }
    memcpy(l->p + l->n, s, n);
    l->n += n;
}

#define LPUT(l, lit) lput((l), (lit), sizeof(lit) - 1)

static void lput_ulong(struct line *l, unsigned long v)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    lput(l, tmp + n, sizeof(tmp) - n);
}

static void lput_escaped(struct line *l, const char *s)
{
    if (l->n < l->cap) {
        l->n = json_escape(l->p, l->n, l->cap - 2, s);
    }
}

/* One field: `,"key":"value"` (JSON) or ` key=value` (text); numbers unquoted. */
static void add_field(struct line *l, const char *key, const char *val, int quote)
{
    if (val == NULL) {
        return;
    }
    if (log_json) {
        LPUT(l, ",\"");
        lput(l, key, strlen(key));
        LPUT(l, "\":");
        if (quote) {
            LPUT(l, "\"");
            lput_escaped(l, val);
            LPUT(l, "\"");
        } else {
            lput(l, val, strlen(val));
        }
    } else {
        LPUT(l, " ");
        lput(l, key, strlen(key));
        LPUT(l, "=");
        lput_escaped(l, val); /* escaping keeps one record per line */
    }
}

void ab_log_access(const struct ab_access *a)
{
    if (AB_LOG_INFO < ab_log_level_min) {
        return;
    }
    char buf[2048], ts[40], num[3][32];
    struct line l = {buf, 0, sizeof(buf) - 2};
    size_t tn = timestamp(ts, sizeof(ts));
    tn = tn < sizeof(ts) ? tn : sizeof(ts) - 1;
    if (log_json) {
        LPUT(&l, "{\"time\":\"");
        lput(&l, ts, tn);
        LPUT(&l, "\",\"level\":\"info\",\"msg\":\"access\"");
    } else {
        lput(&l, ts, tn);
        LPUT(&l, " info  access");
    }
    struct line n0 = {num[0], 0, sizeof(num[0])}, n1 = {num[1], 0, sizeof(num[1])},
                n2 = {num[2], 0, sizeof(num[2])};
    lput_ulong(&n0, (unsigned long)(a->status > 0 ? a->status : 0));
    num[0][n0.n] = '\0';
    double ms = a->latency_ms > 0 ? a->latency_ms : 0;
    unsigned long whole = (unsigned long)ms, frac = (unsigned long)((ms - (double)whole) * 1000);
    lput_ulong(&n1, whole);
    LPUT(&n1, ".");
    char f[3] = {(char)('0' + frac / 100 % 10), (char)('0' + frac / 10 % 10),
                 (char)('0' + frac % 10)};
    lput(&n1, f, 3);
    num[1][n1.n] = '\0';
    lput_ulong(&n2, a->bytes_in);
    num[2][n2.n] = '\0';
    add_field(&l, "client", a->client, 1);
    add_field(&l, "method", a->method, 1);
    add_field(&l, "path", a->path, 1);
    add_field(&l, "status", num[0], 0);
    add_field(&l, "latency_ms", num[1], 0);
    add_field(&l, "bytes", num[2], 0);
    add_field(&l, "id", a->id, 1);
    add_field(&l, "action", a->action, 1);
    add_field(&l, "event", a->event, 1);
    add_field(&l, "sink", a->sink, 1);
    add_field(&l, "trace_id", a->trace_id, 1);
    add_field(&l, "error", a->error, 1);
    if (log_json) {
        buf[l.n++] = '}';
    }
    emit_access(buf, l.n, sizeof(buf));
}

int ab_log_configure(const char *level, const char *format, char *errstr, size_t errlen)
{
    int lvl = -1;
    for (int i = 0; level && i < 4; i++) {
        if (strcmp(level, level_names[i]) == 0 || (i == 2 && strcmp(level, "warning") == 0)) {
            lvl = i;
        }
    }
    if (level && lvl < 0) {
        snprintf(errstr, errlen, "--log-level: \"%s\" is not one of debug, info, warn, error",
                 level);
        return -1;
    }
    if (format && strcmp(format, "text") != 0 && strcmp(format, "json") != 0) {
        snprintf(errstr, errlen, "--log-format: \"%s\" is not one of text, json", format);
        return -1;
    }
    if (level) {
        ab_log_level_min = lvl;
    }
    if (format) {
        log_json = strcmp(format, "json") == 0;
    }
    return 0;
}
