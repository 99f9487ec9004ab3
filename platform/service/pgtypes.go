package service

import (
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// encodeUUIDs makes m encode uuid.UUID values as PostgreSQL uuids
// directly. Without it pgx takes a detour for them: uuid.UUID is a
// driver.Valuer whose value is a string, which pgx fails to encode in
// binary, builds an error for, parses back and encodes again: some 20
// allocations and microseconds per parameter, and every event carries
// several (its outbox row, its inbox row, the ids of its aggregate).
func encodeUUIDs(m *pgtype.Map) {
	m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapUUID}, m.TryWrapEncodePlanFuncs...)
}

func tryWrapUUID(value any) (pgtype.WrappedEncodePlanNextSetter, any, bool) {
	if id, ok := value.(uuid.UUID); ok {
		return &uuidPlan{}, pgtype.UUID{Bytes: id, Valid: true}, true
	}
	return nil, nil, false
}

// uuidPlan encodes a uuid.UUID as the pgtype.UUID it is.
type uuidPlan struct{ next pgtype.EncodePlan }

func (p *uuidPlan) SetNext(next pgtype.EncodePlan) { p.next = next }

func (p *uuidPlan) Encode(value any, buf []byte) ([]byte, error) {
	return p.next.Encode(pgtype.UUID{Bytes: value.(uuid.UUID), Valid: true}, buf)
}
