// ce_read: reads a Kafka topic from its beginning to its end with the CloudEvents Go SDK
// (github.com/cloudevents/sdk-go/v2, its Kafka binding protocol/kafka_sarama on IBM/sarama)
// and prints each message as a CloudEvent in structured JSON, one per line, for
// tests/e2e/test_sdks.py. The binding decides the content mode from the headers itself.
//
//	go run . BROKER TOPIC
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/IBM/sarama"
	"github.com/cloudevents/sdk-go/protocol/kafka_sarama/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: ce_read BROKER TOPIC")
		os.Exit(2)
	}
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_8_0_0
	client, err := sarama.NewClient([]string{os.Args[1]}, cfg)
	check(err)
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	check(err)
	defer consumer.Close()
	topic := os.Args[2]
	parts, err := client.Partitions(topic)
	check(err)
	out := json.NewEncoder(os.Stdout)
	for _, p := range parts {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		check(err)
		if end == 0 {
			continue
		}
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		check(err)
		for m := range pc.Messages() {
			msg := kafka_sarama.NewMessageFromConsumerMessage(m)
			ev, err := binding.ToEvent(context.Background(), msg)
			check(err)
			check(ev.Validate())
			check(out.Encode(map[string]interface{}{
				"mode": msg.ReadEncoding().String(), "key": string(m.Key), "event": ev}))
			if m.Offset+1 >= end {
				break
			}
		}
		pc.Close()
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "ce_read:", err)
		os.Exit(1)
	}
}
