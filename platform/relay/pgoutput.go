package relay

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/switchyard/switchyard/platform/outbox"
)

// errShortInsert is returned for an Insert message cut short.
var errShortInsert = errors.New("pgoutput insert message cut short")

// splitInsert returns the relation and the new tuple of a pgoutput
// (protocol 1) Insert message: 'I', the relation's oid, 'N', the tuple.
func splitInsert(data []byte) (relation uint32, tuple []byte, err error) {
	if len(data) < 6 || data[0] != 'I' {
		return 0, nil, errShortInsert
	}
	if data[5] != 'N' {
		return 0, nil, fmt.Errorf("pgoutput insert: tuple marked %q, want 'N'", data[5])
	}
	return binary.BigEndian.Uint32(data[1:5]), data[6:], nil
}

// recordDecoder reads outbox rows from pgoutput tuples. It keeps one
// string per distinct aggregate type and event type, which are few, so
// that a row costs allocations only for what is its own.
type recordDecoder struct {
	names map[string]string
}

// maxNames bounds recordDecoder.names; past it, names are not shared.
const maxNames = 4096

func (d *recordDecoder) name(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(d.names) < maxNames {
		if d.names == nil {
			d.names = map[string]string{}
		}
		d.names[s] = s
	}
	return s
}

// record reads an outbox row from a pgoutput tuple in text format: an
// Int16 column count, then per column 'n' (null), 'u' (unchanged TOAST,
// which inserts never carry) or 't' with an Int32 length and the text.
func (d *recordDecoder) record(rel *pglogrepl.RelationMessage, tuple []byte) (outbox.Record, error) {
	var rec outbox.Record
	if len(tuple) < 2 {
		return rec, errShortInsert
	}
	n := int(binary.BigEndian.Uint16(tuple))
	if n != len(rel.Columns) {
		return rec, fmt.Errorf("outbox row: %d values for %d columns", n, len(rel.Columns))
	}
	p := 2
	for i := range n {
		if p >= len(tuple) {
			return rec, errShortInsert
		}
		kind := tuple[p]
		p++
		switch kind {
		case 'n', 'u':
			continue
		case 't':
		default:
			return rec, fmt.Errorf("outbox row column %s: value of kind %q, want text", rel.Columns[i].Name, kind)
		}
		if p+4 > len(tuple) {
			return rec, errShortInsert
		}
		size := int(binary.BigEndian.Uint32(tuple[p:]))
		p += 4
		if size > len(tuple)-p { // not p+size, which can overflow an int32
			return rec, errShortInsert
		}
		v := tuple[p : p+size]
		p += size
		var err error
		switch rel.Columns[i].Name {
		case "id":
			rec.ID, err = uuid.ParseBytes(v)
		case "aggregatetype":
			rec.AggregateType = d.name(v)
		case "aggregateid":
			rec.AggregateID = string(v)
		case "type":
			rec.Type = d.name(v)
		case "payload":
			rec.Payload, err = decodeBytea(v)
		case "tracingspancontext":
			rec.TracingSpanContext = string(v)
		case "created_at":
			rec.CreatedAt, err = parseTimestamptz(string(v))
		}
		if err != nil {
			return rec, fmt.Errorf("outbox row column %s: %w", rel.Columns[i].Name, err)
		}
	}
	if rec.ID == uuid.Nil || rec.AggregateType == "" || rec.Type == "" {
		return rec, fmt.Errorf("outbox row %s lacks id, aggregatetype or type", rec.ID)
	}
	return rec, nil
}

// decodeBytea reads bytea in its hex output format (\x...).
func decodeBytea(v []byte) ([]byte, error) {
	if len(v) < 2 || v[0] != '\\' || v[1] != 'x' {
		return nil, fmt.Errorf("bytea not in hex format (bytea_output must be 'hex')")
	}
	out := make([]byte, hex.DecodedLen(len(v)-2))
	if _, err := hex.Decode(out, v[2:]); err != nil {
		return nil, err
	}
	return out, nil
}

func parseTimestamptz(v string) (time.Time, error) {
	for _, layout := range []string{
		"2006-01-02 15:04:05.999999999Z07",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999Z07:00:00",
	} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("unparseable timestamptz %q", v)
}
