package relay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/switchyard/switchyard/platform/outbox"
)

// cdcSource streams outbox inserts from the write-ahead log.
type cdcSource struct{}

// SQLSTATE codes the cdc source reacts to.
const (
	sqlObjectInUse     = "55006" // replication slot is active for another PID
	sqlDuplicateObject = "42710" // slot or publication already exists
	sqlUniqueViolation = "23505" // concurrent CREATE PUBLICATION
)

// prepare makes sure the outbox table, the publication and the slot exist.
func (s *cdcSource) prepare(ctx context.Context, cfg *Config) error {
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return permanent{fmt.Errorf("%w (it is %q)", ErrLogicalReplicationOff, walLevel)}
	}
	if err := outbox.Migrate(ctx, conn); err != nil {
		return err
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("look up publication: %w", err)
	}
	if !exists {
		// Only inserts matter: in cdc mode the writer deletes each row in
		// the same transaction, and those deletes must not be relayed.
		_, err := conn.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert')",
			pgx.Identifier{cfg.Publication}.Sanitize(), outbox.Table))
		if err != nil && !isCode(err, sqlDuplicateObject, sqlUniqueViolation) {
			return fmt.Errorf("create publication %s: %w", cfg.Publication, err)
		}
	}
	var slotDB, slotPlugin *string
	err = conn.QueryRow(ctx, "SELECT database, plugin FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot).Scan(&slotDB, &slotPlugin)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		exists = false
	case err != nil:
		return fmt.Errorf("look up replication slot: %w", err)
	case slotDB == nil || *slotDB != conn.Config().Database || slotPlugin == nil || *slotPlugin != "pgoutput":
		return permanent{fmt.Errorf("replication slot %s already exists for another database or plugin (database %v, plugin %v): set a distinct slot name",
			cfg.Slot, deref(slotDB), deref(slotPlugin))}
	default:
		exists = true
	}
	if !exists {
		_, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", cfg.Slot)
		if err != nil && !isCode(err, sqlDuplicateObject) {
			return fmt.Errorf("create replication slot %s: %w", cfg.Slot, err)
		}
		if err == nil {
			cfg.Logger.Info("created replication slot", "slot", cfg.Slot, "publication", cfg.Publication)
		}
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return "<none>"
	}
	return *s
}

func isCode(err error, codes ...string) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	for _, c := range codes {
		if pgErr.Code == c {
			return true
		}
	}
	return false
}

// decodingSettings are the session settings the decoding of outbox rows
// relies on.
var decodingSettings = map[string]string{
	"bytea_output":       "hex",
	"DateStyle":          "ISO, MDY",
	"TimeZone":           "UTC",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
}

func replicationConfig(databaseURL string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DatabaseURL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "switchyard-relay"
	// pgoutput sends column values in their text form, which these session
	// settings shape: fix them rather than trust the server's or the
	// database's defaults (bytea_output=escape or DateStyle='SQL, DMY'
	// would make every event undecodable).
	for k, v := range decodingSettings {
		cfg.RuntimeParams[k] = v
	}
	return cfg, nil
}

func (s *cdcSource) run(ctx context.Context, r *Relay) error {
	cfg := &r.cfg
	pcfg, err := replicationConfig(cfg.DatabaseURL)
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("replication connect: %w", err)
	}
	defer conn.Close(context.Background())

	err = pglogrepl.StartReplication(ctx, conn, cfg.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + cfg.Publication + "'"},
	})
	if isCode(err, sqlObjectInUse) {
		return errStandby
	}
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", cfg.Slot, err)
	}

	pub, err := newPublisher(r)
	if err != nil {
		return err
	}
	r.active.Store(true)
	cfg.Logger.Info("active: streaming outbox from the write-ahead log", "slot", cfg.Slot)
	st := &cdcStream{r: r, conn: conn, pub: pub, tracker: &lsnTracker{pendingSince: &r.pendingSince}, relations: map[uint32]*pglogrepl.RelationMessage{}}
	err = st.loop(ctx)
	if ctx.Err() != nil {
		// Clean stop: wait for the acknowledgements, confirm, then leave.
		if pub.flush(cfg.ShutdownTimeout) {
			_ = st.sendStatus()
		} else {
			cfg.Logger.Warn("stopping with unacknowledged events; the next relay sends them again")
		}
		pub.close()
		return nil
	}
	pub.close()
	return err
}

// cdcStream is one replication session.
type cdcStream struct {
	r         *Relay
	conn      *pgconn.PgConn
	pub       *publisher
	tracker   *lsnTracker
	relations map[uint32]*pglogrepl.RelationMessage
	current   *txn
}

func (st *cdcStream) loop(ctx context.Context) error {
	interval := st.r.cfg.StatusInterval
	nextStatus := time.Now().Add(interval)
	for {
		select {
		case err := <-st.pub.failed():
			return err
		default:
		}
		if time.Now().After(nextStatus) {
			if err := st.sendStatus(); err != nil {
				return err
			}
			nextStatus = time.Now().Add(interval)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		raw, err := st.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from replication stream: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyData:
			if err := st.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
		}
	}
}

func (st *cdcStream) sendStatus() error {
	lsn := st.tracker.confirmed()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), st.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn,
	})
	if err != nil {
		return fmt.Errorf("confirm LSN %s: %w", lsn, err)
	}
	return nil
}

func (st *cdcStream) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		if st.current == nil {
			st.tracker.idleAt(ka.ServerWALEnd)
		}
		if ka.ReplyRequested {
			return st.sendStatus()
		}
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		return st.handleLogical(ctx, x.WALData)
	}
	return nil
}

func (st *cdcStream) handleLogical(ctx context.Context, data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("parse pgoutput message: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		st.relations[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		st.current = st.tracker.begin()
	case *pglogrepl.InsertMessage:
		rel, ok := st.relations[m.RelationID]
		if !ok {
			return fmt.Errorf("insert for unknown relation %d", m.RelationID)
		}
		if rel.RelationName != outbox.Table {
			return nil
		}
		rec, err := decodeRecord(rel, m.Tuple)
		if err != nil {
			// A row we cannot read is a schema mismatch, not a transient
			// fault: stop rather than skip an event.
			return err
		}
		t := st.current
		if t == nil {
			return errors.New("insert outside a transaction")
		}
		st.tracker.add(t, rec.CreatedAt)
		if err := st.pub.publish(ctx, rec, func() { st.tracker.ack(t) }); err != nil {
			return err
		}
	case *pglogrepl.CommitMessage:
		if st.current == nil {
			return errors.New("commit without begin")
		}
		st.tracker.commit(st.current, m.TransactionEndLSN)
		st.current = nil
	}
	return nil
}

// decodeRecord reads an outbox row from pgoutput's text-format tuple.
func decodeRecord(rel *pglogrepl.RelationMessage, tuple *pglogrepl.TupleData) (outbox.Record, error) {
	var rec outbox.Record
	if tuple == nil || len(tuple.Columns) != len(rel.Columns) {
		return rec, fmt.Errorf("outbox row: %d values for %d columns", len(tuple.Columns), len(rel.Columns))
	}
	for i, col := range tuple.Columns {
		if col.DataType != pglogrepl.TupleDataTypeText {
			continue // NULL (or unchanged TOAST, which inserts never carry)
		}
		v := string(col.Data)
		var err error
		switch rel.Columns[i].Name {
		case "id":
			rec.ID, err = uuid.Parse(v)
		case "aggregatetype":
			rec.AggregateType = v
		case "aggregateid":
			rec.AggregateID = v
		case "type":
			rec.Type = v
		case "payload":
			rec.Payload, err = decodeBytea(v)
		case "tracingspancontext":
			rec.TracingSpanContext = v
		case "created_at":
			rec.CreatedAt, err = parseTimestamptz(v)
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

func decodeBytea(v string) ([]byte, error) {
	if !strings.HasPrefix(v, `\x`) {
		return nil, fmt.Errorf("bytea not in hex format (bytea_output must be 'hex')")
	}
	return hex.DecodeString(v[2:])
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

// txn is one decoded transaction on its way to Kafka.
type txn struct {
	end       pglogrepl.LSN
	pending   int
	committed bool
	created   time.Time // of its first event
}

// lsnTracker computes the LSN that is safe to confirm: the end of the newest
// transaction such that it and every transaction before it are committed and
// fully acknowledged by Kafka.
type lsnTracker struct {
	mu           sync.Mutex
	queue        []*txn
	safe         pglogrepl.LSN
	pendingSince *atomic.Int64 // the relay's oldest-unacknowledged timestamp
}

func (t *lsnTracker) begin() *txn {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := &txn{}
	t.queue = append(t.queue, x)
	return x
}

func (t *lsnTracker) add(x *txn, created time.Time) {
	t.mu.Lock()
	if x.created.IsZero() {
		x.created = created
	}
	x.pending++
	t.updatePending()
	t.mu.Unlock()
}

// updatePending publishes the creation time of the oldest transaction whose
// events are not all acknowledged.
func (t *lsnTracker) updatePending() {
	for _, x := range t.queue {
		if x.pending > 0 && !x.created.IsZero() {
			t.pendingSince.Store(x.created.UnixNano())
			return
		}
	}
	t.pendingSince.Store(0)
}

func (t *lsnTracker) ack(x *txn) {
	t.mu.Lock()
	x.pending--
	t.advance()
	t.mu.Unlock()
}

func (t *lsnTracker) commit(x *txn, end pglogrepl.LSN) {
	t.mu.Lock()
	x.end, x.committed = end, true
	t.advance()
	t.mu.Unlock()
}

// idleAt moves the safe point to the server's WAL end when nothing is in
// flight, so the slot does not hold back WAL written by other tables.
func (t *lsnTracker) idleAt(walEnd pglogrepl.LSN) {
	t.mu.Lock()
	if len(t.queue) == 0 && walEnd > t.safe {
		t.safe = walEnd
	}
	t.mu.Unlock()
}

func (t *lsnTracker) advance() {
	for len(t.queue) > 0 && t.queue[0].committed && t.queue[0].pending == 0 {
		if t.queue[0].end > t.safe {
			t.safe = t.queue[0].end
		}
		t.queue[0] = nil
		t.queue = t.queue[1:]
	}
	t.updatePending()
}

func (t *lsnTracker) confirmed() pglogrepl.LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.safe
}
