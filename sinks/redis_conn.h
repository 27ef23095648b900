/* One hiredis async connection on a libevent loop and its life cycle, shared by the Redis
 * sink (redis.c) and the Redis deduplication store (dedupe_redis.c):
 *
 *   DOWN --retry timer--> CONNECTING --TCP up--> HANDSHAKE --AUTH/SELECT/PING ok--> READY
 *     ^                                                                               |
 *     +--- connect refused, handshake error or timeout, connection lost, --------------+
 *          ab_redis_conn_drop() (the owner's command deadline)
 *
 * The owner sends its commands on ab_redis_conn_ac() while READY, with its own reply
 * callbacks; in them ab_redis_conn_owner(ac) is the owner (ac->data is the connection).
 * Ownership: hiredis frees the context itself after a failed connect or a lost connection
 * (after running every pending reply callback with a NULL reply); the connection frees it
 * only from ab_redis_conn_drop() and ab_redis_conn_free(), which the owner must call from
 * its own timers or close path, never from inside a hiredis callback.
 *
 * Threads: everything on the loop thread of base. */
#ifndef AB_REDIS_CONN_H
#define AB_REDIS_CONN_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

struct event_base;

struct ab_redis_conn_conf {
    const char *host;
    int port;
    long db;              /* SELECT when > 0 */
    const char *user;     /* ACL user, NULL for the default user */
    const char *password; /* AUTH when not NULL */
    const char *addr;     /* "127.0.0.1:6379 db 0" for messages: never the password */
    long connect_timeout_ms; /* deadline for CONNECTING + HANDSHAKE; 0: none */
    long backoff_min_ms;     /* the first retry's delay, doubling after each failure ... */
    long backoff_max_ms;     /* ... up to this; back to min once a handshake succeeds */
    int keepalive;           /* TCP keepalive on the socket */
    const char *log_name;    /* "redis": log the changes under it (a failure once per
                              * distinct reason, at error level); NULL: log nothing */
};

enum ab_redis_conn_state {
    AB_REDIS_DOWN = 0,
    AB_REDIS_CONNECTING,
    AB_REDIS_HANDSHAKE,
    AB_REDIS_READY,
};

struct ab_redis_conn;

/* A connection for owner that starts connecting at once. conf's strings must outlive it. */
struct ab_redis_conn *ab_redis_conn_new(struct event_base *base,
                                        const struct ab_redis_conn_conf *conf, void *owner);
/* Close the connection (hiredis hands every command back with a NULL reply, inside this
 * call), stop retrying and free. NULL is a no-op. */
void ab_redis_conn_free(struct ab_redis_conn *c);

/* The owner is closing: no retry from now on (the current connection stays, for the
 * replies still due, until ab_redis_conn_free). */
void ab_redis_conn_closing(struct ab_redis_conn *c);

/* From a reply callback of a command sent on the connection: its owner. */
void *ab_redis_conn_owner(const redisAsyncContext *ac);

/* The current context (NULL while DOWN); send commands only while READY. A reply callback
 * compares its ac to it to tell a reply of the current connection from an old one's. */
redisAsyncContext *ab_redis_conn_ac(const struct ab_redis_conn *c);
enum ab_redis_conn_state ab_redis_conn_state(const struct ab_redis_conn *c);
/* Why it is (or last was) down, "" when none since the last handshake. */
const char *ab_redis_conn_reason(const struct ab_redis_conn *c);
/* While DOWN: milliseconds until the next attempt. */
long ab_redis_conn_retry_in_ms(const struct ab_redis_conn *c);

/* Give up on the current connection (a command without reply in time): hiredis hands
 * every command back with a NULL reply inside this call, after the state is DOWN (so a
 * command sent from one of those callbacks is refused). Then retry as after any failure.
 * From the owner's timers only. */
void ab_redis_conn_drop(struct ab_redis_conn *c, const char *reason);

/* redisAsyncCommandArgv's equal (argvlen NULL: strlen of each argument), formatting the
 * request in one pass: hiredis 0.14 formats each argument with sdscatfmt, about a quarter of
 * the daemon's instructions per webhook with the Redis sink. Returns REDIS_OK or
 * REDIS_ERR as redisAsyncCommandArgv does. */
int ab_redis_command_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata, int argc,
                          const char **argv, const size_t *argvlen);

/* The SHA1 of a script's text as EVALSHA takes it (40 hex digits and a NUL) into out. */
void ab_redis_script_sha(const char *script, char out[41]);

/* SET ... NX GET (Redis >= 7.0; "ERR syntax error" from older servers, in a script's error
 * too): 1 unless a reply on the current connection showed that the server refuses it, then
 * 0 until the next connection (a failover may bring another version). The owners send the
 * plain command (or a script using it) first and fall back to their Lua path when
 * ab_redis_refuses_set_nx_get(reply) says so, after ab_redis_conn_no_set_nx_get(c, ac),
 * which ignores a reply of an earlier connection. */
int ab_redis_conn_set_nx_get(const struct ab_redis_conn *c);
void ab_redis_conn_no_set_nx_get(struct ab_redis_conn *c, const redisAsyncContext *ac);
int ab_redis_refuses_set_nx_get(const redisReply *reply);

/* A measuring aid for bench/dedupe_bench.py, never for production: 1 when the environment
 * variable ALMABRIDGE_BENCH_FLOOR is name (logged as a warning on each call, from
 * global_init). "script": the Redis sink without a store writes each entry through a script
 * that only runs the XADD (the price of any script, with no claim in it); "store-ping": the
 * Redis store answers every claim NEW and every marker STORED after a PING (two round trips
 * to its server that do nothing: deduplication OFF). The floors the issue-19 bench measures
 * beside the real configurations (bench/RESULTS.md). */
int ab_redis_bench_floor(const char *name);

#endif
