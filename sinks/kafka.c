/* The Kafka sink: one idempotent librdkafka producer (acks=all) shared by every instance of
 * the process (the workers, the reconciler, the spool's inner sink); a webhook is answered
 * 200 from its delivery report, never before the broker acknowledged it.
 *
 * Why one producer: each rd_kafka_t has its own threads, connections and batches; with one
 * per worker each batch was half as large, the broker got twice the produce requests and
 * librdkafka's threads woke twice as often for the same webhooks (docs/KAFKA_BATCHING.md).
 *
 * Async glue: the producer's main queue (delivery reports, error and statistics events) is
 * served by one loop, the home instance's (the first opened): rd_kafka_queue_io_event_enable()
 * makes librdkafka write a byte to that instance's wake-up pipe when the queue becomes
 * non-empty, and its persistent read event calls rd_kafka_poll(rk, 0) until nothing is left
 * (librdkafka tests/0040-io_event.c), so on_delivery, on_error and on_stats run there
 * (on_log on librdkafka's threads). A report does not complete its request there: the
 * request belongs to the loop thread that submitted it. Each message's opaque is its answer
 * (struct kafka_answer), which names the instance's port; on_delivery appends the answer
 * to that port's inbox and, when the inbox was empty, writes one byte to that instance's
 * wake-up pipe, so a batch of reports wakes each other loop once, not once per message (the
 * home loop takes its own inbox right after serving). The loop (on_port_io) takes its whole
 * inbox and completes the requests. When the home instance closes (shut-down), a thread of
 * ours, the dispatcher, serves the queue for the instances still open. No loop thread
 * sleeps or blocks, a full local queue is an immediate refusal (503), never a retry loop.
 * While messages are out, new ones (of every instance) wait in the shared gate and leave
 * together once the reports are served: one batch in flight per producer (the gate, above
 * kafka_submit). Everything shared is under kafka_shared.mu; an instance's own fields are
 * touched by its loop thread only, and whoever serves the queue never dereferences another
 * instance's request.
 *
 * Opened without global_init (the unit tests, a single instance), an instance creates its
 * own shared producer and frees it on close.
 *
 * Broker state (for fast 503s and /readyz), shared by the instances:
 *  - CONNECTING at start: submissions are taken (they wait for the first connection, at
 *    most message.timeout.ms = --ack-timeout), ready() is 0.
 *  - DOWN on RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN from the error callback (every broker
 *    connection is down: refused, reset, resolve or TLS/SASL failure, set-up timeout).
 *    ready() turns 0 at once. After DOWN_GRACE_MS without recovery, submit() refuses at
 *    once (503 well inside the ack timeout) except one probe message per second, which goes
 *    to librdkafka as usual. The grace lets a lone broker's routine reconnect (idle close,
 *    a timed-out request) pass without refusals: messages taken meanwhile simply wait for
 *    the reconnect, bounded by message.timeout.ms like any other.
 *  - UP when the statistics (every second) show a broker connection in state UP, or when
 *    a delivery succeeds (the probe). enable.sparse.connections=false keeps librdkafka
 *    reconnecting to every broker with a short backoff even when no message waits, so
 *    recovery and /readyz do not depend on traffic; the probe is the fallback should the
 *    statistics be turned off through --kafka-conf. (on_stats says why the first statistics
 *    after the DOWN event are not trusted, and marks DOWN too should the event be missed.)
 *  - A fatal producer error (rd_kafka_fatal_error, e.g. an unrecoverable idempotence
 *    failure) refuses everything and keeps ready() at 0; it needs a restart.
 *
 * Topics: the route names the topic; whether a missing one is created is the broker's
 * auto.create.topics.enable. librdkafka 2.0 asks for a new topic's metadata on its 1 s
 * topic scan, so the first message to a topic this producer has not used yet waits about
 * 1-2 s (more when the broker creates the topic then). A topic that does not exist and is
 * not created fails with a timeout (the message never gets a partition): log_failure names
 * the topic and says so.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <librdkafka/rdkafka.h>

#include "kafka.h"
#include "event.h"
#include "log.h"
#include "mem.h"
#include "pending.h"
#include "route.h"

#define PROBE_INTERVAL_MS 1000
#define DOWN_GRACE_MS 500
#define FAIL_LOG_INTERVAL_MS 1000
#define POLL_ROUNDS 64 /* rd_kafka_poll rounds per wake-up before yielding to the loop */
#define DISPATCH_POLL_MS 500 /* the dispatcher thread's longest wait (it is woken to stop) */
#define LIMIT_RETRY_MS 5000  /* ask again for a topic's limit that could not be read */
#define MAX_TOPICS 1024      /* topics whose limit is remembered */
#define RECORD_OVERHEAD 512  /* headers and record framing, bytes, added to value and key */
#define BEST_RATIO 1032      /* no gzip (deflate) or lz4 frame is smaller than this fraction
                              * of its input */

enum broker_state { BROKERS_CONNECTING, BROKERS_UP, BROKERS_DOWN };

struct kafka_port;

/* One accepted submission, from submit() until its loop thread has answered it: the
 * message's opaque, held or in librdkafka, then an entry of its port's inbox. The
 * dispatcher fills in the outcome; only the owning loop thread touches r. */
struct kafka_answer {
    struct kafka_answer *next;
    struct kafka_port *port;
    struct ab_pending_req *r;
    rd_kafka_resp_err_t err; /* the delivery report's, or librdkafka's refusal */
    int32_t partition;
    int refused;  /* librdkafka refused it when the gate let it go */
    int dropped;  /* held past its webhook's deadline: never sent */
    size_t size;  /* value and key bytes */
    char *key;    /* into text, NULL for none */
    char text[];  /* the topic, then the key */
};

/* A message held back by the gate (kafka_submit), with what producev needs. */
struct held_msg {
    struct held_msg *next;
    struct kafka_answer *a;
    rd_kafka_headers_t *hdrs; /* ours until producev takes them */
    int64_t deadline_ms;      /* its webhook is answered 503 then: never send it after */
    rd_kafka_resp_err_t err;  /* librdkafka's refusal when the gate let it go */
    size_t len;
    char value[];
};

/* An instance's end of the shared producer, all under kafka_shared.mu. It outlives its
 * instance while answers of it are still out; once closed they are dropped here. */
struct kafka_port {
    struct kafka_port *next;
    struct kafka_answer *inbox;
    struct kafka_answer **inbox_tail;
    int wake_fd; /* write end of the instance's wake-up pipe */
    long out;    /* answers not handled yet: held, in librdkafka or in the inbox */
    int closed;
    int home;    /* its loop serves the main queue (set and cleared by that loop) */
};

/* The producer all instances share (global_init creates it empty, the first open() the
 * producer and the dispatcher). Everything below mu is under it. */
struct kafka_shared {
    pthread_mutex_t mu;
    rd_kafka_t *rk;
    rd_kafka_queue_t *mainq;
    pthread_t thread; /* the dispatcher, once the home instance has closed */
    int thread_started;
    atomic_int stop;
    char *brokers;
    struct kafka_port *ports;
    struct kafka_port *home; /* the port whose loop serves the main queue, NULL: the thread */
    int gate;          /* the gate (kafka_submit): on for an idempotent producer */
    int compressed;    /* compression.type is not none */
    long batch_size;   /* the producer's batch.size */
    long batch_msgs;   /* batch.num.messages */
    long queue_msgs;   /* queue.buffering.max.messages */
    long queue_kbytes; /* queue.buffering.max.kbytes */
    long inflight;     /* messages handed to librdkafka, report not served yet */
    struct held_msg *held_head; /* held back, in submission order */
    struct held_msg **held_tail;
    size_t n_held;
    size_t held_bytes;
    enum broker_state state;
    char reason[256]; /* why DOWN, or the fatal error */
    int fatal;
    int64_t down_since_ms;
    int64_t last_probe_ms;
    int stats_skip;    /* do not trust the next statistics to say UP */
    int stats_none_up; /* statistics in a row without a broker UP */
    int32_t node_id;   /* a broker seen up in the statistics, -1 for none yet */
    unsigned up_epoch; /* +1 on every (re)connection: the instances read the limits again */
};

/* The largest message the cluster accepts in one topic (its max.message.bytes, whose
 * default is the brokers' message.max.bytes), as read with DescribeConfigs. */
struct topic_limit {
    char name[AB_KAFKA_TOPIC_MAX + 1];
    long bytes;       /* -1 until known */
    int asking;       /* a DescribeConfigs is out */
    int64_t asked_ms; /* when it was last asked for (0: ask again on next use) */
};

/* One instance: a loop thread's view of the shared producer. */
struct kafka_sink {
    struct ab_sink base;
    struct kafka_shared *sh;
    int own_shared;        /* opened without global_init: the producer is this instance's */
    struct kafka_port *port;
    int pipefd[2];         /* wake-ups: answers in the inbox, DescribeConfigs results */
    struct event *io_ev;
    struct ab_route *key;  /* --kafka-key, NULL for no key */
    int structured;        /* --content-mode structured: the JSON event as value */
    long ack_timeout_ms;
    /* message size limits (issue 8 item 7), all on the loop thread */
    rd_kafka_queue_t *adminq;    /* DescribeConfigs results; its io event is our pipe */
    struct topic_limit *limits;  /* topics used so far */
    size_t n_limits;
    long broker_limit;           /* message.max.bytes of a broker, -1 until known */
    int broker_asking;
    unsigned seen_epoch;         /* the shared up_epoch the limits were refreshed for */
    int closing;
    int queue_full;    /* the last submit was refused for a full local queue */
    struct ab_pending *pending; /* the submissions */
    int64_t fail_log_ms; /* rate limit of delivery failure lines */
    long fail_suppressed;
    char errbuf[512];    /* errstr handed to ab_pending_done, copied there */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- state (under sh->mu) --------------------------------------------------------- */

static void mark_up(struct kafka_shared *sh, const char *why)
{
    if (sh->state != BROKERS_UP) {
        ab_info("kafka: brokers %s up (%s)", sh->brokers, why);
        sh->state = BROKERS_UP;
        sh->up_epoch++; /* start-up and every reconnect: the limits may have changed */
    }
    sh->reason[0] = '\0';
}

static void mark_down(struct kafka_shared *sh, const char *why)
{
    if (sh->state != BROKERS_DOWN) {
        ab_warn("kafka: brokers %s down (%s): webhooks get 503 until a broker is reachable",
                sh->brokers, why);
        sh->down_since_ms = now_ms();
    }
    sh->state = BROKERS_DOWN;
    snprintf(sh->reason, sizeof(sh->reason), "%s", why);
}

static enum broker_state state_of(struct kafka_shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    enum broker_state st = sh->state;
    pthread_mutex_unlock(&sh->mu);
    return st;
}

/* ---- librdkafka callbacks --------------------------------------------------------- */

/* librdkafka's threads (and the caller of rd_kafka_new): route its log into ours. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    int ab = level <= LOG_ERR ? AB_LOG_ERROR
             : level == LOG_WARNING ? AB_LOG_WARN
             : level <= LOG_INFO    ? AB_LOG_INFO
                                    : AB_LOG_DEBUG;
    ab_log(ab, "kafka: %s: %s: %s", rk ? rd_kafka_name(rk) : "rdkafka", fac, buf);
}

/* The dispatcher (rd_kafka_poll): client-level errors. Most are transient and retried by
 * librdkafka, which logs them itself; only the state they imply matters here. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct kafka_shared *sh = opaque;
    pthread_mutex_lock(&sh->mu);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[200];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        ab_error("kafka: fatal producer error %s: %s; restart almabridge",
                 rd_kafka_err2name(orig), why);
        sh->fatal = 1;
        snprintf(sh->reason, sizeof(sh->reason), "fatal: %s", why);
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        mark_down(sh, reason);
        sh->stats_skip = 1;
    } else {
        ab_debug("kafka: %s: %s", rd_kafka_err2name(err), reason);
    }
    pthread_mutex_unlock(&sh->mu);
}

/* The dispatcher (rd_kafka_poll), every statistics.interval.ms: a broker connection in
 * state UP means reachable. A snapshot taken just before the connections dropped can be
 * queued just after the ALL_BROKERS_DOWN event, so the first one after that event is not
 * trusted to say UP. Two snapshots in a row without any UP broker mark DOWN too, in case
 * the event was missed. Returns 0: librdkafka frees json. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    struct kafka_shared *sh = opaque;
    cJSON *root = cJSON_ParseWithLength(json, len);
    cJSON *brokers = cJSON_GetObjectItemCaseSensitive(root, "brokers");
    cJSON *b = NULL;
    char up[160] = "";
    int32_t node = -1;
    cJSON_ArrayForEach(b, brokers)
    {
        const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "state"));
        cJSON *id = cJSON_GetObjectItemCaseSensitive(b, "nodeid");
        if (st && strcmp(st, "UP") == 0) {
            snprintf(up, sizeof(up), "connected to %s", b->string);
            if (cJSON_IsNumber(id) && id->valuedouble >= 0) {
                node = (int32_t)id->valuedouble; /* a broker to ask for its limit */
            }
            break;
        }
    }
    cJSON *t = NULL;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(root, "topics"))
    { /* the batches of the last interval, for tuning (--log-level debug) */
        cJSON *cnt = cJSON_GetObjectItemCaseSensitive(t, "batchcnt");
        cJSON *size = cJSON_GetObjectItemCaseSensitive(t, "batchsize");
        double n = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cnt, "cnt"));
        if (n > 0) { /* its "avg" is an integer: the mean from "sum" */
            ab_debug("kafka: topic %s: %.0f batches in the last statistics interval, messages "
                     "per batch avg %.2f p50 %.0f p99 %.0f, bytes per batch avg %.0f", t->string,
                     n, cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cnt, "sum")) / n,
                     cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cnt, "p50")),
                     cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cnt, "p99")),
                     cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(size, "sum")) / n);
        }
    }
    int known = cJSON_IsObject(brokers);
    cJSON_Delete(root);
    if (!known) {
        return 0; /* not the statistics we know: change nothing */
    }
    pthread_mutex_lock(&sh->mu);
    if (node >= 0 && sh->node_id < 0) {
        sh->node_id = node;
        sh->up_epoch++; /* the instances ask it for message.max.bytes */
    }
    int distrust = sh->stats_skip;
    sh->stats_skip = 0;
    if (*up) {
        sh->stats_none_up = 0;
        if (!distrust && sh->state != BROKERS_UP) {
            mark_up(sh, up);
        }
    } else if (++sh->stats_none_up >= 2 && sh->state == BROKERS_UP) {
        mark_down(sh, "no broker connection up for two statistics intervals");
    }
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

static int status_of(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return AB_SINK_OK;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return AB_SINK_TIMEOUT;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
        return AB_SINK_CLOSED;
    default:
        return AB_SINK_ERROR;
    }
}

/* Loop thread: one failed delivery, logged at most once a second per instance. A message
 * that timed out without ever being assigned a partition while a broker was up never got
 * its topic's metadata: the topic does not exist and the broker did not create it. */
static void log_failure(struct kafka_sink *ks, const char *what, const char *topic,
                        rd_kafka_resp_err_t err, int32_t partition)
{
    int64_t now = now_ms();
    if (now - ks->fail_log_ms < FAIL_LOG_INTERVAL_MS) {
        ks->fail_suppressed++;
        return;
    }
    char more[96] = "";
    if (ks->fail_suppressed) {
        snprintf(more, sizeof(more), " (and %ld more failures since the last line)",
                 ks->fail_suppressed);
    }
    if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
        (err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT && partition == RD_KAFKA_PARTITION_UA &&
         state_of(ks->sh) == BROKERS_UP)) {
        ab_warn("kafka: %s topic %s failed: %s: the brokers know no partition of it, so it "
                "probably does not exist and the broker does not create topics "
                "(auto.create.topics.enable=false): create the topic%s",
                what, topic, rd_kafka_err2str(err), more);
    } else {
        ab_warn("kafka: %s topic %s failed: %s%s", what, topic, rd_kafka_err2str(err), more);
    }
    ks->fail_log_ms = now;
    ks->fail_suppressed = 0;
}

/* ---- message size limits ------------------------------------------------------------ */

static struct topic_limit *limit_entry(struct kafka_sink *ks, const char *topic)
{
    for (size_t i = 0; i < ks->n_limits; i++) {
        if (strcmp(ks->limits[i].name, topic) == 0) {
            return &ks->limits[i];
        }
    }
    return NULL;
}

/* Send one DescribeConfigs for a topic or a broker; the answer comes to on_admin_result. */
static int describe_configs(struct kafka_sink *ks, rd_kafka_ResourceType_t type,
                            const char *name)
{
    char err[256];
    rd_kafka_ConfigResource_t *res = rd_kafka_ConfigResource_new(type, name);
    rd_kafka_AdminOptions_t *o =
        rd_kafka_AdminOptions_new(ks->sh->rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    int ok = res && o && rd_kafka_AdminOptions_set_request_timeout(o, 5000, err, sizeof(err)) ==
                             RD_KAFKA_RESP_ERR_NO_ERROR;
    if (ok) {
        rd_kafka_DescribeConfigs(ks->sh->rk, &res, 1, o, ks->adminq);
    }
    rd_kafka_AdminOptions_destroy(o);
    rd_kafka_ConfigResource_destroy(res);
    return ok ? 0 : -1;
}

/* Loop thread: ask for the limit of topic unless it is known and fresh or being asked. */
static void limit_ask(struct kafka_sink *ks, const char *topic)
{
    struct topic_limit *t = limit_entry(ks, topic);
    int64_t now = now_ms();
    if (t == NULL) {
        if (ks->n_limits >= MAX_TOPICS || ks->adminq == NULL) {
            return;
        }
        ks->limits = ab_realloc(ks->limits, (ks->n_limits + 1) * sizeof(*ks->limits));
        t = &ks->limits[ks->n_limits++];
        memset(t, 0, sizeof(*t));
        snprintf(t->name, sizeof(t->name), "%s", topic);
        t->bytes = -1;
    }
    if (t->asking || (t->asked_ms && (t->bytes >= 0 || now - t->asked_ms < LIMIT_RETRY_MS))) {
        return;
    }
    t->asked_ms = now;
    t->asking = describe_configs(ks, RD_KAFKA_RESOURCE_TOPIC, topic) == 0;
}

/* Loop thread, on (re)connecting: read the brokers' limit again and the topics' limits at
 * their next use. */
static void limits_refresh(struct kafka_sink *ks)
{
    for (size_t i = 0; i < ks->n_limits; i++) {
        ks->limits[i].asked_ms = 0;
    }
    pthread_mutex_lock(&ks->sh->mu);
    int32_t node = ks->sh->node_id;
    pthread_mutex_unlock(&ks->sh->mu);
    if (node >= 0 && !ks->broker_asking && ks->adminq) {
        char id[16];
        snprintf(id, sizeof(id), "%d", (int)node);
        ks->broker_asking = describe_configs(ks, RD_KAFKA_RESOURCE_BROKER, id) == 0;
    }
}

/* The value of config `name` in a described resource, -1 when absent. */
static long config_long(const rd_kafka_ConfigResource_t *res, const char *name)
{
    size_t n = 0;
    const rd_kafka_ConfigEntry_t **e = rd_kafka_ConfigResource_configs(res, &n);
    for (size_t i = 0; i < n; i++) {
        const char *v = rd_kafka_ConfigEntry_value(e[i]);
        if (strcmp(rd_kafka_ConfigEntry_name(e[i]), name) == 0 && v) {
            return atol(v);
        }
    }
    return -1;
}

/* Loop thread (on_port_io): a DescribeConfigs result. */
static void on_admin_result(struct kafka_sink *ks, rd_kafka_event_t *ev)
{
    const rd_kafka_DescribeConfigs_result_t *r = rd_kafka_event_DescribeConfigs_result(ev);
    size_t n = 0;
    const rd_kafka_ConfigResource_t **res = r ? rd_kafka_DescribeConfigs_result_resources(r, &n)
                                              : NULL;
    if (r == NULL) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = rd_kafka_ConfigResource_name(res[i]);
        int err = rd_kafka_event_error(ev) || rd_kafka_ConfigResource_error(res[i]);
        if (rd_kafka_ConfigResource_type(res[i]) == RD_KAFKA_RESOURCE_BROKER) {
            ks->broker_asking = 0;
            long v = err ? -1 : config_long(res[i], "message.max.bytes");
            if (v > 0 && v != ks->broker_limit) {
                ab_info("kafka: brokers accept messages up to %ld bytes (message.max.bytes)", v);
                ks->broker_limit = v;
            }
            continue;
        }
        struct topic_limit *t = limit_entry(ks, name);
        if (t == NULL) {
            continue;
        }
        t->asking = 0;
        long v = err ? -1 : config_long(res[i], "max.message.bytes");
        if (v > 0) {
            if (v != t->bytes && v < ks->sh->batch_size) {
                ab_warn("kafka: topic %s accepts batches up to %ld bytes (max.message.bytes), "
                        "below the producer's batch.size %ld: set --kafka-conf batch.size=%ld "
                        "or less, or batches of small events may be refused", name, v,
                        ks->sh->batch_size, v / 2);
            }
            if (v != t->bytes) {
                ab_info("kafka: topic %s accepts messages up to %ld bytes (max.message.bytes)",
                        name, v);
            }
            t->bytes = v;
        }
    }
}

/* The limit that applies to topic: its own when known, else the brokers', else -1. */
static long limit_of(const struct kafka_sink *ks, const char *topic)
{
    for (size_t i = 0; i < ks->n_limits; i++) {
        if (strcmp(ks->limits[i].name, topic) == 0 && ks->limits[i].bytes > 0) {
            return ks->limits[i].bytes;
        }
    }
    return ks->broker_limit;
}

/* Loop thread: the cluster refused a message of `size` bytes for being too large (or it is
 * larger than any limit could let through). It can never be written when it alone is over
 * the limit that applies: then log why and how to raise the limit, put the reason in
 * ks->errbuf and return 1 (answer 413). A refusal of a batch of small messages is not that
 * (0: an ordinary error, 503). */
static int too_big(struct kafka_sink *ks, const char *topic, size_t size, const void *key,
                   size_t key_len)
{
    long limit = limit_of(ks, topic);
    if (limit <= 0 || size + RECORD_OVERHEAD <= (size_t)limit) {
        return 0;
    }
    snprintf(ks->errbuf, sizeof(ks->errbuf),
             "%zu bytes, and topic %s accepts at most %ld bytes per message "
             "(max.message.bytes)", size, topic, limit);
    ab_warn("kafka: event %.*s (%zu bytes) can never be written to topic %s: the cluster "
            "accepts at most %ld bytes per message there (max.message.bytes of the topic, "
            "whose default is the brokers' message.max.bytes); answered 413, so Alma will not "
            "retry it. To take such events raise the limit, e.g. kafka-configs.sh "
            "--bootstrap-server %s --alter --entity-type topics --entity-name %s "
            "--add-config max.message.bytes=%zu (and the brokers' message.max.bytes and "
            "replica.fetch.max.bytes)",
            (int)(key_len < 64 ? key_len : 64), key ? (const char *)key : "", size, topic,
            limit, ks->sh->brokers, topic, (size + RECORD_OVERHEAD) * 2);
    return 1;
}

/* Loop thread, before producing: 1 (with the reason in errbuf) when the message can never
 * fit, whatever compression does, under what is known of the topic's limit. */
static int never_fits(struct kafka_sink *ks, const char *topic, size_t size, const char *key)
{
    long limit = limit_of(ks, topic);
    size_t best = ks->sh->compressed ? size / BEST_RATIO : size;
    if (limit <= 0 || best + RECORD_OVERHEAD <= (size_t)limit) {
        return 0;
    }
    return too_big(ks, topic, size, key, key ? strlen(key) : 0);
}

/* ---- answers: from the dispatcher to the loop threads ------------------------------- */

/* A new answer for r on port: topic and key copied. */
static struct kafka_answer *answer_new(struct kafka_port *port, struct ab_pending_req *r,
                                       const char *topic, const char *key, size_t size)
{
    size_t tl = strlen(topic), kl = key ? strlen(key) : 0;
    struct kafka_answer *a = ab_malloc(sizeof(*a) + tl + 1 + (key ? kl + 1 : 0));
    *a = (struct kafka_answer){.port = port, .r = r, .size = size};
    memcpy(a->text, topic, tl + 1);
    if (key) {
        a->key = a->text + tl + 1;
        memcpy(a->key, key, kl + 1);
    }
    return a;
}

/* Under mu: the last answer of a closed port frees it. */
static void port_put(struct kafka_shared *sh, struct kafka_port *port, long n)
{
    port->out -= n;
    if (port->closed && port->out <= 0) {
        for (struct kafka_port **p = &sh->ports; *p; p = &(*p)->next) {
            if (*p == port) {
                *p = port->next;
                break;
            }
        }
        free(port);
    }
}

/* Under mu: a's outcome is known; queue it for its loop thread, waking that loop when its
 * inbox was empty (one wake-up per batch, not per message). The home loop is not woken: it
 * is the one serving, and takes its inbox right after. A closed port's answer is dropped:
 * its instance answered the webhook already (AB_SINK_CLOSED). */
static void answer_post(struct kafka_shared *sh, struct kafka_answer *a)
{
    struct kafka_port *port = a->port;
    if (port->closed) {
        free(a);
        port_put(sh, port, 1);
        return;
    }
    a->next = NULL;
    int wake = port->inbox == NULL && port != sh->home; /* home: handled after serving */
    *port->inbox_tail = a;
    port->inbox_tail = &a->next;
    if (wake && write(port->wake_fd, "d", 1) < 0 && errno != EAGAIN) {
        ab_debug("kafka: writing a wake-up: %s", strerror(errno));
    }
}

/* Whoever serves the main queue (the home loop, the dispatcher thread, shared_free): the
 * delivery report of one message, handed to its instance. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct kafka_shared *sh = opaque;
    struct kafka_answer *a = m->_private;
    pthread_mutex_lock(&sh->mu); /* a was handed over under it */
    a->err = m->err;
    a->partition = m->partition;
    sh->inflight--;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR && sh->state != BROKERS_UP) {
        mark_up(sh, "a message was delivered");
    }
    answer_post(sh, a);
    pthread_mutex_unlock(&sh->mu);
}

/* NOT under mu (the gate has reserved its place in inflight): one message to librdkafka
 * (it copies the value and key; it owns hdrs from here on, also when it refuses). On
 * success its report comes to on_delivery with a. */
static rd_kafka_resp_err_t produce(struct kafka_shared *sh, struct kafka_answer *a,
                                   const void *value, size_t len, rd_kafka_headers_t *hdrs)
{
    rd_kafka_resp_err_t err = rd_kafka_producev(
        sh->rk, RD_KAFKA_V_TOPIC(a->text), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_KEY(a->key, a->key ? strlen(a->key) : 0),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(a), RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(hdrs); /* producev took them only on success */
    }
    return err;
}

/* Under mu: hold a copy of the message back (the gate). */
static void hold(struct kafka_shared *sh, struct kafka_answer *a, const void *value, size_t len,
                 rd_kafka_headers_t *hdrs, int64_t deadline_ms)
{
    struct held_msg *h = ab_malloc(sizeof(*h) + len);
    *h = (struct held_msg){.a = a, .hdrs = hdrs, .deadline_ms = deadline_ms, .len = len};
    memcpy(h->value, value, len);
    *sh->held_tail = h;
    sh->held_tail = &h->next;
    sh->n_held++;
    sh->held_bytes += len;
}

/* Under mu: the first held message, unlinked. */
static struct held_msg *unhold(struct kafka_shared *sh)
{
    struct held_msg *h = sh->held_head;
    sh->held_head = h->next;
    if (sh->held_head == NULL) {
        sh->held_tail = &sh->held_head;
    }
    sh->n_held--;
    sh->held_bytes -= h->len;
    return h;
}

/* Under mu, on the thread serving the queue: once every message handed to librdkafka has
 * been reported, hand it the held messages of every instance, as many as one batch takes
 * (batch.num.messages, batch.size), in one go, so that they leave together. The batch's
 * places in inflight are taken first, so the gate stays shut for everyone else, and the
 * mutex is let go while librdkafka takes them (a submitting loop is not kept waiting for
 * a whole batch). A message whose webhook was answered meanwhile (past its --ack-timeout
 * deadline, or its instance closed) is dropped, not sent. A refusal now goes back to its
 * instance like a report. */
static void release_held(struct kafka_shared *sh)
{
    while (sh->held_head && sh->inflight == 0) {
        struct held_msg *batch = NULL, **tail = &batch;
        long n = 0;
        size_t bytes = 0;
        int64_t now = now_ms();
        while (sh->held_head && (n == 0 || (n < sh->batch_msgs && bytes + sh->held_head->len <=
                                                                      (size_t)sh->batch_size))) {
            struct held_msg *h = unhold(sh);
            if (h->a->port->closed || now >= h->deadline_ms) {
                rd_kafka_headers_destroy(h->hdrs);
                h->a->dropped = 1;
                answer_post(sh, h->a);
                free(h);
                continue;
            }
            h->next = NULL;
            *tail = h;
            tail = &h->next;
            n++;
            bytes += h->len;
        }
        sh->inflight += n;
        pthread_mutex_unlock(&sh->mu);
        for (struct held_msg *h = batch; h; h = h->next) {
            h->err = produce(sh, h->a, h->value, h->len, h->hdrs);
        }
        pthread_mutex_lock(&sh->mu);
        while (batch) {
            struct held_msg *h = batch;
            batch = h->next;
            if (h->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                sh->inflight--;
                h->a->err = h->err;
                h->a->refused = 1;
                answer_post(sh, h->a);
            }
            free(h);
        }
    }
}

/* The dispatcher thread, once the home instance has closed (shut-down): serve the main
 * queue (rd_kafka_poll serves everything queued in one call), then let the gate's next
 * batch go. */
static void *dispatch_main(void *arg)
{
    struct kafka_shared *sh = arg;
    pthread_setname_np(pthread_self(), "ab-kafka-serve");
    while (!atomic_load(&sh->stop)) {
        rd_kafka_poll(sh->rk, DISPATCH_POLL_MS);
        pthread_mutex_lock(&sh->mu);
        release_held(sh);
        pthread_mutex_unlock(&sh->mu);
    }
    return NULL;
}

static int refused(struct kafka_sink *ks, struct ab_pending_req *r, rd_kafka_resp_err_t err,
                   const char *topic, size_t size);

/* Under mu: have whoever serves the queue run release_held soon (the home loop through
 * its pipe, the dispatcher thread out of its rd_kafka_poll). */
static void kick_server(struct kafka_shared *sh)
{
    if (sh->home && write(sh->home->wake_fd, "k", 1) < 0 && errno != EAGAIN) {
        ab_debug("kafka: writing a wake-up: %s", strerror(errno));
    } else if (sh->home == NULL && sh->mainq) {
        rd_kafka_queue_yield(sh->mainq);
    }
}

/* ---- answers: on the loop thread ----------------------------------------------------- */

/* Loop thread: complete the request of one answer. */
static void answer_handle(struct kafka_sink *ks, struct kafka_answer *a)
{
    struct ab_pending_req *r = a->r;
    const char *topic = a->text;
    if (a->dropped) {
        ab_pending_done(r, AB_SINK_TIMEOUT, "no acknowledgement within --ack-timeout");
        return;
    }
    if (a->refused) { /* by librdkafka when the gate let it go: answered 413 or 503 */
        if (refused(ks, r, a->err, topic, a->size) != 0) {
            snprintf(ks->errbuf, sizeof(ks->errbuf), "%s (topic %s)", rd_kafka_err2str(a->err),
                     topic);
            ab_pending_done(r, AB_SINK_ERROR, ks->errbuf);
        }
        return;
    }
    const char *errstr = NULL;
    if (a->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (a->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE &&
            too_big(ks, topic, a->size, a->key, a->key ? strlen(a->key) : 0)) {
            ab_pending_done(r, AB_SINK_TOO_BIG, ks->errbuf);
            return;
        }
        if (status_of(a->err) != AB_SINK_CLOSED) {
            log_failure(ks, "delivery to", topic, a->err, a->partition);
        }
        snprintf(ks->errbuf, sizeof(ks->errbuf), "%s (topic %s)", rd_kafka_err2str(a->err),
                 topic);
        errstr = ks->errbuf;
    }
    ab_pending_done(r, status_of(a->err), errstr); /* ignored if it expired meanwhile */
}

/* Loop thread: the limits again after a (re)connection of the shared producer. */
static void check_epoch(struct kafka_sink *ks)
{
    pthread_mutex_lock(&ks->sh->mu);
    unsigned epoch = ks->sh->up_epoch;
    pthread_mutex_unlock(&ks->sh->mu);
    if (epoch != ks->seen_epoch) {
        ks->seen_epoch = epoch;
        limits_refresh(ks);
    }
}

/* Loop thread: the wake-up pipe is readable: answers in the inbox, a DescribeConfigs
 * result, or (home instance) the main queue became non-empty. Take the wake-up bytes, serve
 * the admin queue; the home instance serves the main queue (rd_kafka_poll until empty,
 * routing every report to its port, librdkafka tests/0040-io_event.c) and lets the gate's
 * next batch go; then take the whole inbox at once and complete its requests. */
static void on_port_io(evutil_socket_t fd, short what, void *arg)
{
    struct kafka_sink *ks = arg;
    struct kafka_shared *sh = ks->sh;
    char buf[256];
    if (read(fd, buf, sizeof(buf)) < 0 && errno != EAGAIN) {
        ab_debug("kafka: reading the wake-up pipe: %s", strerror(errno));
    }
    rd_kafka_event_t *ev;
    while (ks->adminq && (ev = rd_kafka_queue_poll(ks->adminq, 0)) != NULL) {
        on_admin_result(ks, ev);
        rd_kafka_event_destroy(ev);
    }
    int rounds = 0;
    if (ks->port->home) { /* only this thread changes it */
        while (rounds < POLL_ROUNDS && rd_kafka_poll(sh->rk, 0) > 0) {
            rounds++;
        }
    }
    pthread_mutex_lock(&sh->mu);
    if (ks->port->home) {
        release_held(sh); /* the reports just served made room */
    }
    struct kafka_answer *a = ks->port->inbox;
    ks->port->inbox = NULL;
    ks->port->inbox_tail = &ks->port->inbox;
    pthread_mutex_unlock(&sh->mu);
    long n = 0;
    while (a) {
        struct kafka_answer *next = a->next;
        answer_handle(ks, a);
        free(a);
        a = next;
        n++;
    }
    if (n) {
        pthread_mutex_lock(&sh->mu);
        port_put(sh, ks->port, n);
        pthread_mutex_unlock(&sh->mu);
    }
    check_epoch(ks);
    if (rounds == POLL_ROUNDS) {
        event_active(ks->io_ev, EV_READ, 0); /* busy: give the loop a turn and come back */
    }
}

/* ---- configuration ---------------------------------------------------------------- */

/* librdkafka properties whose values hold no secret: --print-config, the logs and error
 * messages show them; every other --kafka-conf value is masked (sasl.jaas.config,
 * sasl.oauthbearer.*, ssl.key.*, sasl.username, anything new or misspelt). */
static const char *const harmless_keys[] = {
    "acks", "api.version.request", "batch.num.messages", "batch.size", "bootstrap.servers",
    "broker.address.family", "broker.version.fallback", "client.dns.lookup", "client.id",
    "client.rack", "compression.codec", "compression.level", "compression.type",
    "connections.max.idle.ms", "debug", "delivery.timeout.ms", "enable.idempotence",
    "enable.ssl.certificate.verification", "linger.ms", "log.connection.close", "log_level",
    "max.in.flight", "max.in.flight.requests.per.connection", "message.max.bytes",
    "message.send.max.retries", "message.timeout.ms", "metadata.broker.list",
    "metadata.max.age.ms", "partitioner", "queue.buffering.max.kbytes",
    "queue.buffering.max.messages", "queue.buffering.max.ms", "reconnect.backoff.max.ms",
    "reconnect.backoff.ms", "request.required.acks", "request.timeout.ms", "retries",
    "retry.backoff.max.ms", "retry.backoff.ms", "sasl.kerberos.service.name",
    "sasl.mechanism", "sasl.mechanisms", "security.protocol", "socket.connection.setup.timeout.ms",
    "socket.keepalive.enable", "socket.timeout.ms", "ssl.ca.location",
    "ssl.certificate.location", "ssl.cipher.suites", "ssl.curves.list",
    "ssl.endpoint.identification.algorithm", "ssl.sigalgs.list", "statistics.interval.ms",
    "sticky.partitioning.linger.ms", "topic.metadata.refresh.interval.ms", NULL,
};

/* Keys whose values must never appear in a message: all but the harmless ones. */
static int is_secret_key(const char *key)
{
    return !ab_config_key_harmless(harmless_keys, key, strlen(key));
}

static int conf_set(rd_kafka_conf_t *conf, const char *key, const char *val, char *errstr,
                    size_t errlen)
{
    char err[512];
    if (rd_kafka_conf_set(conf, key, val, err, sizeof(err)) == RD_KAFKA_CONF_OK) {
        return 0;
    }
    if (is_secret_key(key)) {
        snprintf(errstr, errlen, "kafka sink: --kafka-conf %s: invalid value (not shown)", key);
    } else {
        snprintf(errstr, errlen, "kafka sink: --kafka-conf %s: %s", key, err);
    }
    return -1;
}

/* A numeric property of conf, def when it cannot be read. */
static long conf_long(rd_kafka_conf_t *conf, const char *name, long def)
{
    char v[64];
    size_t vl = sizeof(v);
    return rd_kafka_conf_get(conf, name, v, &vl) == RD_KAFKA_CONF_OK ? atol(v) : def;
}

/* The producer's own message size limit: what --max-body lets in, with room for the
 * envelope (an XML body's JSON can be larger than the XML), never below librdkafka's
 * default; the limit the cluster applies is discovered and decides (too_big). */
static long producer_max_bytes(long max_body)
{
    long v = max_body > 0 && max_body < 400000000 ? max_body * 2 + 65536 : 1000000000;
    return v < 1000000 ? 1000000 : v;
}

/* The producer's configuration: our defaults, then every --kafka-conf key=value on top.
 * Returns the conf (the caller owns it) or NULL with one line in errstr. */
static rd_kafka_conf_t *build_conf(const struct ab_sink_conf *sc, struct kafka_shared *ks,
                                   char *errstr, size_t errlen)
{
    const struct ab_kafka_conf *cfg = sc->opts;
    long ack = sc->ack_timeout_ms;
    long setup = ack < 1000 ? 1000 : ack > 10000 ? 10000 : ack;
    char ack_s[32], setup_s[32], max_s[32];
    snprintf(ack_s, sizeof(ack_s), "%ld", ack);
    snprintf(setup_s, sizeof(setup_s), "%ld", setup);
    snprintf(max_s, sizeof(max_s), "%ld", producer_max_bytes(sc->max_body));
    const char *defaults[][2] = {
        {"bootstrap.servers", cfg->brokers},
        {"client.id", "almabridge"},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        /* gzip: every client reads it without extras (kafka-python needs a package for
         * lz4, snappy and zstd); bench/RESULTS.md has its cost */
        {"compression.type", "gzip"},
        /* send at once: sub-millisecond acks at Alma-like concurrency; under load the gate
         * (kafka_submit) batches what arrives while a batch is out (docs/KAFKA_BATCHING.md) */
        {"linger.ms", "0"},
        {"message.timeout.ms", ack_s},  /* the delivery report comes within --ack-timeout */
        {"message.max.bytes", max_s},   /* follows --max-body: the cluster's limit decides */
        {"socket.timeout.ms", setup_s}, /* metadata and PID requests fail fast too */
        {"socket.connection.setup.timeout.ms", setup_s},
        {"socket.keepalive.enable", "true"},
        {"socket.nagle.disable", "true"},
        {"reconnect.backoff.ms", "100"},
        {"reconnect.backoff.max.ms", "1000"},
        {"enable.sparse.connections", "false"}, /* keep reconnecting without traffic */
        {"statistics.interval.ms", "1000"},     /* broker state for ready() */
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (conf_set(conf, defaults[i][0], defaults[i][1], errstr, errlen) != 0) {
            goto fail;
        }
    }
    for (size_t i = 0; i < cfg->conf.n; i++) {
        const char *kv = cfg->conf.v[i];
        const char *eq = strchr(kv, '=');
        if (eq == NULL || eq == kv) {
            snprintf(errstr, errlen, "kafka sink: --kafka-conf entry %zu is not key=value", i + 1);
            goto fail;
        }
        char *key = ab_strndup(kv, (size_t)(eq - kv));
        int rc = conf_set(conf, key, eq + 1, errstr, errlen);
        free(key);
        if (rc != 0) {
            goto fail;
        }
    }
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, ks); /* the callbacks' opaque: the shared producer */
    if (ks) {
        char v[64];
        size_t vl = sizeof(v);
        ks->batch_size = rd_kafka_conf_get(conf, "batch.size", v, &vl) == RD_KAFKA_CONF_OK
                             ? atol(v)
                             : 1000000;
        ks->batch_msgs = conf_long(conf, "batch.num.messages", 10000);
        ks->queue_msgs = conf_long(conf, "queue.buffering.max.messages", 100000);
        ks->queue_kbytes = conf_long(conf, "queue.buffering.max.kbytes", 1048576);
        vl = sizeof(v);
        ks->gate = rd_kafka_conf_get(conf, "enable.idempotence", v, &vl) == RD_KAFKA_CONF_OK &&
                   strcmp(v, "true") == 0;
        vl = sizeof(v);
        ks->compressed = rd_kafka_conf_get(conf, "compression.type", v, &vl) != RD_KAFKA_CONF_OK ||
                         strcmp(v, "none") != 0;
    }
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* ---- topic names ------------------------------------------------------------------ */

/* 1 for the bytes Kafka allows in a topic name: [a-zA-Z0-9._-]. */
static int topic_char_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

/* The legal Kafka topic name for an expanded route, into out (AB_KAFKA_TOPIC_MAX + 1
 * bytes): every byte outside [a-zA-Z0-9._-] becomes '_', "." and ".." (and "") become
 * "_", "__" (and "none"), and a name over 249 bytes keeps its first 240 and ends in '-'
 * plus 8 hex digits of a hash (FNV-1a) of the whole route, so distinct long routes stay
 * distinct topics. Pure. */
void ab_kafka_topic_name(const char *route, char *out)
{
    size_t len = strlen(route);
    if (len == 0) {
        strcpy(out, "none");
        return;
    }
    size_t keep = len <= AB_KAFKA_TOPIC_MAX ? len : AB_KAFKA_TOPIC_MAX - 9;
    for (size_t i = 0; i < keep; i++) {
        out[i] = topic_char_ok((unsigned char)route[i]) ? route[i] : '_';
    }
    out[keep] = '\0';
    if (len > AB_KAFKA_TOPIC_MAX) {
        uint32_t h = 2166136261u;
        for (size_t i = 0; i < len; i++) {
            h = (h ^ (unsigned char)route[i]) * 16777619u;
        }
        snprintf(out + keep, 10, "-%08x", h);
    }
    if (strcmp(out, ".") == 0 || strcmp(out, "..") == 0) {
        memset(out, '_', strlen(out));
    }
}

/* The text of a --route template outside its placeholders must be legal in a topic name:
 * a template that can only make illegal names is refused at start-up (exit 2) rather than
 * renamed behind the operator's back. Returns 0, or -1 with one line in errstr. */
static int check_route(const char *tmpl, char *errstr, size_t errlen)
{
    int depth = 0;
    for (const char *p = tmpl ? tmpl : ""; *p; p++) {
        depth += *p == '{' ? 1 : *p == '}' ? -1 : 0;
        if (depth == 0 && *p != '}' && !topic_char_ok((unsigned char)*p)) {
            snprintf(errstr, errlen,
                     "kafka sink: --route \"%s\": %s%c%s cannot be in a Kafka topic name "
                     "(allowed: a-z A-Z 0-9 . _ -, at most 249 characters)",
                     tmpl, isprint((unsigned char)*p) ? "'" : "byte ",
                     isprint((unsigned char)*p) ? *p : '?', isprint((unsigned char)*p) ? "'" : "");
            return -1;
        }
    }
    return 0;
}

/* The compiled --kafka-key template into *key (NULL for ""). Returns 0, or -1 with one
 * line in errstr. */
static int compile_key(const struct ab_kafka_conf *cfg, struct ab_route **key, char *errstr,
                       size_t errlen)
{
    char err[256];
    *key = NULL;
    if (cfg->key == NULL || *cfg->key == '\0') {
        return 0;
    }
    *key = ab_route_compile(cfg->key, err, sizeof(err));
    if (*key == NULL) {
        snprintf(errstr, errlen, "--kafka-key: %s", err);
        return -1;
    }
    return 0;
}

/* The Kafka sink's options (struct ab_kafka_conf). */
#define OFF(field) offsetof(struct ab_kafka_conf, field)
/* clang-format off */
static const struct ab_option kafka_options[] = {
    {.name = "kafka-brokers", .type = AB_OPT_STRING, .def = "localhost:9092",
     .off = OFF(brokers), .check = ab_config_check_hostports, .group = "Kafka",
     .metavar = "HOST:PORT,...",
     .help = "bootstrap brokers (librdkafka bootstrap.servers)"},
    {.name = "kafka-key", .type = AB_OPT_STRING, .def = "{record}", .off = OFF(key),
     .group = "Kafka", .metavar = "TEMPLATE",
     .help = "message key template (placeholders as for --route); the default, the record's "
             "identity, keeps each record's events in order in one partition; empty for no key"},
    {.name = "kafka-conf", .type = AB_OPT_LIST, .off = OFF(conf), .check = ab_config_check_kv,
     .mask = AB_MASK_KV_VALUES, .harmless = harmless_keys, .group = "Kafka",
     .metavar = "KEY=VALUE",
     .help = "extra librdkafka property, e.g. security.protocol=SASL_SSL; in output every "
             "value is masked but those of harmless keys (bootstrap.servers, "
             "security.protocol, sasl.mechanism, timeouts...: docs/INTEGRITY.md)"},
};
/* clang-format on */
static const struct ab_optset kafka_optset = AB_OPTSET(kafka_options, struct ab_kafka_conf);

/* ---- the operations --------------------------------------------------------------- */

static void kafka_close(struct ab_sink *s, int timeout_ms);
static struct kafka_shared *shared_new(const struct ab_kafka_conf *cfg);

static void on_log_quiet(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
}

/* Start-up thread (also for --check-config): validate the whole configuration once, the
 * way open() will use it, by creating a producer that connects nowhere (no brokers) and
 * destroying it. This catches unknown keys and bad values, conflicts librdkafka only
 * checks when the handle is created (acks with idempotence) and unreadable TLS files.
 * The producer all instances share is created by the first open(). */
static int kafka_global_init(const struct ab_sink_conf *sc, void **shared, char *errstr,
                             size_t errlen)
{
    const struct ab_kafka_conf *cfg = sc->opts;
    *shared = NULL;
    if (cfg->brokers == NULL || *cfg->brokers == '\0') {
        snprintf(errstr, errlen, "kafka sink: --kafka-brokers is empty");
        return -1;
    }
    /* librdkafka's broker thread compresses every batch (gzip) with a fresh zlib state of
     * about 270 kB, allocated and freed per batch in that thread's malloc arena. With
     * glibc's default trim threshold (128 kB) each free gave the pages back (madvise, a TLB
     * shoot-down on every core) and the next batch faulted them in again: at 5,000 req/s a
     * fifth of the daemon's CPU (docs/KAFKA_BATCHING.md). Keep up to 1 MB free per arena
     * (a few states); this also fixes the mmap threshold at its default (128 kB). */
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
    struct ab_route *key = NULL;
    int bad = compile_key(cfg, &key, errstr, errlen) != 0 ||
              check_route(sc->route, errstr, errlen) != 0;
    ab_route_free(key);
    if (bad) {
        return -1;
    }
    rd_kafka_conf_t *conf = build_conf(sc, NULL, errstr, errlen);
    if (conf == NULL) {
        return -1;
    }
    char err[512];
    rd_kafka_conf_set_log_cb(conf, on_log_quiet);
    if (rd_kafka_conf_set(conf, "bootstrap.servers", "", err, sizeof(err)) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        snprintf(errstr, errlen, "kafka sink: %s", err);
        return -1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(errstr, errlen, "kafka sink: invalid configuration: %s", err);
        return -1;
    }
    rd_kafka_destroy(rk);
    *shared = shared_new(cfg); /* the producer itself comes with the first open() */
    return 0;
}

/* The last error librdkafka reported to a probe's producer. */
static void on_probe_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    snprintf(opaque, 256, "%s", reason);
}

/* --check-connect, start-up thread: a producer with the daemon's own configuration
 * (TLS, SASL) asks the brokers for the cluster's metadata, within timeout_ms. */
static int kafka_probe(const struct ab_sink_conf *sc, int timeout_ms, char *msg, size_t len)
{
    const struct ab_kafka_conf *cfg = sc->opts;
    char err[512], last[256] = "";
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_conf_t *conf = build_conf(sc, NULL, err, sizeof(err));
    if (conf == NULL) {
        snprintf(msg, len, "kafka brokers %s: %s", cfg->brokers, err);
        return -1;
    }
    rd_kafka_conf_set_log_cb(conf, on_log_quiet);
    rd_kafka_conf_set_error_cb(conf, on_probe_error);
    rd_kafka_conf_set_opaque(conf, last);
    conf_set(conf, "statistics.interval.ms", "0", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(msg, len, "kafka brokers %s: %s", cfg->brokers, err);
        return -1;
    }
    rd_kafka_resp_err_t rc = rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms);
    if (rc == RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(msg, len, "kafka brokers %s: reached, %d broker(s) in the cluster, %d topic(s)",
                 cfg->brokers, md->broker_cnt, md->topic_cnt);
        rd_kafka_metadata_destroy(md);
    } else {
        snprintf(msg, len, "kafka brokers %s: NOT reached within %d ms (%s%s%s)", cfg->brokers,
                 timeout_ms, rd_kafka_err2str(rc), last[0] ? "; " : "", last);
    }
    rd_kafka_destroy(rk);
    return rc == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : -1;
}

/* An empty shared producer: the first open() creates the producer. */
static struct kafka_shared *shared_new(const struct ab_kafka_conf *cfg)
{
    struct kafka_shared *sh = ab_calloc(1, sizeof(*sh));
    pthread_mutex_init(&sh->mu, NULL);
    sh->brokers = ab_strdup(cfg->brokers);
    sh->held_tail = &sh->held_head;
    sh->state = BROKERS_CONNECTING;
    sh->node_id = -1;
    return sh;
}

/* Under mu, the first open(): create the producer. 0, or -1 with one line in errstr. */
static int shared_start(struct kafka_shared *sh, const struct ab_sink_conf *sc, char *errstr,
                        size_t errlen)
{
    char err[512];
    rd_kafka_conf_t *conf = build_conf(sc, sh, errstr, errlen);
    if (conf == NULL) {
        return -1;
    }
    sh->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (sh->rk == NULL) { /* on failure the conf is still ours */
        rd_kafka_conf_destroy(conf);
        snprintf(errstr, errlen, "kafka sink: cannot create the producer: %s", err);
        return -1;
    } /* else rd_kafka_new() took ownership of conf */
    sh->mainq = rd_kafka_queue_get_main(sh->rk);
    return 0;
}

/* Every instance closed (global_free, or the close of an instance that owns it): stop the
 * dispatcher; what is left was answered 503 by its instance already, so it is purged rather
 * than sent later; destroy the producer and free. */
static void shared_free(struct kafka_shared *sh)
{
    if (sh == NULL) {
        return;
    }
    if (sh->thread_started) {
        atomic_store(&sh->stop, 1);
        rd_kafka_queue_yield(sh->mainq); /* out of its rd_kafka_poll */
        pthread_join(sh->thread, NULL);
    }
    pthread_mutex_lock(&sh->mu);
    while (sh->held_head) {
        struct held_msg *h = unhold(sh);
        rd_kafka_headers_destroy(h->hdrs);
        h->a->dropped = 1;
        answer_post(sh, h->a);
        free(h);
    }
    long inflight = sh->inflight;
    pthread_mutex_unlock(&sh->mu);
    if (sh->rk) {
        if (inflight > 0) {
            rd_kafka_purge(sh->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            for (int i = 0; i < 100 && inflight > 0; i++) { /* their reports free them */
                rd_kafka_poll(sh->rk, i == 0 ? 0 : 10);
                pthread_mutex_lock(&sh->mu);
                inflight = sh->inflight;
                pthread_mutex_unlock(&sh->mu);
            }
        }
        rd_kafka_queue_io_event_enable(sh->mainq, -1, NULL, 0);
        rd_kafka_queue_destroy(sh->mainq);
        rd_kafka_destroy(sh->rk);
    }
    while (sh->ports) { /* only closed ones are left, with answers never reported */
        struct kafka_port *p = sh->ports;
        sh->ports = p->next;
        for (struct kafka_answer *a = p->inbox, *next; a; a = next) {
            next = a->next;
            free(a);
        }
        free(p);
    }
    pthread_mutex_destroy(&sh->mu);
    free(sh->brokers);
    free(sh);
}

static void kafka_global_free(void *shared)
{
    shared_free(shared);
}

/* Start-up thread: a port on the shared producer (created now if this is the first
 * instance) and the instance's wake-up pipe hooked into base. */
static struct ab_sink *kafka_open(const struct ab_sink_conf *sc, void *shared,
                                  struct event_base *base, char *errstr, size_t errlen)
{
    const struct ab_kafka_conf *cfg = sc->opts;
    if (cfg->brokers == NULL || *cfg->brokers == '\0') {
        snprintf(errstr, errlen, "kafka sink: --kafka-brokers is empty");
        return NULL;
    }
    struct kafka_sink *ks = ab_calloc(1, sizeof(*ks));
    ks->base.ops = &ab_sink_kafka;
    ks->pipefd[0] = ks->pipefd[1] = -1;
    ks->own_shared = shared == NULL;
    ks->sh = shared ? shared : shared_new(cfg);
    ks->pending = ab_pending_new(base, sc->ack_timeout_ms);
    ks->ack_timeout_ms = sc->ack_timeout_ms;
    ks->broker_limit = -1;
    ks->structured = sc->structured;
    if (compile_key(cfg, &ks->key, errstr, errlen) != 0) {
        goto fail;
    }
    if (pipe2(ks->pipefd, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf(errstr, errlen, "kafka sink: pipe: %s", strerror(errno));
        goto fail;
    }
    struct kafka_shared *sh = ks->sh;
    pthread_mutex_lock(&sh->mu);
    int rc = sh->rk ? 0 : shared_start(sh, sc, errstr, errlen);
    if (rc == 0) {
        ks->port = ab_calloc(1, sizeof(*ks->port));
        ks->port->inbox_tail = &ks->port->inbox;
        ks->port->wake_fd = ks->pipefd[1];
        ks->port->next = sh->ports;
        sh->ports = ks->port;
        if (sh->home == NULL && !sh->thread_started) { /* the first: it serves the queue */
            sh->home = ks->port;
            ks->port->home = 1;
            rd_kafka_queue_io_event_enable(sh->mainq, ks->pipefd[1], "m", 1);
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (rc != 0) {
        goto fail;
    }
    ks->io_ev = event_new(base, ks->pipefd[0], EV_READ | EV_PERSIST, on_port_io, ks);
    event_add(ks->io_ev, NULL);
    ks->adminq = rd_kafka_queue_new(sh->rk); /* DescribeConfigs answers */
    rd_kafka_queue_io_event_enable(ks->adminq, ks->pipefd[1], "a", 1);
    /* Anything that came before the io event was enabled would never wake us. */
    event_active(ks->io_ev, EV_READ, 0);
    return &ks->base;
fail:
    kafka_close(&ks->base, 0);
    return NULL;
}

/* The headers of one message, by the CloudEvents Kafka protocol binding 1.0. Structured:
 * content-type application/cloudevents+json and nothing else (no ce_ header, so that
 * auto-detecting readers take it for structured). Binary: content-type = datacontenttype
 * and every other attribute as a ce_<name> header. The caller owns them until
 * rd_kafka_producev() succeeds. */
static rd_kafka_headers_t *message_headers(int structured, const struct ab_event *ev)
{
    static const char ctype[] = "application/cloudevents+json";
    struct ab_attr attrs[AB_EVENT_MAX_ATTRS];
    size_t n = structured ? 0 : ab_event_attrs(ev, attrs);
    rd_kafka_headers_t *h = rd_kafka_headers_new(n > 0 ? n : 1);
    if (structured) {
        rd_kafka_header_add(h, "content-type", -1, ctype, (ssize_t)sizeof(ctype) - 1);
    }
    for (size_t i = 0; i < n; i++) {
        char name[64];
        if (strcmp(attrs[i].name, "datacontenttype") == 0) {
            rd_kafka_header_add(h, "content-type", -1, attrs[i].value, -1);
        } else {
            snprintf(name, sizeof(name), "ce_%s", attrs[i].name);
            rd_kafka_header_add(h, name, -1, attrs[i].value, -1);
        }
    }
    return h;
}

/* The event of a consumed message, in either content mode (the inverse of the above), as
 * one CloudEvent JSON line: a new string with its length in *len, or NULL when the message
 * is no CloudEvent. Binary mode is recognised by its ce_specversion header, as the SDKs
 * do. Any thread. */
char *ab_kafka_message_event(const rd_kafka_message_t *m, size_t *len)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t vl;
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(h, "ce_specversion", &v, &vl) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (m->payload == NULL) {
            return NULL;
        }
        *len = m->len;
        return ab_strndup(m->payload, m->len);
    }
    struct ab_attr attrs[AB_EVENT_MAX_ATTRS * 2];
    char *vals[AB_EVENT_MAX_ATTRS * 2];
    size_t n = 0;
    const char *name;
    for (size_t i = 0; n < AB_EVENT_MAX_ATTRS * 2 &&
                       rd_kafka_header_get_all(h, i, &name, &v, &vl) == RD_KAFKA_RESP_ERR_NO_ERROR;
         i++) {
        int ct = strcasecmp(name, "content-type") == 0;
        if (v == NULL || (!ct && strncasecmp(name, "ce_", 3) != 0)) {
            continue;
        }
        vals[n] = ab_strndup(v, vl);
        attrs[n] = (struct ab_attr){ct ? "datacontenttype" : name + 3, vals[n]};
        n++;
    }
    char *line = ab_event_line_from_attrs(attrs, n, m->payload, m->payload ? m->len : 0, len);
    for (size_t i = 0; i < n; i++) {
        free(vals[i]);
    }
    return line;
}

/* Loop thread: librdkafka refused a message of `size` bytes for topic. One over the
 * producer's own message.max.bytes is answered (413, AB_SINK_TOO_BIG) and 0 returned;
 * any other refusal is logged and -1 returned: r is still live. */
static int refused(struct kafka_sink *ks, struct ab_pending_req *r, rd_kafka_resp_err_t err,
                   const char *topic, size_t size)
{
    if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
        /* over the producer's own message.max.bytes, which follows --max-body */
        snprintf(ks->errbuf, sizeof(ks->errbuf), "%zu bytes, more than the producer's "
                 "message.max.bytes (set from --max-body)", size);
        ab_warn("kafka: an event of %zu bytes for topic %s is larger than the producer's "
                "message.max.bytes: answered 413; raise --max-body (or --kafka-conf "
                "message.max.bytes) and the topic's max.message.bytes", size, topic);
        ab_pending_done(r, AB_SINK_TOO_BIG, ks->errbuf);
        return 0;
    }
    log_failure(ks, "queueing a message for", topic, err, RD_KAFKA_PARTITION_UA);
    return -1;
}

/* Loop thread. Refuses (-1) when closing, failed, the local queue is full or the brokers
 * have been down for DOWN_GRACE_MS (one probe a second still goes through); otherwise
 * takes a copy and returns 0: its answer completes it later (on_port_io).
 *
 * The gate (idempotent producer): while messages handed to librdkafka are not reported yet,
 * a new one (of any instance) is held here, and every message held meanwhile goes to
 * librdkafka together once those reports are served (release_held, on the dispatcher): one
 * batch in flight per producer, as Nagle does for TCP. A lone webhook leaves at once
 * (linger.ms=0), and under load a batch carries what arrived during one round trip, so the
 * batches follow the rate and the broker's speed. Why not let librdkafka queue them: its
 * idempotent producer makes no new ProduceRequest for a partition while 5 MESSAGES of it
 * are in flight (RD_KAFKA_IDEMP_MAX_INFLIGHT, counted in messages, in 2.0.2 and still
 * upstream), and while it waits with a batch due (linger.ms passed) its broker thread polls
 * with a zero timeout: a busy loop for the whole round trip (bench/kafka_tail.py: 26-160
 * poll() calls per webhook at 1,000-5,000 req/s, a third of a core on the 2-core bench
 * machine, where the broker needs it). Handing over a held batch only when nothing is out
 * also keeps librdkafka from sending its first message alone and then sitting on the rest
 * behind that limit. The decision and the hand-over are under the shared mutex, so the
 * messages of one instance reach librdkafka in submission order (per-key order). The queue
 * limits (queue.buffering.max.messages / .kbytes) count held messages too, so a full queue
 * is still an immediate refusal. */
static int kafka_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                        void *opaque)
{
    struct kafka_sink *ks = (struct kafka_sink *)s;
    struct kafka_shared *sh = ks->sh;
    if (ks->closing) {
        return -1;
    }
    pthread_mutex_lock(&sh->mu);
    int refuse = sh->fatal;
    if (!refuse && sh->state == BROKERS_DOWN) {
        int64_t now = now_ms();
        refuse = now - sh->down_since_ms >= DOWN_GRACE_MS &&
                 now - sh->last_probe_ms < PROBE_INTERVAL_MS;
        if (!refuse) {
            sh->last_probe_ms = now;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (refuse) {
        return -1;
    }
    check_epoch(ks);
    struct ab_event *own = NULL; /* a line without its event (the spool's, replay's) */
    char why[128];
    if (msg->event == NULL) {
        ab_event_from_line(msg->value, msg->value_len, &own, why, sizeof(why));
    }
    const struct ab_event *ev = msg->event ? msg->event : own;
    if (ev == NULL) {
        return -1; /* not a CloudEvent line (replay checks its input first) */
    }
    char *key = msg->key == NULL && ks->key ? ab_route_expand_raw(ks->key, ev) : NULL;
    /* a dead letter (data_base64, extension attributes of its own) always goes structured */
    int structured = ks->structured || msg->dead_letter;
    const void *value = structured ? msg->value : ev->json + ev->data_off;
    size_t value_len = structured ? msg->value_len : ev->data_len;
    const char *k = msg->key ? msg->key : key;
    char topic[AB_KAFKA_TOPIC_MAX + 1];
    ab_kafka_topic_name(msg->route ? msg->route : "", topic);
    limit_ask(ks, topic);
    size_t size = msg->value_len + (k ? strlen(k) : 0);
    int rc = 0;
    /* a held message's deadline, taken before the pending entry's (same clock, same
     * timeout): never later than it, so nothing answered 503 by expiry is sent after */
    int64_t held_deadline = now_ms() + ks->ack_timeout_ms;
    struct ab_pending_req *r = ab_pending_add(ks->pending, cb, opaque, 0);
    if (never_fits(ks, topic, size, k)) {
        ab_pending_complete(r, AB_SINK_TOO_BIG, ks->errbuf); /* answered later: 413 */
        ab_pending_release(r);
        goto done;
    }
    struct kafka_answer *a = answer_new(ks->port, r, topic, k, size);
    rd_kafka_headers_t *hdrs = message_headers(structured, ev);
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    pthread_mutex_lock(&sh->mu);
    int send = !sh->gate || (sh->held_head == NULL && sh->inflight == 0);
    if (send) { /* its place first: the gate is shut for the others until it is reported */
        sh->inflight++;
        ks->port->out++;
    } else if (sh->n_held + (size_t)rd_kafka_outq_len(sh->rk) >= (size_t)sh->queue_msgs ||
               (sh->held_bytes + size) / 1024 >= (size_t)sh->queue_kbytes) {
        err = RD_KAFKA_RESP_ERR__QUEUE_FULL;
        rd_kafka_headers_destroy(hdrs);
    } else {
        hold(sh, a, value, value_len, hdrs, held_deadline);
        ks->port->out++;
    }
    pthread_mutex_unlock(&sh->mu);
    if (send && (err = produce(sh, a, value, value_len, hdrs)) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        pthread_mutex_lock(&sh->mu);
        sh->inflight--;
        ks->port->out--;
        if (sh->inflight == 0 && sh->held_head) { /* held behind it: no report will come */
            kick_server(sh);
        }
        pthread_mutex_unlock(&sh->mu);
    }
    ks->queue_full = err == RD_KAFKA_RESP_ERR__QUEUE_FULL;
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        free(a);
        if (refused(ks, r, err, topic, size) != 0) {
            ab_pending_cancel(r); /* a refusal: the callback never runs */
            rc = -1;
        }
    }
done:
    free(key);
    ab_event_free(own);
    return rc;
}

static int kafka_ready(struct ab_sink *s)
{
    struct kafka_sink *ks = (struct kafka_sink *)s;
    pthread_mutex_lock(&ks->sh->mu);
    int ok = !ks->closing && !ks->sh->fatal && ks->sh->state == BROKERS_UP;
    pthread_mutex_unlock(&ks->sh->mu);
    return ok;
}

static void kafka_describe(struct ab_sink *s, char *buf, size_t len)
{
    struct kafka_sink *ks = (struct kafka_sink *)s;
    struct kafka_shared *sh = ks->sh;
    pthread_mutex_lock(&sh->mu);
    if (sh->fatal) {
        snprintf(buf, len, "brokers %s: failed (%s)", sh->brokers, sh->reason);
    } else if (sh->state == BROKERS_DOWN) {
        snprintf(buf, len, "brokers %s: down (%s)", sh->brokers, sh->reason);
    } else if (sh->state == BROKERS_CONNECTING) {
        snprintf(buf, len, "brokers %s: connecting", sh->brokers);
    } else {
        snprintf(buf, len, "brokers %s: up%s", sh->brokers,
                 ks->queue_full ? ", local queue full" : "");
    }
    pthread_mutex_unlock(&sh->mu);
}

/* Loop thread, after its loop stopped: wait up to timeout_ms for this instance's
 * outstanding messages (their answers are served here, so their callbacks run on this
 * thread), then close the port: what is left is answered AB_SINK_CLOSED now and its
 * reports, should they come, are dropped (the producer is shared: only the last owner,
 * global_free, purges what librdkafka still holds). Free. */
static void kafka_close(struct ab_sink *s, int timeout_ms)
{
    struct kafka_sink *ks = (struct kafka_sink *)s;
    if (ks == NULL) {
        return;
    }
    ks->closing = 1;
    struct kafka_shared *sh = ks->sh;
    if (ks->port) {
        int64_t end = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
        for (;;) {
            on_port_io(ks->pipefd[0], EV_READ, ks);
            pthread_mutex_lock(&sh->mu);
            long out = ks->port->out;
            pthread_mutex_unlock(&sh->mu);
            int64_t left = end - now_ms();
            if (out == 0 || left <= 0) {
                break;
            }
            struct pollfd pfd = {.fd = ks->pipefd[0], .events = POLLIN};
            poll(&pfd, 1, left < 100 ? (int)left : 100);
        }
        pthread_mutex_lock(&sh->mu);
        struct kafka_port *port = ks->port;
        if (port->home) { /* the instances still open need a server: the thread */
            rd_kafka_queue_io_event_enable(sh->mainq, -1, NULL, 0);
            sh->home = NULL;
            port->home = 0;
            int others = 0;
            for (struct kafka_port *p = sh->ports; p; p = p->next) {
                others += p != port && !p->closed;
            }
            if (others && pthread_create(&sh->thread, NULL, dispatch_main, sh) == 0) {
                sh->thread_started = 1;
            } else if (others) { /* nobody would serve the reports: refuse, not ready */
                sh->fatal = 1;
                snprintf(sh->reason, sizeof(sh->reason),
                         "fatal: no thread to serve the producer's reports");
            } /* else the next instance opened, if any, becomes home */
        }
        long left = port->out, n = 0;
        port->closed = 1;
        for (struct kafka_answer *a = port->inbox, *next; a; a = next) {
            next = a->next;
            free(a);
            n++;
        }
        port->inbox = NULL;
        port->inbox_tail = &port->inbox;
        port_put(sh, port, n); /* frees it when nothing of it is out any more */
        pthread_mutex_unlock(&sh->mu);
        if (left > 0) {
            ab_warn("kafka: closing with %ld message(s) not acknowledged: answering 503", left);
        }
    }
    if (ks->adminq) {
        rd_kafka_queue_io_event_enable(ks->adminq, -1, NULL, 0);
        rd_kafka_queue_destroy(ks->adminq);
    }
    if (ks->own_shared) {
        shared_free(sh);
    }
    /* Whatever was not answered (the reports of a closed port are dropped). */
    if (ks->pending) {
        ab_pending_close(ks->pending, AB_SINK_CLOSED,
                         "kafka sink closed before the broker acknowledged");
        ab_pending_free(ks->pending);
    }
    if (ks->io_ev) {
        event_free(ks->io_ev);
    }
    for (int i = 0; i < 2; i++) {
        if (ks->pipefd[i] >= 0) {
            close(ks->pipefd[i]);
        }
    }
    ab_route_free(ks->key);
    free(ks->limits);
    free(ks);
}

/* ---- the read side: a consumer by assignment ---------------------------------------- */

/* A reader commits nothing and joins no group in earnest (its group id is its own), so any
 * number of readers run side by side. It assigns every partition of one topic; its position
 * is the next offset of each partition. */
struct kafka_reader {
    struct ab_sink_reader base;
    rd_kafka_t *rk;
    char topic[AB_KAFKA_TOPIC_MAX + 1];
    char *brokers;
    char *start;      /* the position to resume after, or NULL */
    int64_t since_ms;
    int nparts;       /* 0 until the topic exists and is assigned */
    int64_t *next;    /* per partition: the next offset to read */
    int64_t *high;    /* per partition: the end offset when assigned */
    int caught_up;
    int64_t look_again; /* monotonic ms: when to look for a missing topic again */
    rd_kafka_message_t *msg; /* the event last returned */
    char *line;              /* its CloudEvent line, either content mode decoded */
    char *pos;
    size_t poscap;
    char id[256];
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A consumer with the daemon's brokers and --kafka-conf, its own throw-away group id,
 * nothing committed or stored, librdkafka's connection chatter silenced (errors that matter
 * come back from the calls). NULL with errstr. */
static rd_kafka_t *reader_consumer(const struct ab_kafka_conf *cfg, char *errstr, size_t errlen)
{
    char group[96], err[512];
    snprintf(group, sizeof(group), "almabridge-reader-%ld-%lld", (long)getpid(),
             (long long)now_ms());
    const char *defaults[][2] = {
        {"bootstrap.servers", cfg->brokers}, {"group.id", group},
        {"client.id", "almabridge-reader"},  {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"}, {"enable.partition.eof", "false"},
        {"auto.offset.reset", "earliest"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, on_log_quiet);
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (conf_set(conf, defaults[i][0], defaults[i][1], errstr, errlen) != 0) {
            goto fail;
        }
    }
    for (size_t i = 0; i < cfg->conf.n; i++) {
        const char *kv = cfg->conf.v[i], *eq = strchr(kv, '=');
        char *key = eq ? ab_strndup(kv, (size_t)(eq - kv)) : NULL;
        int rc = key ? conf_set(conf, key, eq + 1, errstr, errlen) : -1;
        if (key == NULL) {
            snprintf(errstr, errlen, "kafka: --kafka-conf entry %zu is not key=value", i + 1);
        }
        free(key);
        if (rc != 0) {
            goto fail;
        }
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (rk == NULL) {
        snprintf(errstr, errlen, "kafka: cannot create a consumer: %s", err);
        goto fail;
    }
    return rk; /* rd_kafka_new() took the conf */
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* The partition count of the reader's topic: > 0, 0 while it does not exist, -1 when the
 * brokers cannot be reached (errstr filled). */
static int reader_partitions(struct kafka_reader *r, int timeout_ms, char *errstr,
                             size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(r->rk, r->topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(r->rk, 0, rkt, &md, timeout_ms);
    int n = -1;
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(errstr, errlen, "kafka %s, topic %s: %s", r->brokers, r->topic,
                 rd_kafka_err2str(e));
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

/* The offset of partition p in a position "p:offset,...", or -1. */
static int64_t position_of(const char *pos, int p)
{
    for (const char *s = pos; s && *s;) {
        char *end;
        long part = strtol(s, &end, 10);
        if (*end != ':') {
            return -1;
        }
        long long off = strtoll(end + 1, &end, 10);
        if (part == p) {
            return off;
        }
        s = *end == ',' ? end + 1 : NULL;
    }
    return -1;
}

/* Assign every partition: after the saved position, else from the first offset at or after
 * since_ms (the end when there is none: the end offset is read first, so nothing written
 * between the two look-ups is skipped). */
static int reader_assign(struct kafka_reader *r, int nparts, char *errstr, size_t errlen)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nparts);
    int64_t *high = ab_calloc((size_t)nparts, sizeof(*high));
    int64_t *low = ab_calloc((size_t)nparts, sizeof(*low));
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int p = 0; p < nparts && !e; p++) {
        e = rd_kafka_query_watermark_offsets(r->rk, r->topic, p, &low[p], &high[p], 10000);
        rd_kafka_topic_partition_list_add(l, r->topic, p)->offset = r->since_ms;
    }
    if (!e && r->start == NULL) {
        e = rd_kafka_offsets_for_times(r->rk, l, 10000);
    }
    for (int i = 0; i < l->cnt && !e; i++) {
        rd_kafka_topic_partition_t *tp = &l->elems[i];
        int64_t saved = r->start ? position_of(r->start, tp->partition) : -1;
        if (r->start) {
            tp->offset = saved >= low[tp->partition] ? saved : low[tp->partition];
        } else if (tp->err != RD_KAFKA_RESP_ERR_NO_ERROR || tp->offset < 0) {
            tp->offset = high[tp->partition];
        }
    }
    if (!e) {
        e = rd_kafka_assign(r->rk, l);
    }
    if (e) {
        snprintf(errstr, errlen, "kafka %s, topic %s: %s", r->brokers, r->topic,
                 rd_kafka_err2str(e));
    } else {
        r->nparts = nparts;
        r->next = ab_calloc((size_t)nparts, sizeof(int64_t));
        for (int i = 0; i < l->cnt; i++) {
            r->next[l->elems[i].partition] = l->elems[i].offset;
        }
        r->high = high;
        high = NULL;
    }
    free(high);
    free(low);
    rd_kafka_topic_partition_list_destroy(l);
    return e ? -1 : 0;
}

static void kafka_reader_close(struct ab_sink_reader *base);

static struct ab_sink_reader *kafka_reader_open(const struct ab_sink_conf *sc,
                                                const struct ab_read_from *from, char *errstr,
                                                size_t errlen)
{
    const struct ab_kafka_conf *cfg = sc->opts;
    if (cfg->brokers == NULL || *cfg->brokers == '\0' || from->route == NULL) {
        snprintf(errstr, errlen, "kafka: %s", from->route ? "--kafka-brokers is empty"
                                                           : "no topic to read");
        return NULL;
    }
    struct kafka_reader *r = ab_calloc(1, sizeof(*r));
    r->base.ops = &ab_sink_kafka;
    r->brokers = ab_strdup(cfg->brokers);
    r->start = from->position ? ab_strdup(from->position) : NULL;
    r->since_ms = from->since_ms;
    ab_kafka_topic_name(from->route, r->topic); /* the name the producer writes to */
    if ((r->rk = reader_consumer(cfg, errstr, errlen)) == NULL) {
        goto fail;
    }
    int n = reader_partitions(r, 10000, errstr, errlen);
    if (n < 0 || (n > 0 && reader_assign(r, n, errstr, errlen) != 0)) {
        goto fail;
    }
    return &r->base;
fail:
    kafka_reader_close(&r->base);
    return NULL;
}

/* "p:offset,..." of every partition into r->pos. */
static void reader_position(struct kafka_reader *r)
{
    size_t need = (size_t)r->nparts * 32 + 1, w = 0;
    if (need > r->poscap) {
        r->poscap = need;
        r->pos = ab_realloc(r->pos, need);
    }
    r->pos[0] = '\0';
    for (int p = 0; p < r->nparts; p++) {
        w += (size_t)snprintf(r->pos + w, r->poscap - w, "%s%d:%lld", p ? "," : "", p,
                              (long long)r->next[p]);
    }
}

/* The message's ce_id header (binary content mode and the default headers), or "". */
static const char *reader_id(struct kafka_reader *r, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *v = NULL;
    size_t vlen = 0;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(hdrs, "ce_id", &v, &vlen) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        v == NULL || vlen >= sizeof(r->id)) {
        return NULL;
    }
    memcpy(r->id, v, vlen);
    r->id[vlen] = '\0';
    return r->id;
}

static int reader_at_end(const struct kafka_reader *r)
{
    for (int p = 0; p < r->nparts; p++) {
        if (r->next[p] < r->high[p]) {
            return 0;
        }
    }
    return 1;
}

#define CATCH_UP_MS 120000 /* reading up to the end offsets: longer is an error */

/* Blocking: the next message of any partition (see sink.h). Before the reader has reached
 * the end offsets of its assignment it keeps polling whatever timeout_ms says, so that
 * AB_READ_IDLE always means "at the end". */
static int kafka_reader_next(struct ab_sink_reader *base, struct ab_read_event *ev,
                             int timeout_ms, char *errstr, size_t errlen)
{
    struct kafka_reader *r = (struct kafka_reader *)base;
    int64_t t0 = mono_ms(), deadline = t0 + (timeout_ms > 0 ? timeout_ms : 0);
    if (r->msg) {
        rd_kafka_message_destroy(r->msg);
        r->msg = NULL;
    }
    free(r->line);
    r->line = NULL;
    for (;;) {
        int64_t now = mono_ms(), left = deadline - now;
        if (r->nparts == 0) { /* the first event written to the topic creates it */
            if (now >= r->look_again) {
                int n = reader_partitions(r, 5000, errstr, errlen);
                if (n < 0 || (n > 0 && reader_assign(r, n, errstr, errlen) != 0)) {
                    r->look_again = mono_ms() + 500;
                    return AB_READ_ERROR;
                }
                r->look_again = mono_ms() + 1000;
                continue;
            }
            if (left <= 0) {
                return AB_READ_IDLE;
            }
            int64_t nap = r->look_again - now < left ? r->look_again - now : left;
            struct timespec ts = {(time_t)(nap / 1000), (long)(nap % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        r->caught_up = r->caught_up || reader_at_end(r);
        if (r->caught_up && left <= 0) {
            return AB_READ_IDLE;
        }
        if (!r->caught_up && now - t0 > CATCH_UP_MS) {
            snprintf(errstr, errlen, "kafka %s, topic %s: reading up to its end took over %d s",
                     r->brokers, r->topic, CATCH_UP_MS / 1000);
            return AB_READ_ERROR;
        }
        rd_kafka_message_t *m =
            rd_kafka_consumer_poll(r->rk, r->caught_up && left < 500 ? (int)left : 500);
        if (m == NULL) {
            continue;
        }
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR || m->partition < 0 ||
            m->partition >= r->nparts) {
            rd_kafka_message_destroy(m); /* librdkafka retries by itself */
            continue;
        }
        r->next[m->partition] = m->offset + 1;
        reader_position(r);
        r->msg = m;
        size_t len = 0;
        r->line = ab_kafka_message_event(m, &len); /* binary mode: the line from the headers */
        *ev = (struct ab_read_event){.value = r->line ? r->line : "", .len = r->line ? len : 0,
                                     .id = reader_id(r, m), .position = r->pos,
                                     .stored_ms = rd_kafka_message_timestamp(m, NULL)};
        return AB_READ_EVENT;
    }
}

static void kafka_reader_close(struct ab_sink_reader *base)
{
    struct kafka_reader *r = (struct kafka_reader *)base;
    if (r == NULL) {
        return;
    }
    if (r->msg) {
        rd_kafka_message_destroy(r->msg);
    }
    free(r->line);
    if (r->rk) {
        rd_kafka_consumer_close(r->rk);
        rd_kafka_destroy(r->rk);
    }
    free(r->brokers);
    free(r->start);
    free(r->next);
    free(r->high);
    free(r->pos);
    free(r);
}

const struct ab_sink_ops ab_sink_kafka = {
    .name = "kafka",
    .default_route = "alma.{action}",
    .flags = AB_SINK_RETRIES_LATE,
    .options = &kafka_optset,
    .global_init = kafka_global_init,
    .global_free = kafka_global_free,
    .probe = kafka_probe,
    .open = kafka_open,
    .submit = kafka_submit,
    .ready = kafka_ready,
    .describe = kafka_describe,
    .close = kafka_close,
    .reader_open = kafka_reader_open,
    .reader_next = kafka_reader_next,
    .reader_close = kafka_reader_close,
};
