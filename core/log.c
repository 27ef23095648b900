#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

int ab_log_level_min = AB_LOG_INFO;
static int log_json;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Append s JSON-escaped to buf (bounded); returns the new length. */
static size_t json_escape(char *buf, size_t len, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s && len + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[len++] = '\\';
            buf[len++] = (char)c;
        } else if (c < 0x20) {
            len += (size_t)snprintf(buf + len, cap - len, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
        } else {
            buf[len++] = (char)c;
        }
    }
    return len;
}

static size_t timestamp(char *buf, size_t cap)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, cap - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    return n;
}

/* Write one complete line with a single write(2), so lines from threads never mix. */
static void emit(char *line, size_t len, size_t cap)
{
    if (len >= cap - 1) {
        len = cap - 2;
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
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

static size_t add_field(char *line, size_t n, size_t cap, const char *key, const char *val,
                        int quote)
{
    if (val == NULL || n + 16 >= cap) {
        return n;
    }
    if (log_json) {
        n += (size_t)snprintf(line + n, cap - n, ",\"%s\":", key);
        if (quote) {
            line[n++] = '"';
            n = json_escape(line, n, cap - 2, val);
            line[n++] = '"';
        } else {
            n += (size_t)snprintf(line + n, cap - n, "%s", val);
        }
    } else {
        n += (size_t)snprintf(line + n, cap - n, " %s=", key);
        n = json_escape(line, n, cap - 2, val); /* escaping keeps one record per line */
    }
    return n < cap ? n : cap - 1;
}

void ab_log_access(const struct ab_access *a)
{
    if (AB_LOG_INFO < ab_log_level_min) {
        return;
    }
    char line[2048], ts[40], num[3][32];
    size_t n;
    timestamp(ts, sizeof(ts));
    if (log_json) {
        n = (size_t)snprintf(line, sizeof(line),
                             "{\"time\":\"%s\",\"level\":\"info\",\"msg\":\"access\"", ts);
    } else {
        n = (size_t)snprintf(line, sizeof(line), "%s info  access", ts);
    }
    snprintf(num[0], sizeof(num[0]), "%d", a->status);
    snprintf(num[1], sizeof(num[1]), "%.3f", a->latency_ms);
    snprintf(num[2], sizeof(num[2]), "%zu", a->bytes_in);
    n = add_field(line, n, sizeof(line), "client", a->client, 1);
    n = add_field(line, n, sizeof(line), "method", a->method, 1);
    n = add_field(line, n, sizeof(line), "path", a->path, 1);
    n = add_field(line, n, sizeof(line), "status", num[0], 0);
    n = add_field(line, n, sizeof(line), "latency_ms", num[1], 0);
    n = add_field(line, n, sizeof(line), "bytes", num[2], 0);
    n = add_field(line, n, sizeof(line), "id", a->id, 1);
    n = add_field(line, n, sizeof(line), "action", a->action, 1);
    n = add_field(line, n, sizeof(line), "event", a->event, 1);
    n = add_field(line, n, sizeof(line), "sink", a->sink, 1);
    n = add_field(line, n, sizeof(line), "error", a->error, 1);
    if (log_json && n + 2 < sizeof(line)) {
        line[n++] = '}';
    }
    emit(line, n, sizeof(line));
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
