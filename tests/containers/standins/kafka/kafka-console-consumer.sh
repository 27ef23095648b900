#!/bin/sh
# Stand-in for apache/kafka's bin/kafka-console-consumer.sh.
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
    -cp "/opt/kafka/libs/*" org.apache.kafka.tools.consumer.ConsoleConsumer "$@"
