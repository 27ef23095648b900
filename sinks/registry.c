/* The registry of sink backends. See registry.h. */
#include "registry.h"

#include <string.h>

#include "config.h"
#include "file.h"
#include "http.h"
#include "kafka.h"
#include "redis.h"
#include "spool.h"

const struct ab_sink_ops *const ab_sinks[] = {
    &ab_sink_file,
    &ab_sink_spool, /* wraps kafka or redis: only its options are found here */
    &ab_sink_kafka,
    &ab_sink_redis,
    &ab_sink_http,
    NULL,
};

const struct ab_sink_ops *ab_sink_find(const char *name)
{
    for (size_t i = 0; name && ab_sinks[i]; i++) {
        if (!(ab_sinks[i]->flags & AB_SINK_WRAPS) && strcmp(ab_sinks[i]->name, name) == 0) {
            return ab_sinks[i];
        }
    }
    return NULL;
}

void ab_sink_setup_init(struct ab_sink_setup *s, const struct ab_config *cfg,
                        const struct ab_sink_ops *ops)
{
    ab_config_sink_conf(cfg, ops, &s->conf);
}
