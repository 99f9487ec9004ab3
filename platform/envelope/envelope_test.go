package envelope_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/propagation"

	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
)

// Encode writes the CloudEvents headers in their order, the trace headers
// only when there are any, and Decode reads back what Encode wrote.
func TestEncodeDecode(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 30, 18, 40, 1, 123456789, time.FixedZone("x", 3600))
	for _, tc := range []struct {
		name  string
		id    uuid.UUID
		trace propagation.MapCarrier
		want  []string // header keys in order
	}{
		{"no trace", uuid.Nil, nil, []string{"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type"}},
		{"traceparent", uuid.MustParse("0190f5a2-7b1c-7def-8a9b-0123456789ab"),
			propagation.MapCarrier{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			[]string{"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type", "traceparent"}},
		{"both", uuid.New(),
			propagation.MapCarrier{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v"},
			[]string{"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "content-type", "traceparent", "tracestate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := outbox.Record{ID: tc.id, AggregateType: "order", AggregateID: "order-42", Type: "switchyard.orders.v1.OrderCreated",
				Payload: []byte{1, 2, 3}, CreatedAt: at}
			msg := envelope.Encode("shop.", "/switchyard/orders", rec, tc.trace)
			if msg.Topic != "shop.order" || string(msg.Key) != "order-42" || string(msg.Value) != "\x01\x02\x03" {
				t.Fatalf("topic %q key %q value %x", msg.Topic, msg.Key, msg.Value)
			}
			if len(msg.Headers) != len(tc.want) {
				t.Fatalf("%d headers, want %v", len(msg.Headers), tc.want)
			}
			for i, h := range msg.Headers {
				if h.Key != tc.want[i] {
					t.Fatalf("header %d is %s, want %s", i, h.Key, tc.want[i])
				}
			}
			wantValues := map[string]string{
				"ce_specversion": "1.0", "ce_id": tc.id.String(), "ce_source": "/switchyard/orders",
				"ce_type": rec.Type, "ce_time": "2026-11-30T17:40:01.123456789Z", "ce_subject": "order-42",
				"content-type": "application/protobuf", "traceparent": tc.trace["traceparent"], "tracestate": tc.trace["tracestate"],
			}
			for _, h := range msg.Headers {
				if string(h.Value) != wantValues[h.Key] {
					t.Errorf("%s = %q, want %q", h.Key, h.Value, wantValues[h.Key])
				}
			}
			// Values share a buffer: appending to one must not change the next.
			_ = append(msg.Headers[0].Value, "xxxxxxxx"...)
			if string(msg.Headers[1].Value) != tc.id.String() {
				t.Fatalf("appending to a header value changed the next: %q", msg.Headers[1].Value)
			}
			md, err := envelope.Decode(msg)
			if err != nil {
				t.Fatal(err)
			}
			if md.ID != tc.id || md.Source != "/switchyard/orders" || md.Type != rec.Type || md.Subject != "order-42" || !md.Time.Equal(at) {
				t.Fatalf("decoded %+v", md)
			}
		})
	}
}
