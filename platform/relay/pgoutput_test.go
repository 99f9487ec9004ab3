package relay

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
)

// outboxRelation is the outbox table as pgoutput describes it.
var outboxRelation = &pglogrepl.RelationMessage{RelationID: 16400, RelationName: "outbox", Columns: []*pglogrepl.RelationMessageColumn{
	{Name: "id"}, {Name: "aggregatetype"}, {Name: "aggregateid"}, {Name: "type"},
	{Name: "payload"}, {Name: "tracingspancontext"}, {Name: "created_at"},
}}

// column is one value of a tuple: kind 't' with text, or 'n' / 'u'.
type column struct {
	kind byte
	text string
}

// insertMessage encodes a pgoutput (protocol 1) Insert message.
func insertMessage(relation uint32, cols ...column) []byte {
	var b bytes.Buffer
	b.WriteByte('I')
	_ = binary.Write(&b, binary.BigEndian, relation)
	b.WriteByte('N')
	_ = binary.Write(&b, binary.BigEndian, uint16(len(cols)))
	for _, c := range cols {
		b.WriteByte(c.kind)
		if c.kind == 't' {
			_ = binary.Write(&b, binary.BigEndian, uint32(len(c.text)))
			b.WriteString(c.text)
		}
	}
	return b.Bytes()
}

func text(s string) column { return column{'t', s} }

// The decoder reads what PostgreSQL sends, agrees with pglogrepl's own
// decoding of the same bytes, and refuses what it cannot read rather than
// publish part of a row.
func TestDecodeInsert(t *testing.T) {
	t.Parallel()
	id := uuid.MustParse("0190f5a2-7b1c-7def-8a9b-0123456789ab")
	good := []column{text(id.String()), text("order"), text("order-42"), text("switchyard.orders.v1.OrderCreated"),
		text(`\x0a0b`), text("traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), text("2026-11-30 18:40:01.123456+00")}
	with := func(i int, c column) []column {
		cols := append([]column(nil), good...)
		cols[i] = c
		return cols
	}
	for _, tc := range []struct {
		name    string
		msg     []byte
		wantErr string
	}{
		{"a row", insertMessage(16400, good...), ""},
		{"null tracing context", insertMessage(16400, with(5, column{kind: 'n'})...), ""},
		{"too few columns", insertMessage(16400, good[:6]...), "6 values for 7 columns"},
		{"cut short", insertMessage(16400, good...)[:40], "cut short"},
		{"bytea not hex", insertMessage(16400, with(4, text("abc"))...), "hex format"},
		{"bad hex", insertMessage(16400, with(4, text(`\xzz`))...), "column payload"},
		{"bad id", insertMessage(16400, with(0, text("nope"))...), "column id"},
		{"bad time", insertMessage(16400, with(6, text("yesterday"))...), "timestamptz"},
		{"no type", insertMessage(16400, with(3, column{kind: 'n'})...), "lacks id, aggregatetype or type"},
		{"binary value", insertMessage(16400, with(2, column{kind: 'b'})...), "want text"},
		{"length past the end", append(insertMessage(16400, good[:6]...)[:6], 0, 7, 't', 0xff, 0xff, 0xff, 0xff, 'x'), "cut short"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			relation, tuple, err := splitInsert(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if relation != 16400 {
				t.Fatalf("relation %d", relation)
			}
			var d recordDecoder
			rec, err := d.record(outboxRelation, tuple)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// pglogrepl reads the same bytes to the same values.
			parsed, err := pglogrepl.Parse(tc.msg)
			if err != nil {
				t.Fatalf("pglogrepl cannot parse the test's message: %v", err)
			}
			ins := parsed.(*pglogrepl.InsertMessage)
			for i, col := range ins.Tuple.Columns {
				var got string
				switch outboxRelation.Columns[i].Name {
				case "id":
					got = rec.ID.String()
				case "aggregatetype":
					got = rec.AggregateType
				case "aggregateid":
					got = rec.AggregateID
				case "type":
					got = rec.Type
				case "payload":
					got = `\x` + hexOf(rec.Payload)
				case "tracingspancontext":
					got = rec.TracingSpanContext
				case "created_at":
					got = rec.CreatedAt.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
				}
				if want := string(col.Data); got != want {
					t.Errorf("%s: %q, pglogrepl %q", outboxRelation.Columns[i].Name, got, want)
				}
			}
			if !rec.CreatedAt.Equal(time.Date(2026, 11, 30, 18, 40, 1, 123456000, time.UTC)) {
				t.Errorf("created_at %v", rec.CreatedAt)
			}
		})
	}
	if _, _, err := splitInsert([]byte{'I', 0, 0}); err == nil {
		t.Error("a truncated message split")
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, c := range b {
		s.WriteByte(digits[c>>4])
		s.WriteByte(digits[c&0xf])
	}
	return s.String()
}
