/* The limit: libevent's evhttp receiving a POST and answering it, nothing else (no
 * signature, no parsing, no sink). Whatever almabridge costs above this is its own work.
 *
 *   bare_evhttp [--listen HOST:PORT] [--threads N]
 *
 * Every POST gets 200 with the same small JSON body and headers almabridge sends
 * (Content-Type, Cache-Control); GET /healthz gets 200. With --threads N, N event loops each
 * accept on their own SO_REUSEPORT socket (the kernel spreads the connections; almabridge's
 * workers share one socket and take turns, see on_accept_again() in core/server.c). Runs
 * until SIGTERM or SIGINT. Built by `make bench-tools` into build/bench/bare_evhttp. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <event2/util.h>

#define ANSWER "{\"id\":\"4729646413727017106\",\"status\":\"accepted\"}"

struct loop {
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *listener;
    struct event *stop_ev;
    pthread_t thread;
};

static void on_request(struct evhttp_request *req, void *arg)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    evbuffer_drain(in, evbuffer_get_length(in));
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evbuffer_add_reference(out, ANSWER, sizeof(ANSWER) - 1, NULL, NULL);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct loop *l = arg;
    event_base_loopexit(l->base, NULL);
}

static void *run_loop(void *arg)
{
    struct loop *l = arg;
    event_base_dispatch(l->base);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *listen = "127.0.0.1:8080";
    int threads = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            threads = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--listen HOST:PORT] [--threads N]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1 || threads > 64) {
        threads = 1;
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (evutil_parse_sockaddr_port(listen, (struct sockaddr *)&ss, &sslen) != 0) {
        fprintf(stderr, "bad --listen %s\n", listen);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    struct loop *loops = calloc((size_t)threads, sizeof(*loops));
    for (int i = 0; i < threads; i++) {
        struct loop *l = &loops[i];
        l->base = event_base_new();
        l->http = evhttp_new(l->base);
        evhttp_set_gencb(l->http, on_request, NULL);
        evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
        l->listener = evconnlistener_new_bind(
            l->base, NULL, NULL,
            LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT | LEV_OPT_CLOSE_ON_FREE |
                LEV_OPT_CLOSE_ON_EXEC,
            1024, (struct sockaddr *)&ss, sslen);
        if (l->listener == NULL || evhttp_bind_listener(l->http, l->listener) == NULL) {
            fprintf(stderr, "cannot listen on %s\n", listen);
            return 1;
        }
        l->stop_ev = evsignal_new(l->base, i == 0 ? SIGTERM : SIGINT, on_stop, l);
        if (i == 0) {
            event_add(l->stop_ev, NULL);
        }
    }
    /* loop 0 runs on the main thread and stops the others when it stops */
    for (int i = 1; i < threads; i++) {
        pthread_create(&loops[i].thread, NULL, run_loop, &loops[i]);
    }
    fprintf(stderr, "bare_evhttp listening on %s, %d thread(s)\n", listen, threads);
    event_base_dispatch(loops[0].base);
    for (int i = 1; i < threads; i++) {
        event_base_loopexit(loops[i].base, NULL);
        pthread_join(loops[i].thread, NULL);
    }
    for (int i = 0; i < threads; i++) {
        event_free(loops[i].stop_ev);
        evhttp_free(loops[i].http);
        event_base_free(loops[i].base);
    }
    free(loops);
    return 0;
}
