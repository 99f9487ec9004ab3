package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/confluentinc/confluent-kafka-go/v2/kafka"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
)

const tracerName = "github.com/switchyard/switchyard/platform/relay"

// publisher sends records to Kafka for one term of an active relay and calls
// each record's ack once Kafka has acknowledged it. Any delivery error is
// fatal to the term: continuing past a failed event would break ordering, so
// the term ends and the next one resends everything not yet confirmed.
type publisher struct {
	r        *Relay
	producer *kafka.Producer
	topics   map[string]bool
	fatal    chan error
	events   chan struct{} // closed when the delivery-report loop ends
}

type delivery struct {
	ack  func()
	span trace.Span
}

func newPublisher(r *Relay) (*publisher, error) {
	producer, err := broker.NewProducer(r.cfg.Kafka, "switchyard-relay", r.cfg.Logger)
	if err != nil {
		return nil, err
	}
	p := &publisher{
		r:        r,
		producer: producer,
		topics:   map[string]bool{},
		fatal:    make(chan error, 1),
		events:   make(chan struct{}),
	}
	go p.deliveries()
	return p, nil
}

func (p *publisher) fail(err error) {
	select {
	case p.fatal <- err:
	default:
	}
}

// failed delivers the first fatal error of the term.
func (p *publisher) failed() <-chan error { return p.fatal }

func (p *publisher) deliveries() {
	defer close(p.events)
	for ev := range p.producer.Events() {
		switch e := ev.(type) {
		case *kafka.Message:
			d, _ := e.Opaque.(*delivery)
			if d == nil {
				continue
			}
			if err := e.TopicPartition.Error; err != nil {
				d.span.RecordError(err)
				d.span.SetStatus(codes.Error, err.Error())
				d.span.End()
				p.fail(fmt.Errorf("deliver to %s: %w", *e.TopicPartition.Topic, err))
				continue
			}
			d.span.SetAttributes(
				attribute.Int("messaging.destination.partition.id", int(e.TopicPartition.Partition)),
				attribute.Int64("messaging.kafka.offset", int64(e.TopicPartition.Offset)),
			)
			d.span.End()
			p.r.published.Add(1)
			d.ack()
		case kafka.Error:
			if e.IsFatal() {
				p.fail(fmt.Errorf("kafka producer: %w", e))
			} else {
				p.r.cfg.Logger.Warn("kafka producer", "error", e)
			}
		}
	}
}

// publish queues rec for Kafka; ack runs after Kafka acknowledged it. It
// blocks only while the producer's queue is full.
func (p *publisher) publish(ctx context.Context, rec outbox.Record, ack func()) error {
	topic := envelope.Topic(p.r.cfg.TopicPrefix, rec.AggregateType)
	if !p.topics[topic] {
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := broker.EnsureTopics(tctx, p.r.cfg.Kafka, topic)
		cancel()
		if err != nil {
			return err
		}
		p.topics[topic] = true
	}

	// The producer span continues the writer's trace (parent/child).
	parent := propagation.TraceContext{}.Extract(ctx, outbox.TraceCarrier(rec.TracingSpanContext))
	_, span := otel.Tracer(tracerName).Start(parent, "publish "+topic,
		trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.operation.name", "publish"),
			attribute.String("messaging.destination.name", topic),
			attribute.String("messaging.message.id", rec.ID.String()),
			attribute.String("messaging.kafka.message.key", rec.AggregateID),
			attribute.String("cloudevents.event_type", rec.Type),
		))
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpan(parent, span), carrier)
	if carrier["traceparent"] == "" {
		// No tracer installed: pass the writer's context through unchanged.
		carrier = outbox.TraceCarrier(rec.TracingSpanContext)
	}
	msg := envelope.Encode(p.r.cfg.TopicPrefix, p.r.cfg.Source, rec, carrier)
	msg.Opaque = &delivery{ack: ack, span: span}
	for {
		err := p.producer.Produce(msg, nil)
		var kerr kafka.Error
		if errors.As(err, &kerr) && kerr.Code() == kafka.ErrQueueFull {
			select {
			case <-ctx.Done():
				span.End()
				return ctx.Err()
			case err := <-p.fatal:
				p.fail(err)
				span.End()
				return err
			case <-time.After(5 * time.Millisecond):
				continue
			}
		}
		if err != nil {
			span.End()
			return fmt.Errorf("produce to %s: %w", topic, err)
		}
		return nil
	}
}

// flush waits up to timeout for every queued event to be acknowledged and
// reports whether all were.
func (p *publisher) flush(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		left := p.producer.Flush(100)
		if left == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-p.fatal:
			return false
		default:
		}
	}
}

// close drops whatever is still queued (it was not confirmed, so the next
// term resends it) and closes the producer.
func (p *publisher) close() {
	_ = p.producer.Purge(kafka.PurgeQueue | kafka.PurgeInFlight | kafka.PurgeNonBlocking)
	p.producer.Close()
	<-p.events
}
