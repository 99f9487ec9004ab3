package migrate

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Execer executes SQL: a *pgx.Conn, pgx.Tx or *pgxpool.Pool.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Querier is what [EnsureTable] needs: a *pgx.Conn, pgx.Tx or *pgxpool.Pool.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Execer
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// EnsureTable runs ddl unless table already exists. Checking first matters:
// even CREATE INDEX IF NOT EXISTS locks the table, and would wait behind any
// long transaction writing to it (a replica starting while another handles
// an event, say). Creators serialise on a transaction-scoped advisory lock
// and look again once they hold it: two replicas starting at the same moment
// would otherwise both run the DDL, and PostgreSQL's CREATE TABLE IF NOT
// EXISTS is not safe against a concurrent twin (a unique violation on its
// catalog).
func EnsureTable(ctx context.Context, db Querier, table, ddl string) error {
	exists := func(q Querier) (bool, error) {
		var ok bool
		if err := q.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&ok); err != nil {
			return false, fmt.Errorf("look up table %s: %w", table, err)
		}
		return ok, nil
	}
	if ok, err := exists(db); err != nil || ok {
		return err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", ddlLockKey); err != nil {
		return fmt.Errorf("create table %s: lock: %w", table, err)
	}
	if ok, err := exists(tx); err != nil || ok {
		return err
	}
	if _, err := tx.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create table %s: %w", table, err)
	}
	return nil
}

// ddlLockKey is the advisory lock platform DDL is created under.
const ddlLockKey = 0x5377_6974_6364 // "Switcd"
