package analytics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	analyticsv1 "github.com/switchyard/switchyard/gen/go/switchyard/analytics/v1"
	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	ordersv1 "github.com/switchyard/switchyard/gen/go/switchyard/orders/v1"
	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/platform/validate"
)

// A rebuild replays the retained events under a consumer group of its own
// into a new schema of projection tables while the live ones keep
// serving:
//
//   - StartRebuild records the rebuild (RUNNING) and creates its schema,
//     tables like the live ones, in one transaction.
//   - Every instance's rebuilder sees it and joins the replay group, so a
//     rebuild is spread over the instances like the live work and resumes
//     after a restart from the group's committed positions. The replay
//     only projects: no score is computed, nothing is sent.
//   - Meanwhile the live group applies each new event to the live tables
//     and to the rebuild's; each schema's ledger (applied) keeps an event
//     the replay also reads from being counted twice there.
//   - The first rebuilder to see the rebuild records where the topics end
//     (ends): every event the live group applied before it saw the
//     rebuild lies before them, and every later one it applies to the new
//     schema too. Once the replay group has finished every event before
//     the ends, a rebuilder swaps the schemas in one transaction: live is
//     dropped and the rebuild's schema becomes live. Events that keep
//     arriving meanwhile do not hold the swap back. The transaction locks
//     the rebuild's row FOR UPDATE, which every live transaction reads FOR
//     KEY SHARE, so no event is half applied across the swap.
//   - Once no instance replays a finished rebuild any more, a rebuilder
//     deletes its consumer group from the broker (a group left behind
//     would hold back the trimming of Redis streams) and its rows in the
//     inbox tables.
//
// Events are applied in the consumer's batches: up to replayBatch events
// that have arrived on a partition in one transaction, gathered by the
// handlers and written together before the commit (consumer.Gather).

// replayBatch bounds the events one replay transaction applies.
const replayBatch = 1000

// forever is the replay group's inbox retention: every retained event is
// new to a fresh group and must be applied however old it is.
const forever = 100 * 365 * 24 * time.Hour

// rebuildRow is a rebuild as stored.
type rebuildRow struct {
	id            uuid.UUID
	state         string
	schema, group string
	from          *time.Time
	applied, lag  int64
	start         time.Time
	finish        *time.Time
	err           string
	ends          transport.Ends // nil until a rebuilder took them
}

const rebuildColumns = `rebuild_id, state, schema_name, consumer_group, from_time, events_applied, lag, start_time, finish_time, error, ends`

func scanRebuild(r pgx.Row) (rebuildRow, error) {
	var b rebuildRow
	err := r.Scan(&b.id, &b.state, &b.schema, &b.group, &b.from, &b.applied, &b.lag, &b.start, &b.finish, &b.err, &b.ends)
	return b, err
}

func (b rebuildRow) proto() *analyticsv1.Rebuild {
	p := &analyticsv1.Rebuild{
		RebuildId: b.id.String(), State: analyticsv1.RebuildState(analyticsv1.RebuildState_value["REBUILD_STATE_"+b.state]),
		EventsApplied: b.applied, Lag: b.lag, StartTime: timestamppb.New(b.start), Error: b.err,
	}
	if b.finish != nil {
		p.FinishTime = timestamppb.New(*b.finish)
	}
	if b.from != nil {
		p.FromTime = timestamppb.New(*b.from)
	}
	return p
}

// rebuilder runs this instance's part of the running rebuild.
type rebuilder struct {
	env  *service.Env
	poll time.Duration

	// current is the rebuild this instance replays, if any.
	current *replay
}

// replay is this instance's member of a rebuild's consumer group.
type replay struct {
	id       uuid.UUID
	consumer *consumer.Consumer
	stop     context.CancelFunc
	done     chan struct{}
}

// run follows the running rebuild until ctx ends.
func (r *rebuilder) run(ctx context.Context) error {
	defer r.leave()
	for {
		if err := r.step(ctx); err != nil && ctx.Err() == nil {
			r.env.Logger.Warn("rebuild: will look again", "error", err, "retry_in", r.poll)
		}
		if err := r.deleteGroups(ctx); err != nil && ctx.Err() == nil {
			r.env.Logger.Warn("rebuild: cannot delete a finished replay's group yet", "error", err, "retry_in", r.poll)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.poll):
		}
	}
}

// step joins or leaves the running rebuild's replay, records its progress
// and swaps it in once the replay has finished everything before its ends.
func (r *rebuilder) step(ctx context.Context) error {
	b, err := scanRebuild(r.env.Pool.QueryRow(ctx, `SELECT `+rebuildColumns+` FROM rebuilds WHERE state = 'RUNNING'`))
	if errors.Is(err, pgx.ErrNoRows) {
		r.leave()
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the running rebuild: %w", err)
	}
	if r.current == nil || r.current.id != b.id {
		r.leave()
		if err := r.join(ctx, b); err != nil {
			return err
		}
	}
	ends, err := r.ends(ctx, b)
	if err != nil {
		return err
	}
	backlog, err := r.env.BacklogBefore(ctx, r.current.consumer, ends)
	if err != nil {
		return err
	}
	var applied int64
	if err := r.env.Pool.QueryRow(ctx, `SELECT count(*) FROM `+table(b.schema, "applied")).Scan(&applied); err != nil {
		return r.failIfGone(ctx, b, fmt.Errorf("count events applied: %w", err))
	}
	if _, err := r.env.Pool.Exec(ctx, `UPDATE rebuilds SET events_applied = $2, lag = $3 WHERE rebuild_id = $1 AND state = 'RUNNING'`,
		b.id, applied, backlog); err != nil {
		return fmt.Errorf("record rebuild progress: %w", err)
	}
	if backlog > 0 {
		return nil
	}
	return r.swap(ctx, b)
}

// ends returns where the topics ended once the rebuild was visible to
// every live transaction, taking them if no rebuilder has yet. It runs
// after the rebuild's row was read RUNNING, so every live transaction
// that did not see the rebuild had fetched its events before now. Two
// instances may take ends at once: the first stored stands, and either
// would do.
func (r *rebuilder) ends(ctx context.Context, b rebuildRow) (transport.Ends, error) {
	if b.ends != nil {
		return b.ends, nil
	}
	ends, err := r.env.Ends(ctx, r.current.consumer)
	if err != nil {
		return nil, err
	}
	var stored transport.Ends
	if err := r.env.Pool.QueryRow(ctx, `UPDATE rebuilds SET ends = coalesce(ends, $2) WHERE rebuild_id = $1 RETURNING ends`, b.id, ends).
		Scan(&stored); err != nil {
		return nil, fmt.Errorf("record where rebuild %s's replay ends: %w", b.id, err)
	}
	return stored, nil
}

// replayConsumer returns a (not yet running) member of b's replay group.
func (r *rebuilder) replayConsumer(b rebuildRow) (*consumer.Consumer, error) {
	c, err := r.env.NewConsumer(b.group, nil, func(cfg *consumer.Config) {
		cfg.MaxBatch = replayBatch
		cfg.InboxRetention = forever
	})
	if err != nil {
		return nil, err
	}
	h := replayHandlers{rebuild: b.id}
	consumer.Handle(c, h.registered)
	consumer.Handle(c, h.confirmed)
	consumer.Handle(c, h.cancelled)
	return c, nil
}

// join starts this instance's member of the rebuild's replay group.
func (r *rebuilder) join(ctx context.Context, b rebuildRow) error {
	c, err := r.replayConsumer(b)
	if err != nil {
		return err
	}
	cctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	rp := &replay{id: b.id, consumer: c, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(rp.done)
		if err := r.env.RunConsumer(cctx, c); err != nil {
			r.env.Logger.Error("rebuild: replay stopped", "rebuild_id", b.id, "error", err)
		}
	}()
	r.current = rp
	r.env.Logger.Info("rebuild: replaying", "rebuild_id", b.id, "group", b.group, "schema", b.schema)
	return nil
}

// leave stops this instance's replay, if any.
func (r *rebuilder) leave() {
	if r.current == nil {
		return
	}
	r.current.stop()
	<-r.current.done
	r.current = nil
}

// failIfGone marks the rebuild FAILED when its schema no longer exists
// (dropped by hand): it can never finish. Other errors are returned.
func (r *rebuilder) failIfGone(ctx context.Context, b rebuildRow, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" { // undefined_table
		return err
	}
	_, ferr := r.env.Pool.Exec(ctx, `UPDATE rebuilds SET state = 'FAILED', finish_time = now(), error = $2
		WHERE rebuild_id = $1 AND state = 'RUNNING'`, b.id, "its tables are gone: "+pgErr.Message)
	return errors.Join(err, ferr)
}

// swap makes the rebuild's schema the live one, in one transaction.
func (r *rebuilder) swap(ctx context.Context, b rebuildRow) error {
	retired := pgx.Identifier{"retired_" + strings.ReplaceAll(b.id.String(), "-", "")}.Sanitize()
	swapped := false
	err := pgx.BeginFunc(ctx, r.env.Pool, func(tx pgx.Tx) error {
		// Waits for every handler that is applying an event right now.
		var state string
		if err := tx.QueryRow(ctx, `SELECT state FROM rebuilds WHERE rebuild_id = $1 FOR UPDATE`, b.id).Scan(&state); err != nil {
			return err
		}
		if state != "RUNNING" {
			return nil // another instance swapped it
		}
		var applied int64
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+table(b.schema, "applied")).Scan(&applied); err != nil {
			return err
		}
		for _, stmt := range []string{
			`ALTER SCHEMA ` + pgx.Identifier{liveSchema}.Sanitize() + ` RENAME TO ` + retired,
			`ALTER SCHEMA ` + pgx.Identifier{b.schema}.Sanitize() + ` RENAME TO ` + pgx.Identifier{liveSchema}.Sanitize(),
			`DROP SCHEMA ` + retired + ` CASCADE`,
		} {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE rebuilds SET state = 'SWAPPED', finish_time = now(), events_applied = $2, lag = 0
			WHERE rebuild_id = $1`, b.id, applied)
		swapped = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("swap rebuild %s in: %w", b.id, err)
	}
	if swapped {
		r.env.Logger.Info("rebuild: swapped in", "rebuild_id", b.id)
	}
	r.leave()
	return nil
}

// groupGrace is how many polls after a rebuild finished its replay group
// is deleted. Every instance's rebuilder leaves the replay at its next
// poll (waiting out a batch in flight, up to the consumer's revoke
// timeout), but one that read the rebuild RUNNING just before the swap
// may still be joining: deleted under it, the group would be created
// again and, nothing deleting it twice, be left behind for good.
const groupGrace = 30

// deleteGroups deletes the replay groups of rebuilds finished groupGrace
// polls ago or more from the broker, with their rows in the inbox tables.
// While a member still runs the broker refuses (transport.ErrGroupInUse),
// and this tries again at the next poll.
func (r *rebuilder) deleteGroups(ctx context.Context) error {
	rows, err := r.env.Pool.Query(ctx, `SELECT `+rebuildColumns+` FROM rebuilds
		WHERE state <> 'RUNNING' AND NOT group_deleted AND finish_time < now() - $1::interval`, groupGrace*r.poll)
	if err != nil {
		return fmt.Errorf("read finished rebuilds: %w", err)
	}
	finished, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rebuildRow, error) { return scanRebuild(r) })
	if err != nil {
		return fmt.Errorf("read finished rebuilds: %w", err)
	}
	var errs []error
	for _, b := range finished {
		c, err := r.replayConsumer(b)
		if err == nil {
			err = r.env.DeleteGroup(ctx, c)
		}
		if errors.Is(err, transport.ErrGroupInUse) {
			// Said once per poll for as long as it lasts: the group
			// holds back trimming on Redis meanwhile.
			r.env.Logger.Warn("rebuild: a finished replay's group still has members; will try again",
				"rebuild_id", b.id, "group", b.group, "finished", b.finish)
			continue
		}
		if err == nil {
			err = pgx.BeginFunc(ctx, r.env.Pool, func(tx pgx.Tx) error {
				for _, stmt := range []string{
					`DELETE FROM inbox WHERE consumer_group = $1`,
					`DELETE FROM consumer_epochs WHERE consumer_group = $1`,
					`UPDATE rebuilds SET group_deleted = true WHERE consumer_group = $1`,
				} {
					if _, err := tx.Exec(ctx, stmt, b.group); err != nil {
						return err
					}
				}
				return nil
			})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete replay group %s of rebuild %s: %w", b.group, b.id, err))
			continue
		}
		r.env.Logger.Info("rebuild: replay group deleted", "rebuild_id", b.id, "group", b.group)
	}
	return errors.Join(errs...)
}

// replayHandlers apply events for a rebuild's group: projections only.
// Each handler only decodes its event; the events of a transaction (a
// batch of up to replayBatch) are applied together before it commits, in
// a fixed number of statements (see project).
type replayHandlers struct{ rebuild uuid.UUID }

func (h replayHandlers) gather(md consumer.Metadata, c change) error {
	g, err := consumer.Gather(md, h.rebuild, func() *gathered { return &gathered{} }, h.flush)
	if err != nil {
		return err
	}
	g.add(md, c)
	return nil
}

// flush applies what the transaction gathered to the rebuild's schema,
// if the rebuild still runs: the rebuild's row is read FOR KEY SHARE, so
// a swap waits for this transaction (see swap). Events before the
// rebuild's from_time are left out.
func (h replayHandlers) flush(ctx context.Context, tx pgx.Tx, g *gathered) error {
	var schema string
	var from *time.Time
	err := tx.QueryRow(ctx, `SELECT schema_name, from_time FROM rebuilds WHERE rebuild_id = $1 AND state = 'RUNNING' FOR KEY SHARE`, h.rebuild).
		Scan(&schema, &from)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil // over: swapped in or failed
	case err != nil:
		return fmt.Errorf("read rebuild %s: %w", h.rebuild, err)
	}
	return project(ctx, tx, schema, g.since(from))
}

func (h replayHandlers) registered(_ context.Context, _ pgx.Tx, ev *customersv1.CustomerRegistered, md consumer.Metadata) error {
	id, err := eventUUID(ev.GetCustomer().GetCustomerId(), "customer_id")
	if err != nil {
		return err
	}
	return h.gather(md, change{eventID: md.ID.String(), customerID: id})
}

func (h replayHandlers) confirmed(_ context.Context, _ pgx.Tx, ev *ordersv1.OrderConfirmed, md consumer.Metadata) error {
	c, _, err := confirmation(ev, md)
	if err != nil {
		return err
	}
	return h.gather(md, change{eventID: c.eventID, order: &c})
}

func (h replayHandlers) cancelled(_ context.Context, _ pgx.Tx, ev *ordersv1.OrderCancelled, md consumer.Metadata) error {
	c, err := cancellation(ev, md)
	if err != nil {
		return err
	}
	return h.gather(md, change{eventID: c.eventID, order: &c})
}

// errRetentionExceeded is returned for a from_time older than what the
// topics retain.
var errRetentionExceeded = errors.New("from_time is older than the events the topics retain")

// start records a new rebuild and creates its tables, or returns the one
// already running.
func (r *rebuilder) start(ctx context.Context, from *time.Time) (rebuildRow, error) {
	if ret := r.env.Config.TopicRetention; from != nil && ret > 0 && from.Before(time.Now().Add(-ret)) {
		return rebuildRow{}, fmt.Errorf("%w (SWITCHYARD_TOPIC_RETENTION=%s: events before %s may be gone)",
			errRetentionExceeded, ret, time.Now().Add(-ret).UTC().Format(time.RFC3339))
	}
	for {
		b, err := r.create(ctx, from)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" { // another start won the race
			continue
		}
		return b, err
	}
}

func (r *rebuilder) create(ctx context.Context, from *time.Time) (rebuildRow, error) {
	var b rebuildRow
	err := pgx.BeginFunc(ctx, r.env.Pool, func(tx pgx.Tx) error {
		var err error
		b, err = scanRebuild(tx.QueryRow(ctx, `SELECT `+rebuildColumns+` FROM rebuilds WHERE state = 'RUNNING'`))
		if err == nil || !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		id := uuid.New()
		hex := strings.ReplaceAll(id.String(), "-", "")
		schema, group := "rebuild_"+hex, r.env.Name+"-rebuild-"+hex
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("create schema %s: %w", schema, err)
		}
		for _, t := range projectionTables {
			if _, err := tx.Exec(ctx, `CREATE TABLE `+table(schema, t)+` (LIKE `+table(liveSchema, t)+` INCLUDING ALL)`); err != nil {
				return fmt.Errorf("create %s.%s: %w", schema, t, err)
			}
		}
		b, err = scanRebuild(tx.QueryRow(ctx, `INSERT INTO rebuilds (rebuild_id, state, schema_name, consumer_group, from_time)
			VALUES ($1, 'RUNNING', $2, $3, $4) RETURNING `+rebuildColumns, id, schema, group, from))
		return err
	})
	if err != nil {
		return rebuildRow{}, fmt.Errorf("start a rebuild: %w", err)
	}
	return b, nil
}

func (s *server) StartRebuild(ctx context.Context, req *analyticsv1.StartRebuildRequest) (*analyticsv1.StartRebuildResponse, error) {
	var from *time.Time
	if t := req.GetFromTime(); t != nil {
		var v validate.Violations
		if err := t.CheckValid(); err != nil {
			v.Add("from_time", "is not a valid timestamp")
		} else if t.AsTime().After(time.Now()) {
			v.Add("from_time", "is in the future")
		}
		if err := v.Err(); err != nil {
			return nil, err
		}
		ft := t.AsTime()
		from = &ft
	}
	b, err := s.rebuilds.start(ctx, from)
	if errors.Is(err, errRetentionExceeded) {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if err != nil {
		return nil, err
	}
	return &analyticsv1.StartRebuildResponse{Rebuild: b.proto()}, nil
}

func (s *server) GetRebuild(ctx context.Context, req *analyticsv1.GetRebuildRequest) (*analyticsv1.GetRebuildResponse, error) {
	var v validate.Violations
	v.UUID("rebuild_id", req.GetRebuildId())
	if err := v.Err(); err != nil {
		return nil, err
	}
	b, err := scanRebuild(s.env.Pool.QueryRow(ctx, `SELECT `+rebuildColumns+` FROM rebuilds WHERE rebuild_id = $1`, req.GetRebuildId()))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "rebuild %s not found", req.GetRebuildId())
	}
	if err != nil {
		return nil, fmt.Errorf("read rebuild %s: %w", req.GetRebuildId(), err)
	}
	return &analyticsv1.GetRebuildResponse{Rebuild: b.proto()}, nil
}

func (s *server) ListRebuilds(ctx context.Context, _ *analyticsv1.ListRebuildsRequest) (*analyticsv1.ListRebuildsResponse, error) {
	rows, err := s.env.Pool.Query(ctx, `SELECT `+rebuildColumns+` FROM rebuilds ORDER BY start_time DESC, rebuild_id LIMIT 1000`)
	if err != nil {
		return nil, fmt.Errorf("list rebuilds: %w", err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*analyticsv1.Rebuild, error) {
		b, err := scanRebuild(r)
		return b.proto(), err
	})
	if err != nil {
		return nil, fmt.Errorf("list rebuilds: %w", err)
	}
	return &analyticsv1.ListRebuildsResponse{Rebuilds: list}, nil
}
