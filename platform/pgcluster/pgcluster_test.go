package pgcluster_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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

// An interrupted initdb (Ctrl-C during the first `make run`) leaves nothing
// that a later Start takes for a cluster: the next Start initialises afresh,
// and debris in the data directory itself (left by a Switchyard that ran
// initdb in place) is reported in one line naming what to delete, at once
// rather than after a failed start or a minute's wait.
func TestInterruptedInitdb(t *testing.T) {
	testkit.SkipShort(t, "PostgreSQL")
	ctx := context.Background()
	realBin, err := pgcluster.FindBinaries()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		// leave puts in dataDir (or beside it) what the interruption left.
		leave func(t *testing.T, dataDir string)
		// wantDelete: Start refuses, naming the directory to delete;
		// otherwise it recovers.
		wantDelete bool
	}{
		{
			name: "initdb killed right after writing PG_VERSION",
			leave: func(t *testing.T, dataDir string) {
				// An initdb that writes PG_VERSION, as the real one does
				// first, and is then killed.
				bin := filepath.Join(filepath.Dir(filepath.Dir(dataDir)), "bin")
				if err := os.Mkdir(bin, 0o755); err != nil {
					t.Fatal(err)
				}
				script := "#!/bin/sh\necho 15 > \"$2/PG_VERSION\"\nkill -9 $$\n"
				if err := os.WriteFile(filepath.Join(bin, "initdb"), []byte(script), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(filepath.Join(realBin, "postgres"), filepath.Join(bin, "postgres")); err != nil {
					t.Fatal(err)
				}
				t.Setenv("SWITCHYARD_PG_BIN", bin)
				if _, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: dataDir}); err == nil {
					t.Fatal("Start with a killed initdb succeeded")
				}
				t.Setenv("SWITCHYARD_PG_BIN", realBin)
			},
		},
		{
			name: "only PG_VERSION in the data directory",
			leave: func(t *testing.T, dataDir string) {
				if err := os.MkdirAll(dataDir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dataDir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantDelete: true,
		},
		{
			name: "a cluster without the postgres database, which initdb creates last",
			leave: func(t *testing.T, dataDir string) {
				c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: dataDir})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Stop()
				conn, err := pgx.Connect(ctx, c.URL("template1"))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				if _, err := conn.Exec(ctx, "DROP DATABASE postgres"); err != nil {
					t.Fatal(err)
				}
			},
			wantDelete: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "data")
			dataDir := filepath.Join(parent, "pg")
			tc.leave(t, dataDir)
			c, err := pgcluster.Start(ctx, pgcluster.Options{DataDir: dataDir})
			if tc.wantDelete {
				if err == nil {
					c.Stop()
					t.Fatal("Start succeeded, want a refusal naming what to delete")
				}
				if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "rm -rf "+dataDir) {
					t.Fatalf("Start = %q, want one line saying to delete %s", msg, dataDir)
				}
				return
			}
			if err != nil {
				t.Fatalf("Start after the interruption: %v", err)
			}
			defer c.Stop()
			if err := c.CreateDatabase(ctx, "after"); err != nil {
				t.Fatal(err)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 1 {
				t.Errorf("beside the data directory: %v, want nothing left by the interrupted initdb", entries)
			}
		})
	}
}
