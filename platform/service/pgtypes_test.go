package service

import (
	"bytes"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// uuid.UUID parameters, alone and in arrays, encode to what PostgreSQL
// expects, in a few allocations rather than pgx's detour through text.
func TestUUIDsEncodeDirectly(t *testing.T) { // not parallel: it counts allocations
	m := pgtype.NewMap()
	encodeUUIDs(m)
	id := uuid.New()
	for _, format := range []int16{pgtype.BinaryFormatCode, pgtype.TextFormatCode} {
		want := id[:]
		if format == pgtype.TextFormatCode {
			want = []byte(id.String())
		}
		got, err := m.Encode(pgtype.UUIDOID, format, id, nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("format %d: %x, %v; want %x", format, got, err, want)
		}
	}
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := m.Encode(pgtype.UUIDOID, pgtype.BinaryFormatCode, id, buf[:0]); err != nil {
			t.Fatal(err)
		}
	}); n > 4 {
		t.Errorf("%.0f allocations to encode a uuid.UUID, want at most 4", n)
	}

	ids := []uuid.UUID{uuid.New(), uuid.Nil, uuid.New()}
	raw, err := m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, ids, nil)
	if err != nil {
		t.Fatal(err)
	}
	var back []uuid.UUID
	if err := m.Scan(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back) != len(ids) || back[0] != ids[0] || back[1] != ids[1] || back[2] != ids[2] {
		t.Fatalf("array round trip: %v, want %v", back, ids)
	}
}
