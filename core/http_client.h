/* The one HTTP client of the program's own requests: `send`, `challenge`, `--probe` and Alma's
 * API (core/alma_api.c). libcurl's easy interface, blocking, with the setup they share in one
 * place: http and https only, TLS verified (peer and host name or IP address) against the
 * system's CAs or a given PEM file unless insecure, timeouts, a cap on the answer's size, the
 * status line's reason phrase, Retry-After, and one error line naming the failure (a TLS
 * failure starts with "TLS: "). Interim 1xx answers, chunked bodies and kept-alive
 * connections are libcurl's. Redirects are not followed (the answer is the 3xx).
 *
 * A client is one easy handle: its connections are kept alive between its requests. Not
 * thread-safe (one client per thread). The HTTP sink's asynchronous client (libcurl's multi
 * interface on the workers' loops) is the sink's own. */
#ifndef AB_HTTP_CLIENT_H
#define AB_HTTP_CLIENT_H

#include <stdatomic.h>
#include <stddef.h>

#define AB_HTTP_MAX_ANSWER (16L << 20) /* bytes of an answer's body, when max_answer is 0 */

/* What ab_http_client_perform() returns besides the HTTP status. */
enum {
    AB_HTTP_NO_ANSWER = -1, /* no connection, reset, timed out, not HTTP, too large, cancelled */
    AB_HTTP_TLS_REFUSED = -2, /* the server's certificate failed verification, or the CA file */
};

struct ab_http_request {
    const char *url;                 /* http:// or https:// */
    const void *body;                /* POST this (len bytes); NULL: GET */
    size_t len;
    const char *const *headers;      /* "Name: value" lines ending with NULL, or NULL */
    const char *ca_file;             /* PEM CA certificate(s); NULL: the system's store */
    int insecure;                    /* no certificate or host name check */
    int direct;                      /* no proxy, whatever http(s)_proxy says */
    int http1;                       /* HTTP/1.1 only (no HTTP/2 through ALPN) */
    long timeout_ms;                 /* the whole request; 0: none */
    long connect_timeout_ms;         /* 0: 10 s */
    long idle_s;                     /* give up when nothing moved for that long; 0: never */
    size_t max_answer;               /* 0: AB_HTTP_MAX_ANSWER */
    const atomic_int *cancel;        /* non-zero (set by another thread) aborts; NULL */
};

struct ab_http_answer {
    long status;       /* the final status, 0 when none came */
    char reason[128];  /* its reason phrase (HTTP/1.x; empty for HTTP/2) */
    char *body;        /* NUL-terminated (NULL when empty); ab_http_answer_clear() frees it */
    size_t len;
    long retry_after;  /* Retry-After in seconds, -1 when absent */
};

struct ab_http_client;

/* A client (one easy handle; initialises libcurl on first use). NULL with err. */
struct ab_http_client *ab_http_client_new(char *err, size_t errlen);
void ab_http_client_free(struct ab_http_client *c);

/* One request and its answer into *a (overwritten: a zeroed or cleared one). Returns the HTTP status (> 0) when an
 * answer came, else AB_HTTP_NO_ANSWER or AB_HTTP_TLS_REFUSED with one line in err. Header
 * lines are wiped from libcurl's copy after the request (they may hold a key). */
long ab_http_client_perform(struct ab_http_client *c, const struct ab_http_request *r,
                            struct ab_http_answer *a, char *err, size_t errlen);

/* One request on a client of its own, closed afterwards: for the one-shot commands. */
long ab_http_fetch(const struct ab_http_request *r, struct ab_http_answer *a, char *err,
                   size_t errlen);

void ab_http_answer_clear(struct ab_http_answer *a);

/* s percent-encoded for a URL's path segment or query value (all but A-Z a-z 0-9 - . _ ~);
 * the caller frees it. */
char *ab_http_escape(const char *s);

#endif
