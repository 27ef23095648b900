import io.cloudevents.CloudEvent;
import io.cloudevents.core.format.EventFormat;
import io.cloudevents.core.provider.EventFormatProvider;
import io.cloudevents.jackson.JsonFormat;
import io.cloudevents.kafka.CloudEventDeserializer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;

/** java CeRead BROKER TOPIC: every message of TOPIC, from its beginning to its end, as
 * {"key": ..., "event": <the CloudEvent in structured JSON>} lines. */
public class CeRead {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class);
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, CloudEventDeserializer.class);
        EventFormat json = EventFormatProvider.getInstance().resolveFormat(JsonFormat.CONTENT_TYPE);
        try (KafkaConsumer<String, CloudEvent> c = new KafkaConsumer<>(p)) {
            List<TopicPartition> parts = new ArrayList<>();
            c.partitionsFor(args[1]).forEach(i -> parts.add(new TopicPartition(args[1], i.partition())));
            c.assign(parts);
            c.seekToBeginning(parts);
            Map<TopicPartition, Long> end = c.endOffsets(parts);
            long left = end.values().stream().mapToLong(Long::longValue).sum();
            long deadline = System.currentTimeMillis() + 60000;
            while (left > 0 && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, CloudEvent> r : c.poll(Duration.ofMillis(500))) {
                    String ev = new String(json.serialize(r.value()), StandardCharsets.UTF_8);
                    String key = r.key() == null ? "null" : "\"" + r.key().replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
                    System.out.println("{\"key\":" + key + ",\"event\":" + ev + "}");
                    left--;
                }
            }
            if (left > 0) {
                System.err.println("ce-read: " + left + " message(s) not read in time");
                System.exit(1);
            }
        }
    }
}
