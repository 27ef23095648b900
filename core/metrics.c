#include "metrics.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "mem.h"

struct ab_metrics_global ab_metrics_g;

static const double ack_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1.0,   2.5,  5.0};
#define N_BUCKETS (sizeof(ack_buckets) / sizeof(ack_buckets[0]))

struct req_count {
    int status;
    char *action; /* NULL = none */
    char *event;
    unsigned long long count;
};

struct ab_metrics {
    pthread_mutex_t lock;
    struct req_count *reqs;
    size_t n_reqs, cap_reqs;
    unsigned long long ack_bucket[2][N_BUCKETS + 1]; /* [ok][bucket], last = +Inf */
    double ack_sum[2];
    atomic_long connections; /* this worker's open client connections */
};

static double start_time;
static pthread_once_t start_once = PTHREAD_ONCE_INIT;

/* The process start time, in seconds since the epoch: from /proc (the kernel's own
 * record), or the first ab_metrics_new() if /proc cannot tell. */
static void find_start_time(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    start_time = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
    FILE *f = fopen("/proc/self/stat", "r");
    FILE *st = fopen("/proc/stat", "r");
    char buf[1024];
    unsigned long long ticks = 0, btime = 0;
    if (f && fgets(buf, sizeof(buf), f)) {
        const char *p = strrchr(buf, ')'); /* the command may hold spaces */
        /* after ")": state is field 3; starttime is field 22 */
        for (int field = 2; p && field < 22; field++) {
            p = strchr(p + 1, ' ');
        }
        if (p) {
            ticks = strtoull(p + 1, NULL, 10);
        }
    }
    while (st && fgets(buf, sizeof(buf), st)) {
        if (strncmp(buf, "btime ", 6) == 0) {
            btime = strtoull(buf + 6, NULL, 10);
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (ticks && btime && hz > 0) {
        start_time = (double)btime + (double)ticks / (double)hz;
    }
    if (f) {
        fclose(f);
    }
    if (st) {
        fclose(st);
    }
}

struct ab_metrics *ab_metrics_new(void)
{
    pthread_once(&start_once, find_start_time);
    struct ab_metrics *m = ab_calloc(1, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    return m;
}

void ab_metrics_free(struct ab_metrics *m)
{
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; i < m->n_reqs; i++) {
        free(m->reqs[i].action);
        free(m->reqs[i].event);
    }
    free(m->reqs);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

static int same(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* Label sets are few (status x action x event), so a linear scan beats hashing here;
 * the table is capped so that unexpected label values cannot grow it without bound. */
#define MAX_LABEL_SETS 2048

/* Add n to the (status, action, event) entry; the caller holds m->lock or owns m. At the
 * cap, a new label set is counted as action="other", event="other" (one per status, and
 * statuses are few) and in almabridge_metrics_label_overflow_total, so the table stays
 * bounded and the overflow is visible. Returns 1 when the count went to "other". */
static int count_add(struct ab_metrics *m, int status, const char *action, const char *event,
                     unsigned long long n)
{
    int other = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < m->n_reqs; i++) {
            struct req_count *r = &m->reqs[i];
            if (r->status == status && same(r->action, action) && same(r->event, event)) {
                r->count += n;
                return other;
            }
        }
        if (m->n_reqs < MAX_LABEL_SETS || other) {
            break;
        }
        action = event = "other";
        other = 1;
    }
    if (m->n_reqs == m->cap_reqs) {
        m->cap_reqs = m->cap_reqs ? m->cap_reqs * 2 : 32;
        m->reqs = ab_realloc(m->reqs, m->cap_reqs * sizeof(*m->reqs));
    }
    m->reqs[m->n_reqs++] = (struct req_count){status, ab_strdup(action), ab_strdup(event), n};
    return other;
}

void ab_metrics_request(struct ab_metrics *m, int status, const char *action, const char *event)
{
    pthread_mutex_lock(&m->lock);
    int other = count_add(m, status, action, event, 1);
    pthread_mutex_unlock(&m->lock);
    if (other) {
        atomic_fetch_add(&ab_metrics_g.label_overflow, 1);
    }
}

long ab_metrics_connections(struct ab_metrics *m, long delta)
{
    return atomic_fetch_add(&m->connections, delta) + delta;
}

void ab_metrics_ack(struct ab_metrics *m, double seconds, int ok)
{
    ok = ok ? 1 : 0;
    size_t b = 0;
    while (b < N_BUCKETS && seconds > ack_buckets[b]) {
        b++;
    }
    pthread_mutex_lock(&m->lock);
    m->ack_bucket[ok][b]++;
    m->ack_sum[ok] += seconds;
    pthread_mutex_unlock(&m->lock);
}

struct sb {
    char *s;
    size_t len, cap;
};

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(n > 0 ? n : 0) + 256;
        b->s = ab_realloc(b->s, b->cap);
    }
}

/* Label values are escaped per the text format: backslash, quote and newline. */
static void sb_label(struct sb *b, const char *name, const char *v, int first)
{
    sb_printf(b, "%s%s=\"", first ? "" : ",", name);
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"') {
            sb_printf(b, "\\%c", *v);
        } else if (*v == '\n') {
            sb_printf(b, "\\n");
        } else {
            sb_printf(b, "%c", *v);
        }
    }
    sb_printf(b, "\"");
}

static void render_requests(struct sb *b, struct ab_metrics *const *t, size_t n)
{
    /* Merge the per-thread tables into one (status, action, event) list. */
    struct ab_metrics *all = ab_metrics_new();
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&t[i]->lock);
        for (size_t j = 0; j < t[i]->n_reqs; j++) {
            struct req_count *r = &t[i]->reqs[j];
            count_add(all, r->status, r->action, r->event, r->count);
        }
        pthread_mutex_unlock(&t[i]->lock);
    }
    sb_printf(b, "# HELP almabridge_requests_total HTTP requests answered, by status, "
                 "webhook action and event.\n# TYPE almabridge_requests_total counter\n");
    for (size_t j = 0; j < all->n_reqs; j++) {
        struct req_count *r = &all->reqs[j];
        sb_printf(b, "almabridge_requests_total{status=\"%d\"", r->status);
        sb_label(b, "action", r->action ? r->action : "", 0);
        sb_label(b, "event", r->event ? r->event : "", 0);
        sb_printf(b, "} %llu\n", r->count);
    }
    sb_printf(b, "# HELP almabridge_events_total Webhooks acknowledged by the sink, by action "
                 "and event.\n# TYPE almabridge_events_total counter\n");
    for (size_t j = 0; j < all->n_reqs; j++) {
        struct req_count *r = &all->reqs[j];
        if (r->status == 200 && r->action) {
            sb_printf(b, "almabridge_events_total{");
            sb_label(b, "action", r->action, 1);
            sb_label(b, "event", r->event ? r->event : "", 0);
            sb_printf(b, "} %llu\n", r->count);
        }
    }
    ab_metrics_free(all);
}

static void render_histogram(struct sb *b, struct ab_metrics *const *t, size_t n)
{
    unsigned long long buckets[2][N_BUCKETS + 1] = {{0}};
    double sum[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&t[i]->lock);
        for (int ok = 0; ok < 2; ok++) {
            for (size_t k = 0; k <= N_BUCKETS; k++) {
                buckets[ok][k] += t[i]->ack_bucket[ok][k];
            }
            sum[ok] += t[i]->ack_sum[ok];
        }
        pthread_mutex_unlock(&t[i]->lock);
    }
    sb_printf(b, "# HELP almabridge_sink_ack_seconds Time from submit to the sink's answer.\n"
                 "# TYPE almabridge_sink_ack_seconds histogram\n");
    for (int ok = 1; ok >= 0; ok--) {
        const char *res = ok ? "ok" : "error";
        unsigned long long cum = 0;
        for (size_t k = 0; k <= N_BUCKETS; k++) {
            cum += buckets[ok][k];
            if (k < N_BUCKETS) {
                sb_printf(b, "almabridge_sink_ack_seconds_bucket{result=\"%s\",le=\"%g\"} %llu\n",
                          res, ack_buckets[k], cum);
            } else {
                sb_printf(b, "almabridge_sink_ack_seconds_bucket{result=\"%s\",le=\"+Inf\"} %llu\n",
                          res, cum);
            }
        }
        sb_printf(b, "almabridge_sink_ack_seconds_sum{result=\"%s\"} %.6f\n", res, sum[ok]);
        sb_printf(b, "almabridge_sink_ack_seconds_count{result=\"%s\"} %llu\n", res, cum);
    }
}

static void gauge(struct sb *b, const char *name, const char *type, const char *help, long v)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %ld\n", name, help, name, type, name, v);
}

static char *(*sources[4])(void);

void ab_metrics_add_source(char *(*fn)(void))
{
    for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]); i++) {
        if (sources[i] == NULL || sources[i] == fn) {
            sources[i] = fn;
            return;
        }
    }
}

/* The standard process_* metrics of Prometheus client libraries, from getrusage and /proc. */
static void render_process(struct sb *b)
{
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
              (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    }
    unsigned long long vsize = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &vsize, &rss) != 2) {
            vsize = rss = 0;
        }
        fclose(f);
    }
    long page = sysconf(_SC_PAGESIZE);
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            fds += e->d_name[0] != '.';
        }
        closedir(d);
        fds--; /* the directory's own descriptor */
    }
    struct rlimit rl;
    long max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (long)rl.rlim_cur : -1;
    sb_printf(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
                 "seconds.\n# TYPE process_cpu_seconds_total counter\n"
                 "process_cpu_seconds_total %.3f\n", cpu);
    sb_printf(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                 "# TYPE process_resident_memory_bytes gauge\n"
                 "process_resident_memory_bytes %llu\n", rss * (unsigned long long)page);
    sb_printf(b, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                 "# TYPE process_virtual_memory_bytes gauge\n"
                 "process_virtual_memory_bytes %llu\n", vsize * (unsigned long long)page);
    gauge(b, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
    gauge(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds);
    sb_printf(b, "# HELP process_start_time_seconds Start time of the process since unix "
                 "epoch in seconds.\n# TYPE process_start_time_seconds gauge\n"
                 "process_start_time_seconds %.2f\n", start_time);
}

char *ab_metrics_render(struct ab_metrics *const *tables, size_t n, const char *sink_name)
{
    struct sb b = {ab_malloc(4096), 0, 4096};
    render_requests(&b, tables, n);
    render_histogram(&b, tables, n);
    struct ab_metrics_global *g = &ab_metrics_g;
    gauge(&b, "almabridge_requests_in_flight", "gauge", "Webhooks waiting on the sink.",
          atomic_load(&g->inflight));
    gauge(&b, "almabridge_connections", "gauge", "Open client connections.",
          atomic_load(&g->connections));
    sb_printf(&b, "# HELP almabridge_worker_connections Open client connections per worker "
                  "thread.\n# TYPE almabridge_worker_connections gauge\n");
    for (size_t i = 0; i < n; i++) {
        sb_printf(&b, "almabridge_worker_connections{worker=\"%zu\"} %ld\n", i,
                  atomic_load(&tables[i]->connections));
    }
    gauge(&b, "almabridge_tls_handshake_failures_total", "counter", "Failed TLS handshakes.",
          atomic_load(&g->tls_handshake_failures));
    gauge(&b, "almabridge_reloads_total", "counter", "Successful SIGHUP reloads.",
          atomic_load(&g->reloads));
    gauge(&b, "almabridge_reload_failures_total", "counter", "Failed SIGHUP reloads.",
          atomic_load(&g->reload_failures));
    gauge(&b, "almabridge_draining", "gauge", "1 while shutting down.", atomic_load(&g->draining));
    sb_printf(&b, "# HELP almabridge_sink_ready Worker sink instances that can take writes.\n"
                  "# TYPE almabridge_sink_ready gauge\n");
    sb_printf(&b, "almabridge_sink_ready{sink=\"%s\"} %ld\n", sink_name,
              atomic_load(&g->sink_ready));
    gauge(&b, "almabridge_workers", "gauge", "Worker threads.", atomic_load(&g->workers));
    gauge(&b, "almabridge_max_connections", "gauge",
          "The connection limit in effect (--max-connections capped by the open-file limit).",
          atomic_load(&g->max_connections));
    gauge(&b, "almabridge_connections_evicted_total", "counter",
          "Idle or incomplete connections closed at --max-connections to make room.",
          atomic_load(&g->evicted));
    gauge(&b, "almabridge_dead_letters_total", "counter",
          "Signed requests whose body could not become an event, stored raw in the dead "
          "letter and answered 200.",
          atomic_load(&g->dead_letters));
    gauge(&b, "almabridge_dead_letter_failures_total", "counter",
          "Dead-letter writes that failed (answered 503, Alma retries).",
          atomic_load(&g->dead_letter_failures));
    gauge(&b, "almabridge_buffered_bytes", "gauge",
          "Bytes of request bodies held in memory (limit: --max-buffered).",
          atomic_load(&g->buffered));
    gauge(&b, "almabridge_request_timeouts_total", "counter",
          "Connections closed because a request was not complete within --read-timeout.",
          atomic_load(&g->request_timeouts));
    gauge(&b, "almabridge_accept_pauses_total", "counter",
          "accept() failures (out of descriptors or memory) that paused accepting.",
          atomic_load(&g->accept_pauses));
    gauge(&b, "almabridge_metrics_label_overflow_total", "counter",
          "Requests counted under action=\"other\" because the label table was full.",
          atomic_load(&g->label_overflow));
    sb_printf(&b, "# HELP almabridge_build_info The running version.\n"
                  "# TYPE almabridge_build_info gauge\n"
                  "almabridge_build_info{version=\"%s\"} 1\n", AB_VERSION);
    render_process(&b);
    for (size_t i = 0; i < sizeof(sources) / sizeof(sources[0]) && sources[i]; i++) {
        char *text = sources[i]();
        sb_printf(&b, "%s", text);
        free(text);
    }
    return b.s;
}
