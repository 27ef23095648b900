/* The Redis Streams sink: each event is one XADD entry, acknowledged (200) only after Redis
 * replied with the entry id, and, with --redis-wait N, after WAIT reported N replicas.
 *
 *   binary (--content-mode, the default):
 *   XADD <stream> [MAXLEN ~ N] * specversion 1.0 id <webhook id> source ... type ...
 *        <every other attribute> ... data <the webhook as JSON>
 *   structured:
 *   XADD <stream> [MAXLEN ~ N] * event <CloudEvent JSON>
 *   [WAIT N <3/4 of --ack-timeout>]
 *
 * (There is no CloudEvents binding for Redis Streams; binary mode follows the Kafka
 * binding's idea: one field per attribute, named as the attribute, plus "data".)
 *
 * One hiredis async connection per worker loop, attached with the libevent adapter, so
 * replies arrive on the loop thread that submitted (webdis pool.c, h2o lib/common/redis.c).
 * The life of a connection (redis_conn.h, shared with the Redis deduplication store):
 *
 *   DOWN --retry timer--> CONNECTING --TCP up--> HANDSHAKE --AUTH/SELECT/PING ok--> READY
 *     ^                                                                               |
 *     +--- connect refused, handshake error or timeout, connection lost, -------------+
 *          a command without reply within --ack-timeout (the connection is dropped)
 *
 * Only READY takes writes: submit() refuses at once otherwise, so while Redis is away the
 * webhook gets its 503 immediately instead of after the timeout.
 *
 * Readiness also follows the outcome of the writes: an error reply that says the server
 * cannot take writes now (OOM under maxmemory, READONLY on a replica, MISCONF after a failed
 * save, ...) makes ready() 0 and is logged once; the next XADD that succeeds, or a probe
 * (SET almabridge:readiness-probe with a 1 s expiry, every PROBE_MS while failing, since a
 * load balancer stops sending when /readyz is 503), makes it 1 again. Reconnects back off from
 * 100 ms, doubling to 5 s, and reset once a handshake succeeds.
 *
 * Ownership: hiredis owns the redisAsyncContext and frees it itself after a connection
 * fails or is lost (after running every pending reply callback with a NULL reply and then
 * the disconnect callback); we only drop our pointer there. We free it ourselves
 * (redisAsyncFree) only from our own timers and from close(), never from inside one of its
 * callbacks. A submission is an entry of the instance's pending list (core/pending.h),
 * held once per command it is the privdata of (XADD, WAIT), so a reply that comes after
 * the deadline finds it and is ignored. The deadline is the pending list's; when it
 * expires the connection is dropped (on_expire).
 *
 * Threads: global_init/global_free on the start-up thread, everything else on the loop
 * thread that opened the instance. */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdalign.h>

#include "config.h"
#include "dedupe_store.h"
#include "http1.h"
#include "log.h"
#include "mem.h"
#include "pending.h"
#include "redis.h"
#include "redis_conn.h"
#include "event.h"

#define DEFAULT_URL "redis://127.0.0.1:6379"
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define PROBE_MS 1000
#define PROBE_KEY "almabridge:readiness-probe"

/* What every instance shares: the parsed URL and the write options. Immutable after
 * global_init. */
struct redis_shared {
    char *host;
    int port;
    long db;
    char *user;     /* ACL user, NULL for the default user */
    char *password; /* NULL for no AUTH */
    long maxlen;
    long wait;
    long timeout_ms;
    long wait_ms;       /* WAIT's own timeout, shorter than ours */
    char maxlen_str[24];
    char wait_str[24];
    char wait_ms_str[24];
    int structured; /* --content-mode structured */
    char claim_xadd_sha[2][41]; /* SHA1 of CLAIM_XADD_LUA and _V6, for EVALSHA */
    int floor_script;           /* ab_redis_bench_floor("script"): XADD through FLOOR_LUA */
    char floor_sha[41];
    char addr[300]; /* "127.0.0.1:6379 db 0" for messages: never the password */
};

struct redis_sink;

/* What the Redis sink keeps with each pending entry (ab_pending_extra). */
struct redis_req {
    int xadd_ok;   /* XADD replied with an entry id */
    int wait_sent; /* a WAIT follows the XADD */
    int v6;        /* with msg->dedupe_key: CLAIM_XADD_LUA_V6 (a server older than 7.0) */
    /* With msg->dedupe_key: the script's arguments after its SHA, kept to send it again
     * with EVAL after NOSCRIPT: argc lengths, then the bytes. */
    int argc;
    alignas(size_t) unsigned char args[];
};

/* Deduplication with the store on this server (msg->dedupe_key, core/dedupe.h): claim and
 * write in one step. KEYS: the stream, the key. ARGV: window ms, MAXLEN (0: none), then the
 * entry's field/value pairs as XADD writes them (either content mode). Returns the stored
 * value ("1" in flight elsewhere, "2" stored) or the new entry's id. The key is set to
 * "stored" by SET NX GET before the XADD (two calls instead of GET, XADD, SET: the script
 * is atomic, so nothing sees the key before the entry); an XADD that fails (WRONGTYPE, say)
 * deletes it again and answers its error, as if nothing ran. Redis < 7.0 refuses NX with
 * GET ("ERR syntax error", the set-up of the key untouched): CLAIM_XADD_LUA_V6 then, for the
 * rest of that connection. */
static const char CLAIM_XADD_LUA[] =
    "local v = redis.call('SET', KEYS[2], '2', 'PX', ARGV[1], 'NX', 'GET') "
    "if v then return v end "
    "local id "
    "if ARGV[2] == '0' then id = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, 3)) "
    "else id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3)) end "
    "if type(id) == 'table' and id.err then redis.call('DEL', KEYS[2]) end return id";
static const char CLAIM_XADD_LUA_V6[] =
    "local v = redis.call('GET', KEYS[2]) if v then return v end "
    "local id "
    "if ARGV[2] == '0' then id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3)) "
    "else id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3)) end "
    "redis.call('SET', KEYS[2], '2', 'PX', ARGV[1]) return id";

/* ab_redis_bench_floor("script"): a script that only writes the entry (KEYS: the stream;
 * ARGV: the field/value pairs), what any script costs Redis beyond the XADD itself; the
 * bench loads it (SCRIPT LOAD) before it runs the daemon. */
static const char FLOOR_LUA[] = "return redis.call('XADD', KEYS[1], '*', unpack(ARGV))";

/* The most field/value arguments of one entry: every attribute and data (binary mode). */
#define ENTRY_FIELDS_MAX (2 * AB_EVENT_MAX_ATTRS + 2)

struct redis_sink {
    struct ab_sink base;
    const struct redis_shared *sh;
    struct event_base *evbase;
    struct ab_redis_conn *conn; /* the connection and its life cycle (redis_conn.h) */
    int closing;
    struct event *probe_ev;   /* while writes fail: the next probe */
    char write_error[200];    /* the last write failed with this, "" = writes succeed */
    int probing;              /* a probe is on the wire */
    struct ab_pending *pending; /* the submissions and their deadline */
    int close_expired;
    long window_ms;    /* the last msg->dedupe_window_ms, as text: */
    char window[24];   /* the script's window argument, formatted once */
    size_t window_len;
};

/* ---- the URL ------------------------------------------------------------------------ */

/* Percent-decode s[0..n) into a new string (the HTTP layer's decoder); NULL on a bad escape
 * or an encoded NUL. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = ab_malloc(n + 1);
    long len = ab_url_decode(s, n, out, 0);
    if (len < 0 || strlen(out) != (size_t)len) {
        free(out);
        return NULL;
    }
    return out;
}

/* A decimal in [min, max] spanning exactly s[0..n); -1 when it is not one. */
static long parse_num(const char *s, size_t n, long min, long max)
{
    long v = 0;
    if (n == 0 || n > 10) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v >= min && v <= max ? v : -1;
}

#define URL_FORM "redis://[[user]:password@]host[:port][/db]"

/* Parse redis://[[user]:password@]host[:port][/db] into sh. The user-info part runs to the
 * LAST '@', so a password may hold '@', ':' or '/' unencoded; user and password are
 * percent-decoded. A user-info without ':' is a password (as redis-cli and --print-config
 * read it). Returns 0, or -1 with a message that never contains the password. */
static int parse_url(const char *url, struct redis_shared *sh, char *err, size_t errlen)
{
    if (strncasecmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen,
                 "--redis: rediss:// (TLS) is not supported by this build (hiredis %d.%d has no "
                 "TLS); use redis://, through a TLS tunnel such as stunnel if Redis is remote",
                 HIREDIS_MAJOR, HIREDIS_MINOR);
        return -1;
    }
    if (strncasecmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "--redis: expected a URL of the form %s", URL_FORM);
        return -1;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        if (colon && colon > p && !(sh->user = pct_decode(p, (size_t)(colon - p)))) {
            snprintf(err, errlen, "--redis: bad percent-escape in the user name");
            return -1;
        }
        if (!(sh->password = pct_decode(pw, (size_t)(at - pw)))) {
            snprintf(err, errlen, "--redis: bad percent-escape in the password");
            return -1;
        }
        if (sh->password[0] == '\0' && sh->user == NULL) {
            free(sh->password);
            sh->password = NULL;
        }
        p = at + 1;
    }
    const char *host = p, *host_end;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL) {
            snprintf(err, errlen, "--redis: unterminated [IPv6 address]; expected %s", URL_FORM);
            return -1;
        }
        p = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/?#");
        p = host_end;
    }
    if (host_end == host) {
        snprintf(err, errlen, "--redis: no host; expected %s", URL_FORM);
        return -1;
    }
    sh->host = ab_strndup(host, (size_t)(host_end - host));
    sh->port = 6379;
    if (*p == ':') {
        size_t n = strcspn(p + 1, "/?#");
        long port = parse_num(p + 1, n, 1, 65535);
        if (port < 0) {
            snprintf(err, errlen, "--redis: the port must be a number from 1 to 65535");
            return -1;
        }
        sh->port = (int)port;
        p += 1 + n;
    }
    if (*p == '/') {
        size_t n = strcspn(p + 1, "?#");
        if (n > 0 && (sh->db = parse_num(p + 1, n, 0, INT_MAX)) < 0) {
            snprintf(err, errlen, "--redis: the database after '/' must be a number (0-15 on a "
                                  "default Redis)");
            return -1;
        }
        p += 1 + n;
    }
    if (*p != '\0') {
        unsigned char c = (unsigned char)*p;
        char shown[16];
        if (c > 0x20 && c < 0x7f) {
            snprintf(shown, sizeof(shown), "'%c'", c);
        } else {
            snprintf(shown, sizeof(shown), "byte 0x%02x", c); /* never a raw control byte */
        }
        snprintf(err, errlen, "--redis: unexpected %s (query parameters are not supported); "
                              "expected %s", shown, URL_FORM);
        return -1;
    }
    int v6 = strchr(sh->host, ':') != NULL;
    snprintf(sh->addr, sizeof(sh->addr), "%s%s%s:%d db %ld", v6 ? "[" : "", sh->host,
             v6 ? "]" : "", sh->port, sh->db);
    return 0;
}

static void shared_free(struct redis_shared *sh)
{
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

int ab_redis_url_parse(const char *url, char **host, int *port, long *db, char **user,
                       char **password, char *addr, size_t addrlen, char *errstr, size_t errlen)
{
    struct redis_shared sh = {0};
    if (parse_url(url, &sh, errstr, errlen) != 0) {
        free(sh.host);
        free(sh.user);
        free(sh.password);
        return -1;
    }
    *host = sh.host, *port = sh.port, *db = sh.db, *user = sh.user, *password = sh.password;
    snprintf(addr, addrlen, "%s", sh.addr);
    return 0;
}

/* The Redis sink's options (struct ab_redis_conf). */
#define OFF(field) offsetof(struct ab_redis_conf, field)
/* clang-format off */
static const struct ab_option redis_options[] = {
    {.name = "redis", .type = AB_OPT_STRING, .def = DEFAULT_URL, .off = OFF(url),
     .mask = AB_MASK_URL_PASSWORD, .group = "Redis", .metavar = "URL",
     .help = "Redis server, redis://[[user]:password@]host[:port][/db] (no TLS: rediss:// "
             "is refused); the password is masked in output and in ps"},
    {.name = "redis-maxlen", .type = AB_OPT_LONG, .def = "0", .min = 0, .max = LONG_MAX,
     .off = OFF(maxlen), .group = "Redis", .metavar = "N",
     .help = "trim each stream to about N entries (XADD MAXLEN ~); 0 = never trim"},
    {.name = "redis-wait", .type = AB_OPT_LONG, .def = "0", .min = 0, .max = LONG_MAX,
     .off = OFF(wait), .group = "Redis", .metavar = "N",
     .help = "replicas that must confirm each write (WAIT) before it is acknowledged; "
             "0 = the primary's reply is enough"},
};
/* clang-format on */
static const struct ab_optset redis_optset = AB_OPTSET(redis_options, struct ab_redis_conf);

/* Start-up thread: parse and check the options. Returns 0 and *shared, or -1 and errstr. */
static int redis_global_init(const struct ab_sink_conf *sc, void **shared, char *errstr,
                             size_t errlen)
{
    const struct ab_redis_conf *cfg = sc->opts;
    struct redis_shared *sh = ab_calloc(1, sizeof(*sh));
    const char *url = cfg->url && *cfg->url ? cfg->url : DEFAULT_URL;
    if (parse_url(url, sh, errstr, errlen) != 0) {
        shared_free(sh);
        return -1;
    }
    sh->maxlen = cfg->maxlen > 0 ? cfg->maxlen : 0;
    sh->wait = cfg->wait > 0 ? cfg->wait : 0;
    sh->timeout_ms = sc->ack_timeout_ms;
    sh->structured = sc->structured;
    /* WAIT answers with the count it has when its own timeout ends; keep that well inside
     * ours so the caller hears "only k of N replicas" rather than a bare timeout. */
    sh->wait_ms = sh->timeout_ms * 3 / 4 > 0 ? sh->timeout_ms * 3 / 4 : 1;
    snprintf(sh->maxlen_str, sizeof(sh->maxlen_str), "%ld", sh->maxlen);
    snprintf(sh->wait_str, sizeof(sh->wait_str), "%ld", sh->wait);
    snprintf(sh->wait_ms_str, sizeof(sh->wait_ms_str), "%ld", sh->wait_ms);
    ab_redis_script_sha(CLAIM_XADD_LUA, sh->claim_xadd_sha[0]);
    ab_redis_script_sha(CLAIM_XADD_LUA_V6, sh->claim_xadd_sha[1]);
    ab_redis_script_sha(FLOOR_LUA, sh->floor_sha);
    sh->floor_script = sh->maxlen == 0 && ab_redis_bench_floor("script");
    ab_info("redis sink: %s%s%s, trimming %s, WAIT %ld replica(s)", sh->addr,
            sh->user ? ", ACL user " : (sh->password ? ", with password" : ""),
            sh->user ? sh->user : "", sh->maxlen ? sh->maxlen_str : "off", sh->wait);
    *shared = sh;
    return 0;
}

static void redis_global_free(void *shared)
{
    shared_free(shared);
}

/* ---- connection state (redis_conn.h) ------------------------------------------------ */

static struct timeval ms_tv(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

static int is_ready(const struct redis_sink *rs)
{
    return !rs->closing && ab_redis_conn_state(rs->conn) == AB_REDIS_READY;
}

/* ---- submissions -------------------------------------------------------------------- */

/* 1 for an error reply that says the server cannot take writes now, whatever is written:
 * the readiness matter (a WRONGTYPE, say, concerns one stream only). */
static int refuses_writes(const char *err)
{
    static const char *const codes[] = {"OOM",     "READONLY", "MISCONF",   "NOREPLICAS",
                                        "LOADING", "BUSY",     "MASTERDOWN"};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        size_t n = strlen(codes[i]);
        if (strncmp(err, codes[i], n) == 0 && (err[n] == ' ' || err[n] == '\0')) {
            return 1;
        }
    }
    return 0;
}

/* Loop thread: a write (or probe) came back. err NULL: it succeeded. Tracks readiness,
 * logs the changes and keeps probing while writes fail. */
static void write_outcome(struct redis_sink *rs, const char *err)
{
    if (err && refuses_writes(err)) {
        if (rs->write_error[0] == '\0') {
            ab_error("redis: %s refuses writes (%s): /readyz reports not ready until a write "
                     "or a probe (every %d ms) succeeds", rs->sh->addr, err, PROBE_MS);
        }
        snprintf(rs->write_error, sizeof(rs->write_error), "%s", err);
        struct timeval tv = ms_tv(PROBE_MS);
        if (!rs->closing && !evtimer_pending(rs->probe_ev, NULL)) {
            evtimer_add(rs->probe_ev, &tv);
        }
    } else if (rs->write_error[0] != '\0') {
        ab_info("redis: %s takes writes again", rs->sh->addr);
        rs->write_error[0] = '\0';
        evtimer_del(rs->probe_ev);
    }
}

/* Loop thread, hiredis reply callback of a readiness probe. */
static void on_probe_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_sink *rs = ab_redis_conn_owner(ac);
    redisReply *rp = reply;
    rs->probing = 0;
    if (rp == NULL) {
        return; /* the connection is going away: its own state says not ready */
    }
    /* Any other error (NOPERM for an ACL user without SET, say) says nothing about writes
     * to the streams: only the write-refusing ones keep it failing. */
    write_outcome(rs, rp->type == REDIS_REPLY_ERROR ? rp->str : NULL);
}

/* Loop thread, while writes fail: send one probe on a READY connection. */
static void on_probe(evutil_socket_t fd, short what, void *arg)
{
    struct redis_sink *rs = arg;
    if (rs->write_error[0] == '\0' || rs->closing) {
        return;
    }
    if (is_ready(rs) && !rs->probing) {
        const char *argv[5] = {"SET", PROBE_KEY, "1", "PX", "1000"};
        if (redisAsyncCommandArgv(ab_redis_conn_ac(rs->conn), on_probe_reply, NULL, 5, argv, NULL) == REDIS_OK) {
            rs->probing = 1;
        }
    }
    struct timeval tv = ms_tv(PROBE_MS);
    evtimer_add(rs->probe_ev, &tv);
}

static int lost_status(const struct redis_sink *rs)
{
    return rs->closing ? AB_SINK_CLOSED : AB_SINK_ERROR;
}

static void on_xadd_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Send the claim-and-write script for r (CLAIM_XADD_LUA, or _V6 where the server refused
 * SET NX GET): EVALSHA, or EVAL (eval = 1) after NOSCRIPT. */
static int send_dedupe(struct redis_sink *rs, struct ab_pending_req *r, int eval)
{
    struct redis_req *q = ab_pending_extra(r);
    q->v6 = q->v6 || !ab_redis_conn_set_nx_get(rs->conn);
    const char *argv[2 + 5 + ENTRY_FIELDS_MAX];
    size_t len[2 + 5 + ENTRY_FIELDS_MAX];
    const size_t *lens = (const size_t *)q->args;
    const char *p = (const char *)(lens + q->argc);
    argv[0] = eval ? "EVAL" : "EVALSHA";
    len[0] = strlen(argv[0]);
    argv[1] = !eval ? rs->sh->claim_xadd_sha[q->v6] : q->v6 ? CLAIM_XADD_LUA_V6 : CLAIM_XADD_LUA;
    len[1] = strlen(argv[1]);
    for (int i = 0; i < q->argc; i++) {
        argv[2 + i] = p;
        len[2 + i] = lens[i];
        p += lens[i];
    }
    return ab_redis_command_argv(ab_redis_conn_ac(rs->conn), on_xadd_reply, r, 2 + q->argc,
                                 argv, len) == REDIS_OK
               ? 0
               : -1;
}

/* The reply to the claim-and-write script. Returns 1 when it is handled here (NOSCRIPT:
 * sent again with EVAL; refused SET NX GET: sent again as CLAIM_XADD_LUA_V6; the hold
 * moving to it), else 0 for the XADD path below: the entry's id. */
static int dedupe_reply(struct redis_sink *rs, redisAsyncContext *ac, struct ab_pending_req *r,
                        redisReply *rp)
{
    struct redis_req *q = ab_pending_extra(r);
    if (!q->v6 && ab_redis_refuses_set_nx_get(rp) && ab_redis_conn_ac(rs->conn) == ac) {
        ab_redis_conn_no_set_nx_get(rs->conn, ac);
        if (send_dedupe(rs, r, 0) == 0) {
            return 1;
        }
    }
    if (rp->type == REDIS_REPLY_ERROR && strncmp(rp->str, "NOSCRIPT", 8) == 0 &&
        ab_redis_conn_ac(rs->conn) == ac && send_dedupe(rs, r, 1) == 0) {
        return 1;
    }
    if (rp->type == REDIS_REPLY_STRING && rp->len == 1 && rp->str[0] == '2') {
        ab_pending_complete(r, AB_SINK_DUPLICATE, NULL);
    } else if (rp->type == REDIS_REPLY_STRING && rp->len == 1 && rp->str[0] == '1') {
        ab_pending_complete(r, AB_SINK_ERROR, "another copy is being written (in flight)");
    } else {
        return 0;
    }
    ab_pending_release(r);
    return 1;
}

/* The pending entry for a submission with msg->dedupe_key, the script's arguments kept in
 * it: 2 keys (the stream, the key), the window, MAXLEN, then the nf field/value arguments of
 * the entry. */
static struct ab_pending_req *add_dedupe(struct redis_sink *rs, const struct ab_sink_msg *msg,
                                         const char *const *fv, const size_t *fl, int nf,
                                         ab_sink_done_cb cb, void *opaque)
{
    if (rs->window_ms != msg->dedupe_window_ms) { /* the same on every call in practice */
        rs->window_ms = msg->dedupe_window_ms;
        rs->window_len = (size_t)snprintf(rs->window, sizeof(rs->window), "%ld", rs->window_ms);
    }
    const char *route = msg->route ? msg->route : "alma";
    /* a[2] and a[3] are the key's two pieces, the prefix and msg->dedupe_key: one argument,
     * joined as they are copied */
    const char *a[6 + ENTRY_FIELDS_MAX] = {"2", route, AB_DEDUPE_REDIS_PREFIX, msg->dedupe_key,
                                           rs->window, rs->sh->maxlen_str};
    size_t l[6 + ENTRY_FIELDS_MAX] = {1,
                                      strlen(route),
                                      strlen(AB_DEDUPE_REDIS_PREFIX),
                                      strlen(msg->dedupe_key),
                                      rs->window_len,
                                      strlen(rs->sh->maxlen_str)};
    size_t total = 0;
    int argc = 5 + nf;
    for (int i = 6; i < 6 + nf; i++) {
        a[i] = fv[i - 6];
        l[i] = fl[i - 6];
    }
    for (int i = 0; i < 6 + nf; i++) {
        total += l[i];
    }
    struct ab_pending_req *r = ab_pending_add(
        rs->pending, cb, opaque, sizeof(struct redis_req) + (size_t)argc * sizeof(size_t) + total);
    struct redis_req *q = ab_pending_extra(r);
    q->argc = argc;
    size_t *lens = (size_t *)q->args;
    lens[0] = l[0];
    lens[1] = l[1];
    lens[2] = l[2] + l[3]; /* the key, from its two pieces */
    memcpy(lens + 3, l + 4, (size_t)(argc - 3) * sizeof(size_t));
    unsigned char *p = q->args + (size_t)argc * sizeof(size_t);
    for (int i = 0; i < 6 + nf; i++) {
        memcpy(p, a[i], l[i]);
        p += l[i];
    }
    return r;
}

/* Loop thread, hiredis reply callback for XADD (privdata: the pending entry). */
static void on_xadd_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_sink *rs = ab_redis_conn_owner(ac);
    struct ab_pending_req *r = privdata;
    struct redis_req *q = ab_pending_extra(r);
    redisReply *rp = reply;
    if (rp && q->argc && dedupe_reply(rs, ac, r, rp)) {
        return; /* answered, or sent again with EVAL (which now holds r) */
    }
    if (rp == NULL) {
        ab_pending_complete(r, lost_status(rs), "connection to redis lost before the XADD reply");
    } else if (rp->type == REDIS_REPLY_ERROR) {
        write_outcome(rs, rp->str);
        ab_pending_complete(r, AB_SINK_ERROR, rp->str);
    } else if (rp->type != REDIS_REPLY_STRING) {
        ab_pending_complete(r, AB_SINK_ERROR, "unexpected reply to XADD");
    } else if ((write_outcome(rs, NULL), q->wait_sent)) {
        q->xadd_ok = 1; /* the answer comes with WAIT's reply */
    } else if (rs->sh->wait > 0) {
        ab_pending_complete(r, AB_SINK_ERROR, "could not send WAIT");
    } else {
        ab_pending_complete(r, AB_SINK_OK, NULL);
    }
    ab_pending_release(r);
}

/* Loop thread, hiredis reply callback for WAIT (with --redis-wait). */
static void on_wait_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_sink *rs = ab_redis_conn_owner(ac);
    struct ab_pending_req *r = privdata;
    struct redis_req *q = ab_pending_extra(r);
    redisReply *rp = reply;
    long want = rs->sh->wait;
    if (rp == NULL) {
        ab_pending_complete(r, lost_status(rs), "connection to redis lost before the WAIT reply");
    } else if (rp->type == REDIS_REPLY_ERROR) {
        ab_pending_complete(r, AB_SINK_ERROR, rp->str);
    } else if (rp->type != REDIS_REPLY_INTEGER) {
        ab_pending_complete(r, AB_SINK_ERROR, "unexpected reply to WAIT");
    } else if (q->xadd_ok && rp->integer >= want) {
        ab_pending_complete(r, AB_SINK_OK, NULL);
    } else {
        char msg[128];
        snprintf(msg, sizeof(msg), "only %lld of %ld replicas acknowledged the write (WAIT)",
                 rp->integer, want);
        ab_pending_complete(r, AB_SINK_ERROR, msg);
    }
    ab_pending_release(r);
}

/* Loop thread, from the pending list's timer: a submission got no answer within
 * --ack-timeout (it has been completed with AB_SINK_TIMEOUT). Redis is stuck or
 * unreachable without the socket noticing (SIGSTOP, a black hole, a disk that does not
 * return from fsync): drop the connection, so that the requests behind this one get their
 * 503 now, and new ones at once while it reconnects (handshake-checked). hiredis hands
 * every command back (NULL reply) inside redisAsyncFree. */
static void on_expire(void *arg)
{
    struct redis_sink *rs = arg;
    if (ab_redis_conn_ac(rs->conn)) {
        char reason[160];
        snprintf(reason, sizeof(reason), "a command got no reply within %ld ms; dropped the "
                 "connection", rs->sh->timeout_ms);
        /* before the callbacks run: a submit from one is refused */
        ab_redis_conn_drop(rs->conn, reason);
    }
}

/* Loop thread: see the contract in sink.h. Refuses (-1) unless READY or when hiredis does
 * not take the command; otherwise the XADD (and WAIT) are queued on the connection and
 * the first of on_xadd_reply/on_wait_reply, the deadline or close completes it. */
static int redis_submit(struct ab_sink *s, const struct ab_sink_msg *msg, ab_sink_done_cb cb,
                        void *opaque)
{
    struct redis_sink *rs = (struct redis_sink *)s;
    const struct redis_shared *sh = rs->sh;
    if (!is_ready(rs)) {
        return -1;
    }
    redisAsyncContext *ac = ab_redis_conn_ac(rs->conn);
    struct ab_event *own = NULL; /* a line without its event (the spool's, replay's) */
    char why[128];
    if (msg->event == NULL) {
        ab_event_from_line(msg->value, msg->value_len, &own, why, sizeof(why));
    }
    const struct ab_event *ev = msg->event ? msg->event : own;
    struct ab_attr attrs[AB_EVENT_MAX_ATTRS];
    /* a dead letter (data_base64, extension attributes of its own) always goes structured */
    size_t na = ev && !sh->structured && !msg->dead_letter ? ab_event_attrs(ev, attrs) : 0;
    /* the entry's fields: binary mode one per attribute plus "data"; structured "event" */
    const char *fv[ENTRY_FIELDS_MAX];
    size_t fl[ENTRY_FIELDS_MAX];
    int nf = 0;
#define FIELD(str, l) (fv[nf] = (str), fl[nf] = (l), nf++)
    if (na > 0) {
        for (size_t i = 0; i < na; i++) {
            FIELD(attrs[i].name, strlen(attrs[i].name));
            FIELD(attrs[i].value, strlen(attrs[i].value));
        }
        if (ev->data_len > 0) {
            FIELD("data", 4);
            FIELD(ev->json + ev->data_off, ev->data_len);
        }
    } else {
        FIELD("event", 5);
        FIELD(msg->value, msg->value_len);
    }
#undef FIELD
    struct ab_pending_req *r;
    int rc;
    if (msg->dedupe_key) { /* claim and write in one script (core/dedupe.h) */
        r = add_dedupe(rs, msg, fv, fl, nf, cb, opaque);
        rc = send_dedupe(rs, r, 0);
    } else {
        const char *argv[6 + ENTRY_FIELDS_MAX];
        size_t len[6 + ENTRY_FIELDS_MAX];
        int n = 0;
#define ARG(str, l) (argv[n] = (str), len[n] = (l), n++)
        if (sh->floor_script) {
            ARG("EVALSHA", 7);
            ARG(sh->floor_sha, 40);
            ARG("1", 1);
        } else {
            ARG("XADD", 4);
        }
        ARG(msg->route ? msg->route : "alma", strlen(msg->route ? msg->route : "alma"));
        if (sh->maxlen > 0) {
            ARG("MAXLEN", 6);
            ARG("~", 1);
            ARG(sh->maxlen_str, strlen(sh->maxlen_str));
        }
        if (!sh->floor_script) {
            ARG("*", 1);
        }
        for (int i = 0; i < nf; i++) {
            ARG(fv[i], fl[i]);
        }
#undef ARG
        r = ab_pending_add(rs->pending, cb, opaque, sizeof(struct redis_req));
        rc = ab_redis_command_argv(ac, on_xadd_reply, r, n, argv, len) == REDIS_OK ? 0 : -1;
    }
    ab_event_free(own); /* hiredis copied the arguments */
    if (rc != 0) {
        ab_pending_cancel(r);
        return -1;
    }
    if (sh->wait > 0) {
        const char *wargv[3] = {"WAIT", sh->wait_str, sh->wait_ms_str};
        if (ab_redis_command_argv(ac, on_wait_reply, r, 3, wargv, NULL) == REDIS_OK) {
            ((struct redis_req *)ab_pending_extra(r))->wait_sent = 1;
            ab_pending_hold(r);
        }
    }
    return 0;
}

char *ab_redis_entry_event(const redisReply *fields, size_t *len)
{
    if (fields == NULL || fields->type != REDIS_REPLY_ARRAY) {
        return NULL;
    }
    struct ab_attr attrs[AB_EVENT_MAX_ATTRS * 2];
    size_t n = 0;
    const redisReply *data = NULL;
    for (size_t k = 0; k + 1 < fields->elements; k += 2) {
        const redisReply *f = fields->element[k], *v = fields->element[k + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            continue;
        }
        if (strcmp(f->str, "event") == 0) {
            *len = v->len;
            return ab_strndup(v->str, v->len); /* structured */
        }
        if (strcmp(f->str, "data") == 0) {
            data = v;
        } else if (n < AB_EVENT_MAX_ATTRS * 2) {
            attrs[n++] = (struct ab_attr){f->str, v->str};
        }
    }
    if (n == 0) {
        return NULL;
    }
    return ab_event_line_from_attrs(attrs, n, data ? data->str : NULL, data ? data->len : 0,
                                    len);
}

/* ---- instance life cycle ------------------------------------------------------------ */

/* Loop thread: a new instance; it starts connecting at once and is READY once the
 * handshake is done. Never fails: an unreachable Redis is a readiness matter. */
static struct ab_sink *redis_open(const struct ab_sink_conf *sc, void *shared,
                                  struct event_base *base, char *errstr, size_t errlen)
{
    struct redis_sink *rs = ab_calloc(1, sizeof(*rs));
    rs->base.ops = &ab_sink_redis;
    rs->sh = shared;
    rs->evbase = base;
    rs->window_ms = -1; /* no window formatted yet */
    rs->probe_ev = evtimer_new(base, on_probe, rs);
    rs->pending = ab_pending_new(base, sc->ack_timeout_ms);
    ab_pending_on_expire(rs->pending, on_expire, rs);
    const struct redis_shared *sh = rs->sh;
    struct ab_redis_conn_conf cc = {.host = sh->host, .port = sh->port, .db = sh->db,
                                    .user = sh->user, .password = sh->password,
                                    .addr = sh->addr, .connect_timeout_ms = sh->timeout_ms,
                                    .backoff_min_ms = BACKOFF_MIN_MS,
                                    .backoff_max_ms = BACKOFF_MAX_MS, .keepalive = 1,
                                    .log_name = "redis"};
    rs->conn = ab_redis_conn_new(base, &cc, rs);
    return &rs->base;
}

static int redis_ready(struct ab_sink *s)
{
    struct redis_sink *rs = (struct redis_sink *)s;
    return is_ready(rs) && rs->write_error[0] == '\0';
}

static void redis_describe(struct ab_sink *s, char *buf, size_t len)
{
    struct redis_sink *rs = (struct redis_sink *)s;
    const char *addr = rs->sh->addr, *reason = ab_redis_conn_reason(rs->conn);
    enum ab_redis_conn_state st = ab_redis_conn_state(rs->conn);
    if (rs->closing) {
        snprintf(buf, len, "redis %s: closed", addr);
    } else if (st == AB_REDIS_READY && rs->write_error[0]) {
        snprintf(buf, len, "redis %s: connected, but writes fail (%s)", addr, rs->write_error);
    } else if (st == AB_REDIS_READY) {
        snprintf(buf, len, "redis %s: connected", addr);
    } else if (st == AB_REDIS_DOWN) {
        snprintf(buf, len, "redis %s: disconnected (%s), retrying in %ld ms", addr, reason,
                 ab_redis_conn_retry_in_ms(rs->conn));
    } else {
        snprintf(buf, len, "redis %s: %s%s%s%s", addr,
                 st == AB_REDIS_CONNECTING ? "connecting" : "authenticating (AUTH/SELECT/PING)",
                 reason[0] ? " (last error: " : "", reason, reason[0] ? ")" : "");
    }
}

static void on_close_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct redis_sink *rs = arg;
    rs->close_expired = 1;
}

/* Loop thread, after the worker's loop stopped: wait (running the loop, bounded by
 * timeout_ms and --ack-timeout) for the replies still due, complete the rest with
 * AB_SINK_CLOSED, then free the connection (hiredis hands back every command with a NULL
 * reply inside redisAsyncFree, which releases the last references) and the instance. */
static void redis_close(struct ab_sink *s, int timeout_ms)
{
    struct redis_sink *rs = (struct redis_sink *)s;
    if (rs == NULL) {
        return;
    }
    rs->closing = 1;
    ab_redis_conn_closing(rs->conn);
    evtimer_del(rs->probe_ev);
    long bound = timeout_ms < rs->sh->timeout_ms ? timeout_ms : rs->sh->timeout_ms;
    if (bound > 0 && ab_redis_conn_ac(rs->conn) && ab_pending_count(rs->pending) > 0) {
        struct event *deadline = evtimer_new(rs->evbase, on_close_deadline, rs);
        struct timeval tv = ms_tv(bound);
        evtimer_add(deadline, &tv);
        while (ab_redis_conn_ac(rs->conn) && ab_pending_count(rs->pending) > 0 &&
               !rs->close_expired) {
            event_base_loop(rs->evbase, EVLOOP_ONCE);
        }
        event_free(deadline);
    }
    ab_pending_close(rs->pending, AB_SINK_CLOSED, "redis sink closed before the reply");
    ab_redis_conn_free(rs->conn); /* hands every command back: the last holds go */
    ab_pending_free(rs->pending);
    event_free(rs->probe_ev);
    free(rs);
}

/* ---- the read side: XRANGE, then XREAD BLOCK, on a blocking connection ---------------- */

#define READ_PAGE 500

struct redis_reader {
    struct ab_sink_reader base;
    struct redis_shared *sh; /* the URL, parsed by the writer's parser */
    redisContext *c;         /* NULL while disconnected: the next call dials */
    char *stream;
    char last[64];  /* the last entry id returned, or where to start */
    int phase;      /* 0: XRANGE from last inclusive, 1: XRANGE after last, 2: XREAD */
    redisReply *page;
    size_t idx;
    char *line; /* the entry last returned as a CloudEvent line (either content mode) */
};

/* A blocking connection, authenticated and on its database; 0, or -1 with errstr (never
 * the password). */
static int reader_dial(struct redis_reader *r, char *errstr, size_t errlen)
{
    const struct redis_shared *sh = r->sh;
    struct timeval tv = {5, 0};
    redisReply *rep = NULL;
    r->c = redisConnectWithTimeout(sh->host, sh->port, tv);
    if (r->c == NULL || r->c->err) {
        snprintf(errstr, errlen, "redis %s: cannot connect: %s", sh->addr,
                 r->c ? r->c->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(r->c, tv);
    if (sh->password) {
        rep = sh->user ? redisCommand(r->c, "AUTH %s %s", sh->user, sh->password)
                       : redisCommand(r->c, "AUTH %s", sh->password);
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
            snprintf(errstr, errlen, "redis %s: authentication failed: %s", sh->addr,
                     rep ? rep->str : r->c->errstr);
            goto fail;
        }
        freeReplyObject(rep);
    }
    rep = redisCommand(r->c, "SELECT %ld", sh->db);
    if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
        snprintf(errstr, errlen, "redis %s: SELECT: %s", sh->addr, rep ? rep->str : r->c->errstr);
        goto fail;
    }
    freeReplyObject(rep);
    return 0;
fail:
    if (rep) {
        freeReplyObject(rep);
    }
    redisFree(r->c);
    r->c = NULL;
    return -1;
}

static void redis_reader_close(struct ab_sink_reader *base);

static struct ab_sink_reader *redis_reader_open(const struct ab_sink_conf *sc,
                                                const struct ab_read_from *from, char *errstr,
                                                size_t errlen)
{
    const struct ab_redis_conf *cfg = sc->opts;
    struct redis_reader *r = ab_calloc(1, sizeof(*r));
    r->base.ops = &ab_sink_redis;
    r->sh = ab_calloc(1, sizeof(*r->sh));
    if (from->route == NULL) {
        snprintf(errstr, errlen, "redis: no stream to read");
        goto fail;
    }
    r->stream = ab_strdup(from->route);
    if (from->position) {
        snprintf(r->last, sizeof(r->last), "%s", from->position);
        r->phase = 1;
    } else {
        snprintf(r->last, sizeof(r->last), "%lld-0",
                 (long long)(from->since_ms > 0 ? from->since_ms : 0));
    }
    if (parse_url(cfg->url && *cfg->url ? cfg->url : DEFAULT_URL, r->sh, errstr, errlen) != 0 ||
        reader_dial(r, errstr, errlen) != 0) {
        goto fail;
    }
    return &r->base;
fail:
    redis_reader_close(&r->base);
    return NULL;
}

/* The next entry of the page that holds an event (structured: its "event" field; binary:
 * its attribute fields and "data") into *ev; 0 when the page is done. */
static int reader_take(struct redis_reader *r, struct ab_read_event *ev)
{
    free(r->line);
    r->line = NULL;
    while (r->page && r->idx < r->page->elements) {
        const redisReply *e = r->page->element[r->idx++];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
            e->element[0]->type != REDIS_REPLY_STRING) {
            continue;
        }
        snprintf(r->last, sizeof(r->last), "%s", e->element[0]->str);
        const redisReply *f = e->element[1];
        *ev = (struct ab_read_event){.position = r->last, .stored_ms = strtoll(r->last, NULL, 10)};
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            const redisReply *name = f->element[k], *val = f->element[k + 1];
            if (name->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (strcmp(name->str, "id") == 0) {
                ev->id = val->str;
            }
        }
        size_t len = 0;
        if ((r->line = ab_redis_entry_event(f, &len)) != NULL) {
            ev->value = r->line;
            ev->len = len;
            return 1;
        }
    }
    return 0;
}

/* Blocking (see sink.h): pages of XRANGE up to the end, then XREAD BLOCK. A failed command
 * drops the connection; the next call dials again and continues after the last entry. */
static int redis_reader_next(struct ab_sink_reader *base, struct ab_read_event *ev,
                             int timeout_ms, char *errstr, size_t errlen)
{
    struct redis_reader *r = (struct redis_reader *)base;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int64_t deadline = (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000 + timeout_ms;
    for (;;) {
        if (reader_take(r, ev)) {
            return AB_READ_EVENT;
        }
        if (r->page) {
            freeReplyObject(r->page);
            r->page = NULL;
        }
        if (r->c == NULL && reader_dial(r, errstr, errlen) != 0) {
            return AB_READ_ERROR;
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        int64_t left = deadline - ((int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000);
        if (r->phase == 2 && left <= 0) {
            return AB_READ_IDLE;
        }
        long block = left < 1000 ? (long)left : 1000;
        struct timeval tv = {5 + block / 1000, 0};
        redisSetTimeout(r->c, tv);
        redisReply *rep;
        if (r->phase < 2) {
            char start[80];
            snprintf(start, sizeof(start), "%s%s", r->phase ? "(" : "", r->last);
            rep = redisCommand(r->c, "XRANGE %s %s + COUNT %d", r->stream, start, READ_PAGE);
        } else {
            rep = redisCommand(r->c, "XREAD COUNT %d BLOCK %ld STREAMS %s %s", READ_PAGE,
                               block > 0 ? block : 1, r->stream, r->last);
        }
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
            snprintf(errstr, errlen, "redis %s, stream %s: %s", r->sh->addr, r->stream,
                     rep ? rep->str : r->c->errstr);
            if (rep) {
                freeReplyObject(rep);
            }
            redisFree(r->c);
            r->c = NULL;
            return AB_READ_ERROR;
        }
        if (r->phase < 2 && rep->type == REDIS_REPLY_ARRAY) {
            r->phase = rep->elements == READ_PAGE ? 1 : 2; /* a full page: more to range */
            r->page = rep;
        } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
                   rep->element[0]->elements > 1) {
            /* [[stream, [entries]]]: keep the reply, read its entries */
            redisReply *entries = rep->element[0]->element[1];
            rep->element[0]->element[1] = NULL;
            r->page = entries;
            freeReplyObject(rep);
        } else {
            freeReplyObject(rep);
            r->phase = r->phase < 2 ? 2 : r->phase;
        }
        r->idx = 0;
    }
}

static void redis_reader_close(struct ab_sink_reader *base)
{
    struct redis_reader *r = (struct redis_reader *)base;
    if (r == NULL) {
        return;
    }
    if (r->page) {
        freeReplyObject(r->page);
    }
    redisFree(r->c);
    shared_free(r->sh);
    free(r->stream);
    free(r->line);
    free(r);
}

/* ---- --check-connect ---------------------------------------------------------------------- */

/* One command of the probe's handshake; 0, or -1 with the reason in msg. */
static int probe_step(redisContext *c, const struct redis_shared *sh, int argc,
                      const char **argv, char *msg, size_t len)
{
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    int rc = -1;
    if (r == NULL) {
        snprintf(msg, len, "redis %s: NOT reached (%s: %s)", sh->addr, argv[0], c->errstr);
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(msg, len, "redis %s: reached, but %s was refused: %.120s", sh->addr, argv[0],
                 r->str);
    } else {
        rc = 0;
    }
    if (r != NULL) {
        freeReplyObject(r);
    }
    return rc;
}

/* --check-connect, start-up thread: connect, AUTH, SELECT and PING as the sink does, with
 * blocking calls bounded by timeout_ms each. Writes nothing. */
static int redis_probe(const struct ab_sink_conf *sc, int timeout_ms, char *msg, size_t len)
{
    const struct ab_redis_conf *cfg = sc->opts;
    struct redis_shared *sh = ab_calloc(1, sizeof(*sh));
    const char *url = cfg->url && *cfg->url ? cfg->url : DEFAULT_URL;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = NULL;
    char db[24];
    int rc = -1;
    if (parse_url(url, sh, msg, len) != 0) {
        goto done;
    }
    c = redisConnectWithTimeout(sh->host, sh->port, tv);
    if (c == NULL || c->err) {
        snprintf(msg, len, "redis %s: NOT reached within %d ms (%s)", sh->addr, timeout_ms,
                 c ? c->errstr : "out of memory");
        goto done;
    }
    redisSetTimeout(c, tv);
    snprintf(db, sizeof(db), "%ld", sh->db);
    const char *auth[3] = {"AUTH", sh->user ? sh->user : sh->password, sh->password};
    const char *sel[2] = {"SELECT", db};
    const char *ping[1] = {"PING"};
    if ((sh->password && probe_step(c, sh, sh->user ? 3 : 2, auth, msg, len) != 0) ||
        (sh->db > 0 && probe_step(c, sh, 2, sel, msg, len) != 0) ||
        probe_step(c, sh, 1, ping, msg, len) != 0) {
        goto done;
    }
    snprintf(msg, len, "redis %s: reached, PING answered", sh->addr);
    rc = 0;
done:
    if (c != NULL) {
        redisFree(c);
    }
    shared_free(sh);
    return rc;
}

const struct ab_sink_ops ab_sink_redis = {
    .name = "redis",
    .default_route = "alma:{action}",
    .options = &redis_optset,
    .global_init = redis_global_init,
    .global_free = redis_global_free,
    .probe = redis_probe,
    .open = redis_open,
    .submit = redis_submit,
    .ready = redis_ready,
    .describe = redis_describe,
    .close = redis_close,
    .reader_open = redis_reader_open,
    .reader_next = redis_reader_next,
    .reader_close = redis_reader_close,
};
