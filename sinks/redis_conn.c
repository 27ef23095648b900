/* One hiredis async connection and its life cycle (redis_conn.h). */
#include "redis_conn.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "log.h"
#include "mem.h"

struct ab_redis_conn {
    struct ab_redis_conn_conf conf;
    void *owner;
    struct event_base *evbase;
    redisAsyncContext *ac; /* NULL while DOWN */
    enum ab_redis_conn_state state;
    int closing;
    int hs_pending; /* handshake replies still to come */
    int hs_failed;
    struct event *retry_ev;   /* DOWN -> CONNECTING */
    struct event *connect_ev; /* deadline for CONNECTING + HANDSHAKE */
    long backoff_ms;          /* the next retry's delay */
    struct timespec retry_at; /* CLOCK_MONOTONIC, while DOWN */
    char reason[200];         /* why the connection is (or was last) down */
    char logged[200];         /* the last failure logged at error level */
    int was_ready;            /* for "connected" versus "reconnected" */
    int no_set_nx_get;        /* the current server refused SET ... NX GET */
};

static void conn_connect(struct ab_redis_conn *c);

/* ---- the libevent glue: hiredis's adapters/libevent.h, with fewer epoll_ctl calls -------
 *
 * hiredis 0.14's adapter arms a one-shot read event that hiredis re-arms after every read,
 * and arms and disarms the write event for every batch of commands: four epoll_ctl calls
 * per round trip. Here the read event persists (hiredis only removes it when the
 * connection goes), and a batch of commands queued on a connected socket is written at the
 * end of the loop iteration from an event without a descriptor; only a write that does not
 * go out in full (or the connect in progress) arms the write event. */

struct glue {
    redisAsyncContext *ac;
    struct event *rev, *wev, *flush_ev;
    int in_write; /* inside redisAsyncHandleWrite: a re-arm means the socket is full */
    int *alive;   /* set while a handler runs: cleared when hiredis frees the context */
};

static void glue_write(struct glue *g)
{
    int alive = 1;
    g->alive = &alive;
    g->in_write = 1;
    redisAsyncHandleWrite(g->ac); /* may free the context, and g with it */
    if (alive) {
        g->in_write = 0;
        g->alive = NULL;
    }
}

static void on_glue_read(evutil_socket_t fd, short what, void *arg)
{
    struct glue *g = arg;
    redisAsyncHandleRead(g->ac);
}

static void on_glue_write(evutil_socket_t fd, short what, void *arg)
{
    glue_write(arg);
}

static void glue_add_read(void *p)
{
    struct glue *g = p;
    if (!event_pending(g->rev, EV_READ, NULL)) {
        event_add(g->rev, NULL);
    }
}

static void glue_del_read(void *p)
{
    event_del(((struct glue *)p)->rev);
}

static void glue_add_write(void *p)
{
    struct glue *g = p;
    if (g->in_write || !(g->ac->c.flags & REDIS_CONNECTED)) {
        event_add(g->wev, NULL); /* wait until the socket takes more (or is connected) */
    } else {
        event_active(g->flush_ev, EV_WRITE, 0);
    }
}

static void glue_del_write(void *p)
{
    struct glue *g = p;
    event_del(g->wev);
    event_del(g->flush_ev);
}

static void glue_cleanup(void *p)
{
    struct glue *g = p;
    if (g->alive) {
        *g->alive = 0;
    }
    event_free(g->rev);
    event_free(g->wev);
    event_free(g->flush_ev);
    free(g);
}

static void glue_attach(redisAsyncContext *ac, struct event_base *base)
{
    struct glue *g = ab_calloc(1, sizeof(*g));
    g->ac = ac;
    g->rev = event_new(base, ac->c.fd, EV_READ | EV_PERSIST, on_glue_read, g);
    g->wev = event_new(base, ac->c.fd, EV_WRITE, on_glue_write, g);
    g->flush_ev = event_new(base, -1, 0, on_glue_write, g);
    ac->ev.addRead = glue_add_read;
    ac->ev.delRead = glue_del_read;
    ac->ev.addWrite = glue_add_write;
    ac->ev.delWrite = glue_del_write;
    ac->ev.cleanup = glue_cleanup;
    ac->ev.data = g;
    event_add(g->rev, NULL);
    event_add(g->wev, NULL); /* the connect's completion */
}

static struct timeval ms_tv(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

/* Loop thread: the connection is gone (or never came up). Forget the context (whoever
 * frees it), note why, log it once per distinct reason, and schedule the next attempt. */
static void went_down(struct ab_redis_conn *c, const char *reason)
{
    c->ac = NULL;
    c->state = AB_REDIS_DOWN;
    c->hs_pending = 0;
    evtimer_del(c->connect_ev);
    if (reason) {
        snprintf(c->reason, sizeof(c->reason), "%s", reason);
    }
    if (c->closing) {
        return;
    }
    long delay = c->backoff_ms;
    if (c->conf.log_name && strcmp(c->logged, c->reason) != 0) {
        ab_error("%s: %s (%s); retrying in %ld ms, backing off up to %ld ms", c->conf.log_name,
                 c->reason, c->conf.addr, delay, c->conf.backoff_max_ms);
        snprintf(c->logged, sizeof(c->logged), "%s", c->reason);
    } else if (c->conf.log_name) {
        ab_debug("%s: %s (%s); retrying in %ld ms", c->conf.log_name, c->reason, c->conf.addr,
                 delay);
    }
    clock_gettime(CLOCK_MONOTONIC, &c->retry_at);
    c->retry_at.tv_sec += delay / 1000;
    c->retry_at.tv_nsec += (delay % 1000) * 1000000;
    if (c->retry_at.tv_nsec >= 1000000000) {
        c->retry_at.tv_sec++;
        c->retry_at.tv_nsec -= 1000000000;
    }
    struct timeval tv = ms_tv(delay);
    evtimer_add(c->retry_ev, &tv);
    c->backoff_ms = delay * 2 < c->conf.backoff_max_ms ? delay * 2 : c->conf.backoff_max_ms;
}

void ab_redis_conn_drop(struct ab_redis_conn *c, const char *reason)
{
    redisAsyncContext *ac = c->ac;
    went_down(c, reason);
    if (ac) {
        redisAsyncFree(ac);
    }
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    conn_connect(arg);
}

/* Loop thread: CONNECTING + HANDSHAKE took longer than the deadline (a black-holed host,
 * or a Redis that accepts but does not answer). */
static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct ab_redis_conn *c = arg;
    char reason[160];
    snprintf(reason, sizeof(reason), "no %s within %ld ms",
             c->state == AB_REDIS_CONNECTING ? "connection" : "answer to AUTH/SELECT/PING",
             c->conf.connect_timeout_ms);
    ab_redis_conn_drop(c, reason);
}

static const char *const hs_steps[] = {"AUTH", "SELECT", "PING"};

/* Loop thread, hiredis reply callback: one reply of the handshake (privdata = the index
 * of the step in hs_steps). A failure notes a clear reason and disconnects once the
 * remaining replies are in; the disconnect callback then schedules the retry. */
static void on_handshake_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct ab_redis_conn *c = ac->data;
    redisReply *r = reply;
    const char *step = hs_steps[(intptr_t)privdata];
    if (r == NULL || c->ac != ac) {
        return; /* the connection is going away: the disconnect path reports it */
    }
    c->hs_pending--;
    if (r->type == REDIS_REPLY_ERROR && !c->hs_failed) {
        c->hs_failed = 1;
        if (strncmp(r->str, "WRONGPASS", 9) == 0 || strcmp(step, "AUTH") == 0) {
            snprintf(c->reason, sizeof(c->reason), "authentication failed: %s", r->str);
        } else if (strncmp(r->str, "NOAUTH", 6) == 0) {
            snprintf(c->reason, sizeof(c->reason),
                     "authentication required: %s (give it in the URL: redis://:PASSWORD@host "
                     "or redis://USER:PASSWORD@host)", r->str);
        } else {
            snprintf(c->reason, sizeof(c->reason), "%s%s failed: %s", step,
                     strcmp(step, "SELECT") == 0 ? " (the /db of the URL)" : "", r->str);
        }
        redisAsyncDisconnect(ac); /* after the replies still due; on_disconnect follows */
        return;
    }
    if (c->hs_pending > 0 || c->hs_failed) {
        return;
    }
    c->state = AB_REDIS_READY;
    c->backoff_ms = c->conf.backoff_min_ms;
    evtimer_del(c->connect_ev);
    if (c->conf.log_name) {
        ab_info("%s: %s %s", c->conf.log_name, c->was_ready ? "reconnected to" : "connected to",
                c->conf.addr);
    }
    c->was_ready = 1;
    c->reason[0] = '\0';
    c->logged[0] = '\0';
}

/* Pipeline AUTH (when there is a password), SELECT (db > 0) and PING, which also tells a
 * server that is still loading its data (-LOADING) or wants a password (-NOAUTH). */
static void send_handshake(struct ab_redis_conn *c)
{
    const struct ab_redis_conn_conf *cf = &c->conf;
    char db[24];
    snprintf(db, sizeof(db), "%ld", cf->db);
    c->hs_pending = 0;
    c->hs_failed = 0;
    if (cf->password) {
        const char *argv[3] = {"AUTH", cf->user ? cf->user : cf->password, cf->password};
        int argc = cf->user ? 3 : 2;
        if (redisAsyncCommandArgv(c->ac, on_handshake_reply, (void *)(intptr_t)0, argc, argv,
                                  NULL) == REDIS_OK) {
            c->hs_pending++;
        }
    }
    if (cf->db > 0) {
        const char *argv[2] = {"SELECT", db};
        if (redisAsyncCommandArgv(c->ac, on_handshake_reply, (void *)(intptr_t)1, 2, argv,
                                  NULL) == REDIS_OK) {
            c->hs_pending++;
        }
    }
    const char *argv[1] = {"PING"};
    if (redisAsyncCommandArgv(c->ac, on_handshake_reply, (void *)(intptr_t)2, 1, argv, NULL) ==
        REDIS_OK) {
        c->hs_pending++;
    }
}

/* Loop thread, hiredis connect callback. On failure hiredis frees the context right after
 * this returns (and calls no disconnect callback): drop the pointer, retry later. */
static void on_connect(const redisAsyncContext *ac, int status)
{
    struct ab_redis_conn *c = ac->data;
    if (c->ac != ac) {
        return;
    }
    if (status != REDIS_OK) {
        char reason[160];
        snprintf(reason, sizeof(reason), "cannot connect: %s",
                 ac->c.err ? ac->c.errstr : "connect failed");
        went_down(c, reason);
        return;
    }
    if (c->conf.keepalive) {
        redisEnableKeepAlive(&c->ac->c);
    }
    c->state = AB_REDIS_HANDSHAKE;
    send_handshake(c);
}

/* Loop thread, hiredis disconnect callback: the pending replies have already run with
 * NULL; hiredis frees the context after this returns. */
static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct ab_redis_conn *c = ac->data;
    if (c->ac != ac) {
        return; /* dropped by us: already accounted for */
    }
    char reason[200];
    if (c->hs_failed) {
        snprintf(reason, sizeof(reason), "%s", c->reason);
    } else {
        snprintf(reason, sizeof(reason), "connection lost: %s",
                 status != REDIS_OK && ac->c.err ? ac->c.errstr : "closed by the server");
    }
    went_down(c, reason);
}

/* Loop thread: open a connection and attach it to the loop. A failure that hiredis sees
 * at once (connection refused on loopback, bad address) schedules the next retry.
 * Note: a host name is resolved here with a blocking getaddrinfo (hiredis 0.14); give an
 * IP address, or a name in /etc/hosts, so that a slow DNS cannot stall the loop. */
static void conn_connect(struct ab_redis_conn *c)
{
    redisAsyncContext *ac = redisAsyncConnect(c->conf.host, c->conf.port);
    if (ac == NULL || ac->err) {
        char reason[160];
        snprintf(reason, sizeof(reason), "cannot connect: %s",
                 ac == NULL ? "out of memory" : ac->c.err ? ac->c.errstr : "error");
        if (ac) {
            redisAsyncFree(ac);
        }
        went_down(c, reason);
        return;
    }
    ac->data = c;
    glue_attach(ac, c->evbase);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    c->state = AB_REDIS_CONNECTING;
    c->no_set_nx_get = 0;
    if (c->conf.connect_timeout_ms > 0) {
        struct timeval tv = ms_tv(c->conf.connect_timeout_ms);
        evtimer_add(c->connect_ev, &tv);
    }
}

struct ab_redis_conn *ab_redis_conn_new(struct event_base *base,
                                        const struct ab_redis_conn_conf *conf, void *owner)
{
    struct ab_redis_conn *c = ab_calloc(1, sizeof(*c));
    c->conf = *conf;
    c->owner = owner;
    c->evbase = base;
    c->backoff_ms = conf->backoff_min_ms;
    c->retry_ev = evtimer_new(base, on_retry, c);
    c->connect_ev = evtimer_new(base, on_connect_timeout, c);
    conn_connect(c);
    return c;
}

void ab_redis_conn_free(struct ab_redis_conn *c)
{
    if (c == NULL) {
        return;
    }
    ab_redis_conn_closing(c);
    if (c->ac) {
        ab_redis_conn_drop(c, "closed"); /* hands every command back */
    }
    event_free(c->retry_ev);
    event_free(c->connect_ev);
    free(c);
}

void ab_redis_conn_closing(struct ab_redis_conn *c)
{
    c->closing = 1;
    evtimer_del(c->retry_ev);
    evtimer_del(c->connect_ev);
}

void *ab_redis_conn_owner(const redisAsyncContext *ac)
{
    return ((const struct ab_redis_conn *)ac->data)->owner;
}

redisAsyncContext *ab_redis_conn_ac(const struct ab_redis_conn *c)
{
    return c->ac;
}

enum ab_redis_conn_state ab_redis_conn_state(const struct ab_redis_conn *c)
{
    return c->state;
}

const char *ab_redis_conn_reason(const struct ab_redis_conn *c)
{
    return c->reason;
}

long ab_redis_conn_retry_in_ms(const struct ab_redis_conn *c)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (long)(c->retry_at.tv_sec - now.tv_sec) * 1000 +
              (c->retry_at.tv_nsec - now.tv_nsec) / 1000000;
    return ms > 0 ? ms : 0;
}

void ab_redis_script_sha(const char *script, char out[41])
{
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)script, strlen(script), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++) {
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    }
}

int ab_redis_conn_set_nx_get(const struct ab_redis_conn *c)
{
    return !c->no_set_nx_get;
}

void ab_redis_conn_no_set_nx_get(struct ab_redis_conn *c, const redisAsyncContext *ac)
{
    if (c->ac == ac && !c->no_set_nx_get) {
        c->no_set_nx_get = 1;
        ab_debug("redis %s: SET ... NX GET refused (Redis < 7.0): Lua on this connection",
                 c->conf.addr);
    }
}

int ab_redis_refuses_set_nx_get(const redisReply *reply)
{
    return reply != NULL && reply->type == REDIS_REPLY_ERROR &&
           strstr(reply->str, "syntax error") != NULL;
}

/* Decimal digits of n into p (no terminator); returns the end. */
static char *put_num(char *p, size_t n)
{
    char tmp[24];
    int k = 0;
    do {
        tmp[k++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (k > 0) {
        *p++ = tmp[--k];
    }
    return p;
}

int ab_redis_command_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata, int argc,
                          const char **argv, const size_t *argvlen)
{
    char stack[4096], *buf = stack;
    size_t total = 1 + 20 + 2;
    for (int i = 0; i < argc; i++) {
        total += 1 + 20 + 2 + (argvlen ? argvlen[i] : strlen(argv[i])) + 2;
    }
    if (total > sizeof(stack)) {
        buf = ab_malloc(total);
    }
    char *p = buf;
    *p++ = '*';
    p = put_num(p, (size_t)argc);
    *p++ = '\r', *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p = put_num(p, len);
        *p++ = '\r', *p++ = '\n';
        memcpy(p, argv[i], len);
        p += len;
        *p++ = '\r', *p++ = '\n';
    }
    int rc = redisAsyncFormattedCommand(ac, fn, privdata, buf, (size_t)(p - buf));
    if (buf != stack) {
        free(buf);
    }
    return rc;
}

int ab_redis_bench_floor(const char *name)
{
    const char *v = getenv("ALMABRIDGE_BENCH_FLOOR");
    if (v == NULL || strcmp(v, name) != 0) {
        return 0;
    }
    ab_warn("ALMABRIDGE_BENCH_FLOOR=%s: a benchmark's floor, not a configuration (%s)", name,
            strcmp(name, "store-ping") == 0 ? "deduplication is OFF" : "slower writes");
    return 1;
}
