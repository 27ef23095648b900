/* The Redis Streams sink: one XADD per event, acknowledged after Redis replied. */
#ifndef AB_REDIS_SINK_H
#define AB_REDIS_SINK_H

#include <stdint.h>

#include "sink.h"

/* The Redis sink's options (its option table fills this). */
struct ab_redis_conf {
    char *url;   /* --redis */
    long maxlen; /* --redis-maxlen */
    long wait;   /* --redis-wait */
};

extern const struct ab_sink_ops ab_sink_redis;

/* The CloudEvent JSON line of a stream entry's field/value array ([f1, v1, f2, v2, ...]) in
 * either content mode (binary: one field per attribute plus "data"; structured: "event").
 * A new string, its length in *len; NULL when the entry holds no event. Any thread. */
struct redisReply;
char *ab_redis_entry_event(const struct redisReply *fields, size_t *len);

#endif
