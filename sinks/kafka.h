/* The Kafka sink: an idempotent librdkafka producer per worker, acks=all. */
#ifndef AB_KAFKA_SINK_H
#define AB_KAFKA_SINK_H

#include "config.h"
#include "sink.h"

/* The Kafka sink's options (its option table fills this). */
struct ab_kafka_conf {
    char *brokers;          /* --kafka-brokers */
    char *key;              /* --kafka-key: template; "" = no key */
    struct ab_strlist conf; /* --kafka-conf key=value */
};

extern const struct ab_sink_ops ab_sink_kafka;

#endif
