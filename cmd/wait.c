/* almabridge wait: block until a given Alma job instance (or the next run of a job) has
 * ended, reading the JOB_END CloudEvents the daemon wrote to Kafka, Redis or its file.
 *
 *   almabridge wait --job-instance ID [--job-id ID] [--since 24h] [--timeout DURATION]
 *                   [--sink kafka|redis|file, the daemon's connection options, --route,
 *                    or --config FILE]
 *
 * The event is found wherever the daemon put it: the route template is the daemon's, so
 * the topic (Kafka) or stream (Redis) is the one a JOB_END goes to. Reading starts at
 * now - --since (Kafka: offsets looked up by timestamp, every partition assigned, no group
 * and no commits; Redis: XRANGE from the time-derived stream id, then XREAD BLOCK; file:
 * the whole file, then follow it across rotation), so a job that ended just before the
 * waiter started is found, and any number of waiters run side by side without sharing
 * anything. Exit: 0 the job's status is a success (COMPLETED_SUCCESS, or --success),
 * 1 it ended otherwise (status on stderr), 3 --timeout, 2 usage or connection errors.
 * The matching CloudEvent is printed on stdout. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>

#include "alma_api.h"
#include "cli.h"
#include "event.h"
#include "mem.h"
#include "reconcile.h"
#include "route.h"
#include "sink.h"
#include "sinks/kafka.h"
#include "sinks/registry.h"

#define JOB_END_TYPE "com.exlibrisgroup.alma.job_end"
#define NO_MATCH (-1)
#define POLL_MS 100

struct waiter {
    const char *instance; /* --job-instance, or NULL */
    const char *job;      /* --job-id, or NULL */
    const char *success;  /* comma-separated statuses that mean success */
    int64_t start_ms;     /* wall clock when the waiter started */
    int64_t from_ms;      /* start_ms - --since */
    int64_t deadline;     /* monotonic ms, or INT64_MAX */
    int verbose;
    struct ab_reconcile_poll *poll; /* --fallback-after, or NULL (see the hook below) */
};

static int fallback_rc = NO_MATCH; /* --fallback-after: the exit code once the API answered */

/* ---- reading JSON text without losing digits --------------------------------------- */

/* A JSON number such as a 17-digit job instance id does not survive a double, so values
 * are taken from the event's text: these walk raw JSON (any whitespace) without building
 * a tree. Each returns an index into s, n when the text ends early. */
static size_t skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) {
        i++;
    }
    return i;
}

/* Index just past the JSON value that starts at s[i]. */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    int depth = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++) {
                i += s[i] == '\\';
            }
            if (depth == 0) {
                return i + 1;
            }
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth <= 0) {
                return depth == 0 ? i + 1 : i;
            }
        } else if (depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\r' || c == '\n')) {
            return i;
        }
    }
    return n;
}

/* The index of the value of member `key` of the object at s[i], or n when absent. */
static size_t member(const char *s, size_t n, size_t i, const char *key)
{
    size_t klen = strlen(key);
    i = skip_ws(s, n, i);
    if (i >= n || s[i] != '{') {
        return n;
    }
    i = skip_ws(s, n, i + 1);
    while (i < n && s[i] == '"') {
        size_t kend = skip_value(s, n, i);
        int hit = kend - i == klen + 2 && memcmp(s + i + 1, key, klen) == 0;
        i = skip_ws(s, n, kend);
        if (i >= n || s[i] != ':') {
            return n;
        }
        i = skip_ws(s, n, i + 1);
        if (hit) {
            return i;
        }
        i = skip_ws(s, n, skip_value(s, n, i));
        if (i >= n || s[i] != ',') {
            return n;
        }
        i = skip_ws(s, n, i + 1);
    }
    return n;
}

/* The text of the value at path: a string decoded, a number as written, an object's
 * "value" member (the {"value":…, "desc":…} form of codes); NULL for anything else or
 * absent. Caller frees. */
static char *text_at(const char *s, size_t n, const char *const *path, size_t depth)
{
    size_t i = 0;
    for (size_t d = 0; d < depth && i < n; d++) {
        i = member(s, n, i, path[d]);
    }
    if (i >= n) {
        return NULL;
    }
    if (s[i] == '{') {
        static const char *const value[] = {"value"};
        size_t end = skip_value(s, n, i);
        return text_at(s + i, end - i, value, 1);
    }
    size_t end = skip_value(s, n, i);
    if (s[i] == '"') {
        cJSON *str = cJSON_ParseWithLength(s + i, end - i);
        char *out = cJSON_IsString(str) ? ab_strdup(str->valuestring) : NULL;
        cJSON_Delete(str);
        return out;
    }
    if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9')) {
        return ab_strndup(s + i, end - i);
    }
    return NULL;
}

#define TEXT(line, len, ...)                                                                   \
    text_at((line), (len), (const char *const[]){__VA_ARGS__},                                 \
            sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

/* "2020-01-26T16:28:05.731Z" (or +hh:mm) into ms since the epoch; -1 when unreadable. */
static int64_t parse_time_ms(const char *t)
{
    struct tm tm = {0};
    int frac_len = 0;
    char rest[16] = "";
    if (t == NULL || sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d%15s", &tm.tm_year, &tm.tm_mon,
                            &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, rest) < 6) {
        return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    const char *p = rest;
    if (*p == '.') {
        int64_t frac = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, frac_len++) {
            frac = frac_len < 3 ? frac * 10 + (*p - '0') : frac;
        }
        for (int k = frac_len; k < 3; k++) {
            frac *= 10;
        }
        ms += frac;
    }
    int oh = 0, om = 0;
    if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d", &oh, &om) == 2) {
        ms -= (*p == '+' ? 1 : -1) * ((int64_t)oh * 3600000 + (int64_t)om * 60000);
    }
    return ms;
}

/* ---- matching ---------------------------------------------------------------------- */

static int is_job_end(const char *line, size_t len)
{
    char *type = TEXT(line, len, "type");
    char *action = type && strcmp(type, JOB_END_TYPE) == 0 ? NULL : TEXT(line, len, "almaaction");
    int yes = (type && strcmp(type, JOB_END_TYPE) == 0) ||
              (action && strcasecmp(action, "JOB_END") == 0);
    free(type);
    free(action);
    return yes;
}

/* The job (not instance) id: job_info.id, else the last part of job_info.link. */
static char *job_of(const char *line, size_t len)
{
    char *id = TEXT(line, len, "data", "job_instance", "job_info", "id");
    if (id == NULL) {
        char *link = TEXT(line, len, "data", "job_instance", "job_info", "link");
        const char *slash = link ? strrchr(link, '/') : NULL;
        id = slash && slash[1] ? ab_strdup(slash + 1) : NULL;
        free(link);
    }
    return id;
}

/* When the run ended, for --job-id alone: job_instance.end_time, the event's time, else
 * when the event arrived (-1: unknown, read before the waiter started following). */
static int64_t ended_ms(const char *line, size_t len, int64_t arrival_ms)
{
    char *t = TEXT(line, len, "data", "job_instance", "end_time");
    if (t == NULL) {
        t = TEXT(line, len, "time");
    }
    int64_t ms = parse_time_ms(t);
    free(t);
    return ms >= 0 ? ms : arrival_ms;
}

static int is_success(const struct waiter *w, const char *status)
{
    size_t sl = strlen(status);
    for (const char *p = w->success; *p;) {
        size_t l = strcspn(p, ",");
        if (l == sl && strncasecmp(p, status, l) == 0) {
            return 1;
        }
        p += l + (p[l] == ',');
    }
    return 0;
}

/* Report the matching event: CloudEvent on stdout, the outcome as the exit code. */
static int finish(const struct waiter *w, const char *line, size_t len)
{
    char *status = TEXT(line, len, "data", "job_instance", "status");
    char *desc = TEXT(line, len, "data", "job_instance", "status", "desc");
    char *inst = TEXT(line, len, "data", "job_instance", "id");
    char *name = TEXT(line, len, "data", "job_instance", "name");
    if (w->poll && fallback_rc == NO_MATCH) {
        fprintf(stderr, "almabridge wait: answered by the JOB_END webhook's event in the sink\n");
    }
    fwrite(line, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    int rc = status && is_success(w, status) ? AB_EXIT_OK : AB_EXIT_FAILED;
    if (rc != AB_EXIT_OK) {
        fprintf(stderr, "almabridge wait: job instance %s (%s) ended with status %s%s%s%s\n",
                inst ? inst : "?", name ? name : "no name", status ? status : "(none)",
                desc ? " (" : "", desc ? desc : "", desc ? ")" : "");
    } else if (w->verbose) {
        fprintf(stderr, "almabridge wait: job instance %s ended with status %s\n", inst, status);
    }
    free(status);
    free(desc);
    free(inst);
    free(name);
    return rc;
}

/* One event read from the sink: NO_MATCH, or the exit code once it is the awaited one.
 * arrival_ms is when the sink got it (-1 when unknown). */
static int consider(const struct waiter *w, const char *line, size_t len, int64_t arrival_ms)
{
    int rc = NO_MATCH;
    char *inst = NULL, *job = NULL;
    if (len == 0 || !is_job_end(line, len)) {
        return NO_MATCH;
    }
    if (w->instance) {
        inst = TEXT(line, len, "data", "job_instance", "id");
        if (inst == NULL || strcmp(inst, w->instance) != 0) {
            goto done;
        }
    }
    if (w->job) {
        job = job_of(line, len);
        if (job == NULL || strcmp(job, w->job) != 0) {
            goto done;
        }
        if (w->instance == NULL && ended_ms(line, len, arrival_ms) < w->start_ms) {
            goto done; /* an earlier run: --job-id alone waits for the next one */
        }
    }
    rc = finish(w, line, len);
done:
    free(inst);
    free(job);
    return rc;
}

/* ---- --fallback-after: Alma's API answers when the webhook does not come -------------- */

/* Called wherever a reader checks its deadline: when a poll is due, one API call
 * (core/reconcile.h); an ended instance is reported like its webhook would be. */
static int fallback_check(const struct waiter *w)
{
    struct ab_event *ev = NULL;
    char err[1024];
    if (w->poll == NULL || fallback_rc != NO_MATCH) {
        return fallback_rc;
    }
    int rc = ab_reconcile_poll_step(w->poll, ab_cli_mono_ms(), &ev, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "almabridge wait: %s%s\n", err, ab_reconcile_poll_stopped(w->poll)
                                                           ? "; waiting for the webhook only"
                                                           : "; asking again later");
    } else if (rc > 0) {
        fprintf(stderr, "almabridge wait: answered by the Alma API (no JOB_END webhook after "
                        "--fallback-after)\n");
        fallback_rc = AB_EXIT_OK; /* finish() below must not claim the webhook */
        fallback_rc = finish(w, ev->json, ev->json_len);
        ab_event_free(ev);
    }
    return fallback_rc;
}

static int64_t remaining_ms(const struct waiter *w)
{
    if (fallback_check(w) != NO_MATCH) {
        return 0;
    }
    int64_t left = w->deadline - ab_cli_mono_ms();
    return left > 0 ? left : 0;
}

static int timed_out(const struct waiter *w)
{
    if (fallback_rc != NO_MATCH) {
        return fallback_rc;
    }
    fprintf(stderr, "almabridge wait: no matching JOB_END event before --timeout\n");
    return AB_EXIT_TIMEOUT;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- Kafka ------------------------------------------------------------------------- */

/* The partition count of topic: > 0, 0 while the topic does not exist, -1 when the
 * brokers cannot be reached (err filled). */
static int kafka_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms, char *err,
                            size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
    int n = -1;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "%s", rd_kafka_err2str(e));
    } else if (md->topic_cnt < 1 || md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        n = 0;
    } else {
        n = md->topics[0].partition_cnt;
    }
    if (md) {
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    return n;
}

/* Assign every partition of topic, each from the first offset at or after from_ms (the
 * end when there is none: the end offset is read first, so nothing written between the
 * two look-ups is skipped). */
static int kafka_assign(rd_kafka_t *rk, const char *topic, int nparts, int64_t from_ms,
                        char *err, size_t errlen)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);
    int64_t *high = ab_calloc((size_t)nparts, sizeof(*high));
    int rc = -1;
    for (int p = 0; p < nparts; p++) {
        int64_t lo = 0;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &high[p],
                                                                 10000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            snprintf(err, errlen, "end offset of %s [%d]: %s", topic, p, rd_kafka_err2str(e));
            goto done;
        }
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = from_ms;
    }
    rd_kafka_resp_err_t e = rd_kafka_offsets_for_times(rk, l, 10000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "offsets by time of %s: %s", topic, rd_kafka_err2str(e));
        goto done;
    }
    for (int i = 0; i < l->cnt; i++) {
        if (l->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR || l->elems[i].offset < 0) {
            l->elems[i].offset = high[l->elems[i].partition];
        }
    }
    e = rd_kafka_assign(rk, l);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, errlen, "assign %s: %s", topic, rd_kafka_err2str(e));
        goto done;
    }
    rc = 0;
done:
    free(high);
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* Wait for the topic to exist, assign it, then read until a match or the deadline. */
static int kafka_loop(const struct waiter *w, rd_kafka_t *rk, const char *topic, char *err,
                      size_t errlen)
{
    int nparts = kafka_partitions(rk, topic, 10000, err, errlen);
    if (nparts < 0) {
        return AB_EXIT_USAGE;
    }
    while (nparts == 0) { /* no JOB_END yet: the daemon's first one creates the topic */
        if (remaining_ms(w) == 0) {
            return timed_out(w);
        }
        sleep_ms(remaining_ms(w) < 1000 ? remaining_ms(w) : 1000);
        nparts = kafka_partitions(rk, topic, 5000, err, errlen);
        nparts = nparts < 0 ? 0 : nparts;
    }
    /* A topic just created may not have its partition leaders yet: try for a while. */
    for (int64_t until = ab_cli_mono_ms() + 15000;
         kafka_assign(rk, topic, nparts, w->from_ms, err, errlen) != 0;) {
        if (ab_cli_mono_ms() > until) {
            return AB_EXIT_USAGE;
        }
        if (remaining_ms(w) == 0) {
            return timed_out(w);
        }
        sleep_ms(500);
    }
    for (;;) {
        int64_t left = remaining_ms(w);
        if (left == 0) {
            return timed_out(w);
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, left < 500 ? (int)left : 500);
        if (m == NULL) {
            continue;
        }
        int rc = NO_MATCH;
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            rc = consider(w, m->payload, m->len, rd_kafka_message_timestamp(m, NULL));
        } else if (w->verbose) {
            fprintf(stderr, "almabridge wait: kafka: %s\n", rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
        if (rc != NO_MATCH) {
            return rc;
        }
    }
}

static int wait_kafka(const struct waiter *w, const struct ab_cli_sinkcfg *c, const char *topic)
{
    char err[512] = "";
    rd_kafka_t *rk = ab_cli_kafka_consumer(c, "almabridge-wait", err, sizeof(err));
    if (rk == NULL) {
        fprintf(stderr, "almabridge wait: %s\n", err);
        return AB_EXIT_USAGE;
    }
    int rc = kafka_loop(w, rk, topic, err, sizeof(err));
    if (rc == AB_EXIT_USAGE) {
        fprintf(stderr, "almabridge wait: kafka %s, topic %s: %s\n", c->kafka_brokers, topic,
                err);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}

/* ---- Redis ------------------------------------------------------------------------- */

/* Consider each entry of a stream reply ([[id, [field, value, ...]], ...]); remembers the
 * last id in last. */
static int redis_entries(const struct waiter *w, const redisReply *entries, char *last,
                         size_t lastlen)
{
    for (size_t i = 0; entries && i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2) {
            continue;
        }
        snprintf(last, lastlen, "%s", e->element[0]->str);
        const redisReply *f = e->element[1];
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            if (strcmp(f->element[k]->str, "event") == 0) {
                int rc = consider(w, f->element[k + 1]->str, f->element[k + 1]->len,
                                  strtoll(last, NULL, 10));
                if (rc != NO_MATCH) {
                    return rc;
                }
            }
        }
    }
    return NO_MATCH;
}

/* XRANGE from last (inclusive the first time) to the end, then XREAD BLOCK from the last
 * id seen. Returns an exit code, or NO_MATCH when the connection broke (err filled). */
static int redis_read(const struct waiter *w, redisContext *rc, const char *stream, char *last,
                      size_t lastlen, int *ranged, char *err, size_t errlen)
{
    for (;;) {
        int64_t left = remaining_ms(w);
        if (left == 0) {
            return timed_out(w);
        }
        long block = left < 1000 ? (long)left : 1000;
        struct timeval tv = {5 + block / 1000, 0};
        redisSetTimeout(rc, tv);
        redisReply *r;
        char start[96];
        snprintf(start, sizeof(start), "%s%s", *ranged ? "(" : "", last);
        r = *ranged < 2 ? redisCommand(rc, "XRANGE %s %s + COUNT 500", stream, start)
                        : redisCommand(rc, "XREAD COUNT 500 BLOCK %ld STREAMS %s %s", block,
                                       stream, last);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "%s", r ? r->str : rc->errstr);
            if (r) {
                freeReplyObject(r);
            }
            return NO_MATCH;
        }
        int n = 0, m = NO_MATCH;
        if (*ranged < 2 && r->type == REDIS_REPLY_ARRAY) {
            n = (int)r->elements;
            m = redis_entries(w, r, last, lastlen);
            *ranged = n == 500 ? 1 : 2; /* a full page: more to range over */
        } else if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
            m = redis_entries(w, r->element[0]->element[1], last, lastlen);
        }
        freeReplyObject(r);
        if (m != NO_MATCH) {
            return m;
        }
    }
}

static int wait_redis(const struct waiter *w, const struct ab_cli_sinkcfg *c, const char *stream)
{
    struct ab_cli_redis t;
    char err[512] = "", last[64];
    int ranged = 0, rc = AB_EXIT_USAGE;
    snprintf(last, sizeof(last), "%" PRId64 "-0", w->from_ms > 0 ? w->from_ms : 0);
    if (ab_cli_redis_parse(c->redis_url, &t, err, sizeof(err)) != 0) {
        goto done;
    }
    redisContext *ctx = ab_cli_redis_dial(&t, err, sizeof(err));
    if (ctx == NULL) {
        goto done;
    }
    for (;;) {
        rc = redis_read(w, ctx, stream, last, sizeof(last), &ranged, err, sizeof(err));
        redisFree(ctx);
        ctx = NULL;
        if (rc != NO_MATCH) {
            break;
        }
        fprintf(stderr, "almabridge wait: redis: %s; reconnecting\n", err);
        while (ctx == NULL && remaining_ms(w) > 0) { /* the daemon's Redis restarts */
            sleep_ms(remaining_ms(w) < 1000 ? remaining_ms(w) : 1000);
            ctx = ab_cli_redis_dial(&t, err, sizeof(err));
        }
        if (ctx == NULL) {
            rc = timed_out(w);
            break;
        }
    }
done:
    if (rc == AB_EXIT_USAGE) {
        fprintf(stderr, "almabridge wait: redis %s:%d, stream %s: %s\n", t.host ? t.host : "?",
                t.port, stream, err);
    }
    ab_cli_redis_free(&t);
    return rc;
}

/* ---- the file sink's log ------------------------------------------------------------ */

#define ROTATED_GRACE_MS 3000 /* keep reading a rotated-away file this long */

/* One open file being read line by line. */
struct follower {
    int fd;
    struct stat st; /* of the open file */
    char *buf;      /* what was read and not yet considered (a partial last line) */
    size_t len, cap;
};

static void follower_open(struct follower *f, const char *path)
{
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    f->len = 0;
    if (f->fd >= 0) {
        fstat(f->fd, &f->st);
    }
}

static void follower_close(struct follower *f)
{
    if (f->fd >= 0) {
        close(f->fd);
    }
    f->fd = -1;
    f->len = 0;
}

/* Consider every complete line in the buffer; keeps a trailing partial line. `following`
 * is 0 while reading what was there when the waiter started (arrival time unknown). */
static int follower_lines(const struct waiter *w, struct follower *f, int following)
{
    size_t start = 0;
    for (char *nl; (nl = memchr(f->buf + start, '\n', f->len - start)) != NULL;) {
        size_t n = (size_t)(nl - (f->buf + start));
        const char *line = f->buf + start;
        start += n + 1;
        char *t = TEXT(line, n, "time");
        int64_t when = parse_time_ms(t);
        free(t);
        if (when >= 0 && when < w->from_ms) {
            continue; /* older than --since */
        }
        int rc = consider(w, line, n, following ? ab_cli_now_ms() : -1);
        if (rc != NO_MATCH) {
            return rc;
        }
    }
    memmove(f->buf, f->buf + start, f->len - start);
    f->len -= start;
    return NO_MATCH;
}

/* Read f to its current end, considering each line. NO_MATCH or an exit code. */
static int follower_drain(const struct waiter *w, struct follower *f, int following)
{
    int rc = NO_MATCH;
    while (rc == NO_MATCH && f->fd >= 0) {
        if (f->len == f->cap) {
            f->cap *= 2;
            f->buf = ab_realloc(f->buf, f->cap);
        }
        ssize_t n = read(f->fd, f->buf + f->len, f->cap - f->len);
        if (n <= 0) {
            break;
        }
        f->len += (size_t)n;
        rc = follower_lines(w, f, following);
    }
    return rc;
}

/* At the end of the file: has the path been given to a new file (rotation: renamed away,
 * then recreated by the daemon or by logrotate) or truncated (copytruncate)? A rotated file
 * moves to *old, still read for ROTATED_GRACE_MS since the daemon may write its last lines
 * there before it notices; the new file is read from its start. */
static void follower_check_rotation(struct follower *f, struct follower *old,
                                    int64_t *old_until, const char *path)
{
    struct stat now;
    if (f->fd < 0) {
        follower_open(f, path);
        return;
    }
    if (stat(path, &now) != 0) {
        return; /* renamed away and not yet recreated: keep reading the old one */
    }
    if (now.st_ino != f->st.st_ino || now.st_dev != f->st.st_dev) {
        follower_close(old);
        struct follower fresh = {.cap = old->cap, .buf = old->buf};
        *old = *f;
        *f = fresh;
        follower_open(f, path);
        *old_until = ab_cli_mono_ms() + ROTATED_GRACE_MS;
    } else if (now.st_size < lseek(f->fd, 0, SEEK_CUR)) {
        lseek(f->fd, 0, SEEK_SET);
        f->len = 0;
    }
}

/* Scan the whole file, then follow it until a match or the deadline. A file that does not
 * exist yet is waited for (the daemon creates it). */
static int wait_file(const struct waiter *w, const struct ab_cli_sinkcfg *c)
{
    struct follower f = {.fd = -1, .cap = 1 << 16}, old = {.fd = -1, .cap = 1 << 16};
    int64_t old_until = 0;
    int rc, following = 0;
    f.buf = ab_malloc(f.cap);
    old.buf = ab_malloc(old.cap);
    follower_open(&f, c->file);
    if (f.fd < 0 && errno != ENOENT) {
        fprintf(stderr, "almabridge wait: cannot read %s: %s\n", c->file, strerror(errno));
        rc = AB_EXIT_USAGE;
        goto done;
    }
    for (;;) {
        rc = follower_drain(w, &old, 1);
        if (rc == NO_MATCH) {
            rc = follower_drain(w, &f, following);
        }
        if (rc != NO_MATCH) {
            break;
        }
        following = 1;
        if (old.fd >= 0 && ab_cli_mono_ms() > old_until) {
            follower_close(&old);
        }
        if (remaining_ms(w) == 0) {
            rc = timed_out(w);
            break;
        }
        follower_check_rotation(&f, &old, &old_until, c->file);
        sleep_ms(remaining_ms(w) < POLL_MS ? remaining_ms(w) : POLL_MS);
    }
done:
    follower_close(&f);
    follower_close(&old);
    free(f.buf);
    free(old.buf);
    return rc;
}

/* --fallback-after: the API client and the poll of the instance; NULL with err. */
static struct ab_reconcile_poll *w_poll;
static struct ab_alma_api *fallback_start(struct waiter *w, const struct ab_config *cfg,
                                          const char *file, const char *after,
                                          const char *every, const char *institution,
                                          char *err, size_t errlen)
{
    int64_t after_ms = 0, every_ms = 0;
    if (w->instance == NULL || w->job == NULL || ab_cli_duration_ms(after, &after_ms) != 0 ||
        ab_cli_duration_ms(every, &every_ms) != 0 || every_ms < 1000) {
        snprintf(err, errlen, "--fallback-after DURATION needs --job-instance ID and --job-id "
                              "ID (the API's path names both); --fallback-every at least 1s");
        return NULL;
    }
    struct ab_alma_api *api = ab_alma_api_from_config(cfg, file, err, errlen);
    if (api) {
        w->poll = w_poll = ab_reconcile_poll_new(api, w->job, w->instance, institution,
                                                 ab_cli_mono_ms() + after_ms, every_ms);
    }
    return api;
}

/* ---- the command ------------------------------------------------------------------- */

/* The topic or stream a JOB_END goes to under the daemon's route. NULL with err when the
 * route depends on what the waiter cannot know. */
static char *job_end_route(const struct ab_cli_sinkcfg *c, const char *institution, char *err,
                           size_t errlen)
{
    const struct ab_sink_ops *ops = ab_sink_find(c->sink);
    const char *tmpl = c->route ? c->route : ops ? ops->default_route : NULL;
    char rerr[256];
    struct ab_route *r = ab_route_compile(tmpl ? tmpl : "", rerr, sizeof(rerr));
    if (r == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return NULL;
    }
    static char one[] = "1", two[] = "2", job_end[] = "JOB_END", another[] = "another";
    struct ab_event a = {.id = one, .action = job_end, .institution = (char *)institution};
    struct ab_event b = a, c2 = a;
    b.id = two;
    c2.institution = institution ? (char *)institution : another;
    char *ra = ab_route_expand(r, &a), *rb = ab_route_expand(r, &b), *rc = ab_route_expand(r, &c2);
    char *out = NULL;
    if (strcmp(ra, rb) != 0) {
        snprintf(err, errlen, "--route %s holds {id}: each event has its own topic, so there is "
                              "nothing to wait on", tmpl);
    } else if (strcmp(ra, rc) != 0) {
        snprintf(err, errlen, "--route %s depends on the institution: give --institution CODE",
                 tmpl);
    } else {
        out = ab_strdup(ra);
    }
    free(ra);
    free(rb);
    free(rc);
    ab_route_free(r);
    return out;
}

static const char WAIT_ABOUT[] =
    "Wait until an Alma job has ended, reading the JOB_END events almabridge wrote to its\n"
    "sink. Prints the CloudEvent on stdout. Exit status: 0 the job completed successfully,\n"
    "1 it ended otherwise (the status on stderr), 3 --timeout, 2 usage or connection error.\n"
    "With --fallback-after, Alma's Jobs API is asked when the webhook is late (stderr says\n"
    "which answered; docs/MISSED_EVENTS.md).";
static const char WAIT_FOOTER[] =
    "Sink options are the daemon's (almabridge --help): --sink, --route, --file,\n"
    "--kafka-brokers, --kafka-conf, --redis, or --config FILE and ALMABRIDGE_* variables;\n"
    "the Alma API's: --alma-api, --alma-api-key-file, --alma-api-ca, --api-budget, --state-dir.";

int ab_cmd_wait(int argc, char **argv)
{
    const char *instance = NULL, *job = NULL, *since = "24h", *timeout = NULL,
               *institution = NULL, *success = "COMPLETED_SUCCESS", *verbose = NULL,
               *fb_after = NULL, *fb_every = "1m";
    const struct ab_cli_opt opts[] = {
        {"job-instance", 1, &instance, "ID", "the job instance to wait for (data.job_instance.id)"},
        {"job-id", 1, &job, "ID", "the job (job_info.id, e.g. M53); alone: its next run to end"},
        {"since", 1, &since, "DURATION", "look back this far for events (default 24h)"},
        {"timeout", 1, &timeout, "DURATION", "give up after this long, exit 3 (default: never)"},
        {"institution", 1, &institution, "CODE", "for a --route with {institution}"},
        {"success", 1, &success, "STATUS,...", "statuses meaning success (COMPLETED_SUCCESS)"},
        {"verbose", 0, &verbose, NULL, "report the outcome on stderr also on success"},
        {"fallback-after", 1, &fb_after, "DURATION",
         "no webhook after this long: ask Alma's API (--alma-api; needs --job-id)"},
        {"fallback-every", 1, &fb_every, "DURATION", "then ask at this interval (default 1m)"},
    };
    const struct ab_cli_cmd cmd = {
        "almabridge wait --job-instance ID | --job-id ID [options] [sink options]", WAIT_ABOUT,
        WAIT_FOOTER, opts, sizeof(opts) / sizeof(opts[0])};
    char **rest = ab_calloc((size_t)argc + 1, sizeof(char *));
    int nrest = 0, rc = AB_EXIT_USAGE, started;
    char err[1024] = "";
    struct ab_cli_sinkcfg c = {0};
    struct ab_config cfg = {0};
    struct ab_alma_api *api = NULL;
    char *route = NULL;
    int64_t since_ms = 0, timeout_ms = -1;

    if ((started = ab_cli_start(&cmd, argc, argv, NULL, NULL, rest, &nrest, err,
                                sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    if (instance == NULL && job == NULL) {
        snprintf(err, sizeof(err), "give --job-instance ID or --job-id ID (see --help)");
        goto done;
    }
    if (ab_cli_duration_ms(since, &since_ms) != 0 ||
        (timeout && ab_cli_duration_ms(timeout, &timeout_ms) != 0)) {
        snprintf(err, sizeof(err), "--since/--timeout: a duration such as 90s, 15m, 24h, 2d");
        goto done;
    }
    if (ab_cli_load_config(nrest, rest, &c, &cfg, err, sizeof(err)) != 0) {
        goto done;
    }
    ab_config_scrub_argv(ab_sinks, argc, argv);
    struct waiter w = {.instance = instance, .job = job, .success = success,
                       .start_ms = ab_cli_now_ms(), .verbose = verbose != NULL};
    if (fb_after && !(api = fallback_start(&w, &cfg, c.file, fb_after, fb_every, institution,
                                           err, sizeof(err)))) {
        goto done;
    }
    w.from_ms = w.start_ms - since_ms;
    w.deadline = timeout_ms >= 0 ? ab_cli_mono_ms() + timeout_ms : INT64_MAX;
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(c.sink, "file") == 0) {
        rc = wait_file(&w, &c);
    } else if ((route = job_end_route(&c, institution, err, sizeof(err))) == NULL) {
        goto done;
    } else if (strcmp(c.sink, "kafka") == 0) {
        char topic[AB_KAFKA_TOPIC_MAX + 1];
        ab_kafka_topic_name(route, topic); /* the name the daemon writes to */
        rc = wait_kafka(&w, &c, topic);
    } else {
        rc = wait_redis(&w, &c, route);
    }
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge wait: %s\n", err);
    }
    free(route);
    ab_reconcile_poll_free(w_poll);
    ab_alma_api_free(api);
    ab_cli_sinkcfg_free(&c);
    ab_config_free(&cfg);
    free(rest);
    return rc;
}
