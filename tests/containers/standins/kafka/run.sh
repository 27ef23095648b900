#!/bin/sh
# Stand-in for apache/kafka's /etc/kafka/docker/run: every KAFKA_* environment variable
# (but the JVM ones) becomes a line of server.properties, the storage is formatted once with
# CLUSTER_ID, then the broker runs in the foreground.
set -eu
props=/opt/kafka/config/server.properties
env | sort | while IFS='=' read -r name value; do
    case $name in
    KAFKA_VERSION | KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_LOG4J_* | KAFKA_JMX_* | \
        KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_TOOLS_*) ;;
    KAFKA_*)
        key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' |
            sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
        printf '%s=%s\n' "$key" "$value" ;;
    esac
done >"$props"
grep -q '^log\.dirs=' "$props" || echo 'log.dirs=/var/lib/kafka/data' >>"$props"
java=java
cp="/opt/kafka/libs/*"
log="-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties"
$java $log -cp "$cp" kafka.tools.StorageTool format --ignore-formatted \
    -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$props"
# shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several options
exec $java ${KAFKA_HEAP_OPTS:--Xmx1g -Xms1g} ${KAFKA_OPTS:-} $log -cp "$cp" kafka.Kafka "$props"
