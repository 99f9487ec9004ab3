package relay

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// A transaction's commit record reaches the write-ahead log, and so the
// cdc relay, a moment before PostgreSQL makes the transaction visible to
// other sessions (ProcArrayEndTransaction runs after the WAL flush, and
// after the wait for a synchronous standby). Publishing in that moment would
// let a consumer, or a client who saw the consumer's effect, read the
// writer's database from before the transaction. The relay therefore
// publishes a transaction's events only once a snapshot taken after its
// commit sees it.

// snapshot is what pg_current_snapshot() returns, with 64-bit
// (epoch-extended) transaction ids: every id below xmin is finished, every
// id from xmax on had not finished, and between them the ids in running had
// not.
type snapshot struct {
	xmin, xmax uint64
	running    map[uint64]struct{}
}

// parseSnapshot reads pg_current_snapshot()'s text form, "xmin:xmax:xip,...".
func parseSnapshot(s string) (snapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return snapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", s)
	}
	var snap snapshot
	var err error
	if snap.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot %q: xmin: %w", s, err)
	}
	if snap.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot %q: xmax: %w", s, err)
	}
	if snap.xmin > snap.xmax {
		return snapshot{}, fmt.Errorf("snapshot %q: xmin above xmax", s)
	}
	if parts[2] != "" {
		ids := strings.Split(parts[2], ",")
		snap.running = make(map[uint64]struct{}, len(ids))
		for _, id := range ids {
			x, err := strconv.ParseUint(id, 10, 64)
			if err != nil {
				return snapshot{}, fmt.Errorf("snapshot %q: running id: %w", s, err)
			}
			snap.running[x] = struct{}{}
		}
	}
	return snap, nil
}

// widen returns the 64-bit id of xid, the 32-bit id the write-ahead log
// carries, as the nearest id to ref (a recent 64-bit id): ids in use are
// always within 2^31 of each other, which PostgreSQL's wraparound
// protection guarantees.
func widen(xid uint32, ref uint64) uint64 {
	return uint64(int64(ref) + int64(int32(xid-uint32(ref))))
}

// visible reports whether the snapshot sees transaction xid (a 32-bit id)
// as finished.
func (s snapshot) visible(xid uint32) bool {
	full := widen(xid, s.xmax)
	if full < s.xmin {
		return true
	}
	if full >= s.xmax {
		return false
	}
	_, running := s.running[full]
	return !running
}

// visibilityGate holds a cdc term back until the transactions it reads
// are visible. A transaction the last snapshot already saw finished costs
// nothing (a finished transaction stays so), so a backlog costs one query;
// any other costs one, and one more per poll while it is held back.
type visibilityGate struct {
	url     string
	timeout time.Duration // of one attempt at a query, its connect included
	conn    *pgx.Conn     // nil until the first query, and after one lost it
	last    snapshot      // zero until the first query
}

func newVisibilityGate(url string) *visibilityGate {
	return &visibilityGate{url: url, timeout: queryTimeout}
}

// visibilityAppName names the gate's connection in pg_stat_activity.
const visibilityAppName = "switchyard-relay-visibility"

func (g *visibilityGate) connect(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(g.url)
	if err != nil {
		return fmt.Errorf("parse DatabaseURL: %w", err)
	}
	dropPoolParams(cfg.RuntimeParams)
	cfg.RuntimeParams["application_name"] = visibilityAppName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect for visibility checks: %w", err)
	}
	g.conn = conn
	return nil
}

func (g *visibilityGate) close() {
	if g.conn != nil {
		_ = g.conn.Close(context.Background())
		g.conn = nil
	}
}

// queryTimeout bounds one attempt of a gate query, connecting included: a
// connection a firewall dropped silently would otherwise hang it for as
// long as TCP takes to notice, while the replication connection goes
// unanswered.
const queryTimeout = 5 * time.Second

// query runs sql on the gate's connection. The connection sits idle
// between transactions, where a server's idle_session_timeout or a
// firewall can end it: a query that lost a connection made earlier (a
// timed-out query loses it too) is retried once on a new one.
func (g *visibilityGate) query(ctx context.Context, sql string, dest ...any) error {
	for retried := false; ; retried = true {
		reused := g.conn != nil
		err := g.attempt(ctx, sql, dest...)
		if err != nil && g.conn != nil && g.conn.IsClosed() {
			g.close()
			if reused && !retried && ctx.Err() == nil {
				continue
			}
		}
		return err
	}
}

// attempt runs sql once, connecting first when the gate has no
// connection, within the gate's timeout.
func (g *visibilityGate) attempt(ctx context.Context, sql string, dest ...any) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	if g.conn == nil {
		if err := g.connect(ctx); err != nil {
			return err
		}
	}
	return g.conn.QueryRow(ctx, sql).Scan(dest...)
}

// known reports whether the last snapshot already saw xid finished.
func (g *visibilityGate) known(xid uint32) bool {
	return g.last.xmax != 0 && g.last.visible(xid)
}

// visible takes a snapshot and reports whether it sees xid.
func (g *visibilityGate) visible(ctx context.Context, xid uint32) (bool, error) {
	var text string
	if err := g.query(ctx, "SELECT pg_current_snapshot()::text", &text); err != nil {
		return false, fmt.Errorf("read a snapshot to see whether transaction %d is visible: %w", xid, err)
	}
	snap, err := parseSnapshot(text)
	if err != nil {
		return false, err
	}
	g.last = snap
	return snap.visible(xid), nil
}

// synchronous returns ErrSynchronousStandby (permanent) when
// synchronous_standby_names names the relay's replication connection (or
// is '*'), so that commits may wait for it. It reads the setting rather
// than pg_stat_replication, whose sync_state a role without
// pg_read_all_stats cannot see.
func (g *visibilityGate) synchronous(ctx context.Context) error {
	var names string
	if err := g.query(ctx, "SELECT current_setting('synchronous_standby_names')", &names); err != nil {
		return fmt.Errorf("read synchronous_standby_names: %w", err)
	}
	if namesStandby(names, replicationAppName) {
		return permanent{fmt.Errorf("%w (it is %q)", ErrSynchronousStandby, names)}
	}
	return nil
}

// namesStandby reports whether a synchronous_standby_names value ("a, b",
// "FIRST 2 (a, b)", "ANY 1 (\"a\", *)") lists app, or '*', as a standby.
// PostgreSQL compares names without regard to case.
func namesStandby(setting, app string) bool {
	// Tokens: names (quoted ones unquoted), and the parentheses around the
	// list when there is a count before it.
	type token struct {
		text  string
		paren bool
	}
	var tokens []token
	for i := 0; i < len(setting); {
		switch c := setting[i]; {
		case c == '(' || c == ')':
			tokens = append(tokens, token{text: string(c), paren: true})
			i++
		case c == ',' || unicode.IsSpace(rune(c)):
			i++
		case c == '"':
			var b strings.Builder
			for i++; i < len(setting); i++ {
				if setting[i] != '"' {
					b.WriteByte(setting[i])
				} else if i+1 < len(setting) && setting[i+1] == '"' {
					b.WriteByte('"')
					i++
				} else {
					i++
					break
				}
			}
			tokens = append(tokens, token{text: b.String()})
		default:
			j := i
			for j < len(setting) && !strings.ContainsRune("()\",", rune(setting[j])) && !unicode.IsSpace(rune(setting[j])) {
				j++
			}
			tokens = append(tokens, token{text: setting[i:j]})
			i = j
		}
	}
	inList := !slices.ContainsFunc(tokens, func(t token) bool { return t.paren })
	for _, t := range tokens {
		switch {
		case t.paren:
			inList = t.text == "("
		case inList && (t.text == "*" || strings.EqualFold(t.text, app)):
			return true
		}
	}
	return false
}

// awaitVisible returns once transaction xid is visible to other sessions,
// polling with a growing pause (a commit normally becomes visible within
// microseconds; one waiting for a synchronous standby, for as long as
// that takes). Meanwhile it keeps confirming progress, so that the server
// does not time out the silent replication connection, and stops on a
// broker failure. A relay that synchronous_standby_names has come to name
// since the term began could be the standby the commit waits for, and
// wait forever: it fails with ErrSynchronousStandby.
func (st *cdcStream) awaitVisible(ctx context.Context, xid uint32) error {
	if st.gate.known(xid) {
		return nil
	}
	pause := 100 * time.Microsecond
	var timer *time.Timer
	var since time.Time // zero until held
	defer func() {
		if !since.IsZero() {
			st.r.invisibleNanos.Add(int64(time.Since(since)))
			st.r.invisibleSince.Store(0)
		}
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ok, err := st.gate.visible(ctx, xid)
		if err != nil || ok {
			return err
		}
		if since.IsZero() {
			since = time.Now()
			st.r.invisibleXid.Store(xid)
			st.r.invisibleSince.Store(since.UnixNano())
			st.r.invisibleWaits.Add(1)
		}
		sent, err := st.statusIfDue(ctx)
		if err != nil {
			return err
		}
		if sent {
			// The setting may have been reloaded since the term began.
			if err := st.gate.synchronous(ctx); err != nil {
				return err
			}
		}
		if timer == nil {
			timer = time.NewTimer(pause)
		} else {
			timer.Reset(pause)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-st.pub.failed():
			return err
		case <-timer.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}
