/* almabridge send / almabridge challenge: test a deployment end to end the way Alma talks
 * to it, through TLS and load balancers included.
 *
 *   almabridge send FILE --url URL [--secret-file F] [--cacert F] [--insecure]
 *       POST the file's bytes signed like Alma (X-Exl-Signature: base64 of HMAC-SHA256 over
 *       the body, with the secret from --secret-file or ALMABRIDGE_SECRET); prints the
 *       answer's status line and body. Exit 0 for a 2xx answer, 1 for another, 2 when no
 *       answer came (connection, TLS) or for usage errors.
 *   almabridge challenge URL [--cacert F] [--insecure]
 *       GET URL?challenge=<random> and check that the answer echoes it, as Alma does when a
 *       webhook integration profile is saved. Exit 0 echoed, 1 not, 2 no answer.
 *
 * The client is libevent's evhttp over a bufferevent, with OpenSSL for https:// URLs:
 * the peer certificate is verified against the system's CAs (or --cacert) and the URL's
 * host name or IP address, unless --insecure. */
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cli.h"
#include "mem.h"
#include "signature.h"

#define CLIENT_TIMEOUT_S 30

struct tls_opts {
    const char *cacert;
    int insecure;
};

struct http_call {
    struct event_base *base;
    struct bufferevent *bev;
    int status;         /* 0: no answer */
    char reason[128];
    char *body;         /* the answer's body, NUL-terminated */
    size_t body_len;
    char err[512];
};

/* The TLS failure behind a failed request (certificate not verified, handshake refused)
 * into call->err; 0 when there is none. */
static int tls_error(struct http_call *call)
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
    struct http_call *call = arg;
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
    struct http_call *call = arg;
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
static SSL *tls_client(SSL_CTX **ctx, const char *host, const struct tls_opts *t, char *err,
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
static struct evhttp_connection *connect_to(struct http_call *call, const struct target *tg,
                                            const struct tls_opts *t, SSL_CTX **ctx)
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
    evhttp_connection_set_timeout(evcon, CLIENT_TIMEOUT_S);
    return evcon;
}

/* One HTTP/1.1 request to url (method GET or POST with body and extra headers, pairs of
 * name and value ending with NULL); the answer lands in call. Returns 0 when an answer
 * came, -1 with call->err otherwise. Runs its own event loop until then. */
static int http_call(const char *url, enum evhttp_cmd_type method, const char *const *headers,
                     const void *body, size_t len, const struct tls_opts *t,
                     struct http_call *call)
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

/* The answer on stdout: "HTTP <status> <reason>", then the body. */
static void print_answer(const struct http_call *call)
{
    printf("HTTP %d %s\n%s%s", call->status, call->reason, call->body,
           call->body_len && call->body[call->body_len - 1] != '\n' ? "\n" : "");
}

static char *read_all(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    size_t cap = 1 << 16;
    char *buf = NULL;
    if (fp == NULL) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    buf = ab_malloc(cap);
    *len = 0;
    size_t n;
    while ((n = fread(buf + *len, 1, cap - *len, fp)) > 0) {
        *len += n;
        if (*len == cap) {
            cap *= 2;
            buf = ab_realloc(buf, cap);
        }
    }
    if (ferror(fp)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        free(buf);
        buf = NULL;
    }
    if (fp != stdin) {
        fclose(fp);
    }
    return buf;
}

/* application/xml when the body's first non-blank byte is '<', else application/json. */
static const char *guess_type(const char *body, size_t len)
{
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) {
        i++;
    }
    return i < len && body[i] == '<' ? "application/xml" : "application/json";
}

static const char SEND_ABOUT[] =
    "POST a webhook body signed the way Alma signs it (X-Exl-Signature: base64 of\n"
    "HMAC-SHA256 over the body) and print the answer. The secret comes from --secret-file\n"
    "(its first secret line) or ALMABRIDGE_SECRET; never from the command line.\n"
    "Exit status: 0 a 2xx answer, 1 another answer, 2 no answer or a usage error.";

int ab_cmd_send(int argc, char **argv)
{
    const char *url = NULL, *secret_file = NULL, *cacert = NULL, *insecure = NULL,
               *ctype = NULL, *unsigned_ = NULL;
    const struct ab_cli_opt opts[] = {
        {"url", 1, &url, "URL", "the webhook endpoint, http:// or https://"},
        {"secret-file", 1, &secret_file, "FILE", "the webhook secret (else ALMABRIDGE_SECRET)"},
        {"cacert", 1, &cacert, "FILE", "PEM CA certificate(s) to verify the server with"},
        {"insecure", 0, &insecure, NULL, "do not verify the server's certificate"},
        {"content-type", 1, &ctype, "TYPE", "default: application/xml or application/json"},
        {"unsigned", 0, &unsigned_, NULL, "send no X-Exl-Signature (to test the refusal)"},
    };
    const struct ab_cli_cmd cmd = {"almabridge send FILE --url URL [options]", SEND_ABOUT, NULL,
                                   opts, sizeof(opts) / sizeof(opts[0])};
    size_t npos = 1;
    const char *file = NULL;
    char err[1024] = "", *body = NULL, *secret = NULL;
    int rc = AB_EXIT_USAGE, started;
    size_t len = 0;
    struct http_call call = {0};

    if ((started = ab_cli_start(&cmd, argc, argv, &file, &npos, NULL, NULL, err,
                                sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    if (npos != 1 || url == NULL) {
        snprintf(err, sizeof(err), "usage: almabridge send FILE --url URL (see --help)");
        goto done;
    }
    if ((body = read_all(file, &len, err, sizeof(err))) == NULL ||
        (!unsigned_ && (secret = ab_cli_secret(secret_file, err, sizeof(err))) == NULL)) {
        goto done;
    }
    char sig[AB_SIGNATURE_B64_LEN + 1] = "";
    if (secret) {
        ab_signature_compute(secret, strlen(secret), body, len, sig);
    }
    const char *headers[] = {"Content-Type", ctype ? ctype : guess_type(body, len),
                             secret ? "X-Exl-Signature" : NULL, sig, NULL};
    struct tls_opts t = {.cacert = cacert, .insecure = insecure != NULL};
    signal(SIGPIPE, SIG_IGN);
    if (http_call(url, EVHTTP_REQ_POST, headers, body, len, &t, &call) != 0) {
        snprintf(err, sizeof(err), "%s: %s", url, call.err);
        goto done;
    }
    print_answer(&call);
    rc = call.status >= 200 && call.status < 300 ? AB_EXIT_OK : AB_EXIT_FAILED;
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge send: %s\n", err);
    }
    if (secret) {
        memset(secret, 0, strlen(secret));
    }
    free(secret);
    free(body);
    free(call.body);
    return rc;
}

static const char CHALLENGE_ABOUT[] =
    "Do what Alma does when a webhook integration profile is saved: GET URL?challenge=X\n"
    "and check that the answer is 200 with X echoed ({\"challenge\":\"X\"}).\n"
    "Exit status: 0 echoed, 1 not, 2 no answer or a usage error.";

/* 1 when body is a JSON object whose "challenge" is token. */
static int echoes(const char *body, const char *token)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "challenge");
    int ok = cJSON_IsString(c) && strcmp(c->valuestring, token) == 0;
    cJSON_Delete(j);
    return ok;
}

int ab_cmd_challenge(int argc, char **argv)
{
    const char *cacert = NULL, *insecure = NULL, *url = NULL;
    const struct ab_cli_opt opts[] = {
        {"cacert", 1, &cacert, "FILE", "PEM CA certificate(s) to verify the server with"},
        {"insecure", 0, &insecure, NULL, "do not verify the server's certificate"},
    };
    const struct ab_cli_cmd cmd = {"almabridge challenge URL [options]", CHALLENGE_ABOUT, NULL,
                                   opts, sizeof(opts) / sizeof(opts[0])};
    size_t npos = 1;
    char err[1024] = "", *full = NULL;
    int rc = AB_EXIT_USAGE, started;
    struct http_call call = {0};
    unsigned char rnd[12];
    char token[32];

    if ((started = ab_cli_start(&cmd, argc, argv, &url, &npos, NULL, NULL, err,
                                sizeof(err))) != 0) {
        rc = started > 0 ? AB_EXIT_OK : AB_EXIT_USAGE;
        goto done;
    }
    if (npos != 1) {
        snprintf(err, sizeof(err), "usage: almabridge challenge URL (see --help)");
        goto done;
    }
    RAND_bytes(rnd, sizeof(rnd));
    for (size_t i = 0; i < sizeof(rnd); i++) {
        snprintf(token + 2 * i, 3, "%02x", rnd[i]);
    }
    full = ab_asprintf("%s%schallenge=%s", url, strchr(url, '?') ? "&" : "?", token);
    struct tls_opts t = {.cacert = cacert, .insecure = insecure != NULL};
    signal(SIGPIPE, SIG_IGN);
    if (http_call(full, EVHTTP_REQ_GET, NULL, NULL, 0, &t, &call) != 0) {
        snprintf(err, sizeof(err), "%s: %s", url, call.err);
        goto done;
    }
    print_answer(&call);
    if (call.status == 200 && echoes(call.body, token)) {
        printf("challenge %s echoed: OK\n", token);
        rc = AB_EXIT_OK;
    } else {
        fprintf(stderr, "almabridge challenge: the answer does not echo challenge %s\n", token);
        rc = AB_EXIT_FAILED;
    }
done:
    if (rc == AB_EXIT_USAGE && err[0]) {
        fprintf(stderr, "almabridge challenge: %s\n", err);
    }
    free(full);
    free(call.body);
    return rc;
}
