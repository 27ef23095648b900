/* ratepost: a fixed-rate (open-loop) HTTP load generator, for latency at a given rate (what
 * wrk2 does; wrk2 is not packaged in Debian).
 *
 *   ratepost -r RATE -d SECONDS -c CONNS -b BODYFILE [-s SIGNATURE] [-w WARMUP_S] URL
 *
 * Sends POST URL with BODYFILE (Content-Type: application/json, X-Exl-Signature: SIGNATURE)
 * at RATE requests per second over up to CONNS keep-alive connections. Request i is due at
 * start + i / RATE, whether or not earlier ones have been answered; when every connection is
 * busy the request waits for one, and its latency still counts from when it was due (no
 * coordinated omission: a stalled server shows as high percentiles, not as a lower rate).
 * Requests due in the first WARMUP_S seconds are sent but not counted.
 *
 * Prints one line `RATEPOST_JSON {...}`: requests due and answered, answers by class,
 * errors, the achieved rate, and latency percentiles in microseconds. Exit 0 unless the
 * arguments are wrong or the server cannot be reached at all. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

struct conn {
    struct gen *g;
    struct bufferevent *bev;
    int busy;
    double due;     /* when the request on this connection was due (s, monotonic) */
    long body_left; /* -1 while reading the head */
    int status;
    int close_after;
};

struct gen {
    struct event_base *base;
    struct event *tick;
    struct sockaddr_storage addr;
    int addrlen;
    char *req;
    size_t req_len;
    double rate, duration, warmup, start;
    long next;    /* index of the next request to become due */
    long total;   /* requests due in the whole run */
    double *wait; /* due times of requests waiting for a free connection (a ring) */
    long wait_head, wait_n, wait_cap;
    struct conn *conns;
    int nconns;
    uint32_t *lat; /* microseconds, counted requests only */
    long nlat, cap_lat;
    long answered, counted, s2xx, s4xx, s5xx, sother, errors, reconnects;
    double last_answer;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void conn_open(struct conn *c);

static void on_response(struct conn *c)
{
    struct gen *g = c->g;
    double t = now_s();
    g->answered++;
    g->last_answer = t;
    if (c->due >= g->start + g->warmup) {
        g->counted++;
        if (g->nlat == g->cap_lat) {
            g->cap_lat = g->cap_lat ? 2 * g->cap_lat : 65536;
            g->lat = realloc(g->lat, (size_t)g->cap_lat * sizeof(*g->lat));
        }
        double us = (t - c->due) * 1e6;
        g->lat[g->nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
        if (c->status >= 200 && c->status < 300) {
            g->s2xx++;
        } else if (c->status >= 400 && c->status < 500) {
            g->s4xx++;
        } else if (c->status >= 500 && c->status < 600) {
            g->s5xx++;
        } else {
            g->sother++;
        }
    }
    c->busy = 0;
}

/* Send the request due at `due` on connection c. */
static void conn_send(struct conn *c, double due)
{
    c->busy = 1;
    c->due = due;
    c->body_left = -1;
    c->status = 0;
    c->close_after = 0;
    bufferevent_write(c->bev, c->g->req, c->g->req_len);
}

/* A connection became free: give it the oldest waiting request, if any. */
static void conn_next(struct conn *c)
{
    struct gen *g = c->g;
    if (g->wait_n > 0) {
        double due = g->wait[g->wait_head];
        g->wait_head = (g->wait_head + 1) % g->wait_cap;
        g->wait_n--;
        conn_send(c, due);
    }
}

/* Parse as much of the answer as has arrived: the head (status line, Content-Length,
 * Connection: close), then the body. */
static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (!c->busy) {
            evbuffer_drain(in, evbuffer_get_length(in));
            return;
        }
        if (c->body_left < 0) {
            struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
            if (end.pos < 0) {
                return;
            }
            size_t hlen = (size_t)end.pos + 4;
            char *head = malloc(hlen + 1);
            evbuffer_remove(in, head, hlen);
            head[hlen] = '\0';
            c->status = 0;
            sscanf(head, "HTTP/%*d.%*d %d", &c->status);
            c->body_left = 0;
            for (char *line = strstr(head, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
                char *h = line + 2;
                if (strncasecmp(h, "Content-Length:", 15) == 0) {
                    c->body_left = strtol(h + 15, NULL, 10);
                } else if (strncasecmp(h, "Connection:", 11) == 0 && strstr(h, "close") != NULL) {
                    c->close_after = 1;
                }
            }
            free(head);
        }
        size_t have = evbuffer_get_length(in);
        size_t take = have < (size_t)c->body_left ? have : (size_t)c->body_left;
        evbuffer_drain(in, take);
        c->body_left -= (long)take;
        if (c->body_left > 0) {
            return;
        }
        on_response(c);
        if (c->close_after) {
            bufferevent_free(c->bev);
            c->g->reconnects++;
            conn_open(c);
            return;
        }
        conn_next(c);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (!c->busy) {
            conn_next(c);
        }
        return;
    }
    if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
        struct gen *g = c->g;
        if (c->busy) { /* the request is lost: an error, its slot is freed */
            g->errors++;
            c->busy = 0;
        }
        bufferevent_free(c->bev);
        g->reconnects++;
        conn_open(c);
    }
}

static void conn_open(struct conn *c)
{
    struct gen *g = c->g;
    c->busy = 0;
    c->bev = bufferevent_socket_new(g->base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&g->addr, g->addrlen) != 0) {
        g->errors++;
    }
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
}

static struct conn *free_conn(struct gen *g)
{
    for (int i = 0; i < g->nconns; i++) {
        struct conn *c = &g->conns[i];
        if (!c->busy && c->bev != NULL) {
            return c;
        }
    }
    return NULL;
}

/* Send (or queue) every request that has become due, then sleep until the next one is due
 * (a precise timer: timerfd, so microseconds rather than epoll's milliseconds). */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct gen *g = arg;
    double t = now_s();
    while (g->next < g->total) {
        double due = g->start + (double)g->next / g->rate;
        if (due > t) {
            break;
        }
        g->next++;
        struct conn *c = g->wait_n == 0 ? free_conn(g) : NULL;
        if (c != NULL) {
            conn_send(c, due);
        } else {
            if (g->wait_n == g->wait_cap) {
                long ncap = g->wait_cap ? 2 * g->wait_cap : 4096;
                double *nw = malloc((size_t)ncap * sizeof(*nw));
                for (long i = 0; i < g->wait_n; i++) {
                    nw[i] = g->wait[(g->wait_head + i) % g->wait_cap];
                }
                free(g->wait);
                g->wait = nw;
                g->wait_head = 0;
                g->wait_cap = ncap;
            }
            g->wait[(g->wait_head + g->wait_n) % g->wait_cap] = due;
            g->wait_n++;
        }
    }
    int busy = 0;
    for (int i = 0; i < g->nconns; i++) {
        busy += g->conns[i].busy;
    }
    /* done: everything sent and answered, or 10 s after the last request was due */
    if (g->next >= g->total &&
        ((busy == 0 && g->wait_n == 0) || t > g->start + g->duration + 10.0)) {
        event_base_loopexit(g->base, NULL);
        return;
    }
    double wait = g->next < g->total ? g->start + (double)g->next / g->rate - now_s() : 0.01;
    wait = wait < 0 ? 0 : wait;
    struct timeval tv = {(time_t)wait, (suseconds_t)((wait - (time_t)wait) * 1e6)};
    event_add(g->tick, &tv);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(const struct gen *g, double p)
{
    if (g->nlat == 0) {
        return 0;
    }
    long i = (long)ceil(p / 100.0 * (double)g->nlat) - 1;
    return g->lat[i < 0 ? 0 : i >= g->nlat ? g->nlat - 1 : i];
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

int main(int argc, char **argv)
{
    struct gen g = {.rate = 1000, .duration = 10, .nconns = 8};
    const char *body_path = NULL, *sig = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "r:d:c:b:s:w:")) != -1) {
        switch (opt) {
        case 'r': g.rate = atof(optarg); break;
        case 'd': g.duration = atof(optarg); break;
        case 'c': g.nconns = atoi(optarg); break;
        case 'b': body_path = optarg; break;
        case 's': sig = optarg; break;
        case 'w': g.warmup = atof(optarg); break;
        default: goto usage;
        }
    }
    if (optind + 1 != argc || body_path == NULL || g.rate <= 0 || g.duration <= 0 ||
        g.nconns < 1) {
        goto usage;
    }
    char host[256], path[1024] = "/";
    int port = 80;
    if (sscanf(argv[optind], "http://%255[^:/]:%d%1023s", host, &port, path) < 2) {
        fprintf(stderr, "URL must be http://HOST:PORT/PATH\n");
        return 2;
    }
    char hostport[300];
    snprintf(hostport, sizeof(hostport), "%s:%d", host, port);
    g.addrlen = sizeof(g.addr);
    if (evutil_parse_sockaddr_port(hostport, (struct sockaddr *)&g.addr, &g.addrlen) != 0) {
        fprintf(stderr, "HOST must be a numeric address: %s\n", host);
        return 2;
    }
    size_t blen;
    char *body = read_file(body_path, &blen);
    if (body == NULL) {
        perror(body_path);
        return 2;
    }
    char head[2048];
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "%s%s%sContent-Length: %zu\r\n\r\n",
                      path, hostport, sig ? "X-Exl-Signature: " : "", sig ? sig : "",
                      sig ? "\r\n" : "", blen);
    g.req_len = (size_t)hn + blen;
    g.req = malloc(g.req_len);
    memcpy(g.req, head, (size_t)hn);
    memcpy(g.req + hn, body, blen);
    free(body);

    signal(SIGPIPE, SIG_IGN);
    struct event_config *ecfg = event_config_new();
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    g.base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    g.conns = calloc((size_t)g.nconns, sizeof(*g.conns));
    for (int i = 0; i < g.nconns; i++) {
        g.conns[i].g = &g;
        conn_open(&g.conns[i]);
    }
    /* let the connections open before the clock starts */
    struct timeval settle = {0, 200000};
    event_base_loopexit(g.base, &settle);
    event_base_dispatch(g.base);

    g.total = (long)(g.rate * g.duration);
    g.start = now_s();
    g.tick = event_new(g.base, -1, 0, on_tick, &g);
    event_active(g.tick, EV_TIMEOUT, 0);
    event_base_dispatch(g.base);
    double end = g.last_answer > g.start ? g.last_answer : now_s();

    qsort(g.lat, (size_t)g.nlat, sizeof(*g.lat), cmp_u32);
    long unanswered = g.next - g.answered - g.errors;
    double sum = 0;
    for (long i = 0; i < g.nlat; i++) {
        sum += g.lat[i];
    }
    printf("RATEPOST_JSON {\"rate\":%.1f,\"duration_s\":%.1f,\"warmup_s\":%.1f,\"conns\":%d,"
           "\"due\":%ld,\"answered\":%ld,\"counted\":%ld,\"achieved_rps\":%.1f,"
           "\"s2xx\":%ld,\"s4xx\":%ld,\"s5xx\":%ld,\"sother\":%ld,\"errors\":%ld,"
           "\"unanswered\":%ld,\"reconnects\":%ld,\"lat_mean_us\":%.1f,\"lat_p50_us\":%u,"
           "\"lat_p90_us\":%u,\"lat_p99_us\":%u,\"lat_p999_us\":%u,\"lat_max_us\":%u}\n",
           g.rate, g.duration, g.warmup, g.nconns, g.total, g.answered, g.counted,
           g.answered / (end - g.start), g.s2xx, g.s4xx, g.s5xx, g.sother, g.errors,
           unanswered, g.reconnects, g.nlat ? sum / g.nlat : 0.0, pct(&g, 50), pct(&g, 90),
           pct(&g, 99), pct(&g, 99.9), g.nlat ? g.lat[g.nlat - 1] : 0);
    for (int i = 0; i < g.nconns; i++) {
        if (g.conns[i].bev != NULL) {
            bufferevent_free(g.conns[i].bev);
        }
    }
    event_free(g.tick);
    event_base_free(g.base);
    free(g.conns);
    free(g.wait);
    free(g.lat);
    free(g.req);
    return g.answered == 0 ? 1 : 0;

usage:
    fprintf(stderr, "usage: %s -r RATE -d SECONDS -c CONNS -b BODYFILE [-s SIGNATURE] "
                    "[-w WARMUP_S] http://HOST:PORT/PATH\n", argv[0]);
    return 2;
}
