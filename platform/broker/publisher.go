package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"

	"github.com/switchyard/switchyard/platform/transport"
)

// publisher is the Kafka [transport.Publisher]: an idempotent producer whose
// delivery reports call each message's ack. Any delivery error is fatal:
// continuing past a failed message would break the order of its key.
type publisher struct {
	t        *Transport
	producer *kafka.Producer
	log      *slog.Logger
	fatal    chan error
	events   chan struct{} // closed when the delivery-report loop ends
}

func newPublisher(t *Transport, clientID string, logger *slog.Logger) (*publisher, error) {
	if logger == nil {
		logger = slog.Default()
	}
	producer, err := NewProducer(t.cfg, clientID, logger)
	if err != nil {
		return nil, err
	}
	p := &publisher{t: t, producer: producer, log: logger, fatal: make(chan error, 1), events: make(chan struct{})}
	go p.deliveries()
	return p, nil
}

func (p *publisher) fail(err error) {
	select {
	case p.fatal <- err:
	default:
	}
}

func (p *publisher) Failed() <-chan error { return p.fatal }

func (p *publisher) deliveries() {
	defer close(p.events)
	for ev := range p.producer.Events() {
		switch e := ev.(type) {
		case *kafka.Message:
			ack, _ := e.Opaque.(func(transport.Delivery))
			if err := e.TopicPartition.Error; err != nil {
				p.fail(fmt.Errorf("deliver to %s: %w", *e.TopicPartition.Topic, err))
				continue
			}
			if ack != nil {
				ack(transport.Delivery{
					Partition: e.TopicPartition.Partition,
					Position:  strconv.FormatInt(int64(e.TopicPartition.Offset), 10),
				})
			}
		case kafka.Error:
			if e.IsFatal() {
				p.fail(fmt.Errorf("kafka producer: %w", e))
			} else {
				p.log.Warn("kafka producer", "error", e)
			}
		}
	}
}

func (p *publisher) Publish(ctx context.Context, m *transport.Message, ack func(transport.Delivery)) error {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := p.t.EnsureTopics(tctx, m.Topic)
	cancel()
	if err != nil {
		return err
	}
	km := toKafka(m.Topic, m)
	km.Opaque = ack
	for {
		err := p.producer.Produce(km, nil)
		var kerr kafka.Error
		if errors.As(err, &kerr) && kerr.Code() == kafka.ErrQueueFull {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err := <-p.fatal:
				p.fail(err)
				return err
			case <-time.After(5 * time.Millisecond):
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("produce to %s: %w", m.Topic, err)
		}
		return nil
	}
}

func (p *publisher) Flush(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if p.producer.Flush(100) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case err := <-p.fatal:
			p.fail(err)
			return false
		default:
		}
	}
}

func (p *publisher) Close() {
	_ = p.producer.Purge(kafka.PurgeQueue | kafka.PurgeInFlight | kafka.PurgeNonBlocking)
	p.producer.Close()
	<-p.events
}

// publishSync sends m through p and waits for the broker's acknowledgement.
func publishSync(ctx context.Context, p transport.Publisher, m *transport.Message) error {
	acked := make(chan struct{})
	if err := p.Publish(ctx, m, func(transport.Delivery) { close(acked) }); err != nil {
		return err
	}
	select {
	case <-acked:
		return nil
	case err := <-p.Failed():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
