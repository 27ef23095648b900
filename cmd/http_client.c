/* The subcommands' HTTP client (see http_client.h). */
#include "http_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mem.h"

#define CLIENT_TIMEOUT_S 30 /* when ab_http_opts.timeout_s is 0 */


/* The TLS failure behind a failed request (certificate not verified, handshake refused)
 * into call->err; 0 when there is none. */
static int tls_error(struct ab_http_call *call)
{
    unsigned long e = call->bev ? bufferevent_get_openssl_error(call->bev) : 0;
    if (e == 0) {
        return 0;
    }
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(call->err, sizeof(call->err), "TLS: %s", buf);
    return 1;
}

/* Loop thread: the answer, or NULL/0 when the request failed. */
static void on_response(struct evhttp_request *req, void *arg)
{
    struct ab_http_call *call = arg;
    if (req != NULL && evhttp_request_get_response_code(req) > 0) {
        call->status = evhttp_request_get_response_code(req);
        const char *reason = evhttp_request_get_response_code_line(req);
        snprintf(call->reason, sizeof(call->reason), "%s", reason ? reason : "");
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        call->body_len = evbuffer_get_length(in);
        call->body = ab_malloc(call->body_len + 1);
        evbuffer_remove(in, call->body, call->body_len);
        call->body[call->body_len] = '\0';
    } else if (call->err[0] == '\0' && !tls_error(call)) {
        snprintf(call->err, sizeof(call->err), "no answer: connection refused, reset or closed");
    }
    event_base_loopbreak(call->base);
}

static void on_request_error(enum evhttp_request_error e, void *arg)
{
    struct ab_http_call *call = arg;
    static const char *const what[] = {"timed out",
                                       "connection refused or closed without an answer",
                                       "connection error", "request cancelled",
                                       "answer malformed or too large"};
    if (!tls_error(call)) {
        snprintf(call->err, sizeof(call->err), "%s",
                 (int)e >= 0 && (size_t)e < sizeof(what) / sizeof(what[0]) ? what[e] : "error");
    }
}

/* A client TLS object for host: peer verification (system CAs or cacert) and name or IP
 * check unless insecure, SNI for names. NULL with err. */
static SSL *tls_client(SSL_CTX **ctx, const char *host, const struct ab_http_opts *t, char *err,
                       size_t errlen)
{
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(*ctx, TLS1_2_VERSION);
    if (!t->insecure) {
        SSL_CTX_set_verify(*ctx, SSL_VERIFY_PEER, NULL);
        int ok = t->cacert ? SSL_CTX_load_verify_locations(*ctx, t->cacert, NULL)
                           : SSL_CTX_set_default_verify_paths(*ctx);
        if (ok != 1) {
            snprintf(err, errlen, "cannot load CA certificates%s%s", t->cacert ? " from " : "",
                     t->cacert ? t->cacert : "");
            return NULL;
        }
    }
    SSL *ssl = SSL_new(*ctx);
    if (!is_ip) {
        SSL_set_tlsext_host_name(ssl, host);
    }
    if (!t->insecure) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (is_ip) {
            X509_VERIFY_PARAM_set1_ip_asc(param, host);
        } else {
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            X509_VERIFY_PARAM_set1_host(param, host, 0);
        }
    }
    return ssl;
}

/* Where a URL points: scheme, host (without IPv6 brackets), port, request target. */
struct target {
    int https;
    int port;
    char host[256];
    char hosthdr[300]; /* the Host header: host[:port] as written in the URL */
    char *path;        /* path and query */
};

static int parse_target(const char *url, struct target *tg, char *err, size_t errlen)
{
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    const char *scheme = uri ? evhttp_uri_get_scheme(uri) : NULL;
    const char *host = uri ? evhttp_uri_get_host(uri) : NULL;
    int rc = -1;
    if (scheme == NULL || host == NULL ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)) {
        snprintf(err, errlen, "not an http:// or https:// URL: %s", url);
        goto done;
    }
    tg->https = strcmp(scheme, "https") == 0;
    int given = evhttp_uri_get_port(uri);
    tg->port = given > 0 ? given : tg->https ? 443 : 80;
    size_t hl = strlen(host);
    snprintf(tg->host, sizeof(tg->host), "%.*s", host[0] == '[' ? (int)hl - 2 : (int)hl,
             host[0] == '[' ? host + 1 : host);
    snprintf(tg->hosthdr, sizeof(tg->hosthdr), given > 0 ? "%s:%d" : "%s", host, given);
    const char *path = evhttp_uri_get_path(uri), *query = evhttp_uri_get_query(uri);
    tg->path = ab_asprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "",
                           query ? query : "");
    struct evutil_addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = evutil_getaddrinfo(tg->host, NULL, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", tg->host, evutil_gai_strerror(gai));
        goto done;
    }
    evutil_freeaddrinfo(ai);
    rc = 0;
done:
    if (uri) {
        evhttp_uri_free(uri);
    }
    return rc;
}

/* A connection to tg on call->base: plain, or TLS through bufferevent_openssl (which then
 * owns the SSL object). NULL with call->err. */
static struct evhttp_connection *connect_to(struct ab_http_call *call, const struct target *tg,
                                            const struct ab_http_opts *t, SSL_CTX **ctx)
{
    SSL *ssl = NULL;
    if (tg->https) {
        ssl = tls_client(ctx, tg->host, t, call->err, sizeof(call->err));
        if (ssl == NULL) {
            return NULL;
        }
        call->bev = bufferevent_openssl_socket_new(call->base, -1, ssl,
                                                   BUFFEREVENT_SSL_CONNECTING,
                                                   BEV_OPT_CLOSE_ON_FREE |
                                                       BEV_OPT_DEFER_CALLBACKS);
        bufferevent_openssl_set_allow_dirty_shutdown(call->bev, 1);
    } else {
        call->bev = bufferevent_socket_new(call->base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    struct evhttp_connection *evcon = evhttp_connection_base_bufferevent_new(
        call->base, NULL, call->bev, tg->host, (unsigned short)tg->port);
    evhttp_connection_set_timeout(evcon, t->timeout_s > 0 ? t->timeout_s : CLIENT_TIMEOUT_S);
    return evcon;
}

/* One HTTP/1.1 request to url (method GET or POST with body and extra headers, pairs of
 * name and value ending with NULL); the answer lands in call. Returns 0 when an answer
 * came, -1 with call->err otherwise. Runs its own event loop until then. */
int ab_http_call(const char *url, enum evhttp_cmd_type method, const char *const *headers,
                     const void *body, size_t len, const struct ab_http_opts *t,
                     struct ab_http_call *call)
{
    struct target tg = {0};
    SSL_CTX *ctx = NULL;
    struct evhttp_connection *evcon = NULL;
    memset(call, 0, sizeof(*call));
    if (parse_target(url, &tg, call->err, sizeof(call->err)) != 0) {
        goto done;
    }
    call->base = event_base_new();
    if ((evcon = connect_to(call, &tg, t, &ctx)) == NULL) {
        goto done;
    }
    struct evhttp_request *req = evhttp_request_new(on_response, call);
    evhttp_request_set_error_cb(req, on_request_error);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Host", tg.hosthdr);
    evhttp_add_header(out, "User-Agent", "almabridge/" AB_VERSION);
    evhttp_add_header(out, "Connection", "close");
    for (size_t i = 0; headers && headers[i]; i += 2) {
        evhttp_add_header(out, headers[i], headers[i + 1]);
    }
    if (body) {
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    }
    if (evhttp_make_request(evcon, req, method, tg.path) != 0) {
        snprintf(call->err, sizeof(call->err), "cannot send the request");
    } else {
        event_base_dispatch(call->base);
    }
    if (call->status == 0 && call->err[0] == '\0') {
        snprintf(call->err, sizeof(call->err), "no answer");
    }
done:
    if (evcon) {
        evhttp_connection_free(evcon); /* frees the bufferevent and its SSL */
    }
    call->bev = NULL;
    SSL_CTX_free(ctx);
    if (call->base) {
        event_base_free(call->base);
        call->base = NULL;
    }
    free(tg.path);
    return call->status > 0 ? 0 : -1;
}
