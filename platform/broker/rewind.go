package broker

import (
	"context"
	"fmt"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
)

// RewindGroup moves group's committed offsets on every partition of topics
// back to offset 0, so that the group's next member reads again everything
// the topics retain (offsets below a partition's start resolve to its
// earliest retained message). An inbox consumer skips what it has already
// applied, so a rewind replays duplicates and changes nothing; the chaos
// soak uses it to prove that. Kafka refuses the change while the group has
// active members: stop its consumers first.
func RewindGroup(ctx context.Context, c Config, group string, topics ...string) error {
	admin, err := kafka.NewAdminClient(c.withDefaults().AdminConfig())
	if err != nil {
		return fmt.Errorf("create Kafka admin client: %w", err)
	}
	defer admin.Close()
	var parts kafka.TopicPartitions
	for _, topic := range topics {
		md, err := admin.GetMetadata(&topic, false, 10_000)
		if err != nil {
			return fmt.Errorf("rewind %s: metadata of %s: %w", group, topic, err)
		}
		for _, p := range md.Topics[topic].Partitions {
			parts = append(parts, kafka.TopicPartition{Topic: &topic, Partition: p.ID, Offset: 0})
		}
	}
	res, err := admin.AlterConsumerGroupOffsets(ctx, []kafka.ConsumerGroupTopicPartitions{{Group: group, Partitions: parts}})
	if err != nil {
		return fmt.Errorf("rewind %s: %w", group, err)
	}
	for _, g := range res.ConsumerGroupsTopicPartitions {
		for _, p := range g.Partitions {
			if p.Error != nil {
				return fmt.Errorf("rewind %s: %s[%d]: %w", group, *p.Topic, p.Partition, p.Error)
			}
		}
	}
	return nil
}
