/* The sink contract (core/sink.h) for the HTTP sink, against a tiny evhttp receiver on the
 * same event base, bound to port 0 (libevent test/regress_http.c): the CloudEvents HTTP
 * binding in both content modes, byte for byte; 2xx = OK, 5xx/429/408/timeouts/refused
 * connections = ERROR or TIMEOUT, other 4xx = the dead-letter file then OK; the callback
 * exactly once, never inside submit; --http-max-inflight; close; readiness. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <cjson/cJSON.h>

#include "config.h"
#include "event.h"
#include "fixtures.h"
#include "log.h"
#include "loop.h"
#include "sink.h"
#include "sinks/http.h"
#include "test.h"

/* ---- the receiver -------------------------------------------------------------------- */

#define MAX_SEEN 64
struct seen {
    char *uri;
    char *headers; /* "name: value\n" each, names lower-cased */
    char *body;
    size_t body_len;
};
static struct seen seen[MAX_SEEN];
static int n_seen;
static int answer = 200; /* 0: never answer */
static const char *refuse = NULL; /* a body holding this is answered 400 */
static struct evhttp_request *held[MAX_SEEN];
static int n_held;

static int n_probes, probe_answer = 200;
static ev_uint16_t conns[MAX_SEEN]; /* the client ports the POSTs came from */
static int n_conns;
static char probe_uri[256];

static void on_request(struct evhttp_request *req, void *arg)
{
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
        n_probes++;
        snprintf(probe_uri, sizeof(probe_uri), "%s", evhttp_request_get_uri(req));
        evhttp_send_reply(req, probe_answer, "X", NULL);
        return;
    }
    char *peer;
    ev_uint16_t port;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
    int known = 0;
    for (int i = 0; i < n_conns; i++) {
        known |= conns[i] == port;
    }
    if (!known && n_conns < MAX_SEEN) {
        conns[n_conns++] = port;
    }
    struct seen *s = &seen[n_seen < MAX_SEEN ? n_seen++ : MAX_SEEN - 1];
    s->uri = strdup(evhttp_request_get_uri(req));
    struct evbuffer *hb = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        char *k = strdup(kv->key);
        for (char *p = k; *p; p++) {
            *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        }
        evbuffer_add_printf(hb, "%s: %s\n", k, kv->value);
        free(k);
    }
    evbuffer_add(hb, "", 1);
    s->headers = strdup((const char *)evbuffer_pullup(hb, -1));
    evbuffer_free(hb);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    s->body_len = evbuffer_get_length(in);
    s->body = calloc(1, s->body_len + 1);
    evbuffer_remove(in, s->body, s->body_len);
    if (answer == 0) {
        held[n_held++] = req;
        return;
    }
    int code = refuse && strstr(s->body, refuse) ? 400 : answer;
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "answer %d", code);
    evhttp_send_reply(req, code, "X", out);
    evbuffer_free(out);
}

static void seen_reset(void)
{
    for (int i = 0; i < n_seen; i++) {
        free(seen[i].uri);
        free(seen[i].headers);
        free(seen[i].body);
    }
    n_seen = 0;
    answer = 200;
    refuse = NULL;
    n_probes = 0;
    probe_answer = 200;
    n_conns = 0;
}

/* The value of header name (lower case) in s, in a static buffer; NULL when absent. */
static const char *header(const struct seen *s, const char *name)
{
    static char v[1024];
    char key[128];
    snprintf(key, sizeof(key), "%s: ", name);
    for (const char *p = s->headers; p && *p;) {
        const char *nl = strchr(p, '\n');
        if (strncmp(p, key, strlen(key)) == 0) {
            snprintf(v, sizeof(v), "%.*s", (int)(nl - p - strlen(key)), p + strlen(key));
            return v;
        }
        p = nl + 1;
    }
    return NULL;
}

/* ---- the harness --------------------------------------------------------------------- */

static int in_submit, inside_calls;

struct result {
    int calls, status;
    char err[256];
};

static void on_done(int status, const char *errstr, void *opaque)
{
    struct result *r = opaque;
    inside_calls += in_submit;
    r->calls++;
    r->status = status;
    snprintf(r->err, sizeof(r->err), "%s", errstr ? errstr : "");
}

struct harness {
    struct event_base *base;
    struct evhttp *http;
    int port;
    struct ab_http_conf conf;
    struct ab_sink_conf sc;
    void *shared;
    struct ab_sink *s;
    char dl[64];
    char url[256];
};

static int h_open(struct harness *h, const char *path, const char *mode, long ack_ms)
{
    memset(h, 0, sizeof(*h));
    h->base = event_base_new();
    h->http = evhttp_new(h->base);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(h->http, "127.0.0.1", 0);
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&a, &alen);
    h->port = ntohs(a.sin_port);
    evhttp_set_gencb(h->http, on_request, NULL);
    snprintf(h->url, sizeof(h->url), "http://127.0.0.1:%d%s", h->port, path);
    snprintf(h->dl, sizeof(h->dl), "/tmp/ab-http-dl-XXXXXX");
    close(mkstemp(h->dl));
    h->conf = (struct ab_http_conf){.url = h->url, .max_inflight = 4, .batch_max = 64,
                                    .dead_letter_file = h->dl};
    h->sc = (struct ab_sink_conf){.opts = &h->conf, .ack_timeout_ms = ack_ms, .max_body = 1 << 20,
                                  .structured = mode != NULL && strcmp(mode, "structured") == 0,
                                  .batched = mode != NULL && strcmp(mode, "batched") == 0};
    char err[256];
    if (ab_sink_http.global_init(&h->sc, &h->shared, err, sizeof(err)) != 0) {
        fprintf(stderr, "global_init: %s\n", err);
        return -1;
    }
    h->s = ab_sink_http.open(&h->sc, h->shared, h->base, err, sizeof(err));
    seen_reset();
    return h->s ? 0 : -1;
}

static void h_close(struct harness *h)
{
    if (h->s) {
        ab_sink_http.close(h->s, 100);
    }
    ab_sink_http.global_free(h->shared);
    for (int i = 0; i < n_held; i++) {
        evhttp_send_reply(held[i], 200, "late", NULL);
    }
    n_held = 0;
    evhttp_free(h->http);
    event_base_free(h->base);
    unlink(h->dl);
    seen_reset();
}

static int submit(struct harness *h, const struct ab_sink_msg *m, struct result *r)
{
    in_submit = 1;
    int rc = ab_sink_http.submit(h->s, m, on_done, r);
    in_submit = 0;
    return rc;
}

/* Run the loop until r has its answer (or ms passed); 1 if it came. */
static int wait_done(struct harness *h, struct result *r, int ms)
{
    int64_t end = now_ms() + ms;
    while (r->calls == 0 && now_ms() < end) {
        run_for(h->base, 5);
    }
    return r->calls > 0;
}

/* Run the loop until the sink's readiness is want (or ms passed); 1 if it is. */
static int wait_ready(struct harness *h, int want, int ms)
{
    int64_t end = now_ms() + ms;
    while (ab_sink_http.ready(h->s) != want && now_ms() < end) {
        run_for(h->base, 5);
    }
    return ab_sink_http.ready(h->s) == want;
}

/* Close the instance and open a new one with h->conf as it is now (a test changes it). */
static int h_reopen(struct harness *h)
{
    char err[256];
    ab_sink_http.close(h->s, 0);
    ab_sink_http.global_free(h->shared);
    h->s = NULL;
    if (ab_sink_http.global_init(&h->sc, &h->shared, err, sizeof(err)) != 0) {
        fprintf(stderr, "global_init: %s\n", err);
        return -1;
    }
    h->s = ab_sink_http.open(&h->sc, h->shared, h->base, err, sizeof(err));
    seen_reset();
    return h->s ? 0 : -1;
}

/* Submit m and wait for its answer; 1 when it was OK. */
static int post_ok(struct harness *h, const struct ab_sink_msg *m)
{
    struct result r = {0};
    return submit(h, m, &r) == 0 && wait_done(h, &r, 3000) && r.status == AB_SINK_OK;
}

static struct ab_event *sample_event(void)
{
    size_t len;
    char *body = read_file("tests/fixtures/alma/loan_created.json", &len);
    struct ab_event *ev = NULL;
    char err[200];
    if (body == NULL || ab_event_from_body(AB_FORMAT_JSON, body, len, &ev, err, sizeof(err))) {
        fprintf(stderr, "sample: %s\n", body ? err : "no fixture");
    }
    free(body);
    return ev;
}

static struct ab_sink_msg msg_of(const struct ab_event *ev)
{
    return (struct ab_sink_msg){.id = ev->id, .type = ev->type, .source = ev->source,
                                .value = ev->json, .value_len = ev->json_len, .event = ev};
}

/* ---- tests --------------------------------------------------------------------------- */

/* Binary mode: one ce- header per attribute, Content-Type from datacontenttype, no
 * ce-datacontenttype, the body = the data member byte for byte; the URL template. */
static void test_binary(void)
{
    struct harness h;
    CHECK(h_open(&h, "/in/{action}/{event}", "binary", 2000) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    struct result r = {0};
    CHECK(submit(&h, &m, &r) == 0);
    CHECK(r.calls == 0);
    CHECK(wait_done(&h, &r, 3000));
    CHECK(r.calls == 1 && r.status == AB_SINK_OK);
    CHECK(inside_calls == 0);
    CHECK(n_seen == 1);
    if (n_seen == 1) {
        CHECK_STR(seen[0].uri, "/in/loan/loan_created");
        CHECK_STR(header(&seen[0], "ce-id"), ev->id);
        CHECK_STR(header(&seen[0], "ce-specversion"), "1.0");
        CHECK_STR(header(&seen[0], "ce-type"), ev->type);
        CHECK_STR(header(&seen[0], "ce-source"), ev->source);
        CHECK_STR(header(&seen[0], "ce-time"), ev->time);
        CHECK_STR(header(&seen[0], "ce-almaaction"), ev->action);
        CHECK_STR(header(&seen[0], "content-type"), "application/json");
        CHECK(header(&seen[0], "ce-datacontenttype") == NULL);
        CHECK(header(&seen[0], "ce-data") == NULL);
        const char *data = strstr(ev->json, ",\"data\":") + 8;
        CHECK(seen[0].body_len == strlen(data) - 1);
        CHECK(strncmp(seen[0].body, data, seen[0].body_len) == 0);
    }
    ab_event_free(ev);
    h_close(&h);
}

/* Header values percent-encoded as the binding says; a "data" inside a string is not the
 * data member; an extension that is a number is sent in its canonical form. */
static void test_binary_encoding(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    const char *v = "{\"specversion\":\"1.0\",\"id\":\"a b\\\"%\",\"source\":\"urn:alma:\xc3\xbc\","
                    "\"type\":\"t\",\"datacontenttype\":\"application/json\",\"n\":5,"
                    "\"data\":{\"x\":\"y,\\\"data\\\":1\",\"w\":\"\\\\\",\"b\":\"}]{[\","
                    "\"z\":[1,{\"data\":2}]},\"after\":\"ok\"}";
    struct ab_sink_msg m = {.id = "a b\"%", .value = v, .value_len = strlen(v)};
    struct result r = {0};
    CHECK(submit(&h, &m, &r) == 0);
    CHECK(wait_done(&h, &r, 3000) && r.status == AB_SINK_OK);
    if (n_seen == 1) {
        CHECK_STR(header(&seen[0], "ce-id"), "a%20b%22%25");
        CHECK_STR(header(&seen[0], "ce-source"), "urn:alma:%C3%BC");
        CHECK_STR(header(&seen[0], "ce-n"), "5");
        CHECK_STR(seen[0].body, "{\"x\":\"y,\\\"data\\\":1\",\"w\":\"\\\\\",\"b\":\"}]{[\","
                                "\"z\":[1,{\"data\":2}]}");
        CHECK_STR(header(&seen[0], "ce-after"), "ok");
    }
    h_close(&h);
}

/* A URL template expanded from the line's attributes when the event is not at hand (the
 * spool forwards lines): {action} {institution} from almaaction / almainstitution. */
static void test_template_from_line(void)
{
    struct harness h;
    CHECK(h_open(&h, "/t/{action}/{institution}/{id}", "structured", 2000) == 0);
    const char *v = "{\"specversion\":\"1.0\",\"id\":\"77\",\"source\":\"urn:alma:X\","
                    "\"type\":\"t\",\"almaaction\":\"LOAN\",\"almainstitution\":\"01AB C\","
                    "\"data\":{}}";
    struct ab_sink_msg m = {.id = "77", .value = v, .value_len = strlen(v)};
    struct result r = {0};
    CHECK(submit(&h, &m, &r) == 0);
    CHECK(wait_done(&h, &r, 3000) && r.status == AB_SINK_OK);
    CHECK(n_seen == 1);
    if (n_seen == 1) {
        CHECK_STR(seen[0].uri, "/t/loan/01ab_c/77");
        CHECK_STR(seen[0].body, v);
    }
    h_close(&h);
}

/* Lines that are not what core/event.c writes (a replayed file can hold anything): each is
 * refused at once or sent; nothing hangs or reads out of bounds (run under ASan). */
static void test_malformed_lines(void)
{
    struct harness h;
    CHECK(h_open(&h, "/m/{action}", "binary", 2000) == 0);
    static const char *const lines[] = {
        "", "[]", "{", "{\"", "{\"a", "{\"a\":", "{\"a\":\"b", "{\"data\":{\"x\":[1,2",
        "{\"data\":\"\\\\\\\"}", "{\"a\":1,,}", "{\"a\" \"b\"}", "{\"data\":}}}}",
        "{\"id\":\"\\u00\"}", "{\"data\":{\"a\":\"\\",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        struct ab_sink_msg m = {.id = "x", .value = lines[i], .value_len = strlen(lines[i])};
        struct result r = {0};
        if (submit(&h, &m, &r) == 0) {
            CHECK(wait_done(&h, &r, 3000));
        }
    }
    /* a NUL inside the line */
    static const char nul[] = "{\"data\":{\"a\":1,\0\"b\":[2]},\"id\":\"n\"}";
    struct ab_sink_msg m = {.id = "n", .value = nul, .value_len = sizeof(nul) - 1};
    struct result r = {0};
    if (submit(&h, &m, &r) == 0) {
        CHECK(wait_done(&h, &r, 3000));
    }
    h_close(&h);
}

/* Structured mode: the JSON event as the body, application/cloudevents+json, no ce-. */
static void test_structured(void)
{
    struct harness h;
    CHECK(h_open(&h, "/s", "structured", 2000) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    struct result r = {0};
    CHECK(submit(&h, &m, &r) == 0);
    CHECK(wait_done(&h, &r, 3000) && r.status == AB_SINK_OK);
    if (n_seen == 1) {
        CHECK_STR(header(&seen[0], "content-type"),
                  "application/cloudevents+json; charset=UTF-8");
        CHECK(strstr(seen[0].headers, "ce-") == NULL);
        CHECK_STR(seen[0].body, ev->json);
    }
    /* one after the other: all on the one kept-alive connection */
    for (int i = 0; i < 5; i++) {
        struct result more = {0};
        CHECK(submit(&h, &m, &more) == 0);
        CHECK(wait_done(&h, &more, 3000) && more.status == AB_SINK_OK);
    }
    CHECK(n_seen == 6 && n_conns == 1);
    ab_event_free(ev);
    h_close(&h);
}

/* 5xx, 429 and 408 are transient (ERROR, 503); 5xx and 429 make the sink not ready until
 * a request gets through again. */
static void test_transient(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    CHECK(wait_ready(&h, 1, 3000)); /* the open-time probe is done */
    int codes[] = {500, 503, 429, 408, 301};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        struct result r = {0};
        answer = codes[i];
        CHECK(submit(&h, &m, &r) == 0);
        CHECK(wait_done(&h, &r, 3000));
        CHECK(r.calls == 1 && r.status == AB_SINK_ERROR);
        CHECK(strstr(r.err, "HTTP") != NULL);
        if (codes[i] >= 500 || codes[i] == 429) {
            CHECK(ab_sink_http.ready(h.s) == 0);
        }
    }
    answer = 200;
    struct result ok = {0};
    CHECK(submit(&h, &m, &ok) == 0);
    CHECK(wait_done(&h, &ok, 3000) && ok.status == AB_SINK_OK);
    CHECK(ab_sink_http.ready(h.s) == 1);
    ab_event_free(ev);
    h_close(&h);
}

/* Another 4xx: permanent for the event, stored in the dead-letter file (one JSON line with
 * the event as it was and the status), then OK. */
static void test_dead_letter(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    struct result r = {0};
    answer = 400;
    CHECK(submit(&h, &m, &r) == 0);
    CHECK(wait_done(&h, &r, 3000));
    CHECK(r.calls == 1 && r.status == AB_SINK_OK);
    CHECK(ab_sink_http.ready(h.s) == 1);
    size_t len;
    char *dl = read_file(h.dl, &len);
    CHECK(dl != NULL && len > 0 && dl[len - 1] == '\n' && strchr(dl, '\n') == dl + len - 1);
    CHECK(dl && strstr(dl, "\"status\":400") != NULL);
    CHECK(dl && strstr(dl, ev->json) != NULL);
    CHECK(dl && strstr(dl, "answer 400") != NULL);
    free(dl);
    ab_event_free(ev);
    h_close(&h);
}

/* No answer within the ack timeout: TIMEOUT, the slot freed (the next request gets through
 * once the target answers again); a refused connection: ERROR at once. */
static void test_timeout_and_refused(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 300) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    struct result slow[4] = {{0}};
    answer = 0;
    for (int i = 0; i < 4; i++) {
        CHECK(submit(&h, &m, &slow[i]) == 0);
    }
    struct result over = {0};
    CHECK(submit(&h, &m, &over) != 0); /* --http-max-inflight 4 */
    int64_t t0 = now_ms();
    CHECK(wait_done(&h, &slow[3], 3000));
    CHECK(now_ms() - t0 < 2000);
    for (int i = 0; i < 4; i++) {
        CHECK(slow[i].calls == 1 && slow[i].status == AB_SINK_TIMEOUT);
    }
    CHECK(ab_sink_http.ready(h.s) == 0);
    answer = 200;
    struct result ok = {0};
    CHECK(submit(&h, &m, &ok) == 0);
    CHECK(wait_done(&h, &ok, 3000) && ok.status == AB_SINK_OK);
    run_for(h.base, 50);
    for (int i = 0; i < 4; i++) {
        CHECK(slow[i].calls == 1);
    }
    CHECK(over.calls == 0);
    ab_event_free(ev);
    h_close(&h);

    /* nothing listens on the port any more */
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    evhttp_free(h.http);
    h.http = evhttp_new(h.base);
    ev = sample_event();
    m = msg_of(ev);
    struct result refused = {0};
    t0 = now_ms();
    CHECK(submit(&h, &m, &refused) == 0);
    CHECK(wait_done(&h, &refused, 3000) && refused.status == AB_SINK_ERROR);
    CHECK(now_ms() - t0 < 1000);
    CHECK(ab_sink_http.ready(h.s) == 0);
    ab_event_free(ev);
    h_close(&h);
}

/* close() completes what is in flight with CLOSED before it returns; submit after a
 * failed open-time probe still works; auth and extra headers are sent. */
static void test_close_and_headers(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 5000) == 0);
    char auth[] = "/tmp/ab-http-auth-XXXXXX";
    int fd = mkstemp(auth);
    CHECK(write(fd, "Bearer t0ken\n", 13) == 13);
    close(fd);
    char h1[] = "X-Extra: one", h2[] = "X-Other: two";
    char *hv[] = {h1, h2};
    h.conf.auth_file = auth;
    h.conf.headers = (struct ab_strlist){hv, 2};
    CHECK(h_reopen(&h) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    struct result r = {0};
    CHECK(submit(&h, &m, &r) == 0);
    CHECK(wait_done(&h, &r, 3000) && r.status == AB_SINK_OK);
    int last = n_seen - 1;
    CHECK(last >= 0);
    if (last >= 0) {
        CHECK_STR(header(&seen[last], "authorization"), "Bearer t0ken");
        CHECK_STR(header(&seen[last], "x-extra"), "one");
        CHECK_STR(header(&seen[last], "x-other"), "two");
        CHECK(header(&seen[last], "expect") == NULL);
    }
    answer = 0;
    struct result pending[2] = {{0}};
    CHECK(submit(&h, &m, &pending[0]) == 0);
    CHECK(submit(&h, &m, &pending[1]) == 0);
    run_for(h.base, 50);
    ab_sink_http.close(h.s, 0);
    h.s = NULL;
    CHECK(pending[0].calls == 1 && pending[0].status == AB_SINK_CLOSED);
    CHECK(pending[1].calls == 1 && pending[1].status == AB_SINK_CLOSED);
    unlink(auth);
    ab_event_free(ev);
    h_close(&h);
}

/* Readiness: ready once the open-time probe got any answer below 500. */
static void test_ready_probe(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    CHECK(ab_sink_http.ready(h.s) == 0);
    probe_answer = 404;
    CHECK(wait_ready(&h, 1, 3000));
    CHECK(n_probes == 1);
    CHECK_STR(probe_uri, "/");
    h_close(&h);

    /* --http-health-url: a GET that must answer 2xx */
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    char health[300];
    snprintf(health, sizeof(health), "http://127.0.0.1:%d/health", h.port);
    h.conf.health_url = health;
    CHECK(h_reopen(&h) == 0);
    answer = 404; /* before the loop runs the open-time probe */
    int64_t end = now_ms() + 2500;
    while (n_seen < 2 && now_ms() < end) {
        run_for(h.base, 5);
    }
    CHECK(n_seen >= 2 && ab_sink_http.ready(h.s) == 0); /* probed twice, 404: not ready */
    CHECK(n_seen >= 1 && strcmp(seen[0].uri, "/health") == 0);
    answer = 204;
    CHECK(wait_ready(&h, 1, 3000));
    h_close(&h);
}

/* One after the other, the POSTs of a worker go over one kept-alive connection and reuse
 * the easy handles: with a fixed URL (parsed once), and with a template whose path changes
 * from event to event (each POST at its own path). The static lines: a User-Agent, no
 * Accept, and a --http-header User-Agent replaces the sink's. */
static void test_reuse(void)
{
    struct harness h;
    CHECK(h_open(&h, "/fixed", "binary", 2000) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        ok += post_ok(&h, &m);
    }
    CHECK(ok == 20 && n_seen == 20);
    CHECK(n_conns == 1);
    for (int i = 0; i < n_seen; i++) {
        CHECK_STR(seen[i].uri, "/fixed");
    }
    CHECK(n_seen > 0 && strncmp(header(&seen[0], "user-agent"), "almabridge/", 11) == 0);
    CHECK(n_seen > 0 && header(&seen[0], "accept") == NULL);
    h_close(&h);

    CHECK(h_open(&h, "/t/{id}", "binary", 2000) == 0);
    char ids[20][16], *keep = ev->id;
    ok = 0;
    for (int i = 0; i < 20; i++) {
        snprintf(ids[i], sizeof(ids[i]), "id-%d", i);
        ev->id = ids[i];
        ok += post_ok(&h, &m);
    }
    ev->id = keep;
    CHECK(ok == 20 && n_seen == 20);
    CHECK(n_conns == 1);
    for (int i = 0; i < n_seen && i < 20; i++) {
        char want[32];
        snprintf(want, sizeof(want), "/t/id-%d", i);
        CHECK_STR(seen[i].uri, want);
    }
    char agent[] = "User-Agent: theirs/2", accept[] = "Accept: application/json";
    char *hv[] = {agent, accept};
    h.conf.headers = (struct ab_strlist){hv, 2};
    CHECK(h_reopen(&h) == 0);
    CHECK(post_ok(&h, &m) && n_seen == 1);
    if (n_seen == 1) {
        CHECK_STR(header(&seen[0], "user-agent"), "theirs/2");
        CHECK_STR(header(&seen[0], "accept"), "application/json");
        CHECK(strstr(seen[0].headers, "almabridge/") == NULL);
    }
    ab_event_free(ev);
    h_close(&h);
}

/* An event without data: an empty POST with no Content-Type (not libcurl's form type,
 * which a receiver would take for the datacontenttype). */
static void test_no_data(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    const char *v = "{\"specversion\":\"1.0\",\"id\":\"nd-1\",\"source\":\"urn:alma:X\","
                    "\"type\":\"t\",\"datacontenttype\":\"application/json\"}";
    struct ab_sink_msg m = {.id = "nd-1", .value = v, .value_len = strlen(v)};
    CHECK(post_ok(&h, &m) && n_seen == 1);
    if (n_seen == 1) {
        CHECK_STR(header(&seen[0], "ce-id"), "nd-1");
        CHECK(header(&seen[0], "content-type") == NULL);
        CHECK(seen[0].body_len == 0);
    }
    h_close(&h);
}

/* The proxy variables of the environment, read once at start-up, are honoured as libcurl
 * would: http_proxy sends the POST (absolute-form) through the proxy, here the receiver
 * itself; a host in no_proxy goes direct. */
static void test_proxy_from_environment(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "binary", 2000) == 0);
    char proxy[64], url[] = "http://target.invalid/p";
    snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%d", h.port);
    setenv("http_proxy", proxy, 1);
    h.conf.url = url;
    CHECK(h_reopen(&h) == 0);
    struct ab_event *ev = sample_event();
    struct ab_sink_msg m = msg_of(ev);
    CHECK(post_ok(&h, &m) && n_seen == 1);
    CHECK(n_seen == 1 && strcmp(seen[0].uri, url) == 0);

    setenv("no_proxy", "127.0.0.1", 1);
    h.conf.url = h.url;
    CHECK(h_reopen(&h) == 0);
    CHECK(post_ok(&h, &m) && n_seen == 1);
    CHECK(n_seen == 1 && strcmp(seen[0].uri, "/") == 0);
    /* read once at start-up (as documented): a proxy set later is not used until a restart */
    unsetenv("http_proxy");
    unsetenv("no_proxy");
    CHECK(h_reopen(&h) == 0);
    setenv("http_proxy", "http://127.0.0.1:1", 1); /* nothing listens there */
    CHECK(post_ok(&h, &m) && n_seen == 1);
    unsetenv("http_proxy");
    ab_event_free(ev);
    h_close(&h);
}

/* Batched mode: events handed over in one loop iteration */

#define N_BATCH 5
static char batch_lines[N_BATCH][160];
static struct ab_sink_msg batch_msgs[N_BATCH];

/* Event i (batch_lines[i], batch_msgs[i]) with this id. */
static struct ab_sink_msg *batch_msg(int i, const char *id)
{
    snprintf(batch_lines[i], sizeof(batch_lines[i]),
             "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"urn:t\",\"type\":\"t\","
             "\"datacontenttype\":\"application/json\",\"data\":{\"n\":%d}}", id, i);
    batch_msgs[i] = (struct ab_sink_msg){.value = batch_lines[i],
                                         .value_len = strlen(batch_lines[i])};
    return &batch_msgs[i];
}

/* N_BATCH events, ids e0..e4 (bad: that one's id is "BAD"), submitted in one go (no loop
 * turn between them); every result in r. */
static void submit_batch(struct harness *h, struct result *r, int bad)
{
    int before = n_seen;
    for (int i = 0; i < N_BATCH; i++) {
        char id[16];
        snprintf(id, sizeof(id), i == bad ? "BAD" : "e%d", i);
        CHECK(submit(h, batch_msg(i, id), &r[i]) == 0);
    }
    CHECK(n_seen == before); /* nothing goes out from inside submit */
    for (int i = 0; i < N_BATCH; i++) {
        CHECK(wait_done(h, &r[i], 3000) && r[i].calls == 1);
    }
}

/* The ids of the JSON array body of s, "e0,e1,..." in a static buffer; "?" when the body
 * is no array of events. */
static const char *batch_ids(const struct seen *s)
{
    static char out[256];
    cJSON *a = cJSON_Parse(s->body);
    size_t w = 0;
    out[0] = '\0';
    for (int i = 0; cJSON_IsArray(a) && i < cJSON_GetArraySize(a); i++) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(a, i), "id");
        w += (size_t)snprintf(out + w, sizeof(out) - w, "%s%s", i ? "," : "",
                              cJSON_IsString(id) ? id->valuestring : "?");
    }
    if (!cJSON_IsArray(a)) {
        snprintf(out, sizeof(out), "?");
    }
    cJSON_Delete(a);
    return out;
}

/* The events of one loop iteration go in ONE POST: application/cloudevents-batch+json, a
 * JSON array of the structured events in submit order, byte for byte; each submission
 * completed OK on the 2xx. --http-batch-max bounds a POST's events. */
static void test_batched(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "batched", 2000) == 0);
    struct result r[N_BATCH] = {0};
    submit_batch(&h, r, -1);
    for (int i = 0; i < N_BATCH; i++) {
        CHECK(r[i].status == AB_SINK_OK);
    }
    CHECK(inside_calls == 0);
    CHECK(n_seen == 1);
    if (n_seen == 1) {
        CHECK_STR(header(&seen[0], "content-type"),
                  "application/cloudevents-batch+json; charset=UTF-8");
        CHECK(header(&seen[0], "ce-id") == NULL);
        CHECK_STR(batch_ids(&seen[0]), "e0,e1,e2,e3,e4");
        char want[1024] = "[";
        for (int i = 0; i < N_BATCH; i++) {
            strcat(want, batch_lines[i]);
            strcat(want, i + 1 < N_BATCH ? "," : "]");
        }
        CHECK_STR(seen[0].body, want);
    }
    h.conf.batch_max = 2;
    CHECK(h_reopen(&h) == 0);
    struct result r2[N_BATCH] = {0};
    submit_batch(&h, r2, -1);
    CHECK(n_seen == 3);
    if (n_seen == 3) {
        CHECK_STR(batch_ids(&seen[0]), "e0,e1");
        CHECK_STR(batch_ids(&seen[1]), "e2,e3");
        CHECK_STR(batch_ids(&seen[2]), "e4");
    }
    h_close(&h);
}

/* While a POST of the worker is out, the next batch waits and grows (events of several loop
 * iterations in it) until that answer comes; a full batch goes at once beside it. */
static void test_batched_grows_while_out(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "batched", 3000) == 0);
    CHECK(wait_ready(&h, 1, 3000));
    answer = 0; /* the receiver holds the first POST */
    struct result r[N_BATCH] = {0};
    for (int i = 0; i < N_BATCH; i++) {
        char id[16];
        snprintf(id, sizeof(id), "g%d", i);
        CHECK(submit(&h, batch_msg(i, id), &r[i]) == 0);
        int64_t end = now_ms() + 3000; /* each in a loop iteration of its own */
        while (n_seen < 1 && now_ms() < end) {
            run_for(h.base, 5);
        }
        run_for(h.base, 20);
    }
    CHECK(n_seen == 1 && n_held == 1); /* g0 alone; g1..g4 wait for its answer */
    answer = 200;
    evhttp_send_reply(held[0], 200, "OK", NULL);
    n_held = 0;
    for (int i = 0; i < N_BATCH; i++) {
        CHECK(wait_done(&h, &r[i], 3000) && r[i].status == AB_SINK_OK);
    }
    CHECK(n_seen == 2);
    if (n_seen == 2) {
        CHECK_STR(batch_ids(&seen[0]), "g0");
        CHECK_STR(batch_ids(&seen[1]), "g1,g2,g3,g4");
    }
    h_close(&h);
}

/* A batch refused for good (400) is split: each event sent again alone; only the one the
 * target refuses alone goes to the dead letter, every other is stored, all OK. A 5xx for a
 * batch: every event of it ERROR; no answer: every event TIMEOUT. */
static void test_batched_refusals(void)
{
    struct harness h;
    CHECK(h_open(&h, "/", "batched", 2000) == 0);
    refuse = "\"BAD\"";
    struct result r[N_BATCH] = {0};
    submit_batch(&h, r, 2);
    for (int i = 0; i < N_BATCH; i++) {
        CHECK(r[i].status == AB_SINK_OK);
    }
    CHECK(n_seen == 1 + N_BATCH); /* the batch, then each alone */
    if (n_seen == 1 + N_BATCH) {
        CHECK_STR(batch_ids(&seen[0]), "e0,e1,BAD,e3,e4");
        int alone = 0;
        for (int i = 1; i < n_seen; i++) {
            alone += strchr(batch_ids(&seen[i]), ',') == NULL;
        }
        CHECK(alone == N_BATCH);
    }
    size_t len;
    char *dl = read_file(h.dl, &len);
    CHECK(dl != NULL && strchr(dl, '\n') == dl + len - 1); /* one line */
    CHECK(dl && strstr(dl, "\"status\":400") && strstr(dl, batch_lines[2]));
    free(dl);
    refuse = NULL;
    answer = 503;
    struct result r2[N_BATCH] = {0};
    submit_batch(&h, r2, -1);
    for (int i = 0; i < N_BATCH; i++) {
        CHECK(r2[i].status == AB_SINK_ERROR && strstr(r2[i].err, "503"));
    }
    h_close(&h);
    CHECK(h_open(&h, "/", "batched", 300) == 0);
    answer = 0;
    struct result r3[N_BATCH] = {0};
    submit_batch(&h, r3, -1);
    for (int i = 0; i < N_BATCH; i++) {
        CHECK(r3[i].status == AB_SINK_TIMEOUT);
    }
    h_close(&h);
}

int main(void)
{
    ab_log_configure("error", "text", NULL, 0);
    RUN(test_binary);
    RUN(test_binary_encoding);
    RUN(test_structured);
    RUN(test_template_from_line);
    RUN(test_malformed_lines);
    RUN(test_transient);
    RUN(test_dead_letter);
    RUN(test_timeout_and_refused);
    RUN(test_close_and_headers);
    RUN(test_ready_probe);
    RUN(test_reuse);
    RUN(test_no_data);
    RUN(test_proxy_from_environment);
    RUN(test_batched);
    RUN(test_batched_grows_while_out);
    RUN(test_batched_refusals);
    return TEST_SUMMARY();
}
