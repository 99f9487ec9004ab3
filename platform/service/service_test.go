package service_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/switchyard/switchyard/platform/consumer"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/relay"
	"github.com/switchyard/switchyard/platform/service"
	"github.com/switchyard/switchyard/platform/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// A hand-written test service: Panic panics, Slow sleeps.
type testServer interface{}

type impl struct{}

// testDesc describes the test service; Slow says on slow (when not nil)
// that it started.
func testDesc(env *service.Env, slow chan<- struct{}) *grpc.ServiceDesc {
	hub := env.WatchHub("test_watch")
	return &grpc.ServiceDesc{
		Streams: []grpc.StreamDesc{{
			// Hold follows a key, says so, then holds a connection of the
			// watch pool until the client goes: a stream stuck reading.
			StreamName: "Hold", ServerStreams: true,
			Handler: func(_ any, stream grpc.ServerStream) error {
				ctx := stream.Context()
				return hub.Follow(ctx, "k", time.Hour, env.Stopping(), func() (bool, error) {
					if err := stream.SendMsg(wrapperspb.String("following")); err != nil {
						return false, err
					}
					conn, err := hub.DB().Acquire(ctx)
					if err != nil {
						return false, err
					}
					defer conn.Release()
					<-ctx.Done()
					return false, ctx.Err()
				})
			},
		}},
		ServiceName: "switchyard.test.v1.TestService",
		HandlerType: (*testServer)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "Panic", Handler: unary("Panic", func(ctx context.Context) (any, error) { panic("boom") })},
			{MethodName: "Slow", Handler: unary("Slow", func(ctx context.Context) (any, error) {
				select {
				case slow <- struct{}{}:
				default:
				}
				time.Sleep(time.Second)
				return wrapperspb.String("done"), nil
			})},
			{MethodName: "Query", Handler: unary("Query", func(ctx context.Context) (any, error) {
				_, err := env.Pool.Exec(ctx, "SELECT 1")
				return wrapperspb.String("done"), err
			})},
			{MethodName: "Fail", Handler: unary("Fail", func(ctx context.Context) (any, error) {
				return nil, io.ErrUnexpectedEOF // an unmapped error must not leak
			})},
			// Big writes an event larger than the transport carries, in a
			// transaction that would otherwise commit a marker row.
			{MethodName: "Big", Handler: unary("Big", func(ctx context.Context) (any, error) {
				err := pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS marker (id int)`); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO marker VALUES (1)`); err != nil {
						return err
					}
					big := wrapperspb.Bytes(make([]byte, outbox.DefaultMaxEventBytes))
					return env.Outbox.Write(ctx, tx, outbox.Event{AggregateType: "test", AggregateID: "1", Message: big})
				})
				return nil, err
			})},
		},
	}
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

// silentSpec is a service named name that serves the test service and
// emits nothing; its Env is stored in *env when env is not nil.
func silentSpec(name string, env **service.Env) service.Spec {
	return service.Spec{Name: name, Setup: func(e *service.Env) error {
		if env != nil {
			*env = e
		}
		e.Server.RegisterService(testDesc(e, nil), impl{})
		return nil
	}}
}

func spec(slow chan<- struct{}) service.Spec {
	return service.Spec{Name: "test", Emits: true, Setup: func(env *service.Env) error {
		env.Server.RegisterService(testDesc(env, slow), impl{})
		return nil
	}}
}

type running struct {
	conn   *grpc.ClientConn
	health healthpb.HealthClient
	cancel context.CancelFunc
	done   chan error
	slow   <-chan struct{} // a value each time Slow starts (start and startWith)
}

// stopped waits for Run to return on its own (a service that must not
// start) and returns its error, failing the test with why after a minute.
func (r *running) stopped(t *testing.T, why string) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- nil // for the cleanup
		return err
	case <-time.After(time.Minute):
		t.Fatal(why)
		return nil
	}
}

func start(t *testing.T, dbURL, brokers string) *running {
	t.Helper()
	return startWith(t, dbURL, brokers, nil)
}

// startWith starts the test service with extra environment variables.
func startWith(t *testing.T, dbURL, brokers string, extra map[string]string) *running {
	t.Helper()
	slow := make(chan struct{}, 16)
	r := startSpec(t, spec(slow), dbURL, brokers, extra)
	r.slow = slow
	return r
}

// startSpec starts a service described by sp.
func startSpec(t *testing.T, sp service.Spec, dbURL, brokers string, extra map[string]string) *running {
	t.Helper()
	env := map[string]string{
		"SWITCHYARD_DATABASE_URL":     dbURL,
		"SWITCHYARD_KAFKA_BROKERS":    brokers,
		"SWITCHYARD_GRPC_ADDR":        "127.0.0.1:0",
		"SWITCHYARD_METRICS_ADDR":     "127.0.0.1:0",
		"SWITCHYARD_SHUTDOWN_TIMEOUT": "5s",
	}
	for k, v := range extra {
		env[k] = v
	}
	cfg, err := service.LoadConfig(0, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	r := &running{cancel: cancel, done: make(chan error, 1)}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { r.done <- service.Run(ctx, sp, cfg, logger, func(a net.Addr) { addr <- a }) }()
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
	t.Cleanup(func() {
		cancel()
		// A test that expects Run to fail checks its error and puts nil back.
		if err := <-r.done; err != nil {
			t.Logf("Run: %v", err)
		}
		r.conn.Close()
	})
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

// With the broker unreachable, a service whose bootstrap needs nothing of
// it is ready once the database is, and serves RPCs (writes only need the
// database: the outbox holds their events until the broker is back); the
// broker's own health status says it is down.
func TestReadyWithoutBroker(t *testing.T) {
	t.Parallel()
	r := start(t, testkit.Database(t), "127.0.0.1:1")
	testkit.WaitFor(t, time.Minute, "readiness once the database is ready", func() bool {
		return r.status(t) == healthpb.HealthCheckResponse_SERVING
	})
	if _, err := r.call("Slow"); err != nil {
		t.Fatalf("RPC while ready without a broker: %v", err)
	}
	resp, err := r.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service.BrokerHealthService})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("broker health %v (%v) with no broker, want NOT_SERVING", resp.GetStatus(), err)
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
	select {
	case <-r.slow: // in the handler: the shutdown must let it finish
	case <-time.After(30 * time.Second):
		t.Fatal("Slow did not start")
	}
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

// A request whose event is too large for the transport is INVALID_ARGUMENT
// saying so, and nothing of its transaction is committed.
func TestEventTooLargeIsInvalidArgument(t *testing.T) {
	t.Parallel()
	db := testkit.Database(t)
	r := start(t, db, testkit.Kafka(t).Addr())
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return r.status(t) == healthpb.HealthCheckResponse_SERVING })
	_, err := r.call("Big")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized event: %v, want INVALID_ARGUMENT naming the limit", err)
	}
	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(context.Background(), `SELECT to_regclass('marker') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Fatalf("marker table exists=%v (%v): the refused transaction committed", exists, err)
	}
}

// A service whose recorded replication slot has disappeared does not start
// (no silent new slot, no endless "not ready" retries): Run fails with
// relay.ErrSlotLost, whose text says how to recover.
func TestSlotLostStopsTheService(t *testing.T) {
	t.Parallel()
	db := testkit.Database(t)
	brokers := testkit.Kafka(t).Addr()
	first := start(t, db, brokers)
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return first.status(t) == healthpb.HealthCheckResponse_SERVING })
	first.cancel()
	if err := <-first.done; err != nil {
		t.Fatalf("first run: %v", err)
	}
	first.done <- nil // for the cleanup

	conn, err := pgx.Connect(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// The walsender of the stopped relay may still hold the slot a moment.
	testkit.WaitFor(t, time.Minute, "the slot to be dropped", func() bool {
		var n int
		err := conn.QueryRow(context.Background(), `SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
			WHERE database = current_database()`).Scan(&n)
		return err == nil && n == 1
	})

	err = start(t, db, brokers).stopped(t, "service with a lost slot kept running")
	if !errors.Is(err, relay.ErrSlotLost) || !strings.Contains(err.Error(), "DELETE FROM relay_slots") {
		t.Fatalf("Run = %v, want ErrSlotLost saying how to recover", err)
	}
}

// A slot of the service's name that another plugin (or database) made is
// an operator's to sort out: Run fails at once saying how, rather than
// retrying "not ready" for ever.
func TestForeignSlotStopsTheService(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testkit.Database(t)
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	slot := relay.SlotName(conn.Config().Database)
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, slot); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the connection closes: a slot keeps its database from being dropped
		if _, err := conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			t.Errorf("drop slot %s: %v", slot, err)
		}
	})

	err = start(t, db, testkit.Kafka(t).Addr()).stopped(t, "service with another plugin's slot kept retrying")
	if !relay.IsPermanent(err) || !strings.Contains(err.Error(), "pg_drop_replication_slot('"+slot+"')") {
		t.Fatalf("Run = %v, want a permanent error saying how to free the slot", err)
	}
}

// On Redis a service whose partition count differs from the one its
// topics were first used with does not start: Run fails at once saying
// what to set, rather than retrying "not ready" for ever.
func TestChangedRedisPartitionsStopTheService(t *testing.T) {
	t.Parallel()
	redis := testkit.Redis(t)
	run := func(partitions string) *running {
		sp := service.Spec{Name: "partitions", Subscribe: []string{"in"}, Setup: func(env *service.Env) error {
			consumer.Handle(env.Consumer, func(context.Context, pgx.Tx, *wrapperspb.StringValue, consumer.Metadata) error { return nil })
			return nil
		}}
		return startSpec(t, sp, testkit.Database(t), "",
			map[string]string{"SWITCHYARD_TRANSPORT": "redis", "SWITCHYARD_REDIS_URL": redis.URL(), "SWITCHYARD_TOPIC_PARTITIONS": partitions})
	}
	first := run("4")
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return first.status(t) == healthpb.HealthCheckResponse_SERVING })

	err := run("8").stopped(t, "service with another partition count kept retrying")
	if !errors.Is(err, redisstream.ErrPartitionsChanged) || !strings.Contains(err.Error(), "set it back to 4") {
		t.Fatalf("Run = %v, want ErrPartitionsChanged saying what to set", err)
	}
}

// Watch streams are bounded per process (RESOURCE_EXHAUSTED past the bound)
// and read through their own pool: streams stuck reading never take the
// connections other work needs. Here the main pool has two connections and
// three streams hold what they can; a query on the main pool still runs.
func TestWatchStreamsAreBounded(t *testing.T) {
	t.Parallel()
	r := startWith(t, testkit.Database(t)+"&pool_max_conns=2", testkit.Kafka(t).Addr(), map[string]string{
		"SWITCHYARD_WATCH_MAX_STREAMS": "3", "SWITCHYARD_WATCH_DB_CONNS": "1",
	})
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return r.status(t) == healthpb.HealthCheckResponse_SERVING })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hold := func() (grpc.ClientStream, error) {
		s, err := r.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/switchyard.test.v1.TestService/Hold")
		if err != nil {
			return nil, err
		}
		if err := s.SendMsg(&emptypb.Empty{}); err != nil {
			return nil, err
		}
		if err := s.CloseSend(); err != nil {
			return nil, err
		}
		return s, s.RecvMsg(new(wrapperspb.StringValue))
	}
	for i := range 3 {
		if _, err := hold(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	if _, err := hold(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream past the bound: %v, want RESOURCE_EXHAUSTED", err)
	}
	qctx, qcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer qcancel()
	out := new(wrapperspb.StringValue)
	if err := r.conn.Invoke(qctx, "/switchyard.test.v1.TestService/Query", &emptypb.Empty{}, out); err != nil {
		t.Fatalf("query while streams hold their connections: %v", err)
	}
}

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := service.LoadConfig(50052, env(map[string]string{"SWITCHYARD_DATABASE_URL": "postgres://x/y"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != ":50052" || cfg.Brokers != "127.0.0.1:19092" || cfg.TopicPrefix != "switchyard." || cfg.OutboxMode != "cdc" || cfg.DatabaseMaxConns != 16 || cfg.WatchRecheck != 5*time.Second {
		t.Fatalf("defaults: %+v", cfg)
	}
	// The pool size: the variable, else the URL's pool_max_conns (0 here:
	// pgxpool reads it), else 16.
	for _, c := range []struct {
		env  map[string]string
		want int32
	}{
		{map[string]string{"SWITCHYARD_DATABASE_URL": "postgres://x/y", "SWITCHYARD_DATABASE_MAX_CONNS": "7"}, 7},
		{map[string]string{"SWITCHYARD_DATABASE_URL": "postgres://x/y?pool_max_conns=5"}, 0},
		{map[string]string{"SWITCHYARD_DATABASE_URL": "postgres://x/y?pool_max_conns=5", "SWITCHYARD_DATABASE_MAX_CONNS": "9"}, 9},
	} {
		cfg, err := service.LoadConfig(1, env(c.env))
		if err != nil || cfg.DatabaseMaxConns != c.want {
			t.Errorf("%v: DatabaseMaxConns %d (%v), want %d", c.env, cfg.DatabaseMaxConns, err, c.want)
		}
	}
	_, err = service.LoadConfig(1, env(map[string]string{"SWITCHYARD_OUTBOX_MODE": "kafka", "SWITCHYARD_TOPIC_PARTITIONS": "0", "SWITCHYARD_DATABASE_MAX_CONNS": "0", "SWITCHYARD_WATCH_RECHECK": "0s"}))
	for _, want := range []string{"SWITCHYARD_DATABASE_URL", "SWITCHYARD_OUTBOX_MODE", "SWITCHYARD_TOPIC_PARTITIONS", "SWITCHYARD_DATABASE_MAX_CONNS", "SWITCHYARD_WATCH_RECHECK"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("LoadConfig error %v does not name %s", err, want)
		}
	}
}

// A service that declares no events gets no relay: no replication slot
// keeps WAL for it, no outbox table, no relay health entry, and an event
// written by mistake fails its transaction rather than waiting for ever.
func TestServiceThatEmitsNothingHasNoRelay(t *testing.T) {
	t.Parallel()
	db := testkit.Database(t)
	var env *service.Env
	sp := silentSpec("silent", &env)
	r := startSpec(t, sp, db, testkit.Kafka(t).Addr(), nil)
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return r.status(t) == healthpb.HealthCheckResponse_SERVING })

	if _, err := r.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service.RelayHealthService}); status.Code(err) != codes.NotFound {
		t.Errorf("relay health of a service without a relay: %v, want NOT_FOUND", err)
	}
	pool := testkit.Pool(t, db)
	var slots int
	var outboxTable *string
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()), to_regclass('outbox')::text`).Scan(&slots, &outboxTable); err != nil {
		t.Fatal(err)
	}
	if slots != 0 || outboxTable != nil {
		t.Errorf("%d replication slots and outbox table %v, want none", slots, outboxTable)
	}
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
		return env.Outbox.Write(context.Background(), tx, outbox.Event{AggregateType: "test", AggregateID: "1", Message: wrapperspb.String("x")})
	})
	if !errors.Is(err, outbox.ErrNoRelay) || !strings.Contains(err.Error(), "silent") {
		t.Errorf("Outbox.Write: %v, want ErrNoRelay naming the service", err)
	}
}

// A group added with Env.AddConsumer reads its own topics, apart from the
// service's group: each group gets every event of the topics it reads.
func TestAddConsumerRunsAGroupOfItsOwn(t *testing.T) {
	db := testkit.Database(t)
	var own, added atomic.Int64
	sp := service.Spec{Name: "twogroups", Emits: true, Subscribe: []string{"in"}, Setup: func(env *service.Env) error {
		consumer.Handle(env.Consumer, func(context.Context, pgx.Tx, *wrapperspb.StringValue, consumer.Metadata) error {
			own.Add(1)
			return nil
		})
		c, err := env.AddConsumer("twogroups-extra", "in", "extra")
		if err != nil {
			return err
		}
		consumer.Handle(c, func(context.Context, pgx.Tx, *wrapperspb.StringValue, consumer.Metadata) error {
			added.Add(1)
			return nil
		})
		return nil
	}}
	r := startSpec(t, sp, db, testkit.Kafka(t).Addr(), nil)
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return r.status(t) == healthpb.HealthCheckResponse_SERVING })
	pool := testkit.Pool(t, db)
	w := outbox.NewWriter(outbox.ModeCDC)
	for _, aggregate := range []string{"in", "extra"} {
		err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error {
			return w.Write(context.Background(), tx, outbox.Event{AggregateType: aggregate, AggregateID: "1", Message: wrapperspb.String(aggregate)})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, time.Minute, "both groups to apply their events", func() bool { return own.Load() == 1 && added.Load() == 2 })
}

// A handler whose event type declares no aggregate, with no Spec.Subscribe
// to say where such events come from, stops the service at start with an
// error that says so, rather than a consumer that never reads anything.
func TestHandlerWithoutAggregateFailsStart(t *testing.T) {
	t.Parallel()
	sp := service.Spec{Name: "lost", Setup: func(env *service.Env) error {
		consumer.Handle(env.Consumer, func(context.Context, pgx.Tx, *wrapperspb.StringValue, consumer.Metadata) error { return nil })
		return nil
	}}
	env := map[string]string{"SWITCHYARD_DATABASE_URL": testkit.Database(t), "SWITCHYARD_GRPC_ADDR": "127.0.0.1:0", "SWITCHYARD_METRICS_ADDR": "127.0.0.1:0"}
	cfg, err := service.LoadConfig(0, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = service.Run(ctx, sp, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil || !strings.Contains(err.Error(), "google.protobuf.StringValue") || !strings.Contains(err.Error(), "Spec.Subscribe") {
		t.Fatalf("Run = %v, want an error naming the type and Spec.Subscribe", err)
	}
}

// Readiness asks whether the database answers, not whether the pool has a
// connection free: with every connection of the pool held, the service is
// still SERVING.
func TestReadyWithThePoolBusy(t *testing.T) {
	t.Parallel()
	db := testkit.Database(t)
	var env *service.Env
	sp := silentSpec("busy", &env)
	r := startSpec(t, sp, db, testkit.Kafka(t).Addr(), map[string]string{"SWITCHYARD_DATABASE_MAX_CONNS": "2"})
	testkit.WaitFor(t, time.Minute, "SERVING", func() bool { return r.status(t) == healthpb.HealthCheckResponse_SERVING })
	ctx := context.Background()
	for range 2 {
		c, err := env.Pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
	}
	check := testkit.Pool(t, db)
	var busySince time.Time
	if err := check.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&busySince); err != nil {
		t.Fatal(err)
	}
	// Two probes since the pool filled up: the probe's connection has
	// finished a ping that began after that.
	testkit.WaitFor(t, time.Minute, "two readiness probes with the pool busy", func() bool {
		var probed bool
		err := check.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'busy-health'
			AND state = 'idle' AND query_start > $1::timestamptz + interval '2 seconds')`, busySince).Scan(&probed)
		return err == nil && probed
	})
	// SERVING, or back to it within a probe if the broker's check was slow
	// on a busy machine: a probe through the pool would fail as long as
	// the pool stays full.
	testkit.WaitFor(t, 30*time.Second, "readiness SERVING with the pool busy and the database answering", func() bool {
		return r.status(t) == healthpb.HealthCheckResponse_SERVING
	})
}

// A service stopped while it still waits for its database never calls
// itself ready, and starts nothing.
func TestStoppedBeforeReady(t *testing.T) {
	t.Parallel()
	cfg, err := service.LoadConfig(0, func(k string) string {
		return map[string]string{
			"SWITCHYARD_DATABASE_URL":  "postgres://switchyard@127.0.0.1:1/none",
			"SWITCHYARD_KAFKA_BROKERS": testkit.Kafka(t).Addr(),
			"SWITCHYARD_GRPC_ADDR":     "127.0.0.1:0",
			"SWITCHYARD_METRICS_ADDR":  "127.0.0.1:0",
		}[k]
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.Logs{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sp := silentSpec("unready", nil)
	go func() { done <- service.Run(ctx, sp, cfg, logs.Logger(), nil) }()
	testkit.WaitFor(t, time.Minute, "a failed attempt to reach the database", func() bool {
		return strings.Contains(logs.String(), "not ready yet")
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if strings.Contains(logs.String(), "msg=ready") {
		t.Fatalf("a service stopped before its database answered logged that it was ready:\n%s", logs)
	}
}

// Run that cannot listen for gRPC leaves the metrics port free again.
func TestFailedListenFreesTheMetricsPort(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	db, brokers := testkit.Database(t), testkit.Kafka(t).Addr()
	sp := silentSpec("noport", nil)
	// A port found free may be taken again before Run listens on it: then
	// Run fails on it instead, and another is tried.
	for attempt := 0; ; attempt++ {
		port, err := pgcluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		metricsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cfg, err := service.LoadConfig(0, func(k string) string {
			return map[string]string{
				"SWITCHYARD_DATABASE_URL":  db,
				"SWITCHYARD_KAFKA_BROKERS": brokers,
				"SWITCHYARD_GRPC_ADDR":     taken.Addr().String(),
				"SWITCHYARD_METRICS_ADDR":  metricsAddr,
			}[k]
		})
		if err != nil {
			t.Fatal(err)
		}
		err = service.Run(context.Background(), sp, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
		if err != nil && strings.Contains(err.Error(), "metrics: listen on") && attempt < 5 {
			continue
		}
		if err == nil || !strings.Contains(err.Error(), "listen on "+taken.Addr().String()) {
			t.Fatalf("Run with its gRPC port taken: %v, want a listen error", err)
		}
		l, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			t.Fatalf("metrics port after the failed Run: %v", err)
		}
		l.Close()
		return
	}
}
