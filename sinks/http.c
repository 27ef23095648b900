/* The HTTP sink: each event is one POST to --http-url per the CloudEvents HTTP protocol
 * binding 1.0, acknowledged (200 to Alma) only after the target answered 2xx.
 *
 *   binary (default): ce-<attribute> headers (values percent-encoded as the binding says),
 *                     Content-Type = datacontenttype, body = the event's data as is;
 *   structured:       Content-Type: application/cloudevents+json; charset=UTF-8, body = the
 *                     CloudEvent JSON, no ce- headers;
 *   batched:          Content-Type: application/cloudevents-batch+json; charset=UTF-8, body =
 *                     a JSON array of the events the worker was handed in one loop
 *                     iteration (hs->filling, sent by flush_ev once that iteration's
 *                     callbacks ran; while --http-max-inflight POSTs are out, they keep
 *                     filling, up to --http-batch-max events). A batch's answer is each of
 *                     its events' answer, except a permanent 4xx: then each event is sent
 *                     again alone (split()), so that only the one refused goes to the dead
 *                     letter.
 *
 * The answer decides (docs/HTTP_SINK.md):
 *   2xx                                  OK (200 to Alma)
 *   5xx, 429, 408, 1xx/3xx, a transport
 *   error (refused, reset, TLS), timeout AB_SINK_ERROR: 503 to Alma, or the spool when on
 *   any other 4xx                        permanent for this event: one fsync'd JSON line in
 *                                        --dead-letter-file, then OK (200); counted, logged
 *                                        with the id and the status, never the body
 *
 * libcurl's multi interface, driven by the worker's libevent loop (libcurl's hiperfifo
 * example): CURLMOPT_SOCKETFUNCTION keeps one libevent event per socket libcurl watches,
 * CURLMOPT_TIMERFUNCTION one timer; both call curl_multi_socket_action() and then read the
 * finished transfers. One multi handle per worker: its connection cache keeps the
 * connections to the target alive between requests (up to --http-max-inflight of them), and
 * finished easy handles are kept for the next request. The event line is read by a small
 * scanner of its top-level members (no tree, nothing re-printed), and a request's header
 * lines and list nodes are one allocation, chained to the instance's static headers. At
 * --http-max-inflight requests in flight submit() refuses (503 at once).
 *
 * Deadline: the pending list's (--ack-timeout). When it expires an entry, on_expire()
 * aborts the transfer (libcurl's own timeout is only a backstop, a second later).
 *
 * Readiness follows the target: a transport error, a timeout, a 5xx or a 429 makes ready()
 * 0 (logged once); while it is 0 a probe (HEAD of the URL's origin, where any HTTP answer
 * but 500/502/503/504/429 counts; or GET --http-health-url, which must answer 2xx) runs
 * every PROBE_MS, since a load balancer stops sending when /readyz is 503. The next 2xx/4xx
 * answer or a probe that succeeds makes it 1. An instance starts with a probe and is ready
 * once it (or a request) got through.
 *
 * The dead-letter writer (dl_*) is deliberately small and self-contained, to be unified
 * with the general dead letter of the other sinks later.
 *
 * Ownership: a transfer (struct xfer) holds its pending entry and is freed by the code that
 * removes its easy handle from the multi handle: the finished-transfer loop, on_expire()
 * or close(); never from inside a libcurl callback.
 *
 * Threads: global_init/global_free on the start-up thread, everything else on the loop
 * thread that opened the instance. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <event2/event.h>

#include "config.h"
#include "event.h"
#include "http.h"
#include "log.h"
#include "mem.h"
#include "metrics.h"
#include "normalise.h"
#include "pending.h"
#include "route.h"

#define PROBE_MS 1000
#define RESP_KEEP 512 /* bytes of a refusing answer kept for the dead letter */
#define STRUCTURED_TYPE "Content-Type: application/cloudevents+json; charset=UTF-8"
#define BATCH_TYPE "Content-Type: application/cloudevents-batch+json; charset=UTF-8"
#define BATCH_BYTES (1024 * 1024) /* a batch's body grows past this only for one event */

/* ---- options ------------------------------------------------------------------------- */

/* "Name: value": a token name, no CR/LF anywhere; not a header the sink sets itself. */
static int check_header(const char *v, char *why, size_t whylen)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    const char *colon = strchr(v, ':');
    if (colon == NULL || colon == v) {
        snprintf(why, whylen, "is not \"Name: value\"");
        return -1;
    }
    for (const char *p = v; p < colon; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || strchr(tchar, *p))) {
            snprintf(why, whylen, "has a header name with a character HTTP does not allow");
            return -1;
        }
    }
    if (strpbrk(v, "\r\n")) {
        snprintf(why, whylen, "holds a line break");
        return -1;
    }
    size_t n = (size_t)(colon - v);
    static const char *const own[] = {"content-type", "content-length", "host", "expect",
                                      "transfer-encoding", "authorization"};
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
        if (strlen(own[i]) == n && strncasecmp(v, own[i], n) == 0) {
            snprintf(why, whylen, "sets %.*s, which the sink sets itself%s", (int)n, v,
                     i == 5 ? " (use --http-auth-file)" : "");
            return -1;
        }
    }
    if (n >= 3 && strncasecmp(v, "ce-", 3) == 0) {
        snprintf(why, whylen, "sets a ce- header, which the CloudEvents binding owns");
        return -1;
    }
    return 0;
}

#define OFF(field) offsetof(struct ab_http_conf, field)
/* clang-format off */
static const struct ab_option http_options[] = {
    {.name = "http-url", .type = AB_OPT_STRING, .off = OFF(url), .mask = AB_MASK_URL_PASSWORD,
     .group = "HTTP sink", .metavar = "URL",
     .help = "the target of --sink http: http:// or https:// URL each event is POSTed to; "
             "may hold the --route placeholders, e.g. https://gw/alma/{institution}/{action}"},
    {.name = "http-ca-file", .type = AB_OPT_STRING, .off = OFF(ca_file), .group = "HTTP sink",
     .metavar = "FILE",
     .help = "CA certificates (PEM) to verify the target with, instead of the system's; the "
             "certificate is always verified"},
    {.name = "http-cert", .type = AB_OPT_STRING, .off = OFF(cert), .group = "HTTP sink",
     .metavar = "FILE", .help = "client certificate (PEM) for the target, with --http-key"},
    {.name = "http-key", .type = AB_OPT_STRING, .off = OFF(key), .group = "HTTP sink",
     .metavar = "FILE", .help = "private key (PEM) of --http-cert"},
    {.name = "http-auth-file", .type = AB_OPT_STRING, .off = OFF(auth_file), .group = "HTTP sink",
     .metavar = "FILE",
     .help = "file holding the Authorization header's value (e.g. \"Bearer ...\"); never "
             "logged"},
    {.name = "http-header", .type = AB_OPT_LIST, .off = OFF(headers), .check = check_header,
     .mask = AB_MASK_HEADER_VALUE, .group = "HTTP sink", .metavar = "\"NAME: VALUE\"",
     .help = "extra header on every POST, repeatable; values are masked in output"},
    {.name = "http-max-inflight", .type = AB_OPT_LONG, .def = "64", .min = 1, .max = 10000,
     .off = OFF(max_inflight), .group = "HTTP sink", .metavar = "N",
     .help = "requests in flight per worker (also its kept-alive connections); more are "
             "answered 503 at once"},
    {.name = "http-batch-max", .type = AB_OPT_LONG, .def = "64", .min = 1, .max = 10000,
     .off = OFF(batch_max), .group = "HTTP sink", .metavar = "N",
     .help = "--content-mode batched: at most N events per POST (and about 1 MiB of body)"},
    {.name = "http-health-url", .type = AB_OPT_STRING, .off = OFF(health_url), .group = "HTTP sink",
     .metavar = "URL",
     .help = "GET while the target is unhealthy, must answer 2xx (default: HEAD of the "
             "URL's origin, any answer but 500, 502, 503, 504 or 429)"},
    {.name = "dead-letter-file", .type = AB_OPT_STRING,
     .def = "almabridge-dead-letter.jsonl", .off = OFF(dead_letter_file), .group = "HTTP sink",
     .metavar = "FILE",
     .help = "events the target refused for good (4xx other than 408/429), one fsync'd JSON "
             "line each, before Alma gets 200"},
};
/* clang-format on */
static const struct ab_optset http_optset = AB_OPTSET(http_options, struct ab_http_conf);

/* ---- shared state and metrics -------------------------------------------------------- */

/* What every instance shares; immutable after global_init except the dead-letter file,
 * whose writes are serialised by dl_mu. */
struct http_shared {
    int structured;
    int batched;                /* --content-mode batched */
    long batch_max;
    char *url;                  /* the URL when it has no placeholder */
    struct ab_route *url_route; /* else the template */
    char *target;               /* scheme://host[:port], for messages (no user-info) */
    char *probe_url;
    int probe_get;              /* --http-health-url: GET, 2xx wanted */
    /* The proxy for http:// and https:// URLs and the hosts that bypass it, read from the
     * environment once (env_proxy()); "" for none. Set on every easy handle, so that
     * libcurl does not read the environment again for every request. */
    char *proxy[2], *noproxy;
    char **headers;             /* "Name: value" lines added to every POST */
    size_t n_headers;
    const struct ab_http_conf *conf;
    long timeout_ms;
    long max_inflight;
    char *dl_path;
    int dl_fd;
    pthread_mutex_t dl_mu;
};

static atomic_long m_ok, m_transient, m_timeout, m_dead, m_dead_fail, m_refused, m_inflight,
    m_posts;
static struct http_shared *metrics_sh;

static char *render_metrics(void)
{
    if (metrics_sh == NULL) {
        return ab_strdup("");
    }
    return ab_asprintf(
        "# HELP almabridge_http_requests_total Events POSTed to the HTTP target by the outcome "
        "of their POST: ok (2xx), transient (5xx, 429, 408, 1xx/3xx, transport error; answered "
        "503), timeout (no answer within --ack-timeout), dead_letter (other 4xx, stored in "
        "--dead-letter-file).\n"
        "# TYPE almabridge_http_requests_total counter\n"
        "almabridge_http_requests_total{outcome=\"ok\"} %ld\n"
        "almabridge_http_requests_total{outcome=\"transient\"} %ld\n"
        "almabridge_http_requests_total{outcome=\"timeout\"} %ld\n"
        "almabridge_http_requests_total{outcome=\"dead_letter\"} %ld\n"
        "# HELP almabridge_http_dead_letter_failures_total Events the target refused for good "
        "that could not be stored in the dead-letter file (answered 503).\n"
        "# TYPE almabridge_http_dead_letter_failures_total counter\n"
        "almabridge_http_dead_letter_failures_total %ld\n"
        "# HELP almabridge_http_refused_total Events refused (503) at --http-max-inflight.\n"
        "# TYPE almabridge_http_refused_total counter\nalmabridge_http_refused_total %ld\n"
        "# HELP almabridge_http_inflight POSTs to the HTTP target in flight.\n"
        "# TYPE almabridge_http_inflight gauge\nalmabridge_http_inflight %ld\n"
        "# HELP almabridge_http_posts_total POSTs of events sent (in batched mode one carries "
        "several).\n"
        "# TYPE almabridge_http_posts_total counter\nalmabridge_http_posts_total %ld\n",
        atomic_load(&m_ok), atomic_load(&m_transient), atomic_load(&m_timeout),
        atomic_load(&m_dead), atomic_load(&m_dead_fail), atomic_load(&m_refused),
        atomic_load(&m_inflight), atomic_load(&m_posts));
}

/* ---- the dead letter: self-contained, to be unified with the general one ------------- */

/* Open (create) path for appending and make its directory entry durable. check_only: only
 * check that it could be. Returns the descriptor (or 0 for check_only), -1 with errstr. */
static int dl_open(const char *path, int check_only, char *errstr, size_t errlen)
{
    char *dir = ab_strdup(path);
    char *slash = strrchr(dir, '/');
    const char *d = slash == NULL ? "." : slash == dir ? "/" : (*slash = '\0', dir);
    int fd = -1;
    if (check_only) {
        fd = access(path, W_OK) == 0 || (errno == ENOENT && access(d, W_OK) == 0) ? 0 : -1;
    } else if ((fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) >= 0) {
        int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    if (fd < 0) {
        snprintf(errstr, errlen, "--dead-letter-file %s: %s", path, strerror(errno));
    }
    free(dir);
    return fd;
}

/* Append one record (the event JSON as is, with why it is there) and fdatasync it. Any
 * worker's loop thread; a dead letter is rare, so the sync runs right here. Returns 0, or
 * -1 with the reason in err. */
static int dl_write(struct http_shared *sh, const char *event_json, const char *id, long status,
                    const char *response, char *err, size_t errlen)
{
    char now[32];
    time_t t = time(NULL);
    struct tm tm;
    strftime(now, sizeof(now), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "time", now);
    cJSON_AddStringToObject(o, "sink", "http");
    cJSON_AddStringToObject(o, "target", sh->target);
    cJSON_AddNumberToObject(o, "status", (double)status);
    cJSON_AddStringToObject(o, "id", id ? id : "");
    cJSON_AddStringToObject(o, "response", response);
    cJSON_AddItemToObject(o, "event", cJSON_CreateRaw(event_json));
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    size_t len = strlen(line);
    line[len] = '\n'; /* cJSON allocated the NUL's byte: the newline takes it */
    int rc = 0;
    pthread_mutex_lock(&sh->dl_mu);
    for (size_t off = 0; off < len + 1 && rc == 0;) {
        ssize_t w = write(sh->dl_fd, line + off, len + 1 - off);
        if (w < 0 && errno != EINTR) {
            rc = -1;
        }
        off += w > 0 ? (size_t)w : 0;
    }
    if (rc == 0 && fdatasync(sh->dl_fd) != 0) {
        rc = -1;
    }
    if (rc != 0) {
        snprintf(err, errlen, "cannot write the dead-letter file %s: %s", sh->dl_path,
                 strerror(errno));
    }
    pthread_mutex_unlock(&sh->dl_mu);
    free(line);
    return rc;
}

/* ---- global_init --------------------------------------------------------------------- */

static void shared_free(struct http_shared *sh)
{
    if (sh == NULL) {
        return;
    }
    if (metrics_sh == sh) {
        metrics_sh = NULL;
    }
    free(sh->url);
    ab_route_free(sh->url_route);
    free(sh->target);
    free(sh->probe_url);
    free(sh->proxy[0]);
    free(sh->proxy[1]);
    free(sh->noproxy);
    for (size_t i = 0; i < sh->n_headers; i++) {
        if (strncasecmp(sh->headers[i], "Authorization:", 14) == 0) {
            memset(sh->headers[i], 0, strlen(sh->headers[i]));
        }
        free(sh->headers[i]);
    }
    free(sh->headers);
    if (sh->dl_fd > 0) {
        close(sh->dl_fd);
    }
    free(sh->dl_path);
    pthread_mutex_destroy(&sh->dl_mu);
    free(sh);
}

static void add_header(struct http_shared *sh, char *line)
{
    sh->headers = ab_realloc(sh->headers, (sh->n_headers + 1) * sizeof(*sh->headers));
    sh->headers[sh->n_headers++] = line;
}

/* The Authorization header from the first line of path, or NULL with errstr (never the
 * file's content). */
static char *read_auth(const char *path, char *errstr, size_t errlen)
{
    char buf[8192];
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        snprintf(errstr, errlen, "--http-auth-file %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    int big = !feof(f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && strchr(" \t\r\n", buf[n - 1])) {
        buf[--n] = '\0';
    }
    char *out = NULL;
    if (big) {
        snprintf(errstr, errlen, "--http-auth-file %s: over %zu bytes", path, sizeof(buf) - 1);
    } else if (n == 0 || strpbrk(buf, "\r\n") || strlen(buf) != n) {
        snprintf(errstr, errlen, "--http-auth-file %s: %s", path,
                 n == 0 ? "empty" : "must hold the header value on one line");
    } else {
        out = ab_asprintf("Authorization: %s", buf);
    }
    memset(buf, 0, sizeof(buf));
    return out;
}

/* Check url (the template expanded for a sample event): http(s), a host. Sets the target
 * ("scheme://host[:port]") and the default probe URL. Returns 0 or -1 with errstr. */
static int check_url(struct http_shared *sh, const char *url, char *errstr, size_t errlen)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = -1;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        snprintf(errstr, errlen, "--http-url: not a URL with a host (http://host[:port]/path)");
    } else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0) {
        snprintf(errstr, errlen, "--http-url: the scheme must be http or https, not %s", scheme);
    } else {
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        sh->target = ab_asprintf("%s://%s%s%s", scheme, host, port ? ":" : "", port ? port : "");
        sh->probe_url = ab_asprintf("%s/", sh->target);
        rc = 0;
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

/* The first of the variables names that is set and not empty, copied; "" when none is. */
static char *first_env(const char *const *names)
{
    for (; *names; names++) {
        const char *v = getenv(*names);
        if (v && *v) {
            return ab_strdup(v);
        }
    }
    return ab_strdup("");
}

/* The proxy settings libcurl would read from the environment for each request (its
 * detect_proxy(): http_proxy, only in lower case, for http://; https_proxy or HTTPS_PROXY
 * for https://; else all_proxy or ALL_PROXY; no_proxy or NO_PROXY), read once. Start-up
 * thread. */
static void env_proxy(struct http_shared *sh)
{
    static const char *const http[] = {"http_proxy", "all_proxy", "ALL_PROXY", NULL};
    static const char *const https[] = {"https_proxy", "HTTPS_PROXY", "all_proxy",
                                        "ALL_PROXY", NULL};
    static const char *const no[] = {"no_proxy", "NO_PROXY", NULL};
    sh->proxy[0] = first_env(http);
    sh->proxy[1] = first_env(https);
    sh->noproxy = first_env(no);
}

/* The index into sh->proxy for url: 1 for https://, else 0. */
static int proxy_of(const char *url)
{
    return strncasecmp(url, "https:", 6) == 0;
}

/* --http-url (a template is checked expanded for a sample event) and --http-health-url.
 * Returns 0 or -1 with errstr. */
static int urls_init(struct http_shared *sh, const struct ab_http_conf *c, char *errstr,
                     size_t errlen)
{
    char rerr[200];
    if (c->url == NULL || c->url[0] == '\0') {
        snprintf(errstr, errlen, "--sink http needs --http-url URL");
        return -1;
    }
    if (strchr(c->url, '{') == NULL) {
        sh->url = ab_strdup(c->url);
    } else if ((sh->url_route = ab_route_compile(c->url, rerr, sizeof(rerr))) == NULL) {
        snprintf(errstr, errlen, "--http-url: %s", rerr);
        return -1;
    }
    static char id[] = "1", action[] = "loan";
    struct ab_event sample = {.id = id, .action = action};
    char *u = sh->url ? ab_strdup(sh->url) : ab_route_expand(sh->url_route, &sample);
    int rc = check_url(sh, u, errstr, errlen);
    free(u);
    if (rc == 0 && c->health_url) {
        struct http_shared probe = {0};
        if ((rc = check_url(&probe, c->health_url, errstr, errlen)) != 0) {
            snprintf(errstr, errlen, "--http-health-url: not an http(s) URL with a host");
        }
        free(probe.target);
        free(probe.probe_url);
        free(sh->probe_url);
        sh->probe_url = ab_strdup(c->health_url);
        sh->probe_get = 1;
    }
    return rc;
}

/* The TLS files readable, the headers every request carries. Returns 0 or -1 with errstr. */
static int files_and_headers_init(struct http_shared *sh, const struct ab_http_conf *c,
                                  char *errstr, size_t errlen)
{
    if ((c->cert == NULL) != (c->key == NULL)) {
        snprintf(errstr, errlen, "--http-cert and --http-key go together");
        return -1;
    }
    const char *files[] = {c->ca_file, c->cert, c->key};
    const char *names[] = {"--http-ca-file", "--http-cert", "--http-key"};
    for (size_t i = 0; i < 3; i++) {
        if (files[i] && access(files[i], R_OK) != 0) {
            snprintf(errstr, errlen, "%s %s: %s", names[i], files[i], strerror(errno));
            return -1;
        }
    }
    /* Static lines go to libcurl as they are. The User-Agent is one of them because libcurl
     * would format CURLOPT_USERAGENT anew for every request (twice); "Accept:" drops the
     * Accept header for any type libcurl adds (a header that tells nothing), unless
     * --http-header gives one. */
    int own_agent = 1;
    for (size_t i = 0; i < c->headers.n; i++) {
        own_agent &= strncasecmp(c->headers.v[i], "User-Agent:", 11) != 0;
    }
    if (own_agent) {
        add_header(sh, ab_strdup("User-Agent: almabridge/" AB_VERSION));
    }
    add_header(sh, ab_strdup("Accept:"));
    add_header(sh, ab_strdup("Expect:")); /* no 100-continue round trip */
    if (sh->structured || sh->batched) {
        add_header(sh, ab_strdup(sh->batched ? BATCH_TYPE : STRUCTURED_TYPE));
    }
    if (c->auth_file) {
        char *auth = read_auth(c->auth_file, errstr, errlen);
        if (auth == NULL) {
            return -1;
        }
        add_header(sh, auth);
    }
    for (size_t i = 0; i < c->headers.n; i++) {
        add_header(sh, ab_strdup(c->headers.v[i]));
    }
    return 0;
}

/* Validate the options and build what the instances share (also for --check-config,
 * which opens no file). Start-up thread, before the workers. */
static int http_global_init(const struct ab_sink_conf *sc, void **shared, char *errstr,
                            size_t errlen)
{
    const struct ab_http_conf *c = sc->opts;
    struct http_shared *sh = ab_calloc(1, sizeof(*sh));
    pthread_mutex_init(&sh->dl_mu, NULL);
    sh->conf = c;
    sh->structured = sc->structured; /* --content-mode, the core option of every sink */
    sh->batched = sc->batched;
    sh->batch_max = c->batch_max > 0 ? c->batch_max : 1;
    sh->timeout_ms = sc->ack_timeout_ms;
    sh->max_inflight = c->max_inflight;
    sh->dl_fd = -1;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(errstr, errlen, "http: libcurl failed to initialise");
        goto fail;
    }
    env_proxy(sh);
    if (urls_init(sh, c, errstr, errlen) != 0 ||
        files_and_headers_init(sh, c, errstr, errlen) != 0) {
        goto fail;
    }
    sh->dl_path = ab_strdup(c->dead_letter_file ? c->dead_letter_file : "");
    if ((sh->dl_fd = dl_open(sh->dl_path, sc->check_only, errstr, errlen)) < 0) {
        goto fail;
    }
    if (!sc->check_only) {
        metrics_sh = sh;
        ab_metrics_add_source(render_metrics);
    }
    *shared = sh;
    return 0;
fail:
    shared_free(sh);
    return -1;
}

static void http_global_free(void *shared)
{
    shared_free(shared);
}

/* ---- the instance -------------------------------------------------------------------- */

enum xfer_kind { XF_EVENT, XF_PROBE };

struct http_sink;

/* One event a POST carries. */
struct item {
    struct ab_pending_req *req; /* held until the transfer is removed */
    char *value;                /* the CloudEvent JSON (the body in structured mode) */
    size_t len;
    char *id;
};

/* One request on the wire; in batched mode first a batch that fills (hs->filling). */
struct xfer {
    TAILQ_ENTRY(xfer) link;
    enum xfer_kind kind;
    CURL *easy;
    struct curl_slist *headers; /* the request's own lines (hdr_mem), then the static ones */
    void *hdr_mem;
    struct item one;            /* binary and structured mode: the event */
    struct item *items;         /* XF_EVENT: &one, or the batch's n events */
    size_t n, cap;
    size_t bytes;               /* batched: the body's length so far */
    int alone;                  /* batched: an event of a refused batch, sent on its own */
    char *url;                  /* batched: the expanded --http-url template, else NULL */
    char *body;                 /* binary mode: the data (points into one.value); batched:
                                 * body_mem */
    size_t body_len;
    char *body_mem;             /* batched: the JSON array of the events */
    char resp[RESP_KEEP + 1]; /* the start of the answer's body */
    size_t resp_len;
    char errbuf[CURL_ERROR_SIZE];
};

struct sockinfo {
    TAILQ_ENTRY(sockinfo) link;
    struct event *ev;
};

struct http_sink {
    struct ab_sink base;
    const struct http_shared *sh;
    struct event_base *evbase;
    CURLM *multi;
    CURLU *curlu; /* --http-url parsed once, when it is no template (CURLOPT_CURLU) */
    struct curl_slist *static_headers; /* Expect:, auth, --http-header... (every request) */
    struct event *timer_ev; /* libcurl's timeout */
    struct event *probe_ev;
    struct ab_pending *pending;
    TAILQ_HEAD(, xfer) active;
    TAILQ_HEAD(, xfer) filling; /* batched: batches not sent yet, oldest first */
    long n_filling;
    struct event *flush_ev;     /* batched: sends the filling batches, after the callbacks of
                                 * the loop iteration that filled them */
    TAILQ_HEAD(, sockinfo) socks;
    long inflight; /* XF_EVENT transfers in active */
    CURL **idle;   /* finished easy handles, kept for the next POST */
    size_t n_idle;
    int closing, close_expired;
    int healthy;  /* 1: the last request or probe got through */
    int answered; /* it has been healthy once */
    int probing;  /* a probe is in flight */
    char reason[256]; /* why not healthy */
    struct ab_ratelimit rl;
};

static struct timeval ms_tv(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* ---- health -------------------------------------------------------------------------- */

static void arm_probe(struct http_sink *hs, long ms)
{
    struct timeval tv = ms_tv(ms);
    if (!hs->closing && !evtimer_pending(hs->probe_ev, NULL) && !hs->probing) {
        evtimer_add(hs->probe_ev, &tv);
    }
}

static void went_unhealthy(struct http_sink *hs, const char *reason)
{
    if (hs->healthy || strcmp(hs->reason, reason) != 0) {
        ab_log_limited(&hs->rl, AB_LOG_ERROR,
                       "http: %s: %s; /readyz reports not ready until a request or a probe "
                       "(every %d ms) gets through", hs->sh->target, reason, PROBE_MS);
    }
    hs->healthy = 0;
    snprintf(hs->reason, sizeof(hs->reason), "%s", reason);
    arm_probe(hs, PROBE_MS);
}

static void went_healthy(struct http_sink *hs)
{
    if (!hs->healthy) {
        ab_info("http: %s %s", hs->sh->target, hs->answered ? "answers again" : "answers");
    }
    hs->healthy = hs->answered = 1;
    hs->reason[0] = '\0';
    evtimer_del(hs->probe_ev);
}

/* ---- transfers ----------------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct xfer *x = userdata;
    size_t n = size * nmemb, room = RESP_KEEP - x->resp_len;
    memcpy(x->resp + x->resp_len, ptr, n < room ? n : room);
    x->resp_len += n < room ? n : room;
    x->resp[x->resp_len] = '\0';
    return n;
}

/* A kept easy handle, or a new one with the options every POST shares (all but the URL of
 * a template, the body, the headers and the transfer's own pointers, set per request). */
static CURL *easy_get(struct http_sink *hs)
{
    if (hs->n_idle > 0) {
        return hs->idle[--hs->n_idle];
    }
    const struct ab_http_conf *c = hs->sh->conf;
    CURL *e = curl_easy_init();
    if (e == NULL) {
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    /* The pending list owns the deadline; libcurl's own is only a backstop. */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, hs->sh->timeout_ms + 1000);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, hs->sh->timeout_ms);
    if (c->ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    }
    if (c->cert) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert);
        curl_easy_setopt(e, CURLOPT_SSLKEY, c->key);
    }
    curl_easy_setopt(e, CURLOPT_PROXY, hs->sh->proxy[proxy_of(hs->sh->target)]);
    curl_easy_setopt(e, CURLOPT_NOPROXY, hs->sh->noproxy);
    /* A fixed URL is set once per handle, already parsed; a template's per request. */
    if (hs->curlu) {
        curl_easy_setopt(e, CURLOPT_CURLU, hs->curlu);
    } else if (hs->sh->url) {
        curl_easy_setopt(e, CURLOPT_URL, hs->sh->url);
    }
    return e;
}

static void easy_put(struct http_sink *hs, CURL *e)
{
    if ((long)hs->n_idle >= hs->sh->max_inflight || hs->closing) {
        curl_easy_cleanup(e);
        return;
    }
    hs->idle[hs->n_idle++] = e;
}

static void xfer_free(struct http_sink *hs, struct xfer *x)
{
    if (x->easy) {
        easy_put(hs, x->easy);
    }
    free(x->hdr_mem);
    for (size_t i = 0; i < x->n; i++) {
        free(x->items[i].value);
        free(x->items[i].id);
    }
    if (x->items != &x->one) {
        free(x->items);
    }
    free(x->body_mem);
    free(x->url);
    free(x);
}

/* Complete every event of x with status, once, and let go of them. */
static void items_done(struct xfer *x, int status, const char *why)
{
    for (size_t i = 0; i < x->n; i++) {
        if (x->items[i].req) {
            ab_pending_done(x->items[i].req, status, why);
            x->items[i].req = NULL;
        }
    }
}

/* Take x off the multi handle and the active list (never from a libcurl callback). */
static void xfer_detach(struct http_sink *hs, struct xfer *x)
{
    curl_multi_remove_handle(hs->multi, x->easy);
    TAILQ_REMOVE(&hs->active, x, link);
    if (x->kind == XF_EVENT) {
        hs->inflight--;
        atomic_fetch_sub(&m_inflight, 1);
    }
}

/* Hand x to libcurl. Returns 0, or -1 (x is not attached). */
static int xfer_attach(struct http_sink *hs, struct xfer *x)
{
    x->errbuf[0] = '\0';
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, x->headers);
    if (curl_multi_add_handle(hs->multi, x->easy) != CURLM_OK) {
        return -1;
    }
    TAILQ_INSERT_TAIL(&hs->active, x, link);
    if (x->kind == XF_EVENT) {
        hs->inflight++;
        atomic_fetch_add(&m_inflight, 1);
        atomic_fetch_add(&m_posts, 1);
    }
    return 0;
}

/* For the default probe (HEAD of the origin): only what says the server or the service
 * behind it is failing counts against it; 405 or 501 to a HEAD (evhttp, many APIs) is an
 * answer. */
static int probe_says_down(long code)
{
    return code == 500 || code == 502 || code == 503 || code == 504 || code == 429;
}

/* Loop thread: the probe finished with res and HTTP status code. */
static void probe_done(struct http_sink *hs, CURLcode res, long code, const char *errbuf)
{
    char reason[256];
    hs->probing = 0;
    if (res != CURLE_OK) {
        snprintf(reason, sizeof(reason), "probe %s failed: %s", hs->sh->probe_url,
                 errbuf[0] ? errbuf : curl_easy_strerror(res));
    } else if (hs->sh->probe_get ? code / 100 != 2 : probe_says_down(code)) {
        snprintf(reason, sizeof(reason), "probe %s answered HTTP %ld", hs->sh->probe_url, code);
    } else {
        went_healthy(hs);
        return;
    }
    went_unhealthy(hs, reason);
}

/* Batched mode, loop thread: a batch refused for good (a 4xx other than 408/429) says
 * nothing of which of its events the target refused, so each event still waiting for its
 * answer is sent again in a batch of its own, ahead of the batches filling; only an event
 * refused alone goes to the dead letter. x's events are moved out. */
static void split(struct http_sink *hs, struct xfer *x, long code)
{
    ab_log_limited(&hs->rl, AB_LOG_WARN, "http: %s refused a batch of %zu events with HTTP "
                   "%ld: each is sent again on its own", hs->sh->target, x->n, code);
    for (size_t i = x->n; i-- > 0;) { /* backwards, each to the head: they keep their order */
        struct item *it = &x->items[i];
        if (it->req == NULL) {
            continue;
        }
        struct xfer *b = ab_calloc(1, sizeof(*b));
        b->kind = XF_EVENT;
        b->alone = 1;
        b->one = *it;
        b->items = &b->one;
        b->n = 1;
        b->bytes = it->len + 2;
        b->url = x->url ? ab_strdup(x->url) : NULL;
        *it = (struct item){0};
        TAILQ_INSERT_HEAD(&hs->filling, b, link);
        hs->n_filling++;
    }
    event_active(hs->flush_ev, EV_TIMEOUT, 0);
}

/* Loop thread: an event's POST (or a batch's) finished. Classifies the answer and
 * completes the entries (ignored by the pending list for one whose deadline passed
 * meanwhile). */
static void event_done(struct http_sink *hs, struct xfer *x, CURLcode res, long code)
{
    char why[300];
    const char *id = x->n > 0 && x->items[0].id ? x->items[0].id : "";
    long n = (long)x->n;
    if (res != CURLE_OK) {
        snprintf(why, sizeof(why), "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(res));
        went_unhealthy(hs, why);
        atomic_fetch_add(&m_transient, n);
        items_done(x, hs->closing ? AB_SINK_CLOSED : AB_SINK_ERROR, why);
    } else if (code / 100 == 2) {
        went_healthy(hs);
        atomic_fetch_add(&m_ok, n);
        items_done(x, AB_SINK_OK, NULL);
    } else if (code / 100 != 4 || code == 408 || code == 429) {
        snprintf(why, sizeof(why), "the target answered HTTP %ld", code);
        if (code >= 500 || code == 429) {
            went_unhealthy(hs, why);
        } else {
            ab_log_limited(&hs->rl, AB_LOG_WARN, "http: %s: event %s%s: %s (retried by Alma)",
                           hs->sh->target, id, n > 1 ? " and the rest of its batch" : "", why);
        }
        atomic_fetch_add(&m_transient, n);
        items_done(x, AB_SINK_ERROR, why);
    } else if (x->n > 1) {
        went_healthy(hs);
        split(hs, x, code);
    } else {
        /* Permanent for this event: the dead letter, then 200 (docs/HTTP_SINK.md). */
        went_healthy(hs);
        char err[300];
        struct item *it = &x->items[0];
        if (dl_write((struct http_shared *)hs->sh, it->value, it->id, code, x->resp, err,
                     sizeof(err)) == 0) {
            atomic_fetch_add(&m_dead, 1);
            ab_warn("http: %s refused event %s with HTTP %ld for good: stored in the "
                    "dead-letter file %s", hs->sh->target, it->id, code, hs->sh->dl_path);
            items_done(x, AB_SINK_OK, NULL);
        } else {
            atomic_fetch_add(&m_dead_fail, 1);
            ab_error("http: event %s refused with HTTP %ld, and %s", it->id, code, err);
            items_done(x, AB_SINK_ERROR, err);
        }
    }
}

/* Loop thread, after curl_multi_socket_action: take every finished transfer off the multi
 * handle and complete it. */
static void check_done(struct http_sink *hs)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(hs->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        CURLcode res = m->data.result;
        char *priv = NULL;
        long code = 0;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        struct xfer *x = (struct xfer *)priv;
        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        xfer_detach(hs, x); /* m is invalid from here */
        if (x->kind == XF_PROBE) {
            probe_done(hs, res, code, x->errbuf);
            curl_easy_cleanup(x->easy);
            x->easy = NULL;
        } else {
            event_done(hs, x, res, code);
        }
        xfer_free(hs, x);
    }
    if (hs->n_filling > 0) { /* batches wait for the slots this freed */
        event_active(hs->flush_ev, EV_TIMEOUT, 0);
    }
}

/* ---- libcurl on libevent (hiperfifo) ------------------------------------------------- */

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
    struct http_sink *hs = arg;
    int running;
    int action = (what & EV_READ ? CURL_CSELECT_IN : 0) | (what & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(hs->multi, fd, action, &running);
    check_done(hs);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct http_sink *hs = arg;
    int running;
    curl_multi_socket_action(hs->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(hs);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what libcurl wants (one event per socket). */
static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct http_sink *hs = userp;
    struct sockinfo *si = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (si) {
            event_free(si->ev);
            TAILQ_REMOVE(&hs->socks, si, link);
            free(si);
            curl_multi_assign(hs->multi, s, NULL);
        }
        return 0;
    }
    short kind = (short)((what & CURL_POLL_IN ? EV_READ : 0) |
                         (what & CURL_POLL_OUT ? EV_WRITE : 0) | EV_PERSIST);
    if (si == NULL) {
        si = ab_calloc(1, sizeof(*si));
        si->ev = event_new(hs->evbase, s, kind, on_sock_event, hs);
        TAILQ_INSERT_TAIL(&hs->socks, si, link);
        curl_multi_assign(hs->multi, s, si);
    } else {
        event_del(si->ev);
        event_assign(si->ev, hs->evbase, s, kind, on_sock_event, hs);
    }
    event_add(si->ev, NULL);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer; libcurl is called back from on_timer, never here. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct http_sink *hs = userp;
    if (timeout_ms < 0) {
        evtimer_del(hs->timer_ev);
    } else {
        struct timeval tv = ms_tv(timeout_ms);
        evtimer_add(hs->timer_ev, &tv);
    }
    return 0;
}

/* ---- the probe ----------------------------------------------------------------------- */

static void on_probe(evutil_socket_t fd, short what, void *arg)
{
    struct http_sink *hs = arg;
    if (hs->closing || hs->probing || hs->healthy) {
        return;
    }
    struct xfer *x = ab_calloc(1, sizeof(*x));
    x->kind = XF_PROBE;
    x->easy = easy_get(hs);
    if (x->easy == NULL) {
        free(x);
        arm_probe(hs, PROBE_MS);
        return;
    }
    curl_easy_setopt(x->easy, CURLOPT_CURLU, NULL); /* a probe handle is not kept */
    curl_easy_setopt(x->easy, CURLOPT_URL, hs->sh->probe_url);
    curl_easy_setopt(x->easy, CURLOPT_PROXY, hs->sh->proxy[proxy_of(hs->sh->probe_url)]);
    curl_easy_setopt(x->easy, hs->sh->probe_get ? CURLOPT_HTTPGET : CURLOPT_NOBODY, 1L);
    x->headers = hs->static_headers;
    if (xfer_attach(hs, x) != 0) {
        curl_easy_cleanup(x->easy);
        x->easy = NULL;
        xfer_free(hs, x);
        arm_probe(hs, PROBE_MS);
        return;
    }
    hs->probing = 1;
}

/* ---- building a POST ----------------------------------------------------------------- */

/* One top-level member of the event's JSON object: the key's bytes (without the quotes)
 * and the value's span, as they are in the line. */
struct member {
    const char *key, *val;
    size_t klen, vlen;
};
#define MAX_MEMBERS 64

/* The index after the string literal whose opening quote is s[i]. */
static size_t skip_string(const char *s, size_t i, size_t n)
{
    for (i++; i < n;) {
        const char *q = memchr(s + i, '"', n - i);
        if (q == NULL) {
            return n;
        }
        size_t bs = 0;
        while (q - bs > s + i && q[-1 - (long)bs] == '\\') {
            bs++;
        }
        i = (size_t)(q - s) + 1;
        if (bs % 2 == 0) {
            return i;
        }
    }
    return n;
}

/* The end of the JSON value starting at s[i] in the NUL-terminated, well-formed line s of
 * n bytes (core/event.c's). Inside containers it jumps from one structural character to the
 * next (strcspn), so the data is not walked byte by byte. */
static size_t skip_value(const char *s, size_t i, size_t n)
{
    int depth = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            i = skip_string(s, i, n);
            if (depth == 0) {
                return i;
            }
        } else if (c == '{' || c == '[') {
            depth++;
            i++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                return i; /* the end of the enclosing object */
            }
            i++;
            if (--depth == 0) {
                return i;
            }
        } else if (depth == 0) {
            if (strchr(", \t\r\n", c)) {
                return i;
            }
            i++;
        } else {
            size_t k = strcspn(s + i, "\"{}[]");
            i += k > 0 ? k : 1; /* 0 only at a NUL inside the line: step over it */
        }
    }
    return n;
}

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && strchr(" \t\r\n", s[i])) {
        i++;
    }
    return i;
}

static int key_is(const struct member *m, const char *name)
{
    return m->klen == strlen(name) && memcmp(m->key, name, m->klen) == 0;
}

/* The top-level members of the JSON object s[0..n) (NUL-terminated) into m (at most
 * MAX_MEMBERS), byte for byte: nothing is re-printed, so the data goes on exactly as it came
 * (a 20-digit number keeps its digits) and no tree is built. data_len > 0: the line is
 * core/event.c's and its "data" value is s[data_off..data_off + data_len), which is then
 * not walked (most of the line's bytes). Returns how many, or -1 for a line that is no
 * object. */
static int members(const char *s, size_t n, size_t data_off, size_t data_len, struct member *m)
{
    size_t i = skip_ws(s, 0, n);
    int k = 0;
    if (i >= n || s[i] != '{') {
        return -1;
    }
    for (i = skip_ws(s, i + 1, n); i < n && s[i] == '"' && k < MAX_MEMBERS; k++) {
        size_t kend = skip_value(s, i, n);
        m[k].key = s + i + 1;
        m[k].klen = kend - i - 2;
        i = skip_ws(s, kend, n);
        if (i >= n || s[i] != ':') {
            return -1;
        }
        i = skip_ws(s, i + 1, n);
        size_t vend = data_len > 0 && i == data_off && key_is(&m[k], "data")
                          ? data_off + data_len
                          : skip_value(s, i, n);
        m[k].val = s + i;
        m[k].vlen = vend - i;
        i = skip_ws(s, vend, n);
        if (i < n && s[i] == ',') {
            i = skip_ws(s, i + 1, n);
        }
    }
    return k;
}

/* The string value of m, unescaped (a new string), or NULL when it is no string. */
static char *member_string(const struct member *m)
{
    if (m->vlen < 2 || m->val[0] != '"') {
        return NULL;
    }
    if (memchr(m->val, '\\', m->vlen) == NULL) {
        return ab_strndup(m->val + 1, m->vlen - 2);
    }
    return ab_json_string_decode(m->val, m->vlen, NULL);
}

/* Append v[0..n) to w percent-encoded as the binding says (space, '"', '%' and everything
 * outside printable ASCII); returns the new end. */
static char *pct_encode(char *w, const char *v, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    /* a bit per byte that goes as it is: 0x21-0x7e but '"' (0x22) and '%' (0x25) */
    static const uint64_t plain[4] = {0xffffffda00000000u, 0x7fffffffffffffffu, 0, 0};
    const unsigned char *p = (const unsigned char *)v, *end = p + n;
    while (p < end) {
        const unsigned char *run = p; /* the bytes that go as they are, copied at once */
        while (p < end && (plain[*p >> 6] >> (*p & 63) & 1)) {
            p++;
        }
        w = (char *)memcpy(w, run, (size_t)(p - run)) + (p - run);
        if (p < end) {
            *w++ = '%';
            *w++ = hex[*p >> 4];
            *w++ = hex[*p & 15];
            p++;
        }
    }
    return w;
}

/* 1 for a CloudEvents attribute name: [a-z0-9]+ (anything else is not sent as ce-). */
static int attribute_name(const struct member *m)
{
    for (size_t i = 0; i < m->klen; i++) {
        if (!((m->key[i] >= 'a' && m->key[i] <= 'z') || (m->key[i] >= '0' && m->key[i] <= '9'))) {
            return 0;
        }
    }
    return m->klen > 0;
}

/* Binary mode: one "ce-<name>: <value>" per attribute (extensions included; strings
 * percent-encoded, numbers and booleans as written), Content-Type from datacontenttype, the
 * body = the data member's bytes. The header lines and their list nodes live in one block
 * (x->hdr_mem); the last node is linked to the instance's static headers. */
static void binary_request(struct xfer *x, const struct member *m, int n,
                           struct curl_slist *tail)
{
    size_t room = 64, nodes = 1;
    for (int k = 0; k < n; k++) {
        if (!key_is(&m[k], "data")) { /* the data is the body, not a header */
            room += 8 + m[k].klen + 3 * m[k].vlen;
            nodes++;
        }
    }
    struct curl_slist *node = ab_malloc(nodes * sizeof(*node) + room), *first = node;
    char *w = (char *)(node + nodes);
    const struct member *ctype = NULL;
    x->hdr_mem = node;
    x->body = x->one.value; /* no data member: an empty body */
    x->body_len = 0;
    for (int k = 0; k < n; k++) {
        const struct member *a = &m[k];
        char c = a->vlen ? a->val[0] : 0;
        if (key_is(a, "data")) {
            x->body = (char *)a->val; /* points into x->one.value */
            x->body_len = a->vlen;
            continue;
        }
        if (key_is(a, "datacontenttype") && c == '"') {
            ctype = a;
            continue;
        }
        if (!attribute_name(a) || c == '{' || c == '[' || c == 'n') {
            continue; /* data_base64, null, and what is no attribute */
        }
        node->data = w;
        w = (char *)memcpy(w, "ce-", 3) + 3;
        w = (char *)memcpy(w, a->key, a->klen) + a->klen;
        w = (char *)memcpy(w, ": ", 2) + 2;
        if (c != '"') {
            w = (char *)memcpy(w, a->val, a->vlen) + a->vlen;
        } else if (memchr(a->val, '\\', a->vlen) == NULL) {
            w = pct_encode(w, a->val + 1, a->vlen - 2);
        } else {
            size_t len;
            char *v = ab_json_string_decode(a->val, a->vlen, &len);
            w = pct_encode(w, v, len);
            free(v);
        }
        *w++ = '\0';
        node->next = node + 1;
        node++;
    }
    /* Content-Type = datacontenttype (JSON when absent); none without data, where
     * "Content-Type:" keeps libcurl from adding its form type to the empty POST. */
    node->data = w;
    w = (char *)memcpy(w, "Content-Type:", 13) + 13;
    if (x->body_len > 0) {
        char *ct = ctype ? member_string(ctype) : NULL;
        const char *t = ct ? ct : "application/json";
        size_t tl = strlen(t);
        *w++ = ' ';
        w = (char *)memcpy(w, t, tl) + tl;
        free(ct);
    }
    *w++ = '\0';
    node->next = tail; /* the Content-Type line is always there: the list is never empty */
    x->headers = first;
}

/* The URL for this event: the fixed one (NULL), or the template expanded from msg->event,
 * or from the attributes in the JSON when the event is not at hand (the spool forwards
 * lines). */
static char *event_url(const struct http_shared *sh, const struct ab_sink_msg *msg,
                       const struct member *m, int n)
{
    if (sh->url_route == NULL) {
        return NULL;
    }
    if (msg->event) {
        return ab_route_expand(sh->url_route, msg->event);
    }
    struct ab_event ev = {0};
    const char *names[] = {"id", "almaaction", "almaevent", "almainstitution"};
    char **slots[] = {&ev.id, &ev.action, &ev.event, &ev.institution};
    for (int k = 0; k < n; k++) {
        for (size_t i = 0; i < 4; i++) {
            if (key_is(&m[k], names[i]) && *slots[i] == NULL) {
                *slots[i] = member_string(&m[k]);
            }
        }
    }
    char *url = ab_route_expand(sh->url_route, &ev);
    for (size_t i = 0; i < 4; i++) {
        free(*slots[i]);
    }
    return url;
}

/* ---- the contract -------------------------------------------------------------------- */

/* Loop thread, from the pending list's timer: entries got no answer within --ack-timeout
 * (completed with AB_SINK_TIMEOUT already). Abort their transfers, so that the slots and
 * connections are free again, and count the target as unhealthy. */
static void on_expire(void *arg)
{
    struct http_sink *hs = arg;
    struct xfer *x, *next;
    long n = 0;
    char why[128];
    snprintf(why, sizeof(why), "no answer within %ld ms (--ack-timeout)", hs->sh->timeout_ms);
    for (x = TAILQ_FIRST(&hs->active); x; x = next) {
        next = TAILQ_NEXT(x, link);
        int expired = 0;
        for (size_t i = 0; x->kind == XF_EVENT && i < x->n && !expired; i++) {
            expired = x->items[i].req && ab_pending_is_complete(x->items[i].req);
        }
        if (expired) {
            /* A batch's events came in one loop iteration: the rest of it is due too */
            xfer_detach(hs, x);
            items_done(x, AB_SINK_TIMEOUT, why);
            n += (long)x->n;
            xfer_free(hs, x);
        }
    }
    if (n > 0) {
        atomic_fetch_add(&m_timeout, n);
        went_unhealthy(hs, why);
        if (hs->n_filling > 0) { /* batches wait for the slots this freed */
            event_active(hs->flush_ev, EV_TIMEOUT, 0);
        }
    }
}

/* Batched mode, loop thread: send the batch b as one POST (the JSON array of its events
 * still waiting for an answer; those whose deadline passed while it filled are let go
 * unsent). */
static void batch_send(struct http_sink *hs, struct xfer *b)
{
    char *w = b->body_mem = ab_malloc(b->bytes + 2);
    *w++ = '[';
    for (size_t i = 0; i < b->n; i++) {
        struct item *it = &b->items[i];
        if (it->req && ab_pending_is_complete(it->req)) {
            ab_pending_release(it->req);
            it->req = NULL;
        }
        if (it->req) {
            if (w > b->body_mem + 1) {
                *w++ = ',';
            }
            w = (char *)memcpy(w, it->value, it->len) + it->len;
        }
    }
    *w++ = ']';
    b->body = b->body_mem;
    b->body_len = (size_t)(w - b->body_mem);
    b->headers = hs->static_headers;
    if (b->body_len == 2) { /* every event of it expired */
        xfer_free(hs, b);
        return;
    }
    if ((b->easy = easy_get(hs)) != NULL) {
        if (b->url) {
            curl_easy_setopt(b->easy, CURLOPT_URL, b->url); /* libcurl copies it */
        }
        curl_easy_setopt(b->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)b->body_len);
        curl_easy_setopt(b->easy, CURLOPT_POSTFIELDS, b->body);
        if (xfer_attach(hs, b) == 0) {
            return;
        }
    }
    atomic_fetch_add(&m_transient, (long)b->n);
    items_done(b, AB_SINK_ERROR, "libcurl could not start the request");
    xfer_free(hs, b);
}

/* 1 when b goes out at once: full (--http-batch-max events, or near BATCH_BYTES), or an
 * event of a refused batch; a batch that is not full waits while a POST is out. */
static int batch_full(const struct http_sink *hs, const struct xfer *b)
{
    return b->alone || (long)b->n >= hs->sh->batch_max || b->bytes + 4096 > BATCH_BYTES;
}

/* flush_ev, loop thread: the batches filled go out, oldest first, while a POST may start
 * (--http-max-inflight): a full one at once, the others only while no POST of this worker
 * is out. So a worker that is not waiting on the target sends what it has at the end of
 * the loop iteration (no delay), and one that is lets the batch grow until the answer
 * comes (as Kafka's producer does with one request in flight), which keeps POSTs per event
 * low at every rate; a slow target still gets full batches in parallel. The rest wait for
 * check_done() or on_expire() to free a slot. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct http_sink *hs = arg;
    struct xfer *b, *next;
    for (b = TAILQ_FIRST(&hs->filling); b && hs->inflight < hs->sh->max_inflight; b = next) {
        next = TAILQ_NEXT(b, link);
        if (hs->inflight == 0 || batch_full(hs, b)) {
            TAILQ_REMOVE(&hs->filling, b, link);
            hs->n_filling--;
            batch_send(hs, b);
        }
    }
}

/* Batched mode, loop thread: msg joins the batch filling for its URL (a new one when there
 * is none, or it is full), which goes out after the callbacks of this loop iteration
 * (flush_ev). Refuses when a new batch would make more than --http-max-inflight POSTs in
 * flight and waiting. */
static int batch_submit(struct http_sink *hs, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                        void *opaque)
{
    const struct http_shared *sh = hs->sh;
    char *url = NULL;
    if (sh->url_route && msg->event) {
        url = event_url(sh, msg, NULL, 0);
    } else if (sh->url_route) { /* a line the spool forwards: the attributes from the JSON */
        struct member m[MAX_MEMBERS];
        char *value = ab_strndup(msg->value, msg->value_len);
        int n = members(value, msg->value_len, 0, 0, m);
        url = n < 0 ? NULL : event_url(sh, msg, m, n);
        free(value);
        if (n < 0) {
            return -1;
        }
    }
    struct xfer *b;
    TAILQ_FOREACH(b, &hs->filling, link) {
        if (!b->alone && (long)b->n < sh->batch_max &&
            b->bytes + msg->value_len + 1 <= BATCH_BYTES &&
            (url == NULL ? b->url == NULL : b->url != NULL && strcmp(url, b->url) == 0)) {
            break;
        }
    }
    if (b == NULL) {
        if (hs->inflight + hs->n_filling >= sh->max_inflight) {
            atomic_fetch_add(&m_refused, 1);
            free(url);
            return -1;
        }
        b = ab_calloc(1, sizeof(*b));
        b->kind = XF_EVENT;
        b->url = url;
        url = NULL;
        TAILQ_INSERT_TAIL(&hs->filling, b, link);
        hs->n_filling++;
    }
    free(url);
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 8;
        b->items = ab_realloc(b->items, b->cap * sizeof(*b->items));
    }
    struct item *it = &b->items[b->n++];
    it->value = ab_strndup(msg->value, msg->value_len);
    it->len = msg->value_len;
    it->id = ab_strdup(msg->id ? msg->id : "");
    it->req = ab_pending_add(hs->pending, cb, opaque, 0);
    b->bytes += msg->value_len + 1; /* and its comma */
    event_active(hs->flush_ev, EV_TIMEOUT, 0);
    return 0;
}

/* Loop thread: see the contract in sink.h. Refuses (-1) while closing, at
 * --http-max-inflight, or for a value that is no JSON object; otherwise the POST is handed
 * to libcurl (in batched mode first to the batch filling) and the first of its answer, the
 * deadline or close completes it. */
static int http_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                       void *opaque)
{
    struct http_sink *hs = (struct http_sink *)s;
    const struct http_shared *sh = hs->sh;
    if (hs->closing) {
        return -1;
    }
    if (sh->batched) {
        return batch_submit(hs, msg, cb, opaque);
    }
    if (hs->inflight >= sh->max_inflight) {
        atomic_fetch_add(&m_refused, 1);
        return -1;
    }
    struct member m[MAX_MEMBERS];
    int n = 0;
    char *value = ab_strndup(msg->value, msg->value_len); /* NUL-terminated, kept */
    /* the data's place when the line is the event's own (not one read from the spool) */
    const struct ab_event *ev = msg->event;
    int own = ev && msg->value == ev->json && msg->value_len == ev->json_len;
    if ((!sh->structured || sh->url_route) &&
        (n = members(value, msg->value_len, own ? ev->data_off : 0, own ? ev->data_len : 0,
                     m)) < 0) {
        free(value);
        return -1;
    }
    struct xfer *x = ab_calloc(1, sizeof(*x));
    x->kind = XF_EVENT;
    x->items = &x->one;
    x->n = 1;
    x->one.value = value;
    x->one.len = msg->value_len;
    x->one.id = ab_strdup(msg->id ? msg->id : "");
    if (sh->structured) {
        x->body = x->one.value;
        x->body_len = msg->value_len;
        x->headers = hs->static_headers;
    } else {
        binary_request(x, m, n, hs->static_headers);
    }
    char *url = event_url(sh, msg, m, n);
    if ((x->easy = easy_get(hs)) == NULL) {
        free(url);
        xfer_free(hs, x);
        return -1;
    }
    if (url) {
        curl_easy_setopt(x->easy, CURLOPT_URL, url); /* libcurl copies it */
        free(url);
    }
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
    curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, x->body);
    x->one.req = ab_pending_add(hs->pending, cb, opaque, 0);
    if (xfer_attach(hs, x) != 0) {
        ab_pending_cancel(x->one.req);
        x->one.req = NULL;
        xfer_free(hs, x);
        return -1;
    }
    return 0;
}

/* Loop thread: a new instance on base; it probes the target at once. Fails only when
 * libcurl cannot make a multi handle. */
static struct ab_sink *http_open(const struct ab_sink_conf *sc, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen)
{
    struct http_sink *hs = ab_calloc(1, sizeof(*hs));
    hs->base.ops = &ab_sink_http;
    hs->sh = shared;
    hs->evbase = base;
    TAILQ_INIT(&hs->active);
    TAILQ_INIT(&hs->filling);
    TAILQ_INIT(&hs->socks);
    if ((hs->multi = curl_multi_init()) == NULL) {
        snprintf(errstr, errlen, "http: libcurl could not create a multi handle");
        free(hs);
        return NULL;
    }
    hs->idle = ab_calloc((size_t)hs->sh->max_inflight, sizeof(*hs->idle));
    if (hs->sh->url && (hs->curlu = curl_url()) != NULL &&
        curl_url_set(hs->curlu, CURLUPART_URL, hs->sh->url, 0) != CURLUE_OK) {
        curl_url_cleanup(hs->curlu); /* not expected (checked at start-up): CURLOPT_URL */
        hs->curlu = NULL;
    }
    for (size_t i = 0; i < hs->sh->n_headers; i++) {
        hs->static_headers = curl_slist_append(hs->static_headers, hs->sh->headers[i]);
    }
    hs->timer_ev = evtimer_new(base, on_timer, hs);
    hs->probe_ev = evtimer_new(base, on_probe, hs);
    hs->flush_ev = event_new(base, -1, 0, on_flush, hs);
    hs->pending = ab_pending_new(base, sc->ack_timeout_ms);
    ab_pending_on_expire(hs->pending, on_expire, hs);
    snprintf(hs->reason, sizeof(hs->reason), "not probed yet");
    curl_multi_setopt(hs->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(hs->multi, CURLMOPT_SOCKETDATA, hs);
    curl_multi_setopt(hs->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(hs->multi, CURLMOPT_TIMERDATA, hs);
    curl_multi_setopt(hs->multi, CURLMOPT_MAXCONNECTS, hs->sh->max_inflight);
    arm_probe(hs, 0);
    return &hs->base;
}

static int http_ready(struct ab_sink *s)
{
    struct http_sink *hs = (struct http_sink *)s;
    return !hs->closing && hs->healthy;
}

static void http_describe(struct ab_sink *s, char *buf, size_t len)
{
    struct http_sink *hs = (struct http_sink *)s;
    if (hs->closing) {
        snprintf(buf, len, "http %s: closed", hs->sh->target);
    } else if (hs->healthy) {
        snprintf(buf, len, "http %s: answering, %ld request(s) in flight", hs->sh->target,
                 hs->inflight);
    } else {
        snprintf(buf, len, "http %s: not answering (%s), probing every %d ms", hs->sh->target,
                 hs->reason, PROBE_MS);
    }
}

static void on_close_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct http_sink *hs = arg;
    hs->close_expired = 1;
}

/* Loop thread, after the worker's loop stopped: let the POSTs in flight finish (running the
 * loop, bounded by timeout_ms and --ack-timeout), complete the rest with AB_SINK_CLOSED,
 * abort their transfers and free everything. */
static void http_close(struct ab_sink *s, int timeout_ms)
{
    struct http_sink *hs = (struct http_sink *)s;
    if (hs == NULL) {
        return;
    }
    long bound = timeout_ms < hs->sh->timeout_ms ? timeout_ms : hs->sh->timeout_ms;
    hs->closing = 1; /* from here a submit is refused and nothing is probed */
    evtimer_del(hs->probe_ev);
    if (bound > 0 && (hs->inflight > 0 || hs->n_filling > 0)) {
        struct event *deadline = evtimer_new(hs->evbase, on_close_deadline, hs);
        struct timeval tv = ms_tv(bound);
        evtimer_add(deadline, &tv);
        while ((hs->inflight > 0 || hs->n_filling > 0) && !hs->close_expired) {
            event_base_loop(hs->evbase, EVLOOP_ONCE);
        }
        event_free(deadline);
    }
    ab_pending_close(hs->pending, AB_SINK_CLOSED, "http sink closed before the target answered");
    struct xfer *x;
    while ((x = TAILQ_FIRST(&hs->active)) != NULL) {
        xfer_detach(hs, x);
        items_done(x, AB_SINK_CLOSED, NULL); /* complete already: only lets go */
        xfer_free(hs, x); /* closing: the easy handle is cleaned up */
    }
    while ((x = TAILQ_FIRST(&hs->filling)) != NULL) {
        TAILQ_REMOVE(&hs->filling, x, link);
        hs->n_filling--;
        items_done(x, AB_SINK_CLOSED, NULL);
        xfer_free(hs, x);
    }
    curl_multi_cleanup(hs->multi);
    struct sockinfo *si;
    while ((si = TAILQ_FIRST(&hs->socks)) != NULL) {
        TAILQ_REMOVE(&hs->socks, si, link);
        event_free(si->ev);
        free(si);
    }
    for (size_t i = 0; i < hs->n_idle; i++) {
        curl_easy_cleanup(hs->idle[i]);
    }
    curl_slist_free_all(hs->static_headers);
    curl_url_cleanup(hs->curlu); /* after the easy handles that used it */
    free(hs->idle);
    ab_pending_free(hs->pending);
    event_free(hs->timer_ev);
    event_free(hs->probe_ev);
    event_free(hs->flush_ev);
    free(hs);
}

const struct ab_sink_ops ab_sink_http = {
    .name = "http",
    .default_route = "",
    .options = &http_optset,
    .global_init = http_global_init,
    .global_free = http_global_free,
    .open = http_open,
    .submit = http_submit,
    .ready = http_ready,
    .describe = http_describe,
    .close = http_close,
    .flags = AB_SINK_BATCHES,
};
