package pgcluster_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/testkit"
)

// Missing server binaries give an error that says what to install.
func TestMissingBinariesExplained(t *testing.T) {
	t.Setenv("SWITCHYARD_PG_BIN", t.TempDir())
	_, err := pgcluster.Start(context.Background(), pgcluster.Options{DataDir: t.TempDir()})
	if !errors.Is(err, pgcluster.ErrBinariesNotFound) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Fatalf("Start = %v, want ErrBinariesNotFound naming the package to install", err)
	}
}

// A cluster keeps its data across a stop and a start, and a busy port is
// reported in one line.
func TestRestartKeepsDataAndBusyPort(t *testing.T) {
	testkit.SkipShort(t, "PostgreSQL")
	ctx := context.Background()
	dir := t.TempDir() + "/pg"
	c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CreateDatabase(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: t.TempDir() + "/other", Port: c.Port()}); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("second cluster on port %d: %v, want a busy-port error", c.Port(), err)
	}
	port := c.Port()
	c.Stop()
	c, err = pgcluster.Start(ctx, pgcluster.Options{DataDir: dir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if err := c.CreateDatabase(ctx, "kept"); err != nil { // exists: no error, no duplicate
		t.Fatal(err)
	}
}

// An immediate restart (a crash: sessions cut, WAL replayed) keeps what was
// committed and serves again on the same port.
func TestRestartImmediate(t *testing.T) {
	testkit.SkipShort(t, "PostgreSQL")
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: t.TempDir() + "/pg"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	if err := c.RestartImmediate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("a session survived the immediate restart")
	}
	conn, err = pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, `SELECT v FROM kept`).Scan(&v); err != nil || v != 42 {
		t.Fatalf("after the restart: %d, %v; want the committed 42", v, err)
	}
}
