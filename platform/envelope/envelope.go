// Package envelope maps outbox events to transport messages and back: the
// topic comes from the aggregate type (Debezium's outbox routing), the key is
// the aggregate id, the value is the protobuf payload, and CloudEvents Kafka
// binary-mode headers plus W3C trace context describe it, so any Kafka client
// (or redis-cli, on the Redis transport) can read an event without
// Switchyard.
package envelope

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/propagation"

	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/transport"
)

// Header names (CloudEvents Kafka protocol binding, binary content mode).
const (
	HeaderSpecVersion = "ce_specversion"
	HeaderID          = "ce_id"
	HeaderSource      = "ce_source"
	HeaderType        = "ce_type"
	HeaderTime        = "ce_time"
	HeaderSubject     = "ce_subject"
	HeaderContentType = "content-type"
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"

	// SpecVersion is the CloudEvents version written in ce_specversion.
	SpecVersion = "1.0"
	// ContentType is the payload's media type.
	ContentType = "application/protobuf"
)

// Topic returns the topic an aggregate type's events go to.
func Topic(prefix, aggregateType string) string { return prefix + aggregateType }

// DLQTopic returns the dead-letter topic of topic.
func DLQTopic(topic string) string { return topic + ".dlq" }

// Encode builds the message for an outbox record. source is the
// CloudEvents source (for example "/switchyard/orders"); trace holds the
// traceparent/tracestate to send (usually the relay's producer span).
func Encode(prefix, source string, rec outbox.Record, trace propagation.MapCarrier) *transport.Message {
	// The header values and the key share one buffer: a relay encodes
	// every event, and a backlog is many of them.
	traceparent, tracestate := trace[HeaderTraceparent], trace[HeaderTracestate]
	buf := make([]byte, 0, len(SpecVersion)+36+len(source)+len(rec.Type)+len(time.RFC3339Nano)+
		2*len(rec.AggregateID)+len(ContentType)+len(traceparent)+len(tracestate))
	headers := make([]transport.Header, 0, 9)
	// add appends the header whose value was appended to buf from start.
	// (Should buf grow, earlier values stay valid in the old array.)
	add := func(key string, start int) {
		headers = append(headers, transport.Header{Key: key, Value: buf[start:len(buf):len(buf)]})
	}
	str := func(key, value string) {
		start := len(buf)
		buf = append(buf, value...)
		add(key, start)
	}
	str(HeaderSpecVersion, SpecVersion)
	start := len(buf)
	buf = append(buf, make([]byte, 36)...)
	encodeUUID(buf[start:], rec.ID)
	add(HeaderID, start)
	str(HeaderSource, source)
	str(HeaderType, rec.Type)
	start = len(buf)
	buf = rec.CreatedAt.UTC().AppendFormat(buf, time.RFC3339Nano)
	add(HeaderTime, start)
	str(HeaderSubject, rec.AggregateID)
	str(HeaderContentType, ContentType)
	if traceparent != "" {
		str(HeaderTraceparent, traceparent)
	}
	if tracestate != "" {
		str(HeaderTracestate, tracestate)
	}
	start = len(buf)
	buf = append(buf, rec.AggregateID...)
	return &transport.Message{
		Topic:   Topic(prefix, rec.AggregateType),
		Key:     buf[start:len(buf):len(buf)],
		Value:   rec.Payload,
		Headers: headers,
	}
}

// encodeUUID writes id in its canonical form (36 bytes) to dst, as
// id.String() would, without making a string.
func encodeUUID(dst []byte, id uuid.UUID) {
	const digits = "0123456789abcdef"
	j := 0
	for i, b := range id {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst[j] = '-'
			j++
		}
		dst[j], dst[j+1] = digits[b>>4], digits[b&0x0f]
		j += 2
	}
}

// Metadata is what the headers of a received event say.
type Metadata struct {
	ID      uuid.UUID // ce_id: the outbox id, unique per event
	Source  string    // ce_source: the producing service
	Type    string    // ce_type: the full protobuf message name
	Subject string    // ce_subject: the aggregate id
	Time    time.Time // ce_time: when the event was written
}

// ErrMalformed is returned (wrapped) for a message that is not a valid
// Switchyard event.
var ErrMalformed = errors.New("malformed event")

// Decode reads the CloudEvents headers of msg.
func Decode(msg *transport.Message) (Metadata, error) {
	var md Metadata
	h := Headers(msg)
	if v := h[HeaderSpecVersion]; v != SpecVersion {
		return md, fmt.Errorf("%w: %s = %q, want %q", ErrMalformed, HeaderSpecVersion, v, SpecVersion)
	}
	id, err := uuid.Parse(h[HeaderID])
	if err != nil {
		return md, fmt.Errorf("%w: %s = %q: %w", ErrMalformed, HeaderID, h[HeaderID], err)
	}
	if h[HeaderType] == "" {
		return md, fmt.Errorf("%w: no %s header", ErrMalformed, HeaderType)
	}
	if ct := h[HeaderContentType]; ct != "" && ct != ContentType {
		return md, fmt.Errorf("%w: content-type %q, want %q", ErrMalformed, ct, ContentType)
	}
	md = Metadata{ID: id, Source: h[HeaderSource], Type: h[HeaderType], Subject: h[HeaderSubject]}
	if ts := h[HeaderTime]; ts != "" {
		if md.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
			return md, fmt.Errorf("%w: %s = %q: %w", ErrMalformed, HeaderTime, ts, err)
		}
	}
	return md, nil
}

// Headers returns msg's headers as a map (the last value wins).
func Headers(msg *transport.Message) map[string]string {
	h := make(map[string]string, len(msg.Headers))
	for _, kv := range msg.Headers {
		h[kv.Key] = string(kv.Value)
	}
	return h
}

// TraceCarrier returns the trace context headers of msg for a propagator.
func TraceCarrier(msg *transport.Message) propagation.MapCarrier {
	c := propagation.MapCarrier{}
	for _, kv := range msg.Headers {
		if kv.Key == HeaderTraceparent || kv.Key == HeaderTracestate {
			c[kv.Key] = string(kv.Value)
		}
	}
	return c
}
