package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/transport"
)

// The cdc relay decodes the outbox from the WAL in the text forms its own
// session settings give, whatever the database's defaults say.
func TestCDCIgnoresHostileSessionDefaults(t *testing.T) {
	t.Parallel()
	h := newHarness(t, "kafka", outbox.ModeCDC)
	ctx := context.Background()
	var db string
	if err := h.pool.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	for _, set := range []string{"bytea_output = 'escape'", "DateStyle = 'SQL, DMY'", "TimeZone = 'Asia/Kolkata'", "IntervalStyle = 'sql_standard'"} {
		if _, err := h.pool.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s SET %s", pgx.Identifier{db}.Sanitize(), set)); err != nil {
			t.Fatal(err)
		}
	}
	h.start(h.config())
	before := time.Now().Add(-time.Second)
	err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
		return h.writer.Write(ctx, tx, outbox.Event{AggregateType: aggregateType, AggregateID: "acct-1", Message: wrapperspb.Bytes([]byte{0, 1, 2, 0xff, '\\'})})
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs := h.bus.ReadTopic(t, topic, time.Minute, func(m []*transport.Message) bool { return len(m) == 1 })
	var got wrapperspb.BytesValue
	if err := proto.Unmarshal(msgs[0].Value, &got); err != nil || string(got.Value) != string([]byte{0, 1, 2, 0xff, '\\'}) {
		t.Fatalf("payload %v (%v), want the bytes written", got.Value, err)
	}
	md, err := envelope.Decode(msgs[0])
	if err != nil {
		t.Fatal(err)
	}
	if md.Time.Before(before) || md.Time.After(time.Now().Add(time.Second)) {
		t.Fatalf("ce_time %s, want the commit time", md.Time)
	}
}
