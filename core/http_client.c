/* The program's HTTP client over libcurl: see http_client.h. */
#include "http_client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "mem.h"

#define CONNECT_TIMEOUT_MS 10000L /* when the request names none */

struct ab_http_client {
    CURL *curl;
};

/* What one transfer collects: the body (capped), the last status line's reason phrase. */
struct sink {
    struct ab_http_answer *a;
    size_t max;
    int too_big;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct ab_http_client *ab_http_client_new(char *err, size_t errlen)
{
    pthread_once(&global_once, global_init);
    CURL *curl = global_rc == CURLE_OK ? curl_easy_init() : NULL;
    if (curl == NULL) {
        snprintf(err, errlen, "libcurl cannot be initialised");
        return NULL;
    }
    struct ab_http_client *c = ab_calloc(1, sizeof(*c));
    c->curl = curl;
    return c;
}

void ab_http_client_free(struct ab_http_client *c)
{
    if (c == NULL) {
        return;
    }
    curl_easy_cleanup(c->curl);
    free(c);
}

void ab_http_answer_clear(struct ab_http_answer *a)
{
    free(a->body);
    memset(a, 0, sizeof(*a));
    a->retry_after = -1;
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct sink *s = arg;
    size_t len = size * n;
    if (s->a->len + len > s->max) {
        s->too_big = 1;
        return 0; /* libcurl stops with CURLE_WRITE_ERROR */
    }
    s->a->body = ab_realloc(s->a->body, s->a->len + len + 1);
    memcpy(s->a->body + s->a->len, data, len);
    s->a->len += len;
    s->a->body[s->a->len] = '\0';
    return len;
}

/* Each header line; a status line ("HTTP/1.1 200 OK") gives the reason phrase, the last one
 * (after interim 1xx answers) wins. */
static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct sink *s = arg;
    size_t len = size * n;
    if (len > 5 && strncmp(data, "HTTP/", 5) == 0) {
        const char *sp = memchr(data, ' ', len);
        const char *reason = sp && (size_t)(sp - data) + 5 <= len ? sp + 5 : data + len;
        size_t rl = (size_t)(data + len - reason);
        while (rl > 0 && (reason[rl - 1] == '\r' || reason[rl - 1] == '\n')) {
            rl--;
        }
        snprintf(s->a->reason, sizeof(s->a->reason), "%.*s", (int)rl, reason);
    }
    return len;
}

/* libcurl's progress callback: non-zero aborts the transfer. */
static int on_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const atomic_int *cancel = arg;
    return atomic_load(cancel) != 0;
}

/* The options every request shares, on a reset handle. */
static void setup(CURL *c, const struct ab_http_request *r, struct curl_slist *headers,
                  struct sink *s, char *cerr)
{
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "almabridge/" AB_VERSION);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, r->insecure ? 0L : 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, r->insecure ? 0L : 2L);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (r->ca_file) {
        curl_easy_setopt(c, CURLOPT_CAINFO, r->ca_file);
    }
    if (r->direct) {
        curl_easy_setopt(c, CURLOPT_PROXY, "");
    }
    if (r->http1) {
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    }
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, r->timeout_ms > 0 ? r->timeout_ms : 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     r->connect_timeout_ms > 0 ? r->connect_timeout_ms : CONNECT_TIMEOUT_MS);
    if (r->idle_s > 0) {
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, r->idle_s);
    }
    if (r->body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->len);
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
    if (r->cancel) {
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)r->cancel);
    }
}

/* The request's header lines; no "Expect: 100-continue" before a body (Alma sends none,
 * and a receiver need not support it). */
static struct curl_slist *header_list(const struct ab_http_request *r)
{
    struct curl_slist *h = NULL;
    for (size_t i = 0; r->headers && r->headers[i]; i++) {
        h = curl_slist_append(h, r->headers[i]);
    }
    if (r->body) {
        h = curl_slist_append(h, "Expect:");
    }
    return h;
}

static void wipe_free(struct curl_slist *h)
{
    for (struct curl_slist *p = h; p; p = p->next) {
        memset(p->data, 0, strlen(p->data));
    }
    curl_slist_free_all(h);
}

/* A failed transfer: one line into err; AB_HTTP_TLS_REFUSED for a certificate that failed
 * verification (trying again changes nothing), else AB_HTTP_NO_ANSWER. */
static long failure(CURLcode rc, const struct sink *s, const char *cerr, char *err,
                    size_t errlen)
{
    const char *what = cerr[0] ? cerr : curl_easy_strerror(rc);
    int refused = rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
                  rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_ISSUER_ERROR;
    if (s->too_big) {
        snprintf(err, errlen, "answer over %zu bytes", s->max);
    } else if (rc == CURLE_ABORTED_BY_CALLBACK) {
        snprintf(err, errlen, "cancelled");
    } else if (refused || rc == CURLE_SSL_CONNECT_ERROR) {
        snprintf(err, errlen, "TLS: %s", what);
    } else {
        snprintf(err, errlen, "%s", what);
    }
    return refused ? AB_HTTP_TLS_REFUSED : AB_HTTP_NO_ANSWER;
}

long ab_http_client_perform(struct ab_http_client *c, const struct ab_http_request *r,
                            struct ab_http_answer *a, char *err, size_t errlen)
{
    char cerr[CURL_ERROR_SIZE] = "";
    struct sink s = {.a = a, .max = r->max_answer ? r->max_answer : (size_t)AB_HTTP_MAX_ANSWER};
    long status = 0;
    memset(a, 0, sizeof(*a));
    a->retry_after = -1;
    if (strncasecmp(r->url, "http://", 7) != 0 && strncasecmp(r->url, "https://", 8) != 0) {
        snprintf(err, errlen, "not an http:// or https:// URL: %s", r->url);
        return AB_HTTP_NO_ANSWER;
    }
    struct curl_slist *headers = header_list(r);
    curl_easy_reset(c->curl); /* keeps the connections alive */
    setup(c->curl, r, headers, &s, cerr);
    CURLcode rc = curl_easy_perform(c->curl);
    if (rc != CURLE_OK) {
        status = failure(rc, &s, cerr, err, errlen);
        free(a->body);
        a->body = NULL;
        a->len = 0;
        a->reason[0] = '\0';
    } else {
        curl_off_t ra = -1;
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
        if (curl_easy_getinfo(c->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0) {
            a->retry_after = (long)(ra < 86400 ? ra : 86400);
        }
        a->status = status;
        if (status <= 0) {
            snprintf(err, errlen, "no HTTP status in the answer");
            status = AB_HTTP_NO_ANSWER;
        }
    }
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
    wipe_free(headers);
    return status;
}

long ab_http_fetch(const struct ab_http_request *r, struct ab_http_answer *a, char *err,
                   size_t errlen)
{
    struct ab_http_client *c = ab_http_client_new(err, errlen);
    if (c == NULL) {
        memset(a, 0, sizeof(*a));
        a->retry_after = -1;
        return AB_HTTP_NO_ANSWER;
    }
    long status = ab_http_client_perform(c, r, a, err, errlen);
    ab_http_client_free(c);
    return status;
}

char *ab_http_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = ab_malloc(strlen(s) * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}
