/* The one HTTP client of the subcommands (`send`, `challenge`, `--probe`): libevent's evhttp
 * over a bufferevent, OpenSSL for https:// URLs (the peer verified against the system's CAs
 * or a given file, and the URL's host name or IP address, unless insecure). Blocking: it
 * runs its own event loop until the answer. */
#ifndef AB_HTTP_CLIENT_H
#define AB_HTTP_CLIENT_H

#include <stddef.h>

#include <event2/http.h>

struct bufferevent;
struct event_base;

struct ab_http_opts {
    const char *cacert; /* PEM CA file, NULL = the system's */
    int insecure;       /* no certificate or name check */
    int timeout_s;      /* per connection step; 0 = 30 s */
};

/* One call and its answer. */
struct ab_http_call {
    struct event_base *base;
    struct bufferevent *bev;
    int status; /* 0: no answer */
    char reason[128];
    char *body; /* the answer's body, NUL-terminated (caller frees) */
    size_t body_len;
    char err[512];
};

/* One HTTP/1.1 request to url (http:// or https://; method GET or POST with body and extra
 * headers, pairs of name and value ending with NULL); the answer lands in call. Returns 0
 * when an answer came, -1 with call->err otherwise. */
int ab_http_call(const char *url, enum evhttp_cmd_type method, const char *const *headers,
                 const void *body, size_t len, const struct ab_http_opts *t,
                 struct ab_http_call *call);

#endif
