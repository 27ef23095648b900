/* Kafka: one producer per worker thread, or one producer shared by all workers?
 *
 *   cc -O2 -o build/kafka_producers bench/kafka_producers.c -lrdkafka -lpthread
 *   build/kafka_producers --brokers 127.0.0.1:9092 --threads 2 --mode per-thread \
 *       --inflight 8 --duration 5
 *
 * T worker threads each keep W messages in flight, closed loop: produce, wait for the
 * message's delivery report, produce the next one in its place (like HTTP clients waiting
 * for their 200). The producer configuration is sinks/kafka.c's (idempotent, acks=all,
 * lz4, linger.ms=5, statistics every second...), extra properties with --conf K=V.
 *
 *  per-thread  each worker owns an rd_kafka_t and is woken the way the daemon's loop is:
 *              rd_kafka_queue_io_event_enable() writes to a pipe when the producer's main
 *              queue becomes non-empty; the worker waits in poll(2) on that pipe, then
 *              serves rd_kafka_poll(rk, 0) until nothing is left. Delivery reports run on
 *              the worker that produced the message, with no locking (sinks/kafka.c).
 *  shared      one rd_kafka_t for all workers (rd_kafka_producev is thread-safe). One
 *              dedicated poller thread calls rd_kafka_poll(rk, 100); the delivery report
 *              callback appends the message to its owner's mutex-protected completion
 *              list and, when the list was empty, wakes the owner through its eventfd
 *              (which the owner waits on in poll(2), as a loop thread would): the
 *              cross-thread hand-off the daemon would need to answer each request on the
 *              loop thread that received it.
 *
 * A run: --warmup seconds of load (connections, producer id, topic metadata, the broker's
 * JIT), all workers drained and lined up on a barrier, then the measured window: --duration
 * seconds (or --messages N per thread when --duration is 0; --idle 1: produce nothing in the
 * window, for the fixed cost of the producers). Only deliveries handled inside
 * the window count. On stdout: "MEASURE_START" and "MEASURE_END" lines at the window's
 * edges (so a driver can sample the broker's CPU over the same window), then one line
 * "RESULT {json}": messages/s, delivery latency percentiles (produce call to the report
 * being handled by the owning worker, hand-off included), process CPU per message
 * (getrusage: all threads, librdkafka's included), context switches per message, the
 * producers' ESTABLISHED TCP connections to the broker ports (/proc/self/net/tcp* matched
 * against our socket inodes), OS threads (/proc/self/task), VmRSS/VmHWM, and from the
 * last statistics: messages per ProduceRequest. A human summary goes to stderr.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#define MAX_CONF 32
#define MAX_PORTS 16

static struct {
    const char *brokers;
    const char *topic;
    const char *value_file;
    int shared;
    int threads;
    int inflight;
    int size;
    long messages;
    double duration;
    double warmup;
    int idle;
    const char *conf[MAX_CONF][2];
    int nconf;
} opt = {
    .brokers = "127.0.0.1:9092",
    .topic = "alma.bench",
    .threads = 2,
    .inflight = 8,
    .size = 2048,
    .messages = 0,
    .duration = 5,
    .warmup = 1,
};

static atomic_int g_stop;      /* the measured window is over: produce no more */
static atomic_int g_measuring; /* deliveries count from now on */
static pthread_barrier_t g_start, g_end;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *fmt, const char *a)
{
    fprintf(stderr, "kafka_producers: ");
    fprintf(stderr, fmt, a);
    fputc('\n', stderr);
    exit(2);
}

/* ---- producers ---------------------------------------------------------------------- */

struct producer {
    rd_kafka_t *rk;
    rd_kafka_queue_t *mainq; /* per-thread mode: the io-event queue */
    pthread_mutex_t mu;      /* guards the statistics below */
    long long st_txmsgs, st_tx, st_produce;
    int st_seen;
    long errors;
};

/* The value of top-level (depth 1) key in a JSON object, or -1. */
static long long json_top_int(const char *j, size_t len, const char *key)
{
    size_t klen = strlen(key);
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        char c = j[i];
        if (c == '"') {
            size_t s = ++i;
            while (i < len && j[i] != '"') {
                i += j[i] == '\\' ? 2 : 1;
            }
            if (depth == 1 && i - s == klen && memcmp(j + s, key, klen) == 0 && i + 2 < len &&
                j[i + 1] == ':') {
                return strtoll(j + i + 2, NULL, 10);
            }
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return -1;
}

/* Sum of every "key":N in the JSON (the per-broker request counters). */
static long long json_sum_key(const char *j, size_t len, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    long long sum = 0;
    const char *end = j + len, *p = j;
    while ((p = memmem(p, (size_t)(end - p), pat, strlen(pat))) != NULL) {
        p += strlen(pat);
        sum += strtoll(p, NULL, 10);
    }
    return sum;
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    struct producer *p = opaque;
    long long txmsgs = json_top_int(json, len, "txmsgs");
    long long tx = json_top_int(json, len, "tx");
    long long produce = json_sum_key(json, len, "Produce");
    if (getenv("KP_DUMP_STATS")) {
        fprintf(stderr, "%.*s\n", (int)len, json);
    }
    pthread_mutex_lock(&p->mu);
    p->st_txmsgs = txmsgs;
    p->st_tx = tx;
    p->st_produce = produce;
    p->st_seen++;
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct producer *p = opaque;
    p->errors++;
    fprintf(stderr, "kafka_producers: error %s: %s\n", rd_kafka_err2name(err), reason);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    if (level <= 4) {
        fprintf(stderr, "kafka_producers: rdkafka %s: %s\n", fac, buf);
    }
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);

/* sinks/kafka.c's build_conf() with its defaults (--ack-timeout 4000), then --conf. */
static struct producer *producer_new(int idx)
{
    struct producer *p = calloc(1, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    char cid[64];
    snprintf(cid, sizeof(cid), "almabridge-bench-%d", idx);
    const char *defaults[][2] = {
        {"bootstrap.servers", opt.brokers},
        {"client.id", cid},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"compression.type", "lz4"},
        {"linger.ms", "5"},
        {"message.timeout.ms", "4000"},
        {"socket.timeout.ms", "4000"},
        {"socket.connection.setup.timeout.ms", "4000"},
        {"socket.keepalive.enable", "true"},
        {"socket.nagle.disable", "true"},
        {"reconnect.backoff.ms", "100"},
        {"reconnect.backoff.max.ms", "1000"},
        {"enable.sparse.connections", "false"},
        {"statistics.interval.ms", "1000"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
            die("%s", err);
        }
    }
    for (int i = 0; i < opt.nconf; i++) {
        if (rd_kafka_conf_set(conf, opt.conf[i][0], opt.conf[i][1], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
            die("--conf: %s", err);
        }
    }
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, p);
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (p->rk == NULL) {
        die("rd_kafka_new: %s", err);
    }
    return p;
}

/* ---- workers ------------------------------------------------------------------------ */

struct worker;

struct slot {
    struct worker *w;
    int64_t sent_ns;
    rd_kafka_resp_err_t err;
};

struct worker {
    int id;
    pthread_t th;
    struct producer *p;
    int wake_fd;     /* per-thread: the io-event pipe's read end; shared: an eventfd */
    int wake_wr;     /* per-thread: the pipe's write end */
    struct slot *slots;
    struct slot **freel;
    int nfree;
    long outstanding;
    /* shared mode: completions handed over by the poller thread */
    pthread_mutex_t mu;
    struct slot **handq;
    int handn;
    struct slot **local; /* the owner's copy while it serves them */
    /* counters */
    long sent;       /* in the current phase */
    long delivered;  /* inside the measured window */
    long failed;
    long produce_errors;
    uint32_t *lat;   /* µs, deliveries inside the window */
    size_t nlat, caplat;
    uint64_t seq;
    char *value;
    size_t value_len;
    size_t id_off;   /* where the 19-digit id sits in value, or SIZE_MAX */
};

static struct worker *workers;
static struct producer **producers;
static int nproducers;
static pthread_t poller_th;
static atomic_int poller_stop;

/* The owner thread: one message is done. */
static void complete(struct worker *w, struct slot *s)
{
    int64_t t = now_ns();
    w->outstanding--;
    w->freel[w->nfree++] = s;
    if (s->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        w->failed++;
        if (w->failed <= 3) {
            fprintf(stderr, "kafka_producers: delivery failed: %s\n", rd_kafka_err2str(s->err));
        }
        return;
    }
    if (!atomic_load_explicit(&g_measuring, memory_order_relaxed) ||
        atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        return;
    }
    w->delivered++;
    if (w->nlat == w->caplat) {
        w->caplat = w->caplat ? w->caplat * 2 : 65536;
        w->lat = realloc(w->lat, w->caplat * sizeof(*w->lat));
    }
    int64_t us = (t - s->sent_ns) / 1000;
    w->lat[w->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Per-thread mode: the producing worker, inside its rd_kafka_poll(). Shared mode: the
 * poller thread, which hands the message to its owner. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct slot *s = m->_private;
    struct worker *w = s->w;
    s->err = m->err;
    if (!opt.shared) {
        complete(w, s);
        return;
    }
    pthread_mutex_lock(&w->mu);
    w->handq[w->handn++] = s;
    int first = w->handn == 1;
    pthread_mutex_unlock(&w->mu);
    if (first) {
        uint64_t one = 1;
        if (write(w->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
            perror("eventfd write");
        }
    }
}

static void *poller_main(void *arg)
{
    struct producer *p = arg;
    while (!atomic_load(&poller_stop)) {
        rd_kafka_poll(p->rk, 100);
    }
    return NULL;
}

static void produce_one(struct worker *w)
{
    struct slot *s = w->freel[--w->nfree];
    char id[24];
    snprintf(id, sizeof(id), "%019" PRIu64, ((uint64_t)(w->id + 1) << 48) + ++w->seq);
    if (w->id_off != SIZE_MAX) {
        memcpy(w->value + w->id_off, id, 19);
    }
    static const char ctype[] = "application/cloudevents+json";
    s->sent_ns = now_ns();
    rd_kafka_resp_err_t err = rd_kafka_producev(
        w->p->rk, RD_KAFKA_V_TOPIC(opt.topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE(w->value, w->value_len), RD_KAFKA_V_KEY(id, 19),
        RD_KAFKA_V_HEADER("content-type", ctype, (ssize_t)sizeof(ctype) - 1),
        RD_KAFKA_V_HEADER("ce_specversion", "1.0", 3), RD_KAFKA_V_HEADER("ce_id", id, 19),
        RD_KAFKA_V_HEADER("ce_type", "com.exlibrisgroup.alma.loan.loan_created", -1),
        RD_KAFKA_V_HEADER("ce_source", "urn:alma:01WRLC_AMU", -1), RD_KAFKA_V_OPAQUE(s),
        RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        w->freel[w->nfree++] = s;
        if (++w->produce_errors <= 3) {
            fprintf(stderr, "kafka_producers: producev: %s\n", rd_kafka_err2str(err));
        }
        return;
    }
    w->sent++;
    w->outstanding++;
}

/* Wait (at most timeout_ms) for the worker's wake-up fd, then serve what is there. */
static void wait_and_serve(struct worker *w, int timeout_ms)
{
    struct pollfd pfd = {.fd = w->wake_fd, .events = POLLIN};
    if (poll(&pfd, 1, timeout_ms) <= 0) {
        return;
    }
    if (!opt.shared) {
        char buf[256];
        while (read(w->wake_fd, buf, sizeof(buf)) > 0) {
        }
        while (rd_kafka_poll(w->p->rk, 0) > 0) {
        }
        return;
    }
    uint64_t v;
    if (read(w->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
        perror("eventfd read");
    }
    pthread_mutex_lock(&w->mu);
    int n = w->handn;
    memcpy(w->local, w->handq, (size_t)n * sizeof(*w->local));
    w->handn = 0;
    pthread_mutex_unlock(&w->mu);
    for (int i = 0; i < n; i++) {
        complete(w, w->local[i]);
    }
}

/* Closed loop until the phase ends, then drain what is in flight. */
static void run_phase(struct worker *w, int64_t until_ns, long max_msgs, int use_stop)
{
    w->sent = 0;
    for (;;) {
        int stopping = (until_ns && now_ns() >= until_ns) || (max_msgs && w->sent >= max_msgs) ||
                       (use_stop && atomic_load_explicit(&g_stop, memory_order_relaxed));
        while (!stopping && w->nfree > 0 && (!max_msgs || w->sent < max_msgs)) {
            int nf = w->nfree;
            produce_one(w);
            if (w->nfree == nf) { /* refused: let the reports come first */
                break;
            }
        }
        if (stopping && w->outstanding == 0) {
            return;
        }
        wait_and_serve(w, 10);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    run_phase(w, now_ns() + (int64_t)(opt.warmup * 1e9), 0, 0);
    pthread_barrier_wait(&g_start);
    if (opt.idle) { /* connected, serving events, producing nothing */
        while (!atomic_load(&g_stop)) {
            wait_and_serve(w, 100);
        }
    } else {
        run_phase(w, 0, opt.messages, opt.duration > 0);
    }
    if (opt.duration <= 0) {
        pthread_barrier_wait(&g_end);
    }
    return NULL;
}

/* ---- process measurements ----------------------------------------------------------- */

static void proc_status(long *rss, long *hwm)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    *rss = *hwm = -1;
    while (f && fgets(line, sizeof(line), f)) {
        sscanf(line, "VmRSS: %ld", rss);
        sscanf(line, "VmHWM: %ld", hwm);
    }
    if (f) {
        fclose(f);
    }
}

static int count_dir(const char *path)
{
    DIR *d = opendir(path);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        n += e->d_name[0] != '.';
    }
    if (d) {
        closedir(d);
    }
    return n;
}

static int broker_ports[MAX_PORTS], nports;

static void parse_broker_ports(void)
{
    char *s = strdup(opt.brokers), *save = NULL;
    for (char *t = strtok_r(s, ",", &save); t && nports < MAX_PORTS;
         t = strtok_r(NULL, ",", &save)) {
        char *c = strrchr(t, ':');
        broker_ports[nports++] = c ? atoi(c + 1) : 9092;
    }
    free(s);
}

/* ESTABLISHED TCP connections of this process to one of the broker ports. */
static int broker_connections(void)
{
    unsigned long inodes[4096];
    int ni = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL && ni < 4096) {
        char path[300], link[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n > 0) {
            link[n] = '\0';
            unsigned long ino;
            if (sscanf(link, "socket:[%lu]", &ino) == 1) {
                inodes[ni++] = ino;
            }
        }
    }
    if (d) {
        closedir(d);
    }
    int count = 0;
    const char *files[] = {"/proc/self/net/tcp", "/proc/self/net/tcp6"};
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(files[k], "r");
        char line[512];
        while (f && fgets(line, sizeof(line), f)) {
            char rem[80];
            unsigned st;
            unsigned long ino;
            if (sscanf(line, " %*d: %*s %79s %x %*s %*s %*s %*s %*s %lu", rem, &st, &ino) != 3) {
                continue;
            }
            char *c = strrchr(rem, ':');
            int port = c ? (int)strtol(c + 1, NULL, 16) : -1;
            int ours = 0;
            for (int i = 0; i < ni; i++) {
                ours |= inodes[i] == ino;
            }
            for (int i = 0; i < nports && ours && st == 1; i++) {
                count += port == broker_ports[i];
            }
        }
        if (f) {
            fclose(f);
        }
    }
    return count;
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const uint32_t *v, size_t n, double p)
{
    if (n == 0) {
        return 0;
    }
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* A CloudEvent-shaped JSON value of about `size` bytes with an "id" to overwrite. */
static char *make_value(size_t *len, size_t *id_off)
{
    char *v;
    if (opt.value_file) {
        FILE *f = fopen(opt.value_file, "rb");
        if (!f) {
            die("cannot read %s", opt.value_file);
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        v = malloc((size_t)n + 1);
        if (fread(v, 1, (size_t)n, f) != (size_t)n) {
            die("cannot read %s", opt.value_file);
        }
        fclose(f);
        v[n] = '\0';
        *len = (size_t)n;
    } else {
        size_t size = opt.size < 256 ? 256 : (size_t)opt.size;
        v = malloc(size + 1);
        int n = snprintf(v, size + 1,
                         "{\"specversion\":\"1.0\",\"id\":\"0000000000000000000\","
                         "\"source\":\"urn:alma:01WRLC_AMU\","
                         "\"type\":\"com.exlibrisgroup.alma.loan.loan_created\","
                         "\"time\":\"2020-01-26T16:20:36.005Z\","
                         "\"datacontenttype\":\"application/json\",\"data\":{\"pad\":\"");
        unsigned x = 12345;
        for (size_t i = (size_t)n; i < size - 3; i++) {
            x = x * 1103515245u + 12345u;
            v[i] = "abcdefghijklmnopqrstuvwxyz0123456789 "[(x >> 16) % 37];
        }
        memcpy(v + size - 3, "\"}}", 4);
        *len = size;
    }
    char *p = strstr(v, "\"id\":\"");
    *id_off = SIZE_MAX;
    if (p) {
        size_t off = (size_t)(p - v) + 6, digits = 0;
        while (off + digits < *len && v[off + digits] != '"') {
            digits++;
        }
        if (digits == 19) {
            *id_off = off;
        }
    }
    return v;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: kafka_producers [--brokers H:P,...] [--threads T] "
            "[--mode per-thread|shared]\n"
            "         [--inflight W] [--duration S | --messages N] [--warmup S] [--size B]\n"
            "         [--value-file F] [--topic T] [--conf KEY=VALUE]... [--idle 1]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || v == NULL) {
            usage();
        }
        i++;
        if (strcmp(a, "--brokers") == 0) {
            opt.brokers = v;
        } else if (strcmp(a, "--threads") == 0) {
            opt.threads = atoi(v);
        } else if (strcmp(a, "--mode") == 0) {
            if (strcmp(v, "shared") != 0 && strcmp(v, "per-thread") != 0) {
                usage();
            }
            opt.shared = strcmp(v, "shared") == 0;
        } else if (strcmp(a, "--messages") == 0) {
            opt.messages = atol(v);
        } else if (strcmp(a, "--duration") == 0) {
            opt.duration = atof(v);
        } else if (strcmp(a, "--warmup") == 0) {
            opt.warmup = atof(v);
        } else if (strcmp(a, "--idle") == 0) {
            opt.idle = atoi(v);
        } else if (strcmp(a, "--inflight") == 0) {
            opt.inflight = atoi(v);
        } else if (strcmp(a, "--size") == 0) {
            opt.size = atoi(v);
        } else if (strcmp(a, "--value-file") == 0) {
            opt.value_file = v;
        } else if (strcmp(a, "--topic") == 0) {
            opt.topic = v;
        } else if (strcmp(a, "--conf") == 0) {
            const char *eq = strchr(v, '=');
            if (!eq || opt.nconf == MAX_CONF) {
                usage();
            }
            opt.conf[opt.nconf][0] = strndup(v, (size_t)(eq - v));
            opt.conf[opt.nconf++][1] = eq + 1;
        } else {
            usage();
        }
    }
    if (opt.messages > 0) {
        opt.duration = 0; /* --messages wins */
    }
    if (opt.threads < 1 || opt.inflight < 1 || (opt.duration <= 0 && opt.messages <= 0) ||
        (opt.idle && opt.duration <= 0)) {
        usage();
    }
    parse_broker_ports();
    int T = opt.threads;
    nproducers = opt.shared ? 1 : T;
    producers = calloc((size_t)nproducers, sizeof(*producers));
    for (int i = 0; i < nproducers; i++) {
        producers[i] = producer_new(i);
    }
    size_t vlen, id_off;
    char *value = make_value(&vlen, &id_off);
    workers = calloc((size_t)T, sizeof(*workers));
    for (int i = 0; i < T; i++) {
        struct worker *w = &workers[i];
        w->id = i;
        w->p = producers[opt.shared ? 0 : i];
        w->slots = calloc((size_t)opt.inflight, sizeof(*w->slots));
        w->freel = calloc((size_t)opt.inflight, sizeof(*w->freel));
        w->handq = calloc((size_t)opt.inflight, sizeof(*w->handq));
        w->local = calloc((size_t)opt.inflight, sizeof(*w->local));
        for (int k = 0; k < opt.inflight; k++) {
            w->slots[k].w = w;
            w->freel[w->nfree++] = &w->slots[k];
        }
        pthread_mutex_init(&w->mu, NULL);
        w->value = malloc(vlen);
        memcpy(w->value, value, vlen);
        w->value_len = vlen;
        w->id_off = id_off;
        if (opt.shared) {
            w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            w->wake_wr = -1;
        } else {
            int fds[2];
            if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
                die("pipe: %s", strerror(errno));
            }
            w->wake_fd = fds[0];
            w->wake_wr = fds[1];
            w->p->mainq = rd_kafka_queue_get_main(w->p->rk);
            rd_kafka_queue_io_event_enable(w->p->mainq, fds[1], "1", 1);
            /* anything queued before the io event was enabled would never wake us */
            if (write(fds[1], "1", 1) < 0) {
                die("pipe write: %s", strerror(errno));
            }
        }
    }
    if (opt.shared) {
        pthread_create(&poller_th, NULL, poller_main, producers[0]);
    }
    pthread_barrier_init(&g_start, NULL, (unsigned)T + 1);
    pthread_barrier_init(&g_end, NULL, (unsigned)T + 1);
    for (int i = 0; i < T; i++) {
        pthread_create(&workers[i].th, NULL, worker_main, &workers[i]);
    }

    pthread_barrier_wait(&g_start);
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    int64_t t0 = now_ns();
    atomic_store(&g_measuring, 1);
    printf("MEASURE_START\n");
    fflush(stdout);
    long rss, hwm;
    int os_threads, conns;
    if (opt.duration > 0) {
        int64_t end = t0 + (int64_t)(opt.duration * 1e9);
        struct timespec ts = {.tv_sec = end / 1000000000, .tv_nsec = end % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
        }
        /* under load, before the workers drain and exit (reading /proc: well under 1 ms) */
        proc_status(&rss, &hwm);
        os_threads = count_dir("/proc/self/task");
        conns = broker_connections();
        atomic_store(&g_stop, 1);
    } else {
        pthread_barrier_wait(&g_end);
        proc_status(&rss, &hwm);
        os_threads = count_dir("/proc/self/task");
        conns = broker_connections();
    }
    int64_t t1 = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    printf("MEASURE_END\n");
    fflush(stdout);
    for (int i = 0; i < T; i++) {
        pthread_join(workers[i].th, NULL);
    }
    if (opt.shared) {
        atomic_store(&poller_stop, 1);
        pthread_join(poller_th, NULL);
    }

    double secs = (double)(t1 - t0) / 1e9;
    size_t nlat = 0;
    long delivered = 0, failed = 0, perrs = 0;
    for (int i = 0; i < T; i++) {
        nlat += workers[i].nlat;
        delivered += workers[i].delivered;
        failed += workers[i].failed;
        perrs += workers[i].produce_errors;
    }
    uint32_t *lat = malloc((nlat ? nlat : 1) * sizeof(*lat));
    size_t k = 0;
    for (int i = 0; i < T; i++) {
        memcpy(lat + k, workers[i].lat, workers[i].nlat * sizeof(*lat));
        k += workers[i].nlat;
    }
    qsort(lat, nlat, sizeof(*lat), cmp_u32);
    double lat_sum = 0;
    for (size_t i = 0; i < nlat; i++) {
        lat_sum += lat[i];
    }
    double cpu_user = tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime);
    double cpu_sys = tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime);
    long vcsw = ru1.ru_nvcsw - ru0.ru_nvcsw, ivcsw = ru1.ru_nivcsw - ru0.ru_nivcsw;
    long long txmsgs = 0, produce = 0, tx = 0, kerr = 0;
    for (int i = 0; i < nproducers; i++) {
        pthread_mutex_lock(&producers[i]->mu);
        txmsgs += producers[i]->st_txmsgs;
        produce += producers[i]->st_produce;
        tx += producers[i]->st_tx;
        pthread_mutex_unlock(&producers[i]->mu);
        kerr += producers[i]->errors;
    }
    double dmsgs = delivered > 0 ? (double)delivered : 1;
    printf("RESULT {\"mode\":\"%s\",\"idle\":%d,\"threads\":%d,\"inflight\":%d,\"value_bytes\":%zu,"
           "\"seconds\":%.3f,\"delivered\":%ld,\"failed\":%ld,\"produce_errors\":%ld,"
           "\"client_errors\":%lld,\"msgs_per_s\":%.1f,"
           "\"per_thread_delivered\":[",
           opt.shared ? "shared" : "per-thread", opt.idle, T, opt.inflight, vlen, secs, delivered, failed,
           perrs, kerr, (double)delivered / secs);
    for (int i = 0; i < T; i++) {
        printf("%s%ld", i ? "," : "", workers[i].delivered);
    }
    printf("],\"lat_mean_us\":%.1f,\"lat_p50_us\":%u,\"lat_p90_us\":%u,\"lat_p99_us\":%u,"
           "\"lat_p999_us\":%u,\"lat_max_us\":%u,"
           "\"cpu_user_s\":%.6f,\"cpu_sys_s\":%.6f,\"cpu_us_per_msg\":%.2f,\"cores\":%.5f,"
           "\"vcsw_per_msg\":%.3f,\"ivcsw_per_msg\":%.3f,"
           "\"producers\":%d,\"tcp_conns\":%d,\"os_threads\":%d,\"rss_kb\":%ld,\"hwm_kb\":%ld,"
           "\"stats_txmsgs\":%lld,\"stats_produce_requests\":%lld,\"stats_requests\":%lld,"
           "\"msgs_per_produce_request\":%.2f}\n",
           nlat ? lat_sum / (double)nlat : 0.0, pct(lat, nlat, 50), pct(lat, nlat, 90),
           pct(lat, nlat, 99), pct(lat, nlat, 99.9), nlat ? lat[nlat - 1] : 0, cpu_user, cpu_sys,
           (cpu_user + cpu_sys) * 1e6 / dmsgs, (cpu_user + cpu_sys) / secs,
           (double)vcsw / dmsgs, (double)ivcsw / dmsgs, nproducers, conns, os_threads, rss, hwm,
           txmsgs, produce, tx, produce > 0 ? (double)txmsgs / (double)produce : 0.0);
    fflush(stdout);
    fprintf(stderr,
            "%s T=%d W=%d: %.0f msg/s, p50 %.2f ms, p99 %.2f ms, %.1f µs CPU/msg, "
            "%d conns, %d threads, RSS %ld kB, %.1f msgs/ProduceRequest, %ld failed\n",
            opt.shared ? "shared" : "per-thread", T, opt.inflight, (double)delivered / secs,
            pct(lat, nlat, 50) / 1000.0, pct(lat, nlat, 99) / 1000.0,
            (cpu_user + cpu_sys) * 1e6 / dmsgs, conns, os_threads, rss,
            produce > 0 ? (double)txmsgs / (double)produce : 0.0, failed);

    for (int i = 0; i < nproducers; i++) {
        rd_kafka_flush(producers[i]->rk, 2000);
        if (producers[i]->mainq) {
            rd_kafka_queue_io_event_enable(producers[i]->mainq, -1, NULL, 0);
            rd_kafka_queue_destroy(producers[i]->mainq);
        }
        rd_kafka_destroy(producers[i]->rk);
    }
    for (int i = 0; i < T; i++) {
        close(workers[i].wake_fd);
        if (workers[i].wake_wr >= 0) {
            close(workers[i].wake_wr);
        }
        free(workers[i].lat);
    }
    free(lat);
    return failed || perrs ? 1 : 0;
}
