/* almabridge replay: push the CloudEvents of a file-sink log (or a directory of log
 * segments) into Kafka or Redis, as the daemon would have written them.
 *
 *   almabridge replay --from FILE_OR_DIR --sink kafka|redis [--rate N] [--start-line N]
 *                     [--no-dedup] [the daemon's sink options, --route, --kafka-key, --config]
 *
 * Each line goes through the daemon's own sink backend (sinks/kafka.c, sinks/redis.c) with
 * the daemon's route and key templates, so topics, streams, keys, headers and fields are
 * exactly what the daemon produces. At most --rate events a second are sent, with a bounded
 * number in flight. Progress goes to stderr (one self-rewriting line on a terminal).
 *
 * Resuming: lines are numbered from 1 over the whole input (over the segments of a
 * directory, in name order). On SIGINT/SIGTERM the replay stops reading, waits for what is
 * in flight and prints the first line not acknowledged: `--start-line N` continues from
 * there. Idempotent by id: before the first event for a stream or topic, the ids already
 * in it are read (Redis: the `id` field of every entry; Kafka: the `ce_id` header or key of
 * every message), and events with an id already there, or already sent, are skipped.
 * --no-dedup skips that reading. Exit: 0 done, 1 a write failed for good, 2 usage or
 * connection errors, 130 interrupted. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <librdkafka/rdkafka.h>

#include "cli.h"
#include "event.h"
#include "log.h"
#include "mem.h"
#include "route.h"
#include "sink.h"
#include "sinks/registry.h"

#define WINDOW 1000          /* events in flight at most */
#define MAX_TRIES 5          /* attempts per event before the replay gives up */
#define UNREACHABLE_MS 20000 /* a sink that refuses everything this long: exit 2 */

/* ---- a set of strings (the ids seen), open addressing ---- */

struct idset {
    char **slots;
    size_t cap, n;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    }
    return h;
}

/* Add s (copied); returns 1 when it was new, 0 when it was there already. */
static int idset_add(struct idset *set, const char *s)
{
    if (set->n * 2 >= set->cap) {
        struct idset bigger = {.cap = set->cap ? set->cap * 2 : 1024};
        bigger.slots = ab_calloc(bigger.cap, sizeof(char *));
        for (size_t i = 0; i < set->cap; i++) {
            if (set->slots[i]) {
                size_t j = hash_str(set->slots[i]) & (bigger.cap - 1);
                while (bigger.slots[j]) {
                    j = (j + 1) & (bigger.cap - 1);
                }
                bigger.slots[j] = set->slots[i];
            }
        }
        free(set->slots);
        bigger.n = set->n;
        *set = bigger;
    }
    size_t j = hash_str(s) & (set->cap - 1);
    for (; set->slots[j]; j = (j + 1) & (set->cap - 1)) {
        if (strcmp(set->slots[j], s) == 0) {
            return 0;
        }
    }
    set->slots[j] = ab_strdup(s);
    set->n++;
    return 1;
}

static int idset_has(const struct idset *set, const char *s)
{
    if (set->cap == 0) {
        return 0;
    }
    for (size_t j = hash_str(s) & (set->cap - 1); set->slots[j]; j = (j + 1) & (set->cap - 1)) {
        if (strcmp(set->slots[j], s) == 0) {
            return 1;
        }
    }
    return 0;
}

static void idset_free(struct idset *set)
{
    for (size_t i = 0; i < set->cap; i++) {
        free(set->slots[i]);
    }
    free(set->slots);
    memset(set, 0, sizeof(*set));
}

/* ---- the input: one file, or the segment files of a directory in name order ---- */

struct input {
    char **paths;
    size_t n, cur;
    long first_offset; /* where to start in paths[0] (a spool's forwarding position) */
    FILE *fp;
    char *line;
    size_t cap;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Files of a log directory that may hold events: not hidden, not the writer's lock file,
 * not a torn tail moved aside (sinks/eventlog.c). */
static int is_segment_name(const char *name)
{
    return name[0] != '.' && strcmp(name, "lock") != 0 && !ends_with(name, ".lock") &&
           !ends_with(name, ".torn");
}

/* When the directory holds eventlog segments ("<20 digits>.seg"), only those. */
static void only_seg_files(struct input *in)
{
    size_t w = 0, segs = 0;
    for (size_t i = 0; i < in->n; i++) {
        segs += ends_with(in->paths[i], ".seg");
    }
    for (size_t i = 0; i < in->n; i++) {
        if (segs == 0 || ends_with(in->paths[i], ".seg")) {
            in->paths[w++] = in->paths[i];
        } else {
            free(in->paths[i]);
        }
    }
    in->n = w;
}

/* A spool directory (sinks/spool.c) records how far its forwarder got in DIR/forwarded,
 * "SEGMENT OFFSET": drop the segments before SEGMENT and start that one at OFFSET. Returns
 * 1 when it did, 0 when there is no such file. */
static int skip_forwarded(struct input *in, const char *dir)
{
    char *path = ab_asprintf("%s/forwarded", dir);
    FILE *fp = fopen(path, "r");
    unsigned long long seq = 0;
    long long off = 0;
    int found = fp && fscanf(fp, "%llu %lld", &seq, &off) == 2 && off >= 0;
    size_t w = 0;
    for (size_t i = 0; found && i < in->n; i++) {
        const char *base = strrchr(in->paths[i], '/') + 1;
        unsigned long long s = strtoull(base, NULL, 10);
        if (s < seq) {
            free(in->paths[i]);
            continue;
        }
        if (s == seq) {
            in->first_offset = (long)off;
        }
        in->paths[w++] = in->paths[i];
    }
    in->n = found ? w : in->n;
    if (fp) {
        fclose(fp);
    }
    free(path);
    return found;
}

static int input_open(struct input *in, const char *from, int all, char *err, size_t errlen)
{
    struct stat st;
    memset(in, 0, sizeof(*in));
    if (stat(from, &st) != 0) {
        snprintf(err, errlen, "--from %s: %s", from, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        in->paths = ab_calloc(1, sizeof(char *));
        in->paths[in->n++] = ab_strdup(from);
        return 0;
    }
    DIR *d = opendir(from);
    if (d == NULL) {
        snprintf(err, errlen, "--from %s: %s", from, strerror(errno));
        return -1;
    }
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char *p = ab_asprintf("%s/%s", from, e->d_name);
        if (is_segment_name(e->d_name) && stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
            in->paths = ab_realloc(in->paths, (in->n + 1) * sizeof(char *));
            in->paths[in->n++] = p;
        } else {
            free(p);
        }
    }
    closedir(d);
    only_seg_files(in);
    qsort(in->paths, in->n, sizeof(char *), cmp_str);
    if (!all && skip_forwarded(in, from)) {
        fprintf(stderr, "replay: %s is a spool: starting where its forwarder stopped (line 1 "
                        "= the first event not forwarded; --all for every event)\n", from);
    }
    return 0;
}

/* The next line (without its newline), or NULL at the end of the input. */
static char *input_next(struct input *in, size_t *len, char *err, size_t errlen)
{
    while (in->cur < in->n) {
        if (in->fp == NULL && (in->fp = fopen(in->paths[in->cur], "r")) == NULL) {
            snprintf(err, errlen, "cannot read %s: %s", in->paths[in->cur], strerror(errno));
            return NULL;
        }
        if (in->cur == 0 && in->first_offset > 0) {
            fseek(in->fp, in->first_offset, SEEK_SET);
            in->first_offset = 0;
        }
        ssize_t n = getline(&in->line, &in->cap, in->fp);
        if (n >= 0) {
            while (n > 0 && (in->line[n - 1] == '\n' || in->line[n - 1] == '\r')) {
                in->line[--n] = '\0';
            }
            *len = (size_t)n;
            return in->line;
        }
        fclose(in->fp);
        in->fp = NULL;
        in->cur++;
    }
    return NULL;
}

static void input_close(struct input *in)
{
    if (in->fp) {
        fclose(in->fp);
    }
    for (size_t i = 0; i < in->n; i++) {
        free(in->paths[i]);
    }
    free(in->paths);
    free(in->line);
}

/* ---- the replay ---- */

enum slot_state { SLOT_WAITING, SLOT_INFLIGHT, SLOT_DONE };

struct replay;

/* One event between reading and acknowledgement. */
struct slot {
    struct replay *rp;
    long line;
    enum slot_state state;
    int tries;
    char *id, *type, *source, *route, *key, *value;
    size_t len;
};

struct replay {
    struct event_base *base;
    const struct ab_sink_ops *ops;
    struct ab_sink *sink;
    void *shared;
    struct ab_config cfg;
    struct ab_sink_setup setup; /* the sink's configuration, out of cfg */
    struct ab_cli_sinkcfg sc;
    struct ab_route *route, *key;
    struct input in;
    struct idset seen;      /* ids sent, or already in a stream/topic */
    struct idset loaded;    /* streams/topics whose ids have been read */
    int dedup;
    int all; /* --all: a spool's forwarded events too */
    long next_line;         /* number of the next line to read */
    long start_line;
    double rate;            /* events/s, 0 = unbounded */
    struct slot ring[WINDOW];
    size_t head, count;     /* ring[head] is the oldest slot */
    long sent, acked, dupes, skipped, inflight;
    int eof, stopping, interrupted, failed, unreachable;
    int64_t t0, refused_since, last_report;
    struct event *pump, *tick, *sigs[2];
    int tty;
    char err[512];
};

static void slot_clear(struct slot *s)
{
    free(s->id);
    free(s->type);
    free(s->source);
    free(s->route);
    free(s->key);
    free(s->value);
    memset(s, 0, sizeof(*s));
}

static void schedule_pump(struct replay *rp, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(rp->pump, &tv);
}

/* The first line not yet acknowledged: where --start-line resumes. */
static long resume_line(const struct replay *rp)
{
    for (size_t i = 0; i < rp->count; i++) {
        const struct slot *s = &rp->ring[(rp->head + i) % WINDOW];
        if (s->state != SLOT_DONE) {
            return s->line;
        }
    }
    return rp->next_line;
}

static void report(struct replay *rp, int final)
{
    double secs = (double)(ab_cli_mono_ms() - rp->t0) / 1000.0;
    char line[256];
    snprintf(line, sizeof(line),
             "replay: line %ld, %ld acknowledged, %ld in flight, %ld already there, %ld "
             "skipped, %.0f/s",
             resume_line(rp) - 1, rp->acked, rp->inflight, rp->dupes, rp->skipped,
             secs > 0 ? (double)rp->acked / secs : 0.0);
    if (rp->tty) {
        fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

static void maybe_finish(struct replay *rp)
{
    if (rp->inflight == 0 && (rp->stopping || (rp->eof && rp->count == 0))) {
        event_base_loopbreak(rp->base);
    }
}

/* Drop acknowledged slots from the front of the ring. */
static void ring_advance(struct replay *rp)
{
    while (rp->count > 0 && rp->ring[rp->head].state == SLOT_DONE) {
        slot_clear(&rp->ring[rp->head]);
        rp->head = (rp->head + 1) % WINDOW;
        rp->count--;
    }
}

/* Loop thread, exactly once per accepted submit (the sink contract). */
static void on_done(int status, const char *errstr, void *opaque)
{
    struct slot *s = opaque;
    struct replay *rp = s->rp;
    rp->inflight--;
    if (status == AB_SINK_OK) {
        s->state = SLOT_DONE;
        rp->acked++;
        ring_advance(rp);
    } else {
        s->state = SLOT_WAITING;
        if (++s->tries >= MAX_TRIES && !rp->stopping) {
            snprintf(rp->err, sizeof(rp->err), "line %ld (id %s) failed %d times: %s", s->line,
                     s->id, s->tries, errstr ? errstr : ab_sink_status_str(status));
            rp->failed = rp->stopping = 1;
        }
    }
    if (!event_pending(rp->pump, EV_TIMEOUT, NULL)) {
        schedule_pump(rp, status == AB_SINK_OK ? 0 : 200L * s->tries);
    }
    maybe_finish(rp);
}

static int submit(struct replay *rp, struct slot *s)
{
    struct ab_sink_msg m = {.id = s->id, .type = s->type, .source = s->source,
                            .route = s->route, .key = s->key, .value = s->value,
                            .value_len = s->len};
    if (rp->ops->submit(rp->sink, &m, on_done, s) != 0) {
        return -1;
    }
    s->state = SLOT_INFLIGHT;
    rp->inflight++;
    rp->sent++;
    return 0;
}

/* ---- dedup: the ids already in a stream or topic ---- */

static int load_redis_ids(struct replay *rp, const char *stream)
{
    struct ab_cli_redis t;
    redisContext *c = NULL;
    char last[80] = "-";
    int rc = -1;
    if (ab_cli_redis_parse(rp->sc.redis_url, &t, rp->err, sizeof(rp->err)) != 0 ||
        (c = ab_cli_redis_dial(&t, rp->err, sizeof(rp->err))) == NULL) {
        goto done;
    }
    for (;;) {
        redisReply *r = redisCommand(c, "XRANGE %s %s + COUNT 1000", stream, last);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
            snprintf(rp->err, sizeof(rp->err), "XRANGE %s: %s", stream,
                     r && r->str ? r->str : c->errstr);
            if (r) {
                freeReplyObject(r);
            }
            goto done;
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++) {
            const redisReply *e = r->element[i], *f = e->element[1];
            snprintf(last, sizeof(last), "(%s", e->element[0]->str);
            for (size_t k = 0; k + 1 < f->elements; k += 2) {
                if (strcmp(f->element[k]->str, "id") == 0) {
                    idset_add(&rp->seen, f->element[k + 1]->str);
                }
            }
        }
        freeReplyObject(r);
        if (n < 1000) {
            break;
        }
    }
    rc = 0;
done:
    redisFree(c);
    ab_cli_redis_free(&t);
    return rc;
}

/* The id of a Kafka message: its ce_id header, else its key. */
static void add_kafka_id(struct replay *rp, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *v = NULL;
    size_t vlen = 0;
    char *id = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(hdrs, "ce_id", &v, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR && v) {
        id = ab_strndup(v, vlen);
    } else if (m->key) {
        id = ab_strndup(m->key, m->key_len);
    }
    if (id) {
        idset_add(&rp->seen, id);
        free(id);
    }
}

/* Read topic from its start to its end offsets as they are now. */
static int load_kafka_ids(struct replay *rp, const char *topic)
{
    rd_kafka_t *rk = ab_cli_kafka_consumer(&rp->sc, "almabridge-replay", rp->err, sizeof(rp->err));
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *l = NULL;
    int rc = -1;
    if (rk == NULL) {
        return -1;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(rp->err, sizeof(rp->err), "kafka %s: %s", rp->sc.kafka_brokers,
                 rd_kafka_err2str(e));
        goto done;
    }
    int nparts = md->topic_cnt > 0 && md->topics[0].err == 0 ? md->topics[0].partition_cnt : 0;
    int64_t *high = ab_calloc((size_t)nparts + 1, sizeof(int64_t));
    int left = 0;
    l = rd_kafka_topic_partition_list_new(nparts > 0 ? nparts : 1);
    for (int p = 0; p < nparts; p++) {
        int64_t lo = 0;
        if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &high[p], 10000) != 0) {
            high[p] = 0;
        }
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
        left += high[p] > lo;
        high[p] = high[p] > lo ? high[p] : -1; /* -1: nothing to read */
    }
    rd_kafka_assign(rk, l);
    int64_t deadline = ab_cli_mono_ms() + 120000;
    while (left > 0 && ab_cli_mono_ms() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 500);
        if (m == NULL) {
            continue;
        }
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            add_kafka_id(rp, m);
            if (m->offset + 1 == high[m->partition]) {
                left--;
            }
        }
        rd_kafka_message_destroy(m);
    }
    free(high);
    if (left > 0) {
        snprintf(rp->err, sizeof(rp->err), "reading the ids in topic %s took too long", topic);
        goto done;
    }
    rc = 0;
done:
    if (md) {
        rd_kafka_metadata_destroy(md);
    }
    if (l) {
        rd_kafka_topic_partition_list_destroy(l);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return rc;
}

/* Before the first event for route: learn the ids it holds. -1 stops the replay. */
static int learn_route(struct replay *rp, const char *route)
{
    if (!rp->dedup || !idset_add(&rp->loaded, route)) {
        return 0;
    }
    int rc = strcmp(rp->sc.sink, "redis") == 0 ? load_redis_ids(rp, route)
                                               : load_kafka_ids(rp, route);
    if (rc != 0) {
        rp->unreachable = rp->stopping = 1;
    }
    return rc;
}

/* ---- reading lines into slots ---- */

static char *member_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) && v->valuestring[0] ? ab_strdup(v->valuestring) : NULL;
}

/* Fill s from one log line; -1 when it is not a CloudEvent with an id. */
static int slot_fill(struct replay *rp, struct slot *s, const char *line, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(line, len);
    struct ab_event ev = {0};
    int rc = -1;
    if (!cJSON_IsObject(j) || (ev.id = member_str(j, "id")) == NULL) {
        goto done;
    }
    ev.action = member_str(j, "almaaction");
    ev.event = member_str(j, "almaevent");
    ev.institution = member_str(j, "almainstitution");
    s->id = ab_strdup(ev.id);
    s->type = member_str(j, "type");
    s->source = member_str(j, "source");
    s->type = s->type ? s->type : ab_strdup("com.exlibrisgroup.alma");
    s->source = s->source ? s->source : ab_strdup("urn:alma:unknown");
    s->route = ab_route_expand(rp->route, &ev);
    s->key = rp->key ? ab_route_expand_raw(rp->key, &ev) : NULL; /* as the daemon's */
    s->value = ab_strndup(line, len);
    s->len = len;
    rc = 0;
done:
    free(ev.id);
    free(ev.action);
    free(ev.event);
    free(ev.institution);
    cJSON_Delete(j);
    return rc;
}

/* Read the next line into a new slot at the ring's tail. Returns 1 when a slot was added,
 * 0 when the line was skipped (before --start-line, malformed, a duplicate), -1 at the end
 * of the input or on a stop. */
static int read_one(struct replay *rp)
{
    size_t len = 0;
    char *line = input_next(&rp->in, &len, rp->err, sizeof(rp->err));
    if (line == NULL) {
        rp->eof = 1;
        if (rp->err[0]) {
            rp->failed = rp->stopping = 1;
        }
        return -1;
    }
    long no = rp->next_line++;
    if (no < rp->start_line || len == 0) {
        return 0;
    }
    struct slot *s = &rp->ring[(rp->head + rp->count) % WINDOW];
    s->rp = rp;
    s->line = no;
    if (slot_fill(rp, s, line, len) != 0) {
        fprintf(stderr, "%sreplay: line %ld is not a CloudEvent with an id: skipped\n",
                rp->tty ? "\n" : "", no);
        slot_clear(s);
        rp->skipped++;
        return 0;
    }
    if (learn_route(rp, s->route) != 0) {
        rp->next_line = no; /* not sent: resume here */
        slot_clear(s);
        return -1;
    }
    if (rp->dedup && idset_has(&rp->seen, s->id)) {
        slot_clear(s);
        rp->dupes++;
        return 0;
    }
    if (rp->dedup) {
        idset_add(&rp->seen, s->id);
    }
    s->state = SLOT_WAITING;
    rp->count++;
    return 1;
}

/* How many new events the rate allows now. */
static long rate_budget(const struct replay *rp)
{
    if (rp->rate <= 0) {
        return WINDOW;
    }
    double elapsed = (double)(ab_cli_mono_ms() - rp->t0) / 1000.0;
    return (long)(rp->rate * elapsed + 1) - rp->sent;
}

/* Loop thread: send what is waiting (retries first), then read more, within the window
 * and the rate. A sink that refuses (not connected yet, queue full) is tried again soon. */
static void on_pump(evutil_socket_t fd, short what, void *arg)
{
    struct replay *rp = arg;
    int refused = 0;
    while (!rp->stopping && !rp->eof && rp->count < WINDOW && read_one(rp) >= 0) {
    }
    for (size_t i = 0; i < rp->count && !refused && !rp->stopping; i++) {
        struct slot *s = &rp->ring[(rp->head + i) % WINDOW];
        if (s->state != SLOT_WAITING) {
            continue;
        }
        if (rate_budget(rp) <= 0) {
            schedule_pump(rp, 10);
            return;
        }
        refused = submit(rp, s) != 0;
    }
    if (refused) {
        int64_t now = ab_cli_mono_ms();
        rp->refused_since = rp->refused_since ? rp->refused_since : now;
        if (now - rp->refused_since > UNREACHABLE_MS) {
            snprintf(rp->err, sizeof(rp->err), "the %s sink refuses every write",
                     rp->sc.sink);
            if (rp->ops->describe) {
                rp->ops->describe(rp->sink, rp->err, sizeof(rp->err));
            }
            rp->unreachable = rp->stopping = 1;
        } else {
            schedule_pump(rp, 100);
        }
    } else {
        rp->refused_since = 0;
    }
    maybe_finish(rp);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct replay *rp = arg;
    int64_t now = ab_cli_mono_ms();
    if (rp->tty || now - rp->last_report >= 10000) {
        report(rp, 0);
        rp->last_report = now;
    }
}

/* SIGINT/SIGTERM: the first stops reading and lets what is in flight finish; a second
 * closes the sink at once (what is left is completed as not acknowledged). */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct replay *rp = arg;
    rp->interrupted = 1;
    if (!rp->stopping) {
        rp->stopping = 1;
        fprintf(stderr, "%sreplay: interrupted; waiting for %ld event(s) in flight (again to "
                        "stop now)\n",
                rp->tty ? "\n" : "", rp->inflight);
        maybe_finish(rp);
        return;
    }
    event_base_loopbreak(rp->base);
}

/* ---- the command ---- */

static int replay_setup(struct replay *rp, const char *from, char *err, size_t errlen)
{
    char rerr[256];
    rp->ops = ab_sink_find(rp->sc.sink);
    if (rp->ops == NULL || strcmp(rp->sc.sink, "file") == 0) {
        snprintf(err, errlen, "--sink kafka, redis or http: replay writes to a broker");
        return -1;
    }
    /* Dedup reads the target, and only Kafka and Redis can be read (the http sink has no
     * read side): anything else is replayed only when told not to check. */
    if (rp->dedup && strcmp(rp->sc.sink, "kafka") != 0 && strcmp(rp->sc.sink, "redis") != 0) {
        snprintf(err, errlen, "--sink %s has no read side: replay cannot skip the events the "
                              "target already holds; add --no-dedup to send every event",
                 rp->sc.sink);
        return -1;
    }
    const char *tmpl = rp->sc.route ? rp->sc.route : rp->ops->default_route;
    if ((rp->route = ab_route_compile(tmpl, rerr, sizeof(rerr))) == NULL) {
        snprintf(err, errlen, "--route: %s", rerr);
        return -1;
    }
    if (strcmp(rp->sc.sink, "kafka") == 0 && rp->sc.key[0] &&
        (rp->key = ab_route_compile(rp->sc.key, rerr, sizeof(rerr))) == NULL) {
        snprintf(err, errlen, "--kafka-key: %s", rerr);
        return -1;
    }
    if (input_open(&rp->in, from, rp->all, err, errlen) != 0) {
        return -1;
    }
    ab_sink_setup_init(&rp->setup, &rp->cfg, rp->ops);
    if (rp->ops->global_init &&
        rp->ops->global_init(&rp->setup.conf, &rp->shared, err, errlen) != 0) {
        return -1;
    }
    rp->base = event_base_new();
    if ((rp->sink = rp->ops->open(&rp->setup.conf, rp->shared, rp->base, err, errlen)) == NULL) {
        return -1;
    }
    return 0;
}

/* Run the loop until the input is done or the replay stops; returns the exit code. */
static int replay_run(struct replay *rp)
{
    struct timeval one = {1, 0};
    rp->pump = evtimer_new(rp->base, on_pump, rp);
    rp->tick = event_new(rp->base, -1, EV_PERSIST, on_tick, rp);
    rp->sigs[0] = evsignal_new(rp->base, SIGINT, on_signal, rp);
    rp->sigs[1] = evsignal_new(rp->base, SIGTERM, on_signal, rp);
    event_add(rp->tick, &one);
    event_add(rp->sigs[0], NULL);
    event_add(rp->sigs[1], NULL);
    rp->t0 = rp->last_report = ab_cli_mono_ms();
    schedule_pump(rp, 0);
    event_base_dispatch(rp->base);
    rp->ops->close(rp->sink, 5000); /* completes anything left as not acknowledged */
    rp->sink = NULL;
    ring_advance(rp);
    report(rp, 1);
    long resume = resume_line(rp);
    int done = rp->eof && rp->count == 0 && !rp->failed && !rp->unreachable;
    if (!done) {
        fprintf(stderr, "replay: stopped%s%s; resume with --start-line %ld\n",
                rp->err[0] ? ": " : "", rp->err, resume);
    }
    event_free(rp->pump);
    event_free(rp->tick);
    event_free(rp->sigs[0]);
    event_free(rp->sigs[1]);
    return done ? AB_EXIT_OK
           : rp->unreachable ? AB_EXIT_USAGE
           : rp->failed      ? AB_EXIT_FAILED
                             : AB_EXIT_INTERRUPTED;
}

static void replay_free(struct replay *rp)
{
    if (rp->sink) {
        rp->ops->close(rp->sink, 0);
    }
    if (rp->ops && rp->ops->global_free && rp->shared) {
        rp->ops->global_free(rp->shared);
    }
    for (size_t i = 0; i < WINDOW; i++) {
        slot_clear(&rp->ring[i]);
    }
    if (rp->base) {
        event_base_free(rp->base);
    }
    input_close(&rp->in);
    idset_free(&rp->seen);
    idset_free(&rp->loaded);
    ab_route_free(rp->route);
    ab_route_free(rp->key);
    ab_cli_sinkcfg_free(&rp->sc);
    ab_config_free(&rp->cfg);
}

static const char REPLAY_ABOUT[] =
    "Push the CloudEvents of a file-sink log (or a directory of log segments, in name\n"
    "order) into Kafka or Redis with the daemon's routing and keys. Progress on stderr;\n"
    "on SIGINT it stops cleanly and prints the --start-line to resume from. Events whose\n"
    "id is already in the target stream/topic are skipped (--no-dedup: not checked).\n"
    "Exit status: 0 done, 1 a write failed for good, 2 usage or connection error,\n"
    "130 interrupted.";
static const char REPLAY_FOOTER[] =
    "Sink options are the daemon's (almabridge --help): --sink, --route, --kafka-brokers,\n"
    "--kafka-key, --kafka-conf, --redis, --redis-maxlen, --ack-timeout, or --config FILE.";

int ab_cmd_replay(int argc, char **argv)
{
    const char *from = NULL, *rate = "1000", *start = "1", *no_dedup = NULL, *all = NULL;
    const struct ab_cli_opt opts[] = {
        {"from", 1, &from, "FILE|DIR", "the file sink's log, or a directory of segments"},
        {"rate", 1, &rate, "N", "events per second at most (default 1000; 0 = no limit)"},
        {"start-line", 1, &start, "N", "begin at line N (1 = the first), to resume"},
        {"no-dedup", 0, &no_dedup, NULL, "do not read the ids already in the target"},
        {"all", 0, &all, NULL, "a spool directory: also the events already forwarded"},
    };
    const struct ab_cli_cmd cmd = {
        "almabridge replay --from FILE|DIR --sink kafka|redis [options]", REPLAY_ABOUT,
        REPLAY_FOOTER, opts, sizeof(opts) / sizeof(opts[0])};
    static struct replay rp; /* big (the ring): not on the stack */
    char **rest = ab_calloc((size_t)argc + 1, sizeof(char *));
    int nrest = 0, rc = AB_EXIT_USAGE, started;
    char err[1024] = "", *end = NULL;

    if ((started = ab_cli_start(&cmd, argc, argv, NULL, NULL, rest, &nrest, err,
                                sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    rp.rate = strtod(rate, &end);
    rp.start_line = strtol(start, NULL, 10);
    if (from == NULL || *end != '\0' || rp.rate < 0 || rp.start_line < 1) {
        snprintf(err, sizeof(err), "give --from FILE|DIR; --rate N >= 0; --start-line N >= 1");
        goto done;
    }
    if (ab_cli_load_config(nrest, rest, &rp.sc, &rp.cfg, err, sizeof(err)) != 0) {
        goto done;
    }
    ab_config_scrub_argv(ab_sinks, argc, argv);
    ab_log_configure(strcmp(rp.cfg.log_level, "info") == 0 ? "warn" : rp.cfg.log_level,
                     rp.cfg.log_format, err, sizeof(err));
    rp.next_line = 1;
    rp.dedup = no_dedup == NULL;
    rp.all = all != NULL;
    rp.tty = isatty(2);
    signal(SIGPIPE, SIG_IGN);
    if (replay_setup(&rp, from, err, sizeof(err)) != 0) {
        goto done;
    }
    err[0] = '\0';
    rc = replay_run(&rp);
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge replay: %s\n", err);
    }
    replay_free(&rp);
    free(rest);
    return rc;
}
