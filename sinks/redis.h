/* The Redis Streams sink: one XADD per event, acknowledged after Redis replied. */
#ifndef AB_REDIS_SINK_H
#define AB_REDIS_SINK_H

#include "sink.h"

/* The Redis sink's options (its option table fills this). */
struct ab_redis_conf {
    char *url;   /* --redis */
    long maxlen; /* --redis-maxlen */
    long wait;   /* --redis-wait */
};

extern const struct ab_sink_ops ab_sink_redis;

#endif
