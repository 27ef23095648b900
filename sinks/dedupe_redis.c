/* The Redis deduplication store, --dedupe-store redis://...: shared by every replica.
 *
 *   almabridge:dedupe:<key> = "1" (in flight, PX claim_ms) | "2" (stored, PX window)
 *
 *   claim:   SET key "1" PX claim_ms NX GET: nil when it set the key (claimed), else the
 *            value ("1" or "2"), setting nothing (atomic: one copy of all the replicas' gets
 *            nil). Redis < 7.0 refuses NX with GET ("ERR syntax error"): then, for the rest
 *            of that connection, EVALSHA of CLAIM_LUA, the same in a script ("0" for nil)
 *   stored:  SET key "2" PX window (overwrites the claim)
 *   release: EVALSHA of RELEASE_LUA: DEL only while the value is "1" (a claim, never a
 *            stored marker)
 *   peek:    MGET of up to AB_DEDUPE_PEEK_MAX keys (spool inspect): nil free, "1", "2"
 *
 * A script missing from the server's cache (NOSCRIPT after a restart or SCRIPT FLUSH) is
 * sent again with EVAL. One hiredis connection per worker loop (redis_conn.h, the Redis
 * sink's too), its commands entries of a pending list (core/pending.h) with the store's
 * deadline; a command without reply in time drops the connection. Reconnects every
 * RETRY_MS while down; while down claim and mark refuse at once, so a webhook never waits
 * on a dead store.
 *
 * Threads: global_init/global_free on the start-up thread, the rest on the loop thread. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "dedupe.h"
#include "dedupe_store.h"
#include "log.h"
#include "mem.h"
#include "pending.h"
#include "redis_conn.h"
#include "sink.h"

#define PREFIX AB_DEDUPE_REDIS_PREFIX
#define RETRY_MS 500
#define STATE_BASE 100 /* pending statuses: STATE_BASE + ab_dedupe_state */

static const char CLAIM_LUA[] =
    "local v = redis.call('GET', KEYS[1]) if v then return v end "
    "redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) return '0'";
static const char RELEASE_LUA[] =
    "if redis.call('GET', KEYS[1]) == '1' then return redis.call('DEL', KEYS[1]) end return 0";

struct rshared {
    char *host, *user, *password;
    int port;
    long db;
    char addr[300];
    char claim_ms[24], window_ms[24];
    char claim_sha[41], release_sha[41];
    long timeout_ms;
    int floor_ping; /* ab_redis_bench_floor("store-ping"): claims and markers are PINGs */
};

struct rstore {
    struct ab_dedupe base;
    struct rshared *sh;
    struct ab_redis_conn *conn; /* the connection and its life cycle */
    int closing;
    struct ab_pending *pending;
};

/* What travels with a command: to resend a script with EVAL after NOSCRIPT, or a claim
 * as a script after a refused SET NX GET; a peek's answer goes to states[0..n). */
enum { CMD_STORED = 0, CMD_CLAIM = 1, CMD_RELEASE = 2, CMD_PEEK = 3 };
struct rcmd {
    int script; /* CMD_* */
    int lua;    /* sent as a script (EVALSHA, EVAL) */
    int *states;
    size_t n;
    char key[];
};

static int rs_global_init(const struct ab_dedupe_conf *conf, void **shared, char *errstr,
                          size_t errlen)
{
    struct rshared *sh = ab_calloc(1, sizeof(*sh));
    char err[240];
    if (ab_redis_url_parse(conf->url, &sh->host, &sh->port, &sh->db, &sh->user, &sh->password,
                           sh->addr, sizeof(sh->addr), err, sizeof(err)) != 0) {
        snprintf(errstr, errlen, "--dedupe-store: %s", strncmp(err, "--redis: ", 9) == 0 ? err + 9 : err);
        free(sh);
        return -1;
    }
    snprintf(sh->claim_ms, sizeof(sh->claim_ms), "%ld", conf->claim_ms);
    snprintf(sh->window_ms, sizeof(sh->window_ms), "%ld", conf->window_ms);
    ab_redis_script_sha(CLAIM_LUA, sh->claim_sha);
    ab_redis_script_sha(RELEASE_LUA, sh->release_sha);
    sh->timeout_ms = conf->timeout_ms;
    sh->floor_ping = ab_redis_bench_floor("store-ping");
    ab_info("dedupe store: redis %s, window %ld ms, claims %ld ms", sh->addr, conf->window_ms,
            conf->claim_ms);
    *shared = sh;
    return 0;
}

static void rs_global_free(void *shared)
{
    struct rshared *sh = shared;
    if (sh == NULL) {
        return;
    }
    if (sh->password) {
        memset(sh->password, 0, strlen(sh->password));
    }
    free(sh->password);
    free(sh->user);
    free(sh->host);
    free(sh);
}

/* ---- the connection (redis_conn.h) ------------------------------------------------------ */

static int rs_up(const struct rstore *rs)
{
    return !rs->closing && ab_redis_conn_state(rs->conn) == AB_REDIS_READY;
}

static void on_expire(void *arg)
{
    struct rstore *rs = arg;
    if (ab_redis_conn_ac(rs->conn)) {
        ab_redis_conn_drop(rs->conn, "a command got no reply in time; dropped the connection");
    }
}

/* ---- commands ------------------------------------------------------------------------- */

/* The pending list's callback: map its status back to the store's state. */
struct rcall {
    ab_dedupe_cb cb;
    void *opaque;
};

static void on_done(int status, const char *errstr, void *opaque)
{
    struct rcall *c = opaque;
    int state = status >= STATE_BASE ? status - STATE_BASE : AB_DEDUPE_ERROR;
    if (c->cb) {
        c->cb(state, state == AB_DEDUPE_ERROR ? (errstr ? errstr : "no reply") : NULL,
              c->opaque);
    }
    free(c);
}

static int send_cmd(struct rstore *rs, struct ab_pending_req *r, int argc, const char **argv);
static int send_claim(struct rstore *rs, struct ab_pending_req *r);

/* An MGET reply into q->states. Returns the pending status: the state base, or an error. */
static int peek_reply(struct rcmd *q, const redisReply *rp)
{
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements != q->n) {
        return AB_SINK_ERROR;
    }
    for (size_t i = 0; i < q->n; i++) {
        const redisReply *e = rp->element[i];
        q->states[i] = e->type == REDIS_REPLY_STRING && e->len == 1 && e->str[0] == '2'
                           ? AB_DEDUPE_STORED
                       : e->type == REDIS_REPLY_STRING ? AB_DEDUPE_INFLIGHT
                                                       : AB_DEDUPE_NEW;
    }
    return STATE_BASE + AB_DEDUPE_NEW;
}

/* A reply: for claim nil (SET NX GET set the key) or "0" (the script did), else the value
 * ("1" in flight, "2" stored); for SET "OK"; for release an integer. NOSCRIPT: the script
 * is sent again with EVAL; a claim refused by a server older than 7.0: sent again as the
 * script. */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rstore *rs = ab_redis_conn_owner(ac);
    struct ab_pending_req *r = privdata;
    struct rcmd *q = ab_pending_extra(r);
    redisReply *rp = reply;
    if (rp == NULL) {
        ab_pending_complete(r, AB_SINK_ERROR, "connection to the dedupe store lost");
    } else if (q->script == CMD_CLAIM && !q->lua && ab_redis_refuses_set_nx_get(rp) &&
               ab_redis_conn_ac(rs->conn) == ac) {
        ab_redis_conn_no_set_nx_get(rs->conn, ac);
        if (send_claim(rs, r) == 0) {
            return; /* the hold moves to the EVALSHA */
        }
        ab_pending_complete(r, AB_SINK_ERROR, "could not send EVALSHA");
    } else if (rp->type == REDIS_REPLY_ERROR && strncmp(rp->str, "NOSCRIPT", 8) == 0 &&
               (q->script == CMD_CLAIM || q->script == CMD_RELEASE) &&
               ab_redis_conn_ac(rs->conn) == ac) {
        const char *src = q->script == CMD_CLAIM ? CLAIM_LUA : RELEASE_LUA;
        const char *argv[5] = {"EVAL", src, "1", q->key, rs->sh->claim_ms};
        if (send_cmd(rs, r, q->script == CMD_CLAIM ? 5 : 4, argv) == 0) {
            return; /* the hold moves to the EVAL */
        }
        ab_pending_complete(r, AB_SINK_ERROR, "could not send EVAL");
    } else if (rp->type == REDIS_REPLY_ERROR) {
        ab_pending_complete(r, AB_SINK_ERROR, rp->str);
    } else if (rs->sh->floor_ping && rp->type == REDIS_REPLY_STATUS) { /* PONG */
        ab_pending_complete(r, STATE_BASE + (q->script == CMD_CLAIM ? AB_DEDUPE_NEW
                                                                    : AB_DEDUPE_STORED),
                            NULL);
    } else if (q->script == CMD_PEEK && ab_pending_is_complete(r)) {
        /* timed out: states[] is no longer the caller's to fill */
    } else if (q->script == CMD_PEEK) {
        ab_pending_complete(r, peek_reply(q, rp), "unexpected reply to MGET");
    } else if (q->script == CMD_CLAIM && !q->lua && rp->type == REDIS_REPLY_NIL) {
        ab_pending_complete(r, STATE_BASE + AB_DEDUPE_NEW, NULL); /* SET NX set it */
    } else if (q->script == CMD_CLAIM && rp->type == REDIS_REPLY_STRING && rp->len == 1 &&
               rp->str[0] >= '0' && rp->str[0] <= '2') {
        ab_pending_complete(r, STATE_BASE + rp->str[0] - '0', NULL);
    } else if (q->script == CMD_CLAIM) {
        ab_pending_complete(r, AB_SINK_ERROR, "unexpected reply to the claim");
    } else if (q->script == CMD_RELEASE) {
        ab_pending_complete(r, STATE_BASE + AB_DEDUPE_NEW, NULL);
    } else {
        ab_pending_complete(r, STATE_BASE + AB_DEDUPE_STORED, NULL);
    }
    ab_pending_release(r);
}

static int send_cmd(struct rstore *rs, struct ab_pending_req *r, int argc, const char **argv)
{
    return ab_redis_command_argv(ab_redis_conn_ac(rs->conn), on_reply, r, argc, argv, NULL) ==
                   REDIS_OK
               ? 0
               : -1;
}

/* Send the claim of r: SET NX GET, or the script on a server that refused that. */
static int send_claim(struct rstore *rs, struct ab_pending_req *r)
{
    struct rcmd *q = ab_pending_extra(r);
    const struct rshared *sh = rs->sh;
    q->lua = !ab_redis_conn_set_nx_get(rs->conn);
    if (q->lua) {
        const char *argv[5] = {"EVALSHA", sh->claim_sha, "1", q->key, sh->claim_ms};
        return send_cmd(rs, r, 5, argv);
    }
    const char *argv[7] = {"SET", q->key, "1", "PX", sh->claim_ms, "NX", "GET"};
    return send_cmd(rs, r, 7, argv);
}

/* Queue one command for key: CMD_CLAIM, CMD_RELEASE or CMD_STORED (the marker). */
static int rs_command(struct rstore *rs, const char *key, int script, ab_dedupe_cb cb,
                      void *opaque)
{
    if (!rs_up(rs)) {
        return -1;
    }
    struct rcall *c = ab_calloc(1, sizeof(*c));
    c->cb = cb;
    c->opaque = opaque;
    size_t plen = sizeof(PREFIX) - 1, klen = strlen(key);
    struct ab_pending_req *r =
        ab_pending_add(rs->pending, on_done, c, sizeof(struct rcmd) + plen + klen + 1);
    struct rcmd *q = ab_pending_extra(r);
    q->script = script; /* CMD_CLAIM, CMD_RELEASE, CMD_STORED */
    memcpy(q->key, PREFIX, plen);
    memcpy(q->key + plen, key, klen + 1);
    const struct rshared *sh = rs->sh;
    int rc;
    if (sh->floor_ping && script != CMD_RELEASE) {
        const char *argv[1] = {"PING"};
        rc = send_cmd(rs, r, 1, argv);
    } else if (script == CMD_CLAIM) {
        rc = send_claim(rs, r);
    } else if (script == CMD_RELEASE) {
        const char *argv[4] = {"EVALSHA", sh->release_sha, "1", q->key};
        rc = send_cmd(rs, r, 4, argv);
    } else {
        const char *argv[5] = {"SET", q->key, "2", "PX", sh->window_ms};
        rc = send_cmd(rs, r, 5, argv);
    }
    if (rc != 0) {
        ab_pending_cancel(r);
        free(c);
        return -1;
    }
    return 0;
}

/* ---- the contract --------------------------------------------------------------------- */

static struct ab_dedupe *rs_open(const struct ab_dedupe_conf *conf, void *shared,
                                 struct event_base *base, char *errstr, size_t errlen)
{
    struct rstore *rs = ab_calloc(1, sizeof(*rs));
    rs->base.ops = &ab_dedupe_redis;
    rs->sh = shared;
    rs->pending = ab_pending_new(base, conf->timeout_ms);
    ab_pending_on_expire(rs->pending, on_expire, rs);
    /* no log lines of its own (core/dedupe.c says once per outage); the store's timeout
     * as the deadline of connect and handshake (no call is sent before the connection is
     * ready, so a server that accepts and never answers must be dropped here), a retry
     * every RETRY_MS */
    const struct rshared *sh = rs->sh;
    struct ab_redis_conn_conf cc = {.host = sh->host, .port = sh->port, .db = sh->db,
                                    .user = sh->user, .password = sh->password,
                                    .addr = sh->addr, .connect_timeout_ms = conf->timeout_ms,
                                    .backoff_min_ms = RETRY_MS, .backoff_max_ms = RETRY_MS,
                                    .keepalive = 1};
    rs->conn = ab_redis_conn_new(base, &cc, rs);
    return &rs->base;
}

static int rs_claim(struct ab_dedupe *d, const char *key, ab_dedupe_cb cb, void *opaque)
{
    return rs_command((struct rstore *)d, key, CMD_CLAIM, cb, opaque);
}

static int rs_mark(struct ab_dedupe *d, const char *key, int stored, ab_dedupe_cb cb,
                   void *opaque)
{
    return rs_command((struct rstore *)d, key, stored ? CMD_STORED : CMD_RELEASE, cb, opaque);
}

static int rs_peek(struct ab_dedupe *d, const char *const *keys, size_t n, int *states,
                   ab_dedupe_cb cb, void *opaque)
{
    struct rstore *rs = (struct rstore *)d;
    if (!rs_up(rs) || n == 0 || n > AB_DEDUPE_PEEK_MAX) {
        return -1;
    }
    struct rcall *c = ab_calloc(1, sizeof(*c));
    c->cb = cb;
    c->opaque = opaque;
    struct ab_pending_req *r = ab_pending_add(rs->pending, on_done, c, sizeof(struct rcmd) + 1);
    struct rcmd *q = ab_pending_extra(r);
    q->script = CMD_PEEK;
    q->states = states;
    q->n = n;
    const char **argv = ab_calloc(n + 1, sizeof(*argv));
    char **full = ab_calloc(n, sizeof(*full));
    argv[0] = "MGET";
    for (size_t i = 0; i < n; i++) {
        argv[i + 1] = full[i] = ab_asprintf(PREFIX "%s", keys[i]);
    }
    int rc = send_cmd(rs, r, (int)n + 1, argv);
    for (size_t i = 0; i < n; i++) {
        free(full[i]);
    }
    free(full);
    free(argv);
    if (rc != 0) {
        ab_pending_cancel(r);
        free(c);
        return -1;
    }
    return 0;
}

static int rs_ready(struct ab_dedupe *d)
{
    return rs_up((struct rstore *)d);
}

static void rs_describe(struct ab_dedupe *d, char *buf, size_t len)
{
    struct rstore *rs = (struct rstore *)d;
    const char *reason = ab_redis_conn_reason(rs->conn);
    if (rs_up(rs)) {
        snprintf(buf, len, "redis %s: connected", rs->sh->addr);
    } else {
        snprintf(buf, len, "redis %s: %s", rs->sh->addr,
                 reason[0] ? reason : rs->closing ? "closed" : "connecting");
    }
}

static void rs_close(struct ab_dedupe *d)
{
    struct rstore *rs = (struct rstore *)d;
    if (rs == NULL) {
        return;
    }
    rs->closing = 1;
    ab_redis_conn_closing(rs->conn);
    ab_pending_close(rs->pending, AB_SINK_CLOSED, "dedupe store closed");
    ab_redis_conn_free(rs->conn); /* hands every command back */
    ab_pending_free(rs->pending);
    free(rs);
}

const struct ab_dedupe_ops ab_dedupe_redis = {
    .name = "redis",
    .scheme = "redis://",
    .global_init = rs_global_init,
    .global_free = rs_global_free,
    .open = rs_open,
    .claim = rs_claim,
    .mark = rs_mark,
    .peek = rs_peek,
    .ready = rs_ready,
    .describe = rs_describe,
    .close = rs_close,
};
