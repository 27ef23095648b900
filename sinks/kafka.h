/* The Kafka sink: one idempotent librdkafka producer shared by the workers, acks=all. */
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

/* Topic names: Kafka allows [a-zA-Z0-9._-], at most 249 characters. */
#define AB_KAFKA_TOPIC_MAX 249
/* The legal topic name for an expanded route into out (AB_KAFKA_TOPIC_MAX + 1 bytes). */
void ab_kafka_topic_name(const char *route, char *out);

/* The CloudEvent JSON line of a consumed message in either content mode (binary: the
 * ce_ headers, content-type and the data value; structured: the value). A new string,
 * its length in *len; NULL for a message without value or headers. Any thread. */
typedef struct rd_kafka_message_s rd_kafka_message_t;
char *ab_kafka_message_event(const rd_kafka_message_t *m, size_t *len);

#endif
