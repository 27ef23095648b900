/* The spool: see spool.h for what it promises.
 *
 * Threads: the shared part (the event log, counters, the segments' birth times) is created
 * at start-up and read by every loop thread through atomics or its mutex; each loop thread
 * has its own instance (an inner broker instance and an event-log client); the first
 * instance opened also runs the forwarder, on its own loop thread. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "dedupe.h"
#include "event.h"
#include "eventlog.h"
#include "institutions.h"
#include "log.h"
#include "mem.h"
#include "pending.h"
#include "metrics.h"
#include "route.h"

/* ---- process-wide state ------------------------------------------------------------- */

struct birth {
    uint64_t seq;
    int64_t ms; /* when the segment got its first event (its mtime after a restart) */
};

struct spool_shared {
    const struct ab_sink_ops *inner_ops;
    struct ab_sink_conf inner_conf; /* the inner backend's (its deadline: see global_init) */
    void *inner_shared;
    struct ab_eventlog *log;
    char *dir;
    long max_bytes;
    long after_ms;
    struct ab_route *route;
    int marker_fd;             /* DIR/forwarded */
    uint64_t start_seq;        /* where forwarding starts or continues */
    int64_t start_off;
    atomic_int forwarder;      /* 1 once an instance runs the forwarder */
    atomic_llong disk_bytes;   /* segment bytes on disk, plus appends reserved */
    atomic_llong refused_size; /* the last event refused for lack of room (0: none) */
    atomic_long events;        /* spooled and not forwarded */
    atomic_int spooling;       /* 1 from the first spooled event until the spool is empty */
    pthread_mutex_t mu;        /* guards births */
    struct birth *births;
    size_t n_births;
};


/* Counters for /metrics (process-wide; one spool per process). */
static atomic_long m_spooled, m_forwarded, m_forward_errors, m_full, m_late_acks, m_resent,
    m_unconfirmed, m_damaged;
static struct spool_shared *metrics_sh;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *segment_path(const char *dir, uint64_t seq);

/* Remove segment seq and its checksum index. Returns the segment's size, or -1 when it was
 * not there. */
static long long remove_segment(const char *dir, uint64_t seq)
{
    char *p = segment_path(dir, seq);
    char *ip = ab_asprintf("%s.crc", p);
    struct stat st;
    long long size = -1;
    if (stat(p, &st) == 0 && unlink(p) == 0) {
        size = (long long)st.st_size;
    }
    unlink(ip);
    free(ip);
    free(p);
    return size;
}

static char *segment_path(const char *dir, uint64_t seq)
{
    char name[64];
    ab_eventlog_segment_name(seq, name, sizeof(name));
    return ab_asprintf("%s/%s", dir, name);
}

static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Segments in dir: lowest and highest sequence numbers (0, 0 if none). */
static int scan_segments(const char *dir, uint64_t *lo, uint64_t *hi)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        return -1;
    }
    *lo = *hi = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end = NULL;
        unsigned long long v = strtoull(e->d_name, &end, 10);
        if (end == e->d_name + 20 && strcmp(end, ".seg") == 0 && v > 0) {
            *lo = *lo == 0 || v < *lo ? v : *lo;
            *hi = v > *hi ? v : *hi;
        }
    }
    closedir(d);
    return 0;
}

/* The forwarder's progress: "SEGMENT OFFSET\n" in DIR/forwarded. 0 and the values, or -1 when
 * absent or unreadable (then forwarding starts at the first segment). */
static int read_marker(int fd, uint64_t *seq, int64_t *off)
{
    char buf[64] = "";
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    unsigned long long s;
    long long o;
    if (n <= 0 || sscanf(buf, "%llu %lld", &s, &o) != 2 || o < 0) {
        return -1;
    }
    *seq = s;
    *off = o;
    return 0;
}

static void write_marker(int fd, uint64_t seq, int64_t off)
{
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "%020" PRIu64 " %020" PRId64 "\n", seq, off);
    if (fd >= 0 && pwrite(fd, buf, (size_t)n, 0) != n) {
        ab_warn("spool: cannot record the forwarding progress: %s", strerror(errno));
    }
}

static void birth_note(struct spool_shared *sh, uint64_t seq, int64_t ms)
{
    pthread_mutex_lock(&sh->mu);
    if (sh->n_births == 0 || sh->births[sh->n_births - 1].seq < seq) {
        sh->births = ab_realloc(sh->births, (sh->n_births + 1) * sizeof(*sh->births));
        sh->births[sh->n_births++] = (struct birth){seq, ms};
    }
    pthread_mutex_unlock(&sh->mu);
}

/* Segments below seq are gone: forget their birth times. */
static void births_drop_below(struct spool_shared *sh, uint64_t seq)
{
    pthread_mutex_lock(&sh->mu);
    size_t k = 0;
    while (k < sh->n_births && sh->births[k].seq < seq) {
        k++;
    }
    memmove(sh->births, sh->births + k, (sh->n_births - k) * sizeof(*sh->births));
    sh->n_births -= k;
    pthread_mutex_unlock(&sh->mu);
}

/* Seconds since the oldest segment that still holds events got its first one. */
static double oldest_age(struct spool_shared *sh)
{
    double age = 0;
    pthread_mutex_lock(&sh->mu);
    if (sh->n_births && atomic_load(&sh->events) > 0) {
        age = (double)(now_ms() - sh->births[0].ms) / 1000.0;
    }
    pthread_mutex_unlock(&sh->mu);
    return age < 0 ? 0 : age;
}

static char *render_metrics(void)
{
    struct spool_shared *sh = metrics_sh;
    if (sh == NULL) {
        return ab_strdup("");
    }
    return ab_asprintf(
        "# HELP almabridge_spool_events Events in the spool, not yet forwarded.\n"
        "# TYPE almabridge_spool_events gauge\nalmabridge_spool_events %ld\n"
        "# HELP almabridge_spool_bytes Bytes of the spool's segment files.\n"
        "# TYPE almabridge_spool_bytes gauge\nalmabridge_spool_bytes %lld\n"
        "# HELP almabridge_spool_oldest_age_seconds Age of the oldest spool segment holding "
        "events (0 when empty).\n"
        "# TYPE almabridge_spool_oldest_age_seconds gauge\n"
        "almabridge_spool_oldest_age_seconds %.3f\n"
        "# HELP almabridge_spooled_total Events written to the spool and answered 200.\n"
        "# TYPE almabridge_spooled_total counter\nalmabridge_spooled_total %ld\n"
        "# HELP almabridge_spool_forwarded_total Spooled events acknowledged by the broker.\n"
        "# TYPE almabridge_spool_forwarded_total counter\nalmabridge_spool_forwarded_total %ld\n"
        "# HELP almabridge_spool_forward_errors_total Forwarding attempts that failed (retried).\n"
        "# TYPE almabridge_spool_forward_errors_total counter\n"
        "almabridge_spool_forward_errors_total %ld\n"
        "# HELP almabridge_spool_full_total Events refused (503) because the spool was full or "
        "could not be written.\n"
        "# TYPE almabridge_spool_full_total counter\nalmabridge_spool_full_total %ld\n"
        "# HELP almabridge_spool_duplicates_total Events that may reach the broker twice: a "
        "late broker acknowledgement after --spool-after, a resend of events acknowledged "
        "after a forwarding failure, or a failure after the event was sent (the broker may "
        "have stored it).\n"
        "# TYPE almabridge_spool_duplicates_total counter\n"
        "almabridge_spool_duplicates_total{cause=\"late_ack\"} %ld\n"
        "almabridge_spool_duplicates_total{cause=\"resent\"} %ld\n"
        "almabridge_spool_duplicates_total{cause=\"unconfirmed\"} %ld\n"
        "# HELP almabridge_damaged_records_total Spooled records found damaged (checksum "
        "mismatch, cut short, not covered by a checksum): logged, moved aside, skipped.\n"
        "# TYPE almabridge_damaged_records_total counter\n"
        "almabridge_damaged_records_total %ld\n",
        atomic_load(&sh->events), (long long)atomic_load(&sh->disk_bytes), oldest_age(sh),
        atomic_load(&m_spooled), atomic_load(&m_forwarded), atomic_load(&m_forward_errors),
        atomic_load(&m_full), atomic_load(&m_late_acks), atomic_load(&m_resent),
        atomic_load(&m_unconfirmed), atomic_load(&m_damaged));
}

static long count_records(const char *path, int64_t from, int complete, long *damaged);

/* Start-up: where forwarding starts, what the spool holds, leftovers of an earlier run. */
static void recover(struct spool_shared *sh)
{
    uint64_t lo = 0, hi = 0, mseq = 0;
    int64_t moff = 0;
    scan_segments(sh->dir, &lo, &hi);
    sh->start_seq = lo ? lo : 1;
    sh->start_off = 0;
    if (read_marker(sh->marker_fd, &mseq, &moff) == 0 && mseq >= lo && mseq <= hi) {
        char *p = segment_path(sh->dir, mseq);
        struct stat st;
        if (stat(p, &st) == 0 && moff <= st.st_size) {
            sh->start_seq = mseq;
            sh->start_off = moff;
        }
        free(p);
    }
    long long bytes = 0;
    long events = 0;
    int removed = 0;
    for (uint64_t seq = lo; lo && seq <= hi; seq++) {
        char *p = segment_path(sh->dir, seq);
        struct stat st;
        if (stat(p, &st) != 0) {
            free(p);
            continue;
        }
        if (seq < sh->start_seq) {
            remove_segment(sh->dir, seq); /* forwarded before a crash, not yet removed */
            removed = 1;
        } else {
            bytes += st.st_size;
            /* every record the checksums know of, damaged ones included: the forwarder
             * takes those off the count when it skips them */
            long damaged = 0;
            events += count_records(p, seq == sh->start_seq ? sh->start_off : 0, seq < hi,
                                    &damaged);
            events += damaged;
            birth_note(sh, seq, (int64_t)st.st_mtime * 1000);
        }
        free(p);
    }
    if (removed) {
        sync_dir(sh->dir);
    }
    atomic_store(&sh->disk_bytes, bytes);
    atomic_store(&sh->events, events);
    if (events > 0) {
        atomic_store(&sh->spooling, 1);
        ab_info("spool: %s holds %ld event(s) (%lld bytes) from an earlier run; forwarding "
                "them when the broker is ready",
                sh->dir, events, bytes);
    }
}

static int spool_global_init(const struct ab_sink_conf *conf, void **shared, char *errstr,
                             size_t errlen)
{
    const struct ab_spool_conf *sc = conf->opts;
    struct spool_shared *sh = ab_calloc(1, sizeof(*sh));
    char rerr[256];
    sh->inner_ops = sc->inner;
    /* The inner backend keeps its own deadline (--ack-timeout), not --spool-after: an event
     * spooled after --spool-after is still the broker's until it answers, and only that
     * answer says whether the forwarder may send it (fwd:<key>). With the Kafka sink the
     * deadline is also librdkafka's message.timeout.ms: an in-flight batch whose leader died
     * is retried on the new leader by the idempotent producer (deduplicated there by its
     * sequence numbers) instead of failing as "possibly persisted" after --spool-after and
     * being forwarded a second time (tests/e2e/test_kafka_cluster.py). A backend that
     * retries on its own (AB_SINK_RETRIES_LATE) gets AB_SINK_PATIENCE_MS, so a failover
     * longer than --ack-timeout still ends in its one final answer: our answers keep their
     * own timers (--spool-after, the pending list's --ack-timeout). */
    sh->inner_conf = sc->inner_conf;
    if ((sh->inner_ops->flags & AB_SINK_RETRIES_LATE) &&
        sh->inner_conf.ack_timeout_ms < AB_SINK_PATIENCE_MS) {
        sh->inner_conf.ack_timeout_ms = AB_SINK_PATIENCE_MS;
    }
    sh->dir = ab_strdup(sc->opts.dir);
    sh->max_bytes = sc->opts.max_bytes;
    sh->after_ms = sc->opts.after_ms;
    sh->marker_fd = -1;
    pthread_mutex_init(&sh->mu, NULL);
    if (sh->inner_ops->global_init &&
        sh->inner_ops->global_init(&sh->inner_conf, &sh->inner_shared, errstr, errlen) != 0) {
        goto fail;
    }
    struct ab_eventlog_opts o = {.path = sh->dir,
                                 .what = "spool",
                                 .sync = 1,
                                 .check_only = conf->check_only,
                                 .segment_bytes = sc->opts.segment_bytes};
    if ((sh->log = ab_eventlog_open(&o, NULL, errstr, errlen)) == NULL) {
        goto fail;
    }
    const char *tmpl = sc->route ? sc->route : sh->inner_ops->default_route;
    if ((sh->route = ab_route_compile(tmpl, rerr, sizeof(rerr))) == NULL) {
        snprintf(errstr, errlen, "spool: --route: %s", rerr);
        goto fail;
    }
    if (!conf->check_only) {
        char *mp = ab_asprintf("%s/forwarded", sh->dir);
        sh->marker_fd = open(mp, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
        free(mp);
        recover(sh);
        metrics_sh = sh;
        ab_metrics_add_source(render_metrics);
    }
    *shared = sh;
    return 0;
fail:
    if (sh->inner_shared && sh->inner_ops->global_free) {
        sh->inner_ops->global_free(sh->inner_shared);
    }
    ab_eventlog_free(sh->log, 0);
    ab_route_free(sh->route);
    free(sh->dir);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
    return -1;
}

static void spool_global_free(void *shared)
{
    struct spool_shared *sh = shared;
    if (sh == NULL) {
        return;
    }
    if (metrics_sh == sh) {
        metrics_sh = NULL;
    }
    ab_eventlog_free(sh->log, 1000);
    if (sh->inner_ops->global_free) {
        sh->inner_ops->global_free(sh->inner_shared);
    }
    if (sh->marker_fd >= 0) {
        close(sh->marker_fd);
    }
    ab_route_free(sh->route);
    free(sh->births);
    free(sh->dir);
    pthread_mutex_destroy(&sh->mu);
    free(sh);
}

/* ---- instances ------------------------------------------------------------------------ */

struct fwd;

struct spool_sink {
    struct ab_sink base;
    struct spool_shared *sh;
    struct ab_sink *inner;
    struct event_base *evbase;
    struct ab_eventlog_client *client;
    struct fwd *fwd; /* NULL unless this instance forwards */
    struct ab_pending *pending; /* the outer answers and their --ack-timeout deadline */
    struct ab_dedupe_guard *dd; /* deduplication on: what reached the broker (keys "fwd:...") */
    int closing;
};

/* One webhook on its way: to the broker first, to the spool if the broker cannot take it
 * in time. Freed once answered and neither the broker nor the spool holds it. */
struct sreq {
    struct spool_sink *s;
    struct ab_pending_req *req; /* the answer (core/pending.h: exactly once, by the deadline) */
    struct event *timer;
    char *value;
    size_t len;
    char why[160]; /* why it is spooled */
    char *fkey;    /* deduplication on: "fwd:<key>", held while the broker may still take it */
    struct ab_dedupe_ticket *ft; /* the claim of fkey, while the broker's answer is due */
    int fclaiming;               /* the claim of fkey is being asked */
    unsigned inner_pending : 1, append_pending : 1, answered : 1, spooled : 1, inner_ok : 1;
};

static void sreq_answer(struct sreq *r, int status, const char *err)
{
    if (r->answered) {
        return;
    }
    r->answered = 1;
    evtimer_del(r->timer);
    ab_pending_complete(r->req, status, err); /* ignored if --ack-timeout passed already */
}

static void sreq_maybe_free(struct sreq *r)
{
    if (r->answered && !r->inner_pending && !r->append_pending && !r->fclaiming && !r->ft) {
        ab_pending_release(r->req);
        event_free(r->timer);
        free(r->value);
        free(r->fkey);
        free(r);
    }
}

/* Loop thread: the spool's answer for one event. */
static void on_appended(int status, void *opaque)
{
    struct sreq *r = opaque;
    struct spool_shared *sh = r->s->sh;
    r->append_pending = 0;
    if (status == AB_EVENTLOG_OK) {
        atomic_fetch_add(&m_spooled, 1);
        if (atomic_exchange(&sh->spooling, 1) == 0) {
            ab_warn("spool: spooling to %s (%s); answering 200 and forwarding when the broker "
                    "is ready",
                    sh->dir, r->why);
        }
        sreq_answer(r, AB_SINK_OK, NULL);
    } else {
        atomic_fetch_sub(&sh->disk_bytes, (long long)r->len + 1);
        atomic_fetch_sub(&sh->events, 1);
        atomic_fetch_add(&m_full, 1);
        if (r->inner_ok) {
            sreq_answer(r, AB_SINK_OK, NULL); /* the broker has it after all */
        } else {
            sreq_answer(r, AB_SINK_ERROR,
                        status == AB_EVENTLOG_CLOSED ? "spool closed before fsync returned"
                                                     : "spool write or fsync failed");
        }
    }
    sreq_maybe_free(r);
}

/* Loop thread: the claim of "fwd:<key>" for an event spooled while the broker has it. */
static void on_live_claim(int verdict, struct ab_dedupe_ticket *t, void *opaque)
{
    struct sreq *r = opaque;
    r->fclaiming = 0;
    if (verdict == AB_DEDUPE_WRITE && r->inner_pending) {
        r->ft = t; /* on_inner_done reports the broker's answer */
    } else if (verdict == AB_DEDUPE_WRITE) {
        ab_dedupe_outcome(t, r->inner_ok, NULL, NULL); /* it answered meanwhile */
    }
    sreq_maybe_free(r);
}

/* Append r to the spool. Returns 0, or -1 when the spool cannot take it (full, unwritable,
 * closed). Loop thread. */
static int spool_now(struct sreq *r)
{
    struct spool_sink *s = r->s;
    struct spool_shared *sh = s->sh;
    long long need = (long long)r->len + 1;
    if (atomic_fetch_add(&sh->disk_bytes, need) + need > sh->max_bytes) {
        atomic_fetch_sub(&sh->disk_bytes, need);
        atomic_fetch_add(&m_full, 1);
        atomic_store(&sh->refused_size, need);
        ab_warn("spool: full (%s, --spool-max-bytes %ld): answering 503 (%s)", sh->dir,
                sh->max_bytes, r->why);
        return -1;
    }
    struct iovec part = {r->value, r->len};
    uint64_t seq;
    int64_t synced;
    ab_eventlog_position(sh->log, &seq, &synced);
    atomic_fetch_add(&sh->events, 1); /* before the forwarder can see it */
    if (!ab_eventlog_ready(sh->log) ||
        ab_eventlog_append(s->client, &part, 1, on_appended, r) != 0) {
        atomic_fetch_sub(&sh->disk_bytes, need);
        atomic_fetch_sub(&sh->events, 1);
        atomic_fetch_add(&m_full, 1);
        return -1;
    }
    birth_note(sh, seq, now_ms());
    r->spooled = 1;
    r->append_pending = 1;
    if (r->fkey && r->inner_pending) {
        /* The broker may still take it: hold "fwd:<key>" until it answers, so the forwarder
         * waits for that answer and skips the event if it was taken (a late ack). */
        r->fclaiming = 1;
        ab_dedupe_check(s->dd, r->fkey, AB_DEDUPE_CAUSE_FORWARDER, on_live_claim, r);
    }
    return 0;
}

/* Loop thread: the broker's answer. */
static void on_inner_done(int status, const char *errstr, void *opaque)
{
    struct sreq *r = opaque;
    r->inner_pending = 0;
    int dup = status == AB_SINK_DUPLICATE; /* the broker had it (its atomic script) */
    status = dup ? AB_SINK_OK : status;
    if (r->ft) {
        /* spooled while the broker still had it: now the forwarder knows whether to send */
        ab_dedupe_outcome(r->ft, status == AB_SINK_OK, NULL, NULL);
        r->ft = NULL;
    }
    if (status == AB_SINK_OK) {
        r->inner_ok = 1;
        if (r->spooled) {
            atomic_fetch_add(&m_late_acks, 1); /* in the broker and in the spool */
        }
        if (!r->append_pending) {
            sreq_answer(r, dup ? AB_SINK_DUPLICATE : AB_SINK_OK, NULL);
        }
    } else if (r->spooled) {
        atomic_fetch_add(&m_unconfirmed, 1); /* spooled after --spool-after; stored too? */
    } else if (status == AB_SINK_TOO_BIG) {
        sreq_answer(r, status, errstr); /* 413: the spool could never forward it either */
    } else if (!r->answered) {
        snprintf(r->why, sizeof(r->why), "broker: %s%s%s", ab_sink_status_str(status),
                 errstr ? ": " : "", errstr ? errstr : "");
        if (spool_now(r) != 0) {
            sreq_answer(r, status, errstr);
        } else {
            atomic_fetch_add(&m_unconfirmed, 1); /* sent, then failed: stored or not? */
        }
    }
    sreq_maybe_free(r);
}

/* Loop thread: --spool-after passed without the broker's answer. */
static void on_spool_after(evutil_socket_t fd, short what, void *arg)
{
    struct sreq *r = arg;
    if (r->spooled || r->answered) {
        return;
    }
    snprintf(r->why, sizeof(r->why), "no broker acknowledgement within %ld ms", r->s->sh->after_ms);
    if (spool_now(r) != 0) {
        sreq_answer(r, AB_SINK_TIMEOUT, "no broker acknowledgement and the spool is full");
    }
}

static int spool_submit(struct ab_sink *base, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                        void *opaque)
{
    struct spool_sink *s = (struct spool_sink *)base;
    if (s->closing) {
        return -1;
    }
    if (msg->dead_letter) {
        /* never spooled: the forwarder would route it as an event; if the broker cannot
         * take it within --ack-timeout, 503 and Alma retries */
        return ab_sink_submit(s->inner, msg, cb, opaque);
    }
    struct sreq *r = ab_calloc(1, sizeof(*r));
    r->s = s;
    r->req = ab_pending_add(s->pending, cb, opaque, 0);
    r->value = ab_strndup(msg->value, msg->value_len);
    r->len = msg->value_len;
    r->timer = evtimer_new(s->evbase, on_spool_after, r);
    /* While anything is spooled, a new event queues behind it (per-record order): it is
     * appended and forwarded in turn, never sent past the events before it. */
    long queued = atomic_load(&s->sh->events);
    if (queued > 0) {
        snprintf(r->why, sizeof(r->why), "%ld event(s) spooled before it", queued);
    } else if (s->dd && msg->event && !ab_dedupe_active()->sink_atomic) {
        char key[512];
        ab_dedupe_key(ab_dedupe_active(), msg->event, key, sizeof(key));
        r->fkey = ab_asprintf(AB_DEDUPE_FWD "%s", key);
    }
    if (queued == 0 && ab_sink_submit(s->inner, msg, on_inner_done, r) == 0) {
        r->inner_pending = 1;
        struct timeval tv = {s->sh->after_ms / 1000, (s->sh->after_ms % 1000) * 1000};
        evtimer_add(r->timer, &tv);
        return 0;
    }
    char d[120] = "refused";
    if (queued == 0 && s->inner->ops->describe) {
        s->inner->ops->describe(s->inner, d, sizeof(d));
    }
    if (queued == 0) {
        snprintf(r->why, sizeof(r->why), "broker refused: %s", d);
    }
    if (spool_now(r) != 0) {
        ab_pending_cancel(r->req);
        event_free(r->timer);
        free(r->value);
        free(r->fkey);
        free(r);
        return -1;
    }
    return 0;
}

/* ---- the forwarder --------------------------------------------------------------------- */

enum { FE_INFLIGHT = 1, FE_ACKED, FE_FAILED };

struct fentry {
    struct fwd *f;
    uint64_t seq;
    int64_t start, end; /* the line's bytes in segment seq, newline included */
    int state;
};

struct fwd {
    struct spool_sink *s;
    struct event *tick;
    struct ab_eventlog_reader *rd; /* the segment being read, with its checksums */
    uint64_t fd_seq;
    uint64_t seq;        /* the next line to read */
    int64_t off;
    uint64_t lowest;     /* the lowest segment still on disk */
    struct fentry ring[SPOOL_WINDOW];
    unsigned head, count, inflight;
    int failed;
    int64_t retry_at;
    uint64_t marked_seq; /* what DIR/forwarded says */
    int64_t marked_off;
};

static void fwd_pump(struct fwd *f);

/* Remove the segments every event of which was acknowledged, record the progress, and log
 * when the spool is empty again. */
static void fwd_advance(struct fwd *f)
{
    struct spool_shared *sh = f->s->sh;
    while (f->count && f->ring[f->head].state == FE_ACKED) {
        f->head = (f->head + 1) % SPOOL_WINDOW;
        f->count--;
        atomic_fetch_add(&m_forwarded, 1);
        atomic_fetch_sub(&sh->events, 1);
    }
    uint64_t seq = f->count ? f->ring[f->head].seq : f->seq;
    int64_t off = f->count ? f->ring[f->head].start : f->off;
    int removed = 0;
    for (; f->lowest < seq; f->lowest++) {
        long long size = remove_segment(sh->dir, f->lowest);
        if (size >= 0) {
            atomic_fetch_sub(&sh->disk_bytes, size);
            removed = 1;
        }
    }
    if (removed) {
        sync_dir(sh->dir);
        births_drop_below(sh, seq);
    }
    if (seq != f->marked_seq || off != f->marked_off) {
        write_marker(sh->marker_fd, seq, off);
        f->marked_seq = seq;
        f->marked_off = off;
    }
    if (atomic_load(&sh->events) == 0 && atomic_exchange(&sh->spooling, 0) == 1) {
        ab_info("spool: empty again; %ld event(s) forwarded so far", atomic_load(&m_forwarded));
    }
}

/* Loop thread: the broker's answer for a forwarded event. */
static void on_forwarded(int status, const char *errstr, void *opaque)
{
    struct fentry *e = opaque;
    struct fwd *f = e->f;
    f->inflight--;
    if (status == AB_SINK_DUPLICATE) {
        ab_dedupe_count_duplicate(AB_DEDUPE_CAUSE_FORWARDER); /* the broker's script had it */
        status = AB_SINK_OK;
    }
    if (status == AB_SINK_OK) {
        e->state = FE_ACKED;
    } else if (status == AB_SINK_TOO_BIG) {
        /* It can never be written: retrying would block the spool behind it for ever. */
        ab_error("spool: a spooled event can never be written to the broker (%s); skipped, "
                 "it stays in %s until its segment is removed",
                 errstr ? errstr : "too big", f->s->sh->dir);
        atomic_fetch_add(&m_forward_errors, 1);
        e->state = FE_ACKED;
    } else {
        e->state = FE_FAILED;
        atomic_fetch_add(&m_forward_errors, 1);
        atomic_fetch_add(&m_unconfirmed, 1); /* it is sent again; the broker may have it */
        if (!f->failed) {
            ab_warn("spool: forwarding failed (%s%s%s); retrying", ab_sink_status_str(status),
                    errstr ? ": " : "", errstr ? errstr : "");
        }
        f->failed = 1;
    }
    fwd_advance(f);
    if (!f->s->closing) {
        fwd_pump(f);
    }
}

/* Damage met by the forwarder: log it with segment and offset, count it, copy the bytes
 * to "<segment>.damaged" (kept when the segment is removed) and go on after them. */
static void fwd_damaged(struct fwd *f, const struct ab_eventlog_rec *rec)
{
    struct spool_shared *sh = f->s->sh;
    char *p = segment_path(sh->dir, f->seq);
    char *dp = ab_asprintf("%s.damaged", p);
    int in = open(p, O_RDONLY | O_CLOEXEC);
    int out = open(dp, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    char buf[65536];
    for (int64_t off = rec->off; in >= 0 && out >= 0 && off < rec->end;) {
        size_t want = rec->end - off > (int64_t)sizeof(buf) ? sizeof(buf)
                                                              : (size_t)(rec->end - off);
        ssize_t n = pread(in, buf, want, off);
        if (n <= 0 || write(out, buf, (size_t)n) != n) {
            break;
        }
        off += n;
    }
    if (out >= 0) {
        if (write(out, "\n", 1) != 1 || fsync(out) != 0) {
            ab_warn("spool: cannot save damaged bytes to %s: %s", dp, strerror(errno));
        }
        close(out);
    }
    if (in >= 0) {
        close(in);
    }
    ab_error("spool: damaged record(s) in segment %" PRIu64 " (%s) at offset %" PRId64
             ": %s; %ld record(s), %" PRId64 " bytes moved aside to %s and skipped",
             f->seq, p, rec->off, rec->why, rec->count, rec->end - rec->off, dp);
    atomic_fetch_add(&m_damaged, rec->count);
    long events = atomic_load(&sh->events);
    atomic_fetch_sub(&sh->events, rec->count < events ? rec->count : events);
    free(dp);
    free(p);
}


/* ---- deduplication of forwarded events (core/dedupe.h) ----------------------------------
 * With deduplication on, each event the forwarder sends is first checked under the key
 * "fwd:<key>": one that reached the broker already (acknowledged late to the live path, or
 * before a rewind after a failure, or before a restart) is skipped and counted
 * (cause="forwarder"); one it sends is recorded once the broker acknowledged it. An event
 * spooled while the broker still had it holds that key until the broker answers.
 * With the Redis sink's atomic script (dedupe setup sink_atomic) none of this: the
 * forwarder hands the event's own key to the script, which writes it only if not stored. */

/* One forwarded event waiting on the guard: the event read back from its line. */
struct fcheck {
    struct fwd *f;
    struct fentry *e;
    struct ab_event *ev;
    char *route;
    struct ab_dedupe_ticket *t;
};

static void fcheck_free(struct fcheck *c)
{
    ab_event_free(c->ev);
    free(c->route);
    free(c);
}

static void on_forwarded(int status, const char *errstr, void *opaque);

/* Loop thread: the broker's answer for a checked event: record it, then as usual. */
static void on_checked_forwarded(int status, const char *errstr, void *opaque)
{
    struct fcheck *c = opaque;
    struct fentry *e = c->e;
    ab_dedupe_outcome(c->t, status == AB_SINK_OK, NULL, NULL);
    fcheck_free(c);
    on_forwarded(status, errstr, e);
}

/* Loop thread: the guard's verdict for a spooled event. */
static void on_fwd_verdict(int verdict, struct ab_dedupe_ticket *t, void *opaque)
{
    struct fcheck *c = opaque;
    struct fentry *e = c->e;
    if (verdict == AB_DEDUPE_WRITE) {
        c->t = t;
        struct ab_sink_msg m = {.id = c->ev->id, .type = c->ev->type, .source = c->ev->source,
                                .route = c->route, .value = c->ev->json,
                                .value_len = c->ev->json_len, .event = c->ev};
        if (!c->f->s->closing && ab_sink_submit(c->f->s->inner, &m, on_checked_forwarded, c) == 0) {
            return;
        }
        ab_dedupe_outcome(t, 0, NULL, NULL);
        fcheck_free(c);
        on_forwarded(AB_SINK_ERROR, "the broker refused the event", e);
        return;
    }
    fcheck_free(c);
    if (verdict == AB_DEDUPE_SKIP_OK) {
        on_forwarded(AB_SINK_OK, NULL, e); /* in the broker already: counted by the guard */
    } else {
        on_forwarded(AB_SINK_ERROR, "deduplication: the event's key could not be checked", e);
    }
}

/* Check ev (taking it and route) before forwarding it for entry e. Returns 0: the answer
 * comes through on_forwarded, later. */
static int fwd_check(struct fwd *f, struct ab_event *ev, char *route, struct fentry *e)
{
    struct fcheck *c = ab_calloc(1, sizeof(*c));
    c->f = f;
    c->e = e;
    c->ev = ev;
    c->route = route;
    char key[512];
    ab_dedupe_key(ab_dedupe_active(), c->ev, key, sizeof(key));
    char *fkey = ab_asprintf(AB_DEDUPE_FWD "%s", key);
    ab_dedupe_check(f->s->dd, fkey, AB_DEDUPE_CAUSE_FORWARDER, on_fwd_verdict, c);
    free(fkey);
    return 0;
}

/* Submit the CloudEvent line (len bytes at line) to the broker for entry e, with the
 * topic/stream of --route (consortium mode: the institution's own route) and the backend's
 * own key, as the front end would, and every attribute the line holds (for the binary
 * content mode). With deduplication on, the event is checked first (fwd_check), or the
 * Redis sink's atomic script checks it. Returns the inner submit's result (0 when the
 * check took it), or 1 for a line that is no CloudEvent (skipped). */
static int fwd_submit(struct fwd *f, const char *line, size_t len, struct fentry *e)
{
    struct spool_shared *sh = f->s->sh;
    struct ab_event *ev = NULL;
    char why[128];
    if (ab_event_from_line(line, len, &ev, why, sizeof(why)) != AB_EVENT_OK) {
        return 1;
    }
    char *route = ab_institutions_route_for(ev); /* consortium mode: its profile's route */
    route = route ? route : ab_route_expand(sh->route, ev);
    const struct ab_dedupe_setup *dds = ab_dedupe_active();
    char dkey[512];
    if (dds && dds->sink_atomic) {
        ab_dedupe_key(dds, ev, dkey, sizeof(dkey)); /* the broker's script checks it */
    } else if (f->s->dd) {
        return fwd_check(f, ev, route, e); /* takes ev and route */
    }
    struct ab_sink_msg m = {.id = ev->id,
                            .type = ev->type,
                            .source = ev->source,
                            .route = route,
                            .key = NULL,
                            .value = ev->json,
                            .value_len = ev->json_len,
                            .event = ev};
    if (dds && dds->sink_atomic) {
        m.dedupe_key = dkey;
        m.dedupe_window_ms = dds->conf.window_ms;
    }
    int rc = ab_sink_submit(f->s->inner, &m, on_forwarded, e);
    free(route);
    ab_event_free(ev);
    return rc;
}

/* After a failure: once nothing is in flight, go back to the first event not acknowledged
 * (those acknowledged after it are sent again: counted) and wait a second. */
static void fwd_rewind(struct fwd *f)
{
    long resent = 0;
    for (unsigned i = 0; i < f->count; i++) {
        resent += f->ring[(f->head + i) % SPOOL_WINDOW].state == FE_ACKED;
    }
    atomic_fetch_add(&m_resent, resent);
    if (f->count) {
        f->seq = f->ring[f->head].seq;
        f->off = f->ring[f->head].start;
    }
    f->count = 0;
    f->failed = 0;
    f->retry_at = now_ms() + 1000;
    ab_eventlog_reader_free(f->rd); /* reopened at (f->seq, f->off) */
    f->rd = NULL;
}

/* Loop thread: send what the window allows, in spool order. */
static void fwd_pump(struct fwd *f)
{
    struct spool_sink *s = f->s;
    if (f->failed) {
        if (f->inflight == 0) {
            fwd_rewind(f);
        }
        return;
    }
    if (now_ms() < f->retry_at || !ab_sink_ready(s->inner)) {
        return;
    }
    while (f->count < SPOOL_WINDOW) {
        uint64_t active;
        int64_t synced;
        ab_eventlog_position(s->sh->log, &active, &synced);
        if (f->rd == NULL || f->fd_seq != f->seq) {
            ab_eventlog_reader_free(f->rd);
            char *p = segment_path(s->sh->dir, f->seq);
            char err[256];
            f->rd = ab_eventlog_reader_open(p, err, sizeof(err));
            f->fd_seq = f->seq;
            free(p);
            if (f->rd == NULL) {
                if (f->seq < active) {
                    f->seq++; /* a gap (removed by hand): go on */
                    f->off = 0;
                    continue;
                }
                return;
            }
            ab_eventlog_reader_seek(f->rd, f->off);
        }
        int complete = f->seq < active;
        struct ab_eventlog_rec rec;
        int rc = ab_eventlog_reader_next(f->rd, complete ? -1 : synced, complete, &rec);
        if (rc == AB_EVENTLOG_END) {
            if (complete) {
                f->seq++;
                f->off = 0;
                continue;
            }
            break;
        }
        if (rc == AB_EVENTLOG_DAMAGED) {
            fwd_damaged(f, &rec);
            f->off = rec.end;
            continue;
        }
        struct fentry *e = &f->ring[(f->head + f->count) % SPOOL_WINDOW];
        *e = (struct fentry){f, f->seq, rec.off, rec.end, FE_INFLIGHT};
        f->count++;
        f->inflight++;
        int sub = fwd_submit(f, rec.line, rec.len, e);
        if (sub == 1) {
            ab_warn("spool: skipping a line that is no CloudEvent (segment %" PRIu64
                    ", offset %" PRId64 ")",
                    f->seq, rec.off);
            f->inflight--;
            e->state = FE_ACKED;
        } else if (sub != 0) {
            f->count--;
            f->inflight--;
            ab_eventlog_reader_seek(f->rd, rec.off);
            break; /* refused at once: try again on the next tick */
        }
        f->off = e->end;
    }
    fwd_advance(f);
}

static void on_fwd_tick(evutil_socket_t fd, short what, void *arg)
{
    fwd_pump(arg);
}

static struct fwd *fwd_new(struct spool_sink *s)
{
    struct fwd *f = ab_calloc(1, sizeof(*f));
    f->s = s;
    f->seq = f->lowest = s->sh->start_seq;
    f->off = s->sh->start_off;
    f->tick = event_new(s->evbase, -1, EV_PERSIST, on_fwd_tick, f);
    struct timeval tv = {0, 100000};
    event_add(f->tick, &tv);
    return f;
}

/* After the inner sink was closed (no callback can come any more). */
static void fwd_free(struct fwd *f)
{
    struct spool_shared *sh = f->s->sh;
    if (f->count) {
        f->seq = f->ring[f->head].seq;
        f->off = f->ring[f->head].start;
        f->count = 0;
    }
    write_marker(sh->marker_fd, f->seq, f->off);
    sh->start_seq = f->seq;
    sh->start_off = f->off;
    event_free(f->tick);
    ab_eventlog_reader_free(f->rd);
    free(f);
    atomic_store(&sh->forwarder, 0);
}

/* ---- the rest of the contract -------------------------------------------------------- */

static struct ab_sink *spool_open(const struct ab_sink_conf *conf, void *shared,
                                  struct event_base *base, char *errstr, size_t errlen)
{
    struct spool_shared *sh = shared;
    struct ab_sink *inner =
        sh->inner_ops->open(&sh->inner_conf, sh->inner_shared, base, errstr, errlen);
    if (inner == NULL) {
        return NULL;
    }
    struct spool_sink *s = ab_calloc(1, sizeof(*s));
    s->base.ops = &ab_sink_spool;
    s->sh = sh;
    s->inner = inner;
    s->evbase = base;
    s->client = ab_eventlog_client_new(sh->log, base);
    s->pending = ab_pending_new(base, conf->ack_timeout_ms);
    if (ab_dedupe_active()) {
        s->dd = ab_dedupe_guard_new(ab_dedupe_active(), base, errstr, errlen);
    }
    int expected = 0;
    if (atomic_compare_exchange_strong(&sh->forwarder, &expected, 1)) {
        s->fwd = fwd_new(s);
    }
    return &s->base;
}

/* Full: the last event refused for lack of room would still not fit. */
static int spool_full(struct spool_shared *sh)
{
    long long bytes = atomic_load(&sh->disk_bytes);
    return bytes >= sh->max_bytes || bytes + atomic_load(&sh->refused_size) > sh->max_bytes;
}

/* Ready while events can be accepted durably: the broker takes them, or the spool has room
 * and its file is writable. */
static int spool_ready(struct ab_sink *base)
{
    struct spool_sink *s = (struct spool_sink *)base;
    if (s->closing) {
        return 0;
    }
    return ab_sink_ready(s->inner) || (ab_eventlog_ready(s->sh->log) && !spool_full(s->sh));
}

static void spool_describe(struct ab_sink *base, char *buf, size_t len)
{
    struct spool_sink *s = (struct spool_sink *)base;
    struct spool_shared *sh = s->sh;
    char inner[200] = "", log[200] = "";
    if (s->inner->ops->describe) {
        s->inner->ops->describe(s->inner, inner, sizeof(inner));
    }
    ab_eventlog_describe(sh->log, log, sizeof(log));
    long long bytes = atomic_load(&sh->disk_bytes);
    const char *state = !ab_eventlog_ready(sh->log) ? "spool not writable: "
                        : spool_full(sh)            ? "spool full: "
                                                    : "spool ";
    long damaged = atomic_load(&m_damaged);
    char dmg[160] = "";
    if (damaged > 0) {
        snprintf(dmg, sizeof(dmg), "; %ld damaged record(s) skipped and moved aside "
                 "(*.damaged, see the error log)", damaged);
    }
    snprintf(buf, len, "%s; %s%s, %ld event(s), %lld of %ld bytes%s", inner, state,
             ab_eventlog_ready(sh->log) ? sh->dir : log, atomic_load(&sh->events), bytes,
             sh->max_bytes, dmg);
}


/* The spool's options (struct ab_spool_opts), loaded with the backends' (registry.c). */
#define OFF(field) offsetof(struct ab_spool_opts, field)
/* clang-format off */
static const struct ab_option spool_options[] = {
    {.name = "spool", .type = AB_OPT_STRING, .off = OFF(dir), .group = "Spool", .metavar = "DIR",
     .help = "Kafka/Redis/HTTP: when the broker cannot take an event within --spool-after, "
             "append it to an fsync'd spool in DIR, answer 200 and forward it when the broker "
             "is back"},
    {.name = "spool-after", .type = AB_OPT_LONG, .def = "1500", .min = 1, .max = 60000,
     .off = OFF(after_ms), .unit_ms = 1, .group = "Spool", .metavar = "DURATION",
     .help = "spool an event the broker has not acknowledged within this time (below "
             "--ack-timeout)"},
    {.name = "spool-max-bytes", .type = AB_OPT_LONG, .def = "1073741824", .min = 1,
     .max = LONG_MAX, .off = OFF(max_bytes), .group = "Spool", .metavar = "BYTES",
     .help = "the spool's size limit on disk; when full, 503 as without a spool"},
    {.name = "spool-segment-bytes", .type = AB_OPT_LONG, .def = "16777216", .min = 1,
     .max = LONG_MAX, .off = OFF(segment_bytes), .group = "Spool", .metavar = "BYTES",
     .help = "start a new spool segment file after this many bytes (a segment is removed once "
             "all its events were forwarded)"},
};
/* clang-format on */
static const struct ab_optset spool_optset = AB_OPTSET(spool_options, struct ab_spool_opts);

/* The read side: the spool directory's segments, from where the forwarder continues (its
 * DIR/forwarded), or from the oldest kept with from->all. Any thread, no lock taken: a
 * daemon may be writing and forwarding meanwhile. */
static struct ab_sink_reader *spool_reader_open(const struct ab_sink_conf *conf,
                                                const struct ab_read_from *from, char *errstr,
                                                size_t errlen)
{
    const struct ab_spool_opts *o = conf->opts;
    const char *dir = from->path ? from->path : o->dir;
    char start[96];
    const char *position = from->position;
    uint64_t seq;
    int64_t off;
    if (dir == NULL) {
        snprintf(errstr, errlen, "no spool directory: give --spool DIR");
        return NULL;
    }
    char *mp = ab_asprintf("%s/forwarded", dir);
    int mfd = position || from->all ? -1 : open(mp, O_RDONLY | O_CLOEXEC);
    free(mp);
    if (mfd >= 0 && read_marker(mfd, &seq, &off) == 0) {
        ab_eventlog_segment_name(seq, start, sizeof(start) - 24);
        snprintf(start + strlen(start), 24, ":%" PRId64, off);
        position = start;
    }
    if (mfd >= 0) {
        close(mfd);
    }
    return ab_eventlog_sink_reader(&ab_sink_spool, dir, 1, position, from->since_ms, errstr,
                                   errlen);
}

/* 1 when the spool directory holds a forwarder's progress (a spool, not just segments). */
int ab_spool_has_progress(const char *dir)
{
    char *mp = ab_asprintf("%s/forwarded", dir);
    int yes = access(mp, F_OK) == 0;
    free(mp);
    return yes;
}

static void spool_close(struct ab_sink *base, int timeout_ms);

static int spool_probe(const struct ab_sink_conf *conf, int timeout_ms, char *msg, size_t len);

const struct ab_sink_ops ab_sink_spool = {
    .name = "spool",
    .options = &spool_optset,
    .flags = AB_SINK_WRAPS,
    .global_init = spool_global_init,
    .global_free = spool_global_free,
    .probe = spool_probe,
    .open = spool_open,
    .submit = spool_submit,
    .ready = spool_ready,
    .describe = spool_describe,
    .close = spool_close,
    .reader_open = spool_reader_open,
    .reader_next = ab_eventlog_sink_reader_next,
    .reader_close = ab_eventlog_sink_reader_close,
};

/* Loop thread, after its loop stopped: the broker's instance first (its answers still in
 * flight are spooled when they are failures), then the spool client (bounded by what is
 * left of timeout_ms), then the forwarder records where it stopped. */
static void spool_close(struct ab_sink *base, int timeout_ms)
{
    struct spool_sink *s = (struct spool_sink *)base;
    if (s == NULL) {
        return;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    s->closing = 1;
    if (s->fwd) {
        event_del(s->fwd->tick);
    }
    s->inner->ops->close(s->inner, timeout_ms);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long used = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    ab_eventlog_client_free(s->client, timeout_ms > used ? (int)(timeout_ms - used) : 0);
    ab_dedupe_guard_free(s->dd); /* checks still waiting answer on_forwarded: before fwd_free */
    if (s->fwd) {
        fwd_free(s->fwd);
    }
    ab_pending_free(s->pending); /* runs what is still due, CLOSED for what is left */
    free(s);
}

int ab_spool_configure(struct ab_spool_conf *sc, const struct ab_spool_opts *opts,
                       const struct ab_sink_ops *inner, const struct ab_sink_conf *inner_conf,
                       char *errstr, size_t errlen)
{
    if (strcmp(inner->name, "file") == 0) {
        snprintf(errstr, errlen, "--spool works with --sink kafka, redis or http; the file sink is "
                                 "itself a local fsync'd log");
        return -1;
    }
    if (opts->after_ms >= inner_conf->ack_timeout_ms) {
        snprintf(errstr, errlen, "--spool-after (%ld ms) must be below --ack-timeout (%ld ms)",
                 opts->after_ms, inner_conf->ack_timeout_ms);
        return -1;
    }
    *sc = (struct ab_spool_conf){.opts = *opts,
                                 .inner = inner,
                                 .inner_conf = *inner_conf,
                                 .route = inner_conf->route};
    return 0;
}

/* --check-connect: the spool has nothing to reach (global_init checked its directory); the
 * broker behind it is probed as without a spool. */
static int spool_probe(const struct ab_sink_conf *conf, int timeout_ms, char *msg, size_t len)
{
    const struct ab_spool_conf *sc = conf->opts;
    if (sc->inner->probe == NULL) {
        snprintf(msg, len, "%s: nothing to reach", sc->inner->name);
        return 0;
    }
    return sc->inner->probe(&sc->inner_conf, timeout_ms, msg, len);
}

/* ---- inspect ------------------------------------------------------------------------ */

/* The records of segment path from offset `from` that read back intact (or unverified,
 * from before checksums); damaged ones are added to *damaged. `complete`: not the segment
 * being written. */
static long count_records(const char *path, int64_t from, int complete, long *damaged)
{
    char err[256];
    struct ab_eventlog_reader *r = ab_eventlog_reader_open(path, err, sizeof(err));
    long n = 0;
    struct ab_eventlog_rec rec;
    int rc;
    if (r == NULL) {
        return 0;
    }
    ab_eventlog_reader_seek(r, from);
    while ((rc = ab_eventlog_reader_next(r, -1, complete, &rec)) != AB_EVENTLOG_END) {
        if (rc == AB_EVENTLOG_DAMAGED) {
            *damaged += rec.count;
        } else {
            n++;
        }
    }
    ab_eventlog_reader_free(r);
    return n;
}

int ab_spool_summarise(const char *dir, struct ab_spool_summary *s, char *errstr,
                       size_t errlen)
{
    memset(s, 0, sizeof(*s));
    uint64_t lo, hi, mseq = 0;
    int64_t moff = 0;
    if (scan_segments(dir, &lo, &hi) != 0) {
        snprintf(errstr, errlen, "cannot read %s: %s", dir, strerror(errno));
        return -1;
    }
    char *mp = ab_asprintf("%s/forwarded", dir);
    int mfd = open(mp, O_RDONLY | O_CLOEXEC);
    free(mp);
    if (mfd >= 0 && read_marker(mfd, &mseq, &moff) == 0 && mseq >= lo && mseq <= hi) {
        s->first_seq = mseq;
        s->start_offset = moff;
    } else {
        s->first_seq = lo;
    }
    if (mfd >= 0) {
        close(mfd);
    }
    s->last_seq = hi;
    ab_eventlog_segment_name(s->first_seq, s->first_name, sizeof(s->first_name));
    ab_eventlog_segment_name(s->last_seq, s->last_name, sizeof(s->last_name));
    for (uint64_t seq = s->first_seq; lo && seq <= hi; seq++) {
        char *p = segment_path(dir, seq);
        struct stat st;
        if (stat(p, &st) == 0) {
            int64_t from = seq == s->first_seq ? s->start_offset : 0;
            count_records(p, from, seq < hi, &s->damaged); /* checksums: damage only */
            s->oldest_mtime = s->segments == 0 ? st.st_mtime : s->oldest_mtime;
            s->segments++;
            s->bytes += st.st_size;
        }
        free(p);
    }
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        s->torn += l > 5 && strcmp(e->d_name + l - 5, ".torn") == 0;
        s->damaged_files += l > 8 && strcmp(e->d_name + l - 8, ".damaged") == 0;
    }
    if (d) {
        closedir(d);
    }
    char *lp = ab_asprintf("%s/lock", dir);
    int lfd = open(lp, O_RDONLY | O_CLOEXEC);
    free(lp);
    if (lfd >= 0) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (fcntl(lfd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
            char pid[32] = "";
            ssize_t n = pread(lfd, pid, sizeof(pid) - 1, 0);
            pid[n > 0 ? n : 0] = '\0';
            s->holder_pid = atol(pid) > 0 ? atol(pid) : -1;
        }
        close(lfd);
    }
    return 0;
}
