// Package testkit gives tests real infrastructure with nothing running
// beforehand: one throw-away PostgreSQL cluster per test binary (initdb from
// the installed server binaries, wal_level=logical, a random free port,
// removed afterwards), a fresh database per test, and in-process
// Kafka-protocol brokers (kfake).
//
// A package that uses PostgreSQL declares
//
//	func TestMain(m *testing.M) { testkit.Main(m) }
//
// and its tests call [Database], [Kafka] and [Redis].
//
// Under go test -short, every test that asks for PostgreSQL, a broker or
// Redis is skipped, so `make test-short` runs the unit tests alone.
package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/switchyard/switchyard/platform/pgcluster"
)

var (
	clusterOnce sync.Once
	cluster     *pgcluster.Cluster
	clusterErr  error
	clusterDir  string
)

// Main runs the package's tests and then removes the PostgreSQL cluster
// if one was started. Use it as the body of TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		cluster.Stop()
	}
	if clusterDir != "" {
		_ = os.RemoveAll(clusterDir)
	}
	os.Exit(code)
}

// Cluster returns the test binary's PostgreSQL cluster, starting it on first
// use. It fails the test when the server binaries are missing.
func Cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	SkipShort(t, "PostgreSQL")
	clusterOnce.Do(func() {
		clusterDir, clusterErr = os.MkdirTemp("", "switchyard-pg-")
		if clusterErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cluster, clusterErr = pgcluster.Start(ctx, pgcluster.Options{DataDir: clusterDir + "/data"})
	})
	if clusterErr != nil {
		t.Fatalf("testkit: start PostgreSQL: %v", clusterErr)
	}
	return cluster
}

// Database creates a fresh, empty database for this test and returns its
// connection URL.
func Database(t testing.TB) string {
	t.Helper()
	c := Cluster(t)
	name := "t_" + randomHex(8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("testkit: %v", err)
	}
	return c.URL(name)
}

// Pool opens a connection pool on url, closed when the test ends.
func Pool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("testkit: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

// SkipShort skips t under go test -short: a test that needs what (a
// server, processes, a build) is not a unit test.
func SkipShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("needs %s: skipped under -short", what)
	}
}

// WaitFor polls cond every 20ms and fails the test if it is still false
// after timeout; what names the awaited state in the failure.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
