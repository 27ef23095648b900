/* The registry of sink backends. See registry.h. */
#include "registry.h"

#include <string.h>

#include "config.h"

const struct ab_sink_ops *const ab_sinks[] = {
    &ab_sink_file,
    &ab_sink_kafka,
    &ab_sink_redis,
    NULL,
};

const struct ab_sink_ops *ab_sink_find(const char *name)
{
    for (size_t i = 0; name && ab_sinks[i]; i++) {
        if (strcmp(ab_sinks[i]->name, name) == 0) {
            return ab_sinks[i];
        }
    }
    return NULL;
}

void ab_sink_setup_init(struct ab_sink_setup *s, const struct ab_config *cfg,
                        const struct ab_sink_ops *ops)
{
    memset(s, 0, sizeof(*s));
    if (ops == &ab_sink_file) {
        s->opts.file = (struct ab_file_conf){cfg->file, cfg->file_fsync};
    } else if (ops == &ab_sink_kafka) {
        s->opts.kafka = (struct ab_kafka_conf){cfg->kafka_brokers, cfg->kafka_key,
                                               cfg->kafka_conf};
    } else if (ops == &ab_sink_redis) {
        s->opts.redis = (struct ab_redis_conf){cfg->redis_url, cfg->redis_maxlen,
                                               cfg->redis_wait};
    }
    s->conf = (struct ab_sink_conf){&s->opts, cfg->ack_timeout_ms, cfg->max_body,
                                    cfg->check_config};
}
