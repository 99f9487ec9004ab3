// Package servicetest tests one service's event handlers without the rest
// of the shop. [Start] runs the service's [service.Spec] in-process, as
// production does (migrations, consumer group, inbox, outbox, relay), on a
// fresh database and an in-process Kafka broker from package testkit.
// [Service.Apply] publishes one event the way another service's relay
// would, waits until the service has applied it (or dead-lettered it) and
// returns what the applying transaction changed: the rows it wrote and the
// events it emitted.
//
// The changes are read from the database's write-ahead log (a logical
// replication slot with PostgreSQL's test_decoding plugin), so they are
// exactly what the transaction committed, whatever SQL the handler ran.
// With a service that counts words and emits each new count:
//
//	svc := servicetest.Start(t, counter(), nil)
//	res := svc.Apply("go", &testpb.Word{Text: "go"})
//	counted := servicetest.Emitted[*testpb.WordCounted](t, res) // the event it emitted
//	row := res.Inserted("counts")[0].Row                        // the row it wrote: row["n"] == "1"
//
// The service's gRPC API is reachable through [Service.Conn], its database
// through [Service.Pool].
package servicetest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/envelope"
	"github.com/switchyard/switchyard/platform/eventpb"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// Timeout bounds each wait of the kit: for the service to become ready and
// for an event to be applied or dead-lettered.
const Timeout = time.Minute

// topicPrefix is the topic prefix the kit runs services with.
const topicPrefix = "switchyard."

// bookkeeping are the platform's own tables, which every applied event
// writes; they are left out of [Result.Writes].
var bookkeeping = []string{"inbox", "consumer_epochs", outbox.Table}

// Service is one service run in-process for a test.
type Service struct {
	// Pool is a connection pool on the service's database.
	Pool *pgxpool.Pool
	// Conn is a client connection to the service's gRPC server.
	Conn *grpc.ClientConn

	t       testing.TB
	spec    service.Spec
	broker  *testkit.Broker
	pub     transport.Publisher
	slot    string
	pending map[uint32][]Change // committed transactions read from the slot, not yet claimed
	dlqSeen map[string]int      // messages already read per dead-letter topic
}

// Start runs spec until the test ends and returns once it serves (its
// gRPC health is SERVING). env adds to or overrides the service's
// environment (SWITCHYARD_* variables); the database, the broker and the
// listen addresses are the kit's.
func Start(t testing.TB, spec service.Spec, env map[string]string) *Service {
	t.Helper()
	db := testkit.Database(t)
	s := &Service{t: t, spec: spec, broker: testkit.Kafka(t), Pool: testkit.Pool(t, db),
		slot: "servicetest_" + strings.ReplaceAll(uuid.NewString()[:13], "-", ""), pending: map[uint32][]Change{}, dlqSeen: map[string]int{}}
	ctx := context.Background()
	// Created before the service starts, so it sees every transaction.
	if _, err := s.Pool.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, s.slot); err != nil {
		t.Fatalf("servicetest: create slot: %v", err)
	}
	t.Cleanup(func() {
		// The slot would keep the cluster's WAL for the rest of the run.
		_, _ = s.Pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, s.slot)
	})
	vars := map[string]string{
		"SWITCHYARD_DATABASE_URL":     db,
		"SWITCHYARD_KAFKA_BROKERS":    s.broker.Addr(),
		"SWITCHYARD_TOPIC_PREFIX":     topicPrefix,
		"SWITCHYARD_GRPC_ADDR":        "127.0.0.1:0",
		"SWITCHYARD_METRICS_ADDR":     "127.0.0.1:0",
		"SWITCHYARD_SHUTDOWN_TIMEOUT": "5s",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := service.LoadConfig(spec.Port, func(k string) string { return vars[k] })
	if err != nil {
		t.Fatalf("servicetest: configuration: %v", err)
	}
	if s.pub, err = s.broker.Transport(cfg.Partitions).NewPublisher("servicetest", nil); err != nil {
		t.Fatalf("servicetest: publisher: %v", err)
	}
	t.Cleanup(s.pub.Close)

	runCtx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- service.Run(runCtx, spec, cfg, logger, func(a net.Addr) { addr <- a }) }()
	select {
	case a := <-addr:
		if s.Conn, err = grpc.NewClient(a.String(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			t.Fatalf("servicetest: dial %s: %v", spec.Name, err)
		}
	case err := <-done:
		t.Fatalf("servicetest: %s ended before listening: %v", spec.Name, err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("servicetest: %s: %v", spec.Name, err)
		}
		s.Conn.Close()
	})
	health := healthpb.NewHealthClient(s.Conn)
	testkit.WaitFor(t, Timeout, spec.Name+" to serve", func() bool {
		r, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	return s
}

// Result is what applying one event changed.
type Result struct {
	// EventID is the id the event was published with.
	EventID uuid.UUID
	// Writes are the rows the applying transaction inserted, updated or
	// deleted, in order, apart from the platform's inbox, partition
	// ownership and outbox rows.
	Writes []Change
	// Emitted are the events the transaction wrote to the outbox, in order.
	Emitted []Event
	// DeadLettered is the failure the consumer gave when it sent the event
	// to the dead-letter topic instead of applying it; empty when applied.
	DeadLettered string
}

// Change is one row a transaction wrote, as PostgreSQL's test_decoding
// prints it: each column's value in its text form (strings without
// quotes, "null" for NULL). An update's Row is the new row; a delete's
// holds only the replica identity (the primary key).
type Change struct {
	// Table is the table's name, without the "public." schema.
	Table string
	// Op is "INSERT", "UPDATE" or "DELETE".
	Op string
	// Row maps column names to values.
	Row map[string]string
}

// Event is one event a transaction emitted.
type Event struct {
	// AggregateType names the topic it goes to.
	AggregateType string
	// AggregateID is its key.
	AggregateID string
	// Message is the decoded event.
	Message proto.Message
}

// Inserted returns the rows inserted into table.
func (r Result) Inserted(table string) []Change { return r.changes(table, "INSERT") }

// Updated returns the rows of table updated (their new values).
func (r Result) Updated(table string) []Change { return r.changes(table, "UPDATE") }

// Deleted returns the rows deleted from table (their keys).
func (r Result) Deleted(table string) []Change { return r.changes(table, "DELETE") }

func (r Result) changes(table, op string) []Change {
	var out []Change
	for _, c := range r.Writes {
		if c.Table == table && c.Op == op {
			out = append(out, c)
		}
	}
	return out
}

// Emitted returns the one event of type T in res, failing the test if
// there is none or more than one.
func Emitted[T proto.Message](t testing.TB, res Result) T {
	t.Helper()
	var found []T
	for _, e := range res.Emitted {
		if m, ok := e.Message.(T); ok {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("servicetest: want one %s emitted, got %d (emitted: %s)", zero.ProtoReflect().Descriptor().FullName(), len(found), res.emittedTypes())
	}
	return found[0]
}

func (r Result) emittedTypes() string {
	names := make([]string, len(r.Emitted))
	for i, e := range r.Emitted {
		names[i] = string(e.Message.ProtoReflect().Descriptor().FullName())
	}
	return "[" + strings.Join(names, ", ") + "]"
}

// Apply publishes ev keyed by key, on the topic of the aggregate its type
// declares, as the producing service's relay would (CloudEvents headers, a
// new event id), waits until the service has applied it or dead-lettered
// it, and returns what the applying transaction changed. Apply one event at
// a time: events published together may be applied in one transaction.
func (s *Service) Apply(key string, ev proto.Message) Result {
	s.t.Helper()
	return s.Await(s.Publish(key, ev))
}

// Publish publishes ev keyed by key and returns its id once the broker has
// acknowledged it, without waiting for the service: [Service.Await] waits
// for it.
func (s *Service) Publish(key string, ev proto.Message) Published {
	s.t.Helper()
	aggregateType := eventpb.Aggregate(ev.ProtoReflect().Descriptor())
	if aggregateType == "" {
		s.t.Fatalf("servicetest: %s declares no aggregate (option (switchyard.event.v1.aggregate))", proto.MessageName(ev))
	}
	payload, err := proto.Marshal(ev)
	if err != nil {
		s.t.Fatalf("servicetest: marshal: %v", err)
	}
	id := uuid.New()
	msg := envelope.Encode(topicPrefix, "/switchyard/servicetest", outbox.Record{
		ID: id, AggregateType: aggregateType, AggregateID: key, Type: string(ev.ProtoReflect().Descriptor().FullName()),
		Payload: payload, CreatedAt: time.Now(),
	}, nil)
	acked := make(chan struct{})
	if err := s.pub.Publish(context.Background(), msg, func(transport.Delivery) { close(acked) }); err != nil {
		s.t.Fatalf("servicetest: publish: %v", err)
	}
	select {
	case <-acked:
	case err := <-s.pub.Failed():
		s.t.Fatalf("servicetest: publish: %v", err)
	case <-time.After(Timeout):
		s.t.Fatalf("servicetest: publish not acknowledged within %s", Timeout)
	}
	return Published{ID: id, Topic: topicPrefix + aggregateType}
}

// Published is an event [Service.Publish] sent.
type Published struct {
	// ID is its event id (ce_id).
	ID uuid.UUID
	// Topic is where it was sent.
	Topic string
}

// Await waits until the published event has been applied or dead-lettered
// and returns what it changed.
func (s *Service) Await(p Published) Result {
	s.t.Helper()
	id := p.ID
	res := Result{EventID: id}
	what := fmt.Sprintf("%s to apply or dead-letter event %s from %s (does one of its handlers take it?)", s.spec.Name, id, p.Topic)
	testkit.WaitFor(s.t, Timeout, what, func() bool {
		if err := s.readSlot(); err != nil {
			s.t.Fatalf("servicetest: %v", err)
		}
		if xid, ok := s.appliedIn(id); ok {
			s.fill(&res, s.pending[xid])
			delete(s.pending, xid)
			return true
		}
		res.DeadLettered = s.deadLettered(envelope.DLQTopic(p.Topic), id)
		return res.DeadLettered != ""
	})
	return res
}

// readSlot moves the transactions committed since the last call from the
// slot into pending.
func (s *Service) readSlot() error {
	rows, err := s.Pool.Query(context.Background(),
		`SELECT xid::text::bigint, data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'skip-empty-xacts', '1')`, s.slot)
	if err != nil {
		return fmt.Errorf("read slot: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var xid int64
		var data string
		if err := rows.Scan(&xid, &data); err != nil {
			return fmt.Errorf("read slot: %w", err)
		}
		if !strings.HasPrefix(data, "table ") {
			continue // BEGIN, COMMIT
		}
		c, err := parseChange(data)
		if err != nil {
			return err
		}
		s.pending[uint32(xid)] = append(s.pending[uint32(xid)], c)
	}
	return rows.Err()
}

// appliedIn returns the transaction that recorded event id in the
// service's inbox.
func (s *Service) appliedIn(id uuid.UUID) (uint32, bool) {
	for xid, changes := range s.pending {
		for _, c := range changes {
			if c.Table == "inbox" && c.Op == "INSERT" && c.Row["event_id"] == id.String() && c.Row["consumer_group"] == s.spec.Name {
				return xid, true
			}
		}
	}
	return 0, false
}

// fill sorts a transaction's changes into res.
func (s *Service) fill(res *Result, changes []Change) {
	for _, c := range changes {
		switch {
		case c.Table == outbox.Table && c.Op == "INSERT":
			ev, err := decodeOutboxRow(c.Row)
			if err != nil {
				s.t.Fatalf("servicetest: %v", err)
			}
			res.Emitted = append(res.Emitted, ev)
		case !slices.Contains(bookkeeping, c.Table):
			res.Writes = append(res.Writes, c)
		}
	}
}

// deadLettered returns the failure recorded with event id on the
// dead-letter topic dlq, or "" if it is not there.
func (s *Service) deadLettered(dlq string, id uuid.UUID) string {
	if !s.broker.HasTopic(dlq) {
		return ""
	}
	var total int
	for _, end := range s.broker.EndOffsets(s.t, dlq) {
		total += int(end)
	}
	if total == s.dlqSeen[dlq] {
		return ""
	}
	s.dlqSeen[dlq] = total
	msgs := s.broker.ReadTopic(s.t, dlq, Timeout, func(m []*transport.Message) bool { return len(m) >= total })
	for _, m := range msgs {
		h := envelope.Headers(m)
		if h[envelope.HeaderID] == id.String() && h[consumer.HeaderDLQGroup] == s.spec.Name {
			return h[consumer.HeaderDLQError]
		}
	}
	return ""
}

// decodeOutboxRow turns an outbox row into the event it carries.
func decodeOutboxRow(row map[string]string) (Event, error) {
	typ := row["type"]
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(typ))
	if err != nil {
		return Event{}, fmt.Errorf("emitted event of type %q: %w", typ, err)
	}
	payload, err := hex.DecodeString(strings.TrimPrefix(row["payload"], `\x`))
	if err != nil {
		return Event{}, fmt.Errorf("emitted %s: payload: %w", typ, err)
	}
	msg := mt.New().Interface()
	if err := proto.Unmarshal(payload, msg); err != nil {
		return Event{}, fmt.Errorf("emitted %s: %w", typ, err)
	}
	return Event{AggregateType: row["aggregatetype"], AggregateID: row["aggregateid"], Message: msg}, nil
}

// parseChange parses one test_decoding change line:
//
//	table public.accounts: UPDATE: customer_id[uuid]:'…' balance_minor[bigint]:900
func parseChange(line string) (Change, error) {
	bad := func(why string) (Change, error) {
		return Change{}, fmt.Errorf("test_decoding line %q: %s", line, why)
	}
	rest, ok := strings.CutPrefix(line, "table ")
	if !ok {
		return bad("no table")
	}
	table, rest, ok := strings.Cut(rest, ": ")
	if !ok {
		return bad("no operation")
	}
	op, rest, _ := strings.Cut(rest, ":")
	c := Change{Table: strings.TrimPrefix(table, "public."), Op: op, Row: map[string]string{}}
	rest = strings.TrimPrefix(rest, " ")
	if _, tuple, ok := strings.Cut(rest, "new-tuple: "); ok {
		rest = tuple // an update that changed the key prints the old key first
	}
	if rest == "(no-tuple-data)" {
		return c, nil
	}
	for rest != "" {
		name, after, ok := strings.Cut(rest, "[")
		if !ok {
			return bad("column without a type")
		}
		_, after, ok = strings.Cut(after, "]:") // array types print as text[]
		if !ok {
			return bad("unterminated type of " + name)
		}
		value, after, err := cutValue(after)
		if err != nil {
			return bad(err.Error())
		}
		c.Row[strings.Trim(name, `"`)] = value
		rest = strings.TrimPrefix(after, " ")
	}
	return c, nil
}

// cutValue reads one value: quoted (quotes doubled inside) or up to the
// next space.
func cutValue(s string) (value, rest string, err error) {
	if !strings.HasPrefix(s, "'") {
		value, rest, _ = strings.Cut(s, " ")
		return value, rest, nil
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '\'' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '\'' {
			b.WriteByte('\'')
			i++
			continue
		}
		return b.String(), s[i+1:], nil
	}
	return "", "", errors.New("unterminated quoted value")
}
