package testkit_test

import (
	"context"
	"testing"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestDatabaseIsFreshAndLogical(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := testkit.Database(t), testkit.Database(t)
	if a == b {
		t.Fatalf("two tests got the same database %s", a)
	}
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Fatalf("wal_level = %q, want logical", level)
	}
	var tables int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Fatalf("fresh database has %d tables", tables)
	}
}

func TestKafkaRoundTripAndRestart(t *testing.T) {
	t.Parallel()
	b := testkit.Kafka(t)
	b.CreateTopic(t, "smoke", 3)
	p, err := kafka.NewProducer(&kafka.ConfigMap{"bootstrap.servers": b.Addr(), "enable.idempotence": true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	topic := "smoke"
	produce := func(v string) {
		t.Helper()
		dr := make(chan kafka.Event, 1)
		if err := p.Produce(&kafka.Message{TopicPartition: kafka.TopicPartition{Topic: &topic, Partition: kafka.PartitionAny}, Key: []byte(v), Value: []byte(v)}, dr); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-dr:
			if m := e.(*kafka.Message); m.TopicPartition.Error != nil {
				t.Fatal(m.TopicPartition.Error)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("no delivery report")
		}
	}
	produce("before")
	b.Stop()
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	produce("after")
	c, err := kafka.NewConsumer(&kafka.ConfigMap{"bootstrap.servers": b.Addr(), "group.id": "g", "auto.offset.reset": "earliest"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(topic, nil); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	deadline := time.Now().Add(60 * time.Second)
	for len(got) < 2 && time.Now().Before(deadline) {
		m, err := c.ReadMessage(time.Second)
		if err != nil {
			continue
		}
		got[string(m.Value)] = true
	}
	if !got["before"] || !got["after"] {
		t.Fatalf("consumed %v, want before and after the restart", got)
	}
}
