#include "sink.h"

#include <string.h>

static const struct ab_sink_ops *const registry[] = {
    &ab_sink_file,
    &ab_sink_kafka,
    &ab_sink_redis,
};

const struct ab_sink_ops *ab_sink_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof(registry) / sizeof(registry[0]); i++) {
        if (strcmp(registry[i]->name, name) == 0) {
            return registry[i];
        }
    }
    return NULL;
}

const char *ab_sink_status_str(int status)
{
    switch (status) {
    case AB_SINK_OK:
        return "ok";
    case AB_SINK_ERROR:
        return "error";
    case AB_SINK_TIMEOUT:
        return "timeout";
    case AB_SINK_CLOSED:
        return "closed";
    default:
        return "unknown";
    }
}
