package telemetry_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchyard/switchyard/platform/telemetry"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// The pool series follow the pool: an acquire that had to open a
// connection waited, one that found it idle did not, and the connections
// show by state, labelled with the pool's name.
func TestPoolSeries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testkit.Database(t)+"&pool_max_conns=3")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	m := telemetry.NewMetrics()
	m.RegisterPool("main", pool)
	value := func(name, state string) float64 {
		t.Helper()
		families, err := m.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() != name {
				continue
			}
			for _, s := range f.GetMetric() {
				if label(s, "pool") == "main" && label(s, "state") == state {
					if c := s.GetCounter(); c != nil {
						return c.GetValue()
					}
					return s.GetGauge().GetValue()
				}
			}
		}
		t.Fatalf("no %s{pool=main,state=%q}", name, state)
		return 0
	}

	if n := value("switchyard_db_pool_max_connections", ""); n != 3 {
		t.Fatalf("max connections %v, want 3", n)
	}
	conn, err := pool.Acquire(ctx) // opens the first connection
	if err != nil {
		t.Fatal(err)
	}
	if n := value("switchyard_db_pool_connections", "in_use"); n != 1 {
		t.Fatalf("%v in use, want 1", n)
	}
	conn.Release()
	if n := value("switchyard_db_pool_connections", "idle"); n != 1 {
		t.Fatalf("%v idle after the release, want 1", n)
	}
	waits, waited := value("switchyard_db_pool_waits_total", ""), value("switchyard_db_pool_wait_seconds_total", "")
	if waits != 1 || waited <= 0 {
		t.Fatalf("after opening a connection: %v waits, %vs waited; want 1, more than 0", waits, waited)
	}
	conn, err = pool.Acquire(ctx) // the idle one: no wait
	if err != nil {
		t.Fatal(err)
	}
	conn.Release()
	if n := value("switchyard_db_pool_acquires_total", ""); n != 2 {
		t.Fatalf("%v acquires, want 2", n)
	}
	if n := value("switchyard_db_pool_waits_total", ""); n != 1 {
		t.Fatalf("%v waits after taking an idle connection, want still 1", n)
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
