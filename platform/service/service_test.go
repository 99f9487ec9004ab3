package service_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// A hand-written test service: Panic panics, Slow sleeps.
type testServer interface{}

type impl struct{}

var testDesc = grpc.ServiceDesc{
	ServiceName: "switchyard.test.v1.TestService",
	HandlerType: (*testServer)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Panic", Handler: unary("Panic", func(ctx context.Context) (any, error) { panic("boom") })},
		{MethodName: "Slow", Handler: unary("Slow", func(ctx context.Context) (any, error) {
			time.Sleep(time.Second)
			return wrapperspb.String("done"), nil
		})},
		{MethodName: "Fail", Handler: unary("Fail", func(ctx context.Context) (any, error) {
			return nil, io.ErrUnexpectedEOF // an unmapped error must not leak
		})},
	},
}

func unary(name string, fn func(context.Context) (any, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		in := new(emptypb.Empty)
		if err := dec(in); err != nil {
			return nil, err
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/switchyard.test.v1.TestService/" + name}
		return icpt(ctx, in, info, func(ctx context.Context, _ any) (any, error) { return fn(ctx) })
	}
}

func spec() service.Spec {
	return service.Spec{Name: "test", Setup: func(env *service.Env) error {
		env.Server.RegisterService(&testDesc, impl{})
		return nil
	}}
}

type running struct {
	conn   *grpc.ClientConn
	health healthpb.HealthClient
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, dbURL, brokers string) *running {
	t.Helper()
	cfg, err := service.LoadConfig(0, func(k string) string {
		return map[string]string{
			"SWITCHYARD_DATABASE_URL":     dbURL,
			"SWITCHYARD_KAFKA_BROKERS":    brokers,
			"SWITCHYARD_GRPC_ADDR":        "127.0.0.1:0",
			"SWITCHYARD_METRICS_ADDR":     "127.0.0.1:0",
			"SWITCHYARD_SHUTDOWN_TIMEOUT": "5s",
		}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	r := &running{cancel: cancel, done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { r.done <- service.Run(ctx, spec(), cfg, logger, func(a net.Addr) { addr <- a }) }()
	select {
	case a := <-addr:
		r.conn, err = grpc.NewClient(a.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
	case err := <-r.done:
		t.Fatalf("Run ended before listening: %v", err)
	}
	r.health = healthpb.NewHealthClient(r.conn)
	t.Cleanup(func() { cancel(); <-r.done; r.conn.Close() })
	return r
}

func (r *running) status(t *testing.T) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := r.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	return resp.GetStatus()
}

func (r *running) call(method string) (*wrapperspb.StringValue, error) {
	out := new(wrapperspb.StringValue)
	err := r.conn.Invoke(context.Background(), "/switchyard.test.v1.TestService/"+method, &emptypb.Empty{}, out)
	return out, err
}

// With the broker unreachable, health stays NOT_SERVING even once the
// database is ready and RPCs are served (writes only need the database: the
// outbox holds their events until the broker is back).
func TestNotServingWithoutBroker(t *testing.T) {
	t.Parallel()
	r := start(t, testkit.Database(t), "127.0.0.1:1")
	testkit.WaitFor(t, time.Minute, "RPCs to be served once the database is ready", func() bool {
		_, err := r.call("Slow")
		return err == nil
	})
	if s := r.status(t); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health %s with no broker, want NOT_SERVING", s)
	}
}

// With the database unreachable, health answers NOT_SERVING and RPCs get
// UNAVAILABLE; nothing crashes.
func TestNotServingUntilReachable(t *testing.T) {
	t.Parallel()
	r := start(t, "postgres://postgres@127.0.0.1:1/none?connect_timeout=1", testkit.Kafka(t).Addr())
	time.Sleep(500 * time.Millisecond)
	if s := r.status(t); s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health %s with no database, want NOT_SERVING", s)
	}
	if _, err := r.call("Slow"); status.Code(err) != codes.Unavailable {
		t.Fatalf("RPC before ready: %v, want UNAVAILABLE", err)
	}
}

// A panicking handler becomes INTERNAL and the server keeps serving; an
// unmapped error becomes INTERNAL without leaking its text; SIGTERM-style
// shutdown lets an in-flight RPC finish.
func TestPanicsErrorsAndGracefulShutdown(t *testing.T) {
	t.Parallel()
	r := start(t, testkit.Database(t), testkit.Kafka(t).Addr())
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return r.status(t) == healthpb.HealthCheckResponse_SERVING })

	if _, err := r.call("Panic"); status.Code(err) != codes.Internal {
		t.Fatalf("panicking handler: %v, want INTERNAL", err)
	}
	if s := r.status(t); s != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %s after a panic, want SERVING", s)
	}
	_, err := r.call("Fail")
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "unexpected EOF") {
		t.Fatalf("unmapped error: %v, want a bare INTERNAL", err)
	}

	type result struct {
		v   *wrapperspb.StringValue
		err error
	}
	inflight := make(chan result, 1)
	go func() { v, err := r.call("Slow"); inflight <- result{v, err} }()
	time.Sleep(200 * time.Millisecond)
	r.cancel()
	res := <-inflight
	if res.err != nil || res.v.GetValue() != "done" {
		t.Fatalf("in-flight RPC during shutdown: %v %v, want it to finish", res.v, res.err)
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run after shutdown: %v", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after shutdown")
	}
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := service.LoadConfig(50052, env(map[string]string{"SWITCHYARD_DATABASE_URL": "postgres://x/y"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != ":50052" || cfg.Brokers != "127.0.0.1:19092" || cfg.TopicPrefix != "switchyard." || cfg.OutboxMode != "cdc" {
		t.Fatalf("defaults: %+v", cfg)
	}
	_, err = service.LoadConfig(1, env(map[string]string{"SWITCHYARD_OUTBOX_MODE": "kafka", "SWITCHYARD_TOPIC_PARTITIONS": "0"}))
	for _, want := range []string{"SWITCHYARD_DATABASE_URL", "SWITCHYARD_OUTBOX_MODE", "SWITCHYARD_TOPIC_PARTITIONS"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadConfig error %v does not name %s", err, want)
		}
	}
}
