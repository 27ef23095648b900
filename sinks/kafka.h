/* The Kafka sink: an idempotent librdkafka producer per worker, acks=all. */
#ifndef AB_KAFKA_SINK_H
#define AB_KAFKA_SINK_H

#include "config.h"
#include "sink.h"

/* The Kafka sink's options (its option table fills this). */
struct ab_kafka_conf {
    char *brokers;          /* --kafka-brokers */
    char *key;              /* --kafka-key: template; "" = no key */
    char *ce_headers;       /* --kafka-ce-headers: "on" (default) or "off" */
    struct ab_strlist conf; /* --kafka-conf key=value */
};

extern const struct ab_sink_ops ab_sink_kafka;

/* Topic names: Kafka allows [a-zA-Z0-9._-], at most 249 characters. */
#define AB_KAFKA_TOPIC_MAX 249
/* The legal topic name for an expanded route into out (AB_KAFKA_TOPIC_MAX + 1 bytes). */
void ab_kafka_topic_name(const char *route, char *out);

#endif
