package relay

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/switchyard/switchyard/platform/migrate"
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
	conn, err := connect(ctx, cfg.DatabaseURL)
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
	var publishes bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication_tables t JOIN pg_publication p USING (pubname)
		WHERE t.pubname = $1 AND t.schemaname = current_schema() AND t.tablename = $2 AND p.pubinsert)`,
		cfg.Publication, outbox.Table).Scan(&publishes); err != nil {
		return fmt.Errorf("look up publication %s: %w", cfg.Publication, err)
	}
	if !publishes {
		pub := pgx.Identifier{cfg.Publication}.Sanitize()
		return permanent{fmt.Errorf("%w (publication %s): run ALTER PUBLICATION %s ADD TABLE %s (if the table is not in it) and ALTER PUBLICATION %[3]s SET (publish = 'insert'); "+
			"events written since it stopped publishing were not relayed", ErrPublicationIncomplete, cfg.Publication, pub, outbox.Table)}
	}
	if err := migrate.EnsureTable(ctx, conn, slotsTable, slotsSchema); err != nil {
		return err
	}
	return ensureSlot(ctx, conn, cfg)
}

// slotsTable records, in the database itself, the replication slots Prepare
// created for it. A slot lives outside the database (a fail-over to a
// server that lacks it, or an operator's pg_drop_replication_slot, loses it
// silently), while this table is replicated and backed up with the data, so
// it tells a slot that was never created from one that was lost.
const slotsTable = "relay_slots"

const slotsSchema = `
CREATE TABLE IF NOT EXISTS relay_slots (
	slot_name  text PRIMARY KEY,
	created_at timestamptz NOT NULL DEFAULT now()
);
`

// ensureSlot creates the replication slot unless it exists, and records it
// in relay_slots. A slot recorded there and missing is lost: recreating it
// would start after the events committed since it went, so that is an
// error. Replicas serialise on a lock per slot, in one transaction: one must
// not find the slot missing and then the record its twin just wrote.
func ensureSlot(ctx context.Context, conn *pgx.Conn, cfg *Config) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("replication slot %s: %w", cfg.Slot, err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", advisoryKey("switchyard.slot."+cfg.Slot)); err != nil {
		return fmt.Errorf("replication slot %s: lock: %w", cfg.Slot, err)
	}
	var slotDB, slotPlugin *string
	err = tx.QueryRow(ctx, "SELECT database, plugin FROM pg_replication_slots WHERE slot_name = $1", cfg.Slot).Scan(&slotDB, &slotPlugin)
	exists := true
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		exists = false
	case err != nil:
		return fmt.Errorf("look up replication slot: %w", err)
	case slotDB == nil || *slotDB != conn.Config().Database || slotPlugin == nil || *slotPlugin != "pgoutput":
		return permanent{fmt.Errorf("replication slot %s already exists for another database or plugin (database %v, plugin %v): drop it if nothing reads it (SELECT pg_drop_replication_slot('%[1]s')), or give this relay another slot (Config.Slot; a service's is named after its database, so two databases whose names differ only in case or punctuation need other names)",
			cfg.Slot, deref(slotDB), deref(slotPlugin))}
	}
	if !exists {
		var created time.Time
		err := tx.QueryRow(ctx, "SELECT created_at FROM relay_slots WHERE slot_name = $1", cfg.Slot).Scan(&created)
		switch {
		case err == nil:
			return permanent{slotLostError(cfg.Slot, created)}
		case !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("look up %s: %w", slotsTable, err)
		}
		// Allowed in a transaction that has written nothing yet.
		if _, err := tx.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", cfg.Slot); err != nil {
			return fmt.Errorf("create replication slot %s: %w", cfg.Slot, err)
		}
		cfg.Logger.Info("created replication slot", "slot", cfg.Slot, "publication", cfg.Publication)
	}
	// Also records a slot created before this table existed.
	if _, err := tx.Exec(ctx, "INSERT INTO relay_slots (slot_name) VALUES ($1) ON CONFLICT (slot_name) DO NOTHING", cfg.Slot); err != nil {
		return fmt.Errorf("record replication slot %s: %w", cfg.Slot, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("record replication slot %s: %w", cfg.Slot, err)
	}
	return nil
}

// slotLostError explains a lost slot and what to do about it.
func slotLostError(slot string, created time.Time) error {
	return fmt.Errorf("%w: replication slot %s, created for this database on %s (recorded in table %s), no longer exists: "+
		"it was dropped, or a fail-over promoted a server without it. Events committed since it disappeared were never relayed, "+
		"and a new slot would start after them, so the relay will not create one. To recover: publish again what consumers missed "+
		"(or accept the gap), then acknowledge it with DELETE FROM %s WHERE slot_name = '%s'; and restart: the relay then creates a new slot",
		ErrSlotLost, slot, created.UTC().Format(time.RFC3339), slotsTable, slotsTable, slot)
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

// replicationAppName names the relay's replication connection.
const replicationAppName = "switchyard-relay"

func replicationConfig(databaseURL string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DatabaseURL: %w", err)
	}
	dropPoolParams(cfg.RuntimeParams)
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = replicationAppName
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
	pub, err := drainLeftovers(ctx, r)
	if err != nil || ctx.Err() != nil {
		return err
	}
	if pub != nil {
		defer pub.close()
	}
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

	// The gate's queries go beside the replication connection, which
	// cannot run them while it streams. A relay that may be a synchronous
	// standby would deadlock with the first commit that waits for it.
	gate := newVisibilityGate(cfg.DatabaseURL)
	defer gate.close()
	if err := gate.synchronous(ctx); err != nil {
		return err
	}

	if pub == nil {
		if pub, err = newPublisher(r); err != nil {
			return err
		}
		defer pub.close()
	}
	r.becameActive()
	cfg.Logger.Info("active: streaming outbox from the write-ahead log", "slot", cfg.Slot)
	st := &cdcStream{r: r, conn: conn, pub: pub, tracker: &lsnTracker{pendingSince: &r.pendingSince},
		relations: map[uint32]*pglogrepl.RelationMessage{}, gate: gate}
	err = st.loop(ctx)
	if ctx.Err() != nil {
		// Clean stop: wait for the acknowledgements, confirm, then leave.
		if pub.flush(cfg.ShutdownTimeout) {
			_ = st.sendStatus()
		} else {
			cfg.Logger.Warn("stopping with unacknowledged events; the next relay sends them again")
		}
		return nil
	}
	return err
}

// drainLeftovers publishes, in seq order, the rows a poll relay left in the
// outbox table (a service switched from poll to cdc mode with events not
// yet published): cdc writers delete their rows as they write them, and the
// slot never sees rows inserted before it existed, so nothing else would.
// They go out before anything from the write-ahead log, being older. It
// holds the poll relay's lock meanwhile, so that no poll relay still
// running publishes the same rows out of order, and returns the publisher it
// used (nil when the table was empty).
func drainLeftovers(ctx context.Context, r *Relay) (*publisher, error) {
	conn, err := connect(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	var left bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM outbox)").Scan(&left); err != nil || !left {
		if err != nil {
			err = fmt.Errorf("look for rows left by poll mode: %w", err)
		}
		return nil, err
	}
	locked, err := tryRelayLock(ctx, conn, r.cfg.Slot)
	if err != nil || !locked {
		if err == nil {
			err = errStandby // a poll relay, or another cdc relay draining
		}
		return nil, err
	}
	pub, err := newPublisher(r)
	if err != nil {
		return nil, err
	}
	r.becameActive()
	total := 0
	for {
		n, err := publishBatch(ctx, r, conn, pub)
		if err != nil || ctx.Err() != nil {
			pub.close()
			if ctx.Err() != nil {
				return nil, nil
			}
			return nil, fmt.Errorf("publish rows left in the outbox table by poll mode: %w", err)
		}
		if n == 0 {
			break
		}
		r.progressed()
		total += n
	}
	r.cfg.Logger.Info("published rows left in the outbox table by poll mode", "rows", total)
	return pub, nil
}

// cdcStream is one replication session.
type cdcStream struct {
	r         *Relay
	conn      *pgconn.PgConn
	pub       *publisher
	tracker   *lsnTracker
	relations map[uint32]*pglogrepl.RelationMessage
	decoder   recordDecoder
	current   *txn
	gate      *visibilityGate
	// xid is the current transaction's id, and cleared whether the gate
	// has let it through: checked at its first outbox row, since a
	// transaction without one publishes nothing.
	xid     uint32
	cleared bool
	// nextStatus is when the next status update is due. statusCtx ends
	// then: a publish waiting for room in a full queue (a broker down for
	// long) runs under it, so that the update is sent all the same.
	nextStatus   time.Time
	statusCtx    context.Context
	statusCancel context.CancelFunc
}

// statusIfDue sends a status update if one is due, schedules the next and
// reports whether it sent one.
func (st *cdcStream) statusIfDue(ctx context.Context) (sent bool, err error) {
	if !time.Now().After(st.nextStatus) {
		return false, nil
	}
	if err := st.sendStatus(); err != nil {
		return false, err
	}
	return true, st.scheduleStatus(ctx)
}

// scheduleStatus sets when the next status update is due, from now, and
// reads the stream until then at most.
func (st *cdcStream) scheduleStatus(ctx context.Context) error {
	if st.statusCancel != nil {
		st.statusCancel()
	}
	st.nextStatus = time.Now().Add(st.r.cfg.StatusInterval)
	st.statusCtx, st.statusCancel = context.WithDeadline(ctx, st.nextStatus)
	if err := st.conn.Conn().SetReadDeadline(st.nextStatus); err != nil {
		return fmt.Errorf("replication stream: %w", err)
	}
	return nil
}

func (st *cdcStream) loop(ctx context.Context) error {
	// The stream is read under the connection's own read deadline (the
	// next status update), not a context per message: a context and its
	// watcher cost allocations and locking per message, and a backlog is
	// hundreds of thousands of them. ctx's end moves the deadline to now.
	nc := st.conn.Conn()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Now()) })
	// What follows the loop only writes (sendStatus, closing), which the
	// read deadline does not touch; stop does not wait for a cancellation
	// that is already moving it.
	defer stop()
	if err := st.scheduleStatus(ctx); err != nil {
		return err
	}
	defer func() { st.statusCancel() }()
	for {
		select {
		case err := <-st.pub.failed():
			return err
		default:
		}
		if _, err := st.statusIfDue(ctx); err != nil {
			return err
		}
		// Checked after the deadline is set: a cancellation either is seen
		// here or moves the deadline after it was set.
		if err := ctx.Err(); err != nil {
			return err
		}
		raw, err := st.conn.ReceiveMessage(context.Background())
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
		// Caught up: nothing in flight and the server has nothing newer
		// than what this relay has seen (an earlier term may have seen a
		// transaction this one has not reached yet).
		if st.current == nil && st.tracker.idleAt(ka.ServerWALEnd) && uint64(ka.ServerWALEnd) >= st.r.cdcSeen.Load() {
			st.r.progressed()
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
	if len(data) > 0 && data[0] == 'I' {
		// Inserts are nearly every message of a backlog: they are read
		// here, straight into a record, rather than through pglogrepl's
		// general decoding, which allocates per column.
		return st.handleInsert(ctx, data)
	}
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("parse pgoutput message: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		st.relations[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		st.current = st.tracker.begin()
		st.xid, st.cleared = m.Xid, false
		raise(&st.r.cdcSeen, uint64(m.FinalLSN))
	case *pglogrepl.CommitMessage:
		if st.current == nil {
			return errors.New("commit without begin")
		}
		st.tracker.commit(st.current, m.TransactionEndLSN)
		st.current = nil
		st.noteProgress()
	}
	return nil
}

// handleInsert publishes the outbox row of an Insert message.
func (st *cdcStream) handleInsert(ctx context.Context, data []byte) error {
	relation, tuple, err := splitInsert(data)
	if err != nil {
		return err
	}
	rel, ok := st.relations[relation]
	if !ok {
		return fmt.Errorf("insert for unknown relation %d", relation)
	}
	if rel.RelationName != outbox.Table {
		return nil
	}
	rec, err := st.decoder.record(rel, tuple)
	if err != nil {
		// A row we cannot read is a schema mismatch, not a transient
		// fault: stop rather than skip an event.
		return err
	}
	t := st.current
	if t == nil {
		return errors.New("insert outside a transaction")
	}
	if !st.cleared {
		if err := st.awaitVisible(ctx, st.xid); err != nil {
			return err
		}
		st.cleared = true
	}
	// The topic is made under ctx: making it may take longer than what is
	// left until the next status update.
	if err := st.pub.ensureTopic(ctx, rec.AggregateType); err != nil {
		return publishError(rec, err)
	}
	st.tracker.add(t, rec.CreatedAt)
	ack := func() {
		st.tracker.ack(t)
		st.r.acked()
		st.noteProgress()
	}
	for {
		// While the transport's queue stays full (a broker down for long),
		// the publish waits until the next status update is due, which is
		// sent before it waits on: a relay silent for wal_sender_timeout
		// loses its walsender, and a standby would start a second term
		// beside this one, still publishing.
		if _, err := st.statusIfDue(ctx); err != nil {
			return err
		}
		err = st.pub.publish(st.statusCtx, rec, ack)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) || st.statusCtx.Err() == nil {
			return publishError(rec, err)
		}
	}
}

// noteProgress tells the relay it made progress when the position safe to
// confirm passed the highest any term reached: events re-sent after a
// failed term are not progress.
func (st *cdcStream) noteProgress() {
	if raise(&st.r.cdcSafe, uint64(st.tracker.confirmed())) {
		st.r.progressed()
	}
}

// raise sets v to x if x is greater and reports whether it did.
func raise(v *atomic.Uint64, x uint64) bool {
	for {
		old := v.Load()
		if x <= old {
			return false
		}
		if v.CompareAndSwap(old, x) {
			return true
		}
	}
}
