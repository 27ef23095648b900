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

/* INTERIM for reconcile, until the sink read side (issue 18): every entry's "event" field
 * of stream from stream id from_ms-0 on, over a blocking connection of its own. 0, or -1
 * with err. */
int ab_redis_scan(const struct ab_redis_conf *cfg, const char *stream, int64_t from_ms,
                  void (*on_event)(const char *line, size_t len, void *arg), void *arg,
                  char *err, size_t errlen);

#endif
