/* core/http_client.c against a raw HTTP/1.1 server on a thread (port 0): what the program's
 * one client must read (interim 1xx, chunked bodies, Retry-After, the reason phrase), its
 * limits (answer size, non-HTTP URLs, cancellation) and a connection kept alive between the
 * requests of one client (the Alma API's calls). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_client.h"
#include "test.h"

/* The server: answers the requests it reads, in order, with answers[]; counts connections. */
struct server {
    int fd, port, accepted;
    const char *const *answers;
    pthread_t thread;
};

/* Read one request head (GET only: no body) from c; 0 at its end, -1 when closed. */
static int read_head(int c)
{
    char buf[4096];
    size_t n = 0;
    while (n < sizeof(buf) - 1) {
        ssize_t r = read(c, buf + n, 1);
        if (r <= 0) {
            return -1;
        }
        n++;
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0) {
            return 0;
        }
    }
    return -1;
}

static void *serve(void *arg)
{
    struct server *s = arg;
    size_t next = 0;
    while (s->answers[next]) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) {
            break;
        }
        s->accepted++;
        while (s->answers[next] && read_head(c) == 0) {
            const char *a = s->answers[next++];
            ssize_t w = write(c, a, strlen(a));
            (void)w;
            if (strstr(a, "Connection: close")) {
                break;
            }
        }
        close(c);
    }
    return NULL;
}

static void server_start(struct server *s, const char *const *answers)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    memset(s, 0, sizeof(*s));
    s->answers = answers;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    bind(s->fd, (struct sockaddr *)&sa, sizeof(sa));
    listen(s->fd, 8);
    getsockname(s->fd, (struct sockaddr *)&sa, &len);
    s->port = ntohs(sa.sin_port);
    pthread_create(&s->thread, NULL, serve, s);
}

static void server_stop(struct server *s)
{
    shutdown(s->fd, SHUT_RDWR);
    pthread_join(s->thread, NULL);
    close(s->fd);
}

static long get(struct ab_http_client *c, const struct server *s, struct ab_http_answer *a,
                char *err, size_t errlen)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", s->port);
    const struct ab_http_request r = {.url = url, .direct = 1, .timeout_ms = 10000};
    return ab_http_client_perform(c, &r, a, err, errlen);
}

static void test_interim_chunked_retry_after_and_keep_alive(void)
{
    static const char *const answers[] = {
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted Here\r\n"
        "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}",
        NULL};
    struct server s;
    char err[256] = "";
    struct ab_http_answer a = {0};
    server_start(&s, answers);
    struct ab_http_client *c = ab_http_client_new(err, sizeof(err));
    CHECK(get(c, &s, &a, err, sizeof(err)) == 202);
    CHECK_STR(a.reason, "Accepted Here");
    CHECK_STR(a.body, "abcde");
    CHECK(a.len == 5 && a.retry_after == -1);
    ab_http_answer_clear(&a);
    CHECK(get(c, &s, &a, err, sizeof(err)) == 429);
    CHECK(a.retry_after == 7);
    CHECK_STR(a.body, "{}");
    ab_http_answer_clear(&a);
    ab_http_client_free(c);
    server_stop(&s);
    CHECK(s.accepted == 1); /* both on one connection */
}

static void test_limits(void)
{
    static const char *const answers[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
        "0123456789012345678901234567890123456789012345678901234567890123456789"
        "012345678901234567890123456789",
        NULL};
    struct server s;
    char err[256] = "", url[64];
    struct ab_http_answer a = {0};
    server_start(&s, answers);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    struct ab_http_request r = {.url = url, .direct = 1, .max_answer = 10};
    CHECK(ab_http_fetch(&r, &a, err, sizeof(err)) == AB_HTTP_NO_ANSWER);
    CHECK_STR(err, "answer over 10 bytes");
    CHECK(a.body == NULL && a.status == 0);
    server_stop(&s);

    r.url = "ftp://127.0.0.1/";
    CHECK(ab_http_fetch(&r, &a, err, sizeof(err)) == AB_HTTP_NO_ANSWER);
    CHECK_STR(err, "not an http:// or https:// URL: ftp://127.0.0.1/");

    /* a server that never answers (the kernel's backlog accepts), and a set cancel flag */
    static const char *const none[] = {NULL};
    server_start(&s, none);
    atomic_int stop = 1;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    r.url = url;
    r.cancel = &stop;
    r.timeout_ms = 20000;
    CHECK(ab_http_fetch(&r, &a, err, sizeof(err)) == AB_HTTP_NO_ANSWER);
    CHECK_STR(err, "cancelled");
    server_stop(&s);
}

static void test_escape(void)
{
    char *e = ab_http_escape("M 53/\xc3\xbc-._~&=?");
    CHECK_STR(e, "M%2053%2F%C3%BC-._~%26%3D%3F");
    free(e);
}

int main(void)
{
    RUN(test_interim_chunked_retry_after_and_keep_alive);
    RUN(test_limits);
    RUN(test_escape);
    return TEST_SUMMARY();
}
