package relay

import (
	"context"
	"strconv"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/transport"
)

const tracerName = "github.com/switchyard/switchyard/platform/relay"

// publisher sends records through the transport for one term of an active
// relay and calls each record's ack once the broker has acknowledged it. Any
// delivery error is fatal to the term: continuing past a failed event would
// break ordering, so the term ends and the next one resends everything not
// yet confirmed.
type publisher struct {
	r      *Relay
	pub    transport.Publisher
	tracer trace.Tracer
	topics map[string]topicNames // by aggregate type
}

// topicNames are the names an aggregate type's events are published
// under, made once rather than per event; ensured says whether the topic
// was made (ensureTopic) in this term.
type topicNames struct {
	topic, span, keyAttr string
	ensured              bool
}

func newPublisher(r *Relay) (*publisher, error) {
	pub, err := r.cfg.Transport.NewPublisher("switchyard-relay", r.cfg.Logger)
	if err != nil {
		return nil, err
	}
	return &publisher{r: r, pub: pub, tracer: otel.Tracer(tracerName), topics: map[string]topicNames{}}, nil
}

// failed delivers the first fatal error of the term.
func (p *publisher) failed() <-chan error { return p.pub.Failed() }

// names returns the names of an aggregate type's events.
func (p *publisher) names(aggregateType string) topicNames {
	n, ok := p.topics[aggregateType]
	if !ok {
		topic := envelope.Topic(p.r.cfg.TopicPrefix, aggregateType)
		n = topicNames{topic: topic, span: "publish " + topic, keyAttr: "messaging." + p.r.cfg.Transport.System() + ".message.key"}
		p.topics[aggregateType] = n
	}
	return n
}

// ensureTopic makes the topic of an aggregate type's events if this term
// has not yet, under ctx and for up to 30 s.
func (p *publisher) ensureTopic(ctx context.Context, aggregateType string) error {
	n := p.names(aggregateType)
	if n.ensured {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.r.cfg.Transport.EnsureTopics(tctx, n.topic); err != nil {
		return err
	}
	n.ensured = true
	p.topics[aggregateType] = n
	return nil
}

// publish queues rec; ack runs after the broker acknowledged it. It blocks
// only while the transport's queue is full. A backlog is published at
// tens of thousands of events a second, so what only a recording span
// needs (its attributes) is made only for one.
func (p *publisher) publish(ctx context.Context, rec outbox.Record, ack func()) error {
	names := p.names(rec.AggregateType)
	system := p.r.cfg.Transport.System()
	// The producer span continues the writer's trace (parent/child).
	parent := ctx
	if rec.TracingSpanContext != "" {
		parent = propagation.TraceContext{}.Extract(ctx, outbox.TraceCarrier(rec.TracingSpanContext))
	}
	_, span := p.tracer.Start(parent, names.span, trace.WithSpanKind(trace.SpanKindProducer))
	recording := span.IsRecording()
	if recording {
		span.SetAttributes(
			attribute.String("messaging.system", system),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.operation.name", "publish"),
			attribute.String("messaging.destination.name", names.topic),
			attribute.String("messaging.message.id", rec.ID.String()),
			attribute.String(names.keyAttr, rec.AggregateID),
			attribute.String("cloudevents.event_type", rec.Type),
		)
	}
	// The message carries the producer span's context; with no tracer
	// installed that is the writer's, passed through.
	var carrier propagation.MapCarrier
	if span.SpanContext().IsValid() {
		carrier = propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(trace.ContextWithSpan(parent, span), carrier)
	}
	msg := envelope.Encode(p.r.cfg.TopicPrefix, p.r.cfg.Source, rec, carrier)
	err := p.pub.Publish(ctx, msg, func(d transport.Delivery) {
		if recording {
			span.SetAttributes(
				attribute.String("messaging.destination.partition.id", strconv.Itoa(int(d.Partition))),
				transport.PositionAttribute(system, d.Position),
			)
		}
		span.End()
		p.r.published.Add(1)
		ack()
	})
	if err != nil {
		span.RecordError(err)
		span.End()
		return err
	}
	return nil
}

// flush waits up to timeout for every queued event to be acknowledged and
// reports whether all were.
func (p *publisher) flush(timeout time.Duration) bool { return p.pub.Flush(timeout) }

// close drops whatever is still queued (it was not confirmed, so the next
// term resends it) and closes the transport's publisher.
func (p *publisher) close() { p.pub.Close() }
