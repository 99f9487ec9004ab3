package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/shop/registry"
)

// A server that took a service's port first (another stack's, say)
// answers SERVING for the whole server but knows nothing of the service's
// API: WaitServing must keep waiting for the service, not take it.
func TestWaitServingAsksForTheServicesOwnAPI(t *testing.T) {
	t.Parallel()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer() // SERVING for "" from the start
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	const name = "orders"
	s := &Stack{
		procs: map[string]*process{name: {done: make(chan struct{})}}, // running
		ports: map[string]int{name: lis.Addr().(*net.TCPAddr).Port},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.WaitServing(ctx, name); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitServing with a foreign server on the port: %v, want it to wait until the deadline", err)
	}

	svc, _ := registry.Lookup(name)
	hs.SetServingStatus(svc.API, healthpb.HealthCheckResponse_SERVING)
	if err := s.WaitServing(context.Background(), name); err != nil {
		t.Fatalf("WaitServing once the service's API is SERVING: %v", err)
	}
}

// More instances than the fixed ports allow are refused before anything
// starts.
func TestTooManyInstances(t *testing.T) {
	t.Parallel()
	_, err := Start(context.Background(), Options{Dir: t.TempDir(), Instances: map[string]int{"analytics": MaxInstances + 1}})
	if err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("Start with %d instances: %v, want a refusal", MaxInstances+1, err)
	}
}

// A random port taken before the server binds it is replaced by another
// (tests run stacks side by side); a fixed port is not.
func TestStartOnPortRetriesATakenRandomPort(t *testing.T) {
	t.Parallel()
	taken := fmt.Errorf("listen tcp: bind: %w", syscall.EADDRINUSE)
	var tried []int
	port, err := startOnPort(0, "test server", func(p int) error {
		tried = append(tried, p)
		if len(tried) == 1 {
			return taken
		}
		return nil
	})
	if err != nil || len(tried) != 2 || port != tried[1] {
		t.Fatalf("random port: got %d, %v after trying %v; want the second pick", port, err, tried)
	}

	tried = nil
	fixed, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := startOnPort(fixed, "test server", func(p int) error { tried = append(tried, p); return taken }); !errors.Is(err, syscall.EADDRINUSE) || len(tried) != 1 {
		t.Fatalf("fixed port: %v after trying %v; want one try and its error", err, tried)
	}
}

// A busy fixed port, or missing server binaries, is reported in one line
// that names the server and the port, before anything starts.
func TestBusyPortsAndMissingBinaries(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := l.Addr().(*net.TCPAddr).Port
	busyMsg := func(what string) string {
		return fmt.Sprintf("%s: port %d is busy (is another `make run` still running?)", what, busy)
	}
	noPG := t.TempDir()
	for _, tc := range []struct {
		name  string
		opts  Options
		pgBin string // SWITCHYARD_PG_BIN, when set
		want  string
	}{
		{name: "PostgreSQL's port", opts: Options{PostgresPort: busy}, want: busyMsg("PostgreSQL")},
		{name: "the broker's port", opts: Options{KafkaPort: busy}, want: busyMsg("Kafka broker")},
		{name: "redis-server's port", opts: Options{RedisPort: busy}, want: busyMsg("redis-server")},
		{name: "no PostgreSQL binaries", pgBin: noPG, want: "SWITCHYARD_PG_BIN=" + noPG + ": " + pgcluster.ErrBinariesNotFound.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.pgBin != "" {
				t.Setenv("SWITCHYARD_PG_BIN", tc.pgBin)
			}
			opts := tc.opts
			opts.Dir, opts.RandomPorts = t.TempDir(), true
			s, err := Start(context.Background(), opts)
			if err == nil {
				s.Close()
				t.Fatalf("Start succeeded, want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Fatalf("Start = %q, want %q", err, tc.want)
			}
		})
	}
}

// Every line of a process's output is passed on, prefixed with its name;
// a line too long to pass on whole is cut, and what follows it still
// arrives: the pipe is read to its end.
func TestPrefix(t *testing.T) {
	long := strings.Repeat("x", 2<<20)
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{name: "lines", in: "a\nb\n", want: []string{"orders       | a", "orders       | b"}},
		{name: "last line without a newline", in: "a\nb", want: []string{"orders       | a", "orders       | b"}},
		{name: "CRLF", in: "a\r\n\r\nb\r\n", want: []string{"orders       | a", "orders       | ", "orders       | b"}},
		{name: "a line longer than the limit", in: "before\n" + long + "\nafter\n", want: []string{
			"orders       | before",
			"orders       | " + long[:maxLogLine] + fmt.Sprintf(" ... (line cut: %d more bytes)", len(long)-maxLogLine),
			"orders       | after",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := strings.NewReader(tc.in)
			var out strings.Builder
			prefix(&out, "orders", r)
			if got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"); !slices.Equal(got, tc.want) {
				t.Errorf("prefix wrote %d lines %.200q, want %d lines %.200q", len(got), got, len(tc.want), tc.want)
			}
			if r.Len() != 0 {
				t.Errorf("prefix left %d bytes unread", r.Len())
			}
		})
	}
}
