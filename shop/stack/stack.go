// Package stack runs the whole shop on one machine: a PostgreSQL cluster
// with one database per service, a Kafka-protocol broker (kfake) with its
// log on disk, a redis-server (the Redis Streams transport in database 0,
// append-only file on; inventory's stock cache in database 1), and the six
// services as separate processes (analytics possibly as several instances
// sharing its consumer group). `make run` uses it with
// the fixed local ports and data in .switchyard/; the end-to-end tests use it
// with random ports and temporary data.
package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/kafkaserver"
	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/redisserver"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/transport"
	"github.com/switchyard/switchyard/shop/registry"
)

// ExtraInstancePortStep is how far apart the fixed ports of a service's
// extra instances are: instance k (2, 3, ...) of a service on port P
// serves gRPC on P+(k-1)*100 and metrics 1000 above that (analytics:
// 50156/51156, 50256/51256, ...), clear of the other services' ports.
const ExtraInstancePortStep = 100

// MaxInstances is the most processes of one service a stack runs: the
// eleventh's fixed gRPC port would be the first's metrics port.
const MaxInstances = 1000 / ExtraInstancePortStep

// Instance returns the process name of instance k (1-based) of a service:
// the service's own name for the first, "<name>-<k>" for the others.
func Instance(service string, k int) string {
	if k <= 1 {
		return service
	}
	return fmt.Sprintf("%s-%d", service, k)
}

// serviceOf returns the service an instance name belongs to.
func serviceOf(instance string) string {
	for _, svc := range registry.Services {
		if instance == svc.Name || strings.HasPrefix(instance, svc.Name+"-") {
			return svc.Name
		}
	}
	return instance
}

// Options configure a stack.
type Options struct {
	// Dir holds the PostgreSQL cluster (Dir/postgres) and the broker's log
	// (Dir/kafka); both are kept across runs.
	Dir string
	// BinDir holds the service binaries (see Build).
	BinDir string
	// PostgresPort and KafkaPort: 0 picks free ports.
	PostgresPort int
	KafkaPort    int
	// RandomPorts gives the services free ports instead of the documented ones.
	RandomPorts bool
	// Env is extra environment for every service (e.g. SWITCHYARD_SAGA_STEP_TIMEOUT).
	Env []string
	// Log receives every process's output, each line prefixed with its name.
	Log io.Writer
	// Durable keeps fsync on (make run); tests turn it off.
	Durable bool
	// Transport is "kafka" (default) or "redis": what the services use.
	Transport string
	// RedisPort: 0 picks a free port. The server keeps its data in
	// Dir/redis.
	RedisPort int
	// Instances gives the number of processes of a service (default 1);
	// the extra ones share the first one's database and consumer group
	// and are named by [Instance].
	Instances map[string]int
	// BrokerCommand, if set, runs the Kafka broker as a child process
	// instead of inside this one, so that it can be killed (the chaos
	// soak): the command and its arguments, to which the stack appends
	// -port N -dir D (and -sync when Durable); it must call [ServeBroker].
	BrokerCommand []string
	// NoCache runs inventory without its stock cache (no
	// SWITCHYARD_CACHE_URL).
	NoCache bool
}

// CacheDB is the Redis database of inventory's stock cache; the transport
// uses database 0.
const CacheDB = 1

// Stack is a running shop.
type Stack struct {
	opts     Options
	Postgres *pgcluster.Cluster
	broker   *kafkaserver.Server
	brokerP  *process // the broker's process, with BrokerCommand
	kport    int
	kafkaAdr string
	redis    *redisserver.Server

	mu          sync.Mutex
	procs       map[string]*process
	ports       map[string]int
	metricPorts map[string]int
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// Build compiles the services into binDir the way `make build` and
// the Dockerfile do: each module on its own (GOWORK=off), -trimpath.
func Build(ctx context.Context, repoRoot, binDir string) error {
	for _, s := range registry.Services {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(binDir, s.Name), "./cmd/"+s.Name)
		cmd.Dir = filepath.Join(repoRoot, "services", s.Name)
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", s.Name, err, out)
		}
	}
	return nil
}

// Start brings the stack up and returns once every service reports SERVING.
func Start(ctx context.Context, opts Options) (*Stack, error) {
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	// What is missing or busy is reported in one line before anything
	// starts, not after PostgreSQL and the broker came up.
	if _, err := pgcluster.FindBinaries(); err != nil {
		return nil, err
	}
	if _, err := redisserver.Find(); err != nil {
		return nil, err
	}
	for _, fixed := range []struct {
		what string
		port int
	}{{"PostgreSQL", opts.PostgresPort}, {"Kafka broker", opts.KafkaPort}, {"redis-server", opts.RedisPort}} {
		if fixed.port != 0 {
			if _, err := pickPort(fixed.port, fixed.what); err != nil {
				return nil, err
			}
		}
	}
	s := &Stack{opts: opts, procs: map[string]*process{}, ports: map[string]int{}, metricPorts: map[string]int{}}
	var instances []string
	for _, svc := range registry.Services {
		if n := opts.Instances[svc.Name]; n > MaxInstances {
			return nil, fmt.Errorf("%d instances of %s: at most %d (their fixed ports would collide)", n, svc.Name, MaxInstances)
		}
		for k := 1; k <= max(1, opts.Instances[svc.Name]); k++ {
			instances = append(instances, Instance(svc.Name, k))
		}
	}
	for _, name := range instances {
		// gRPC on the documented port, Prometheus /metrics 1000 above it.
		port := Port(name)
		metrics := port + 1000
		if opts.RandomPorts {
			var err error
			if port, metrics, err = s.freePorts(); err != nil {
				return nil, err
			}
		} else {
			for _, p := range []int{port, metrics} {
				if err := pgcluster.CheckPortFree(p); err != nil {
					return nil, fmt.Errorf("%s: %w (is another `make run` still running?)", name, err)
				}
			}
		}
		s.ports[name], s.metricPorts[name] = port, metrics
	}
	var err error
	s.Postgres, err = pgcluster.Start(ctx, pgcluster.Options{
		DataDir: filepath.Join(opts.Dir, "postgres"), Port: opts.PostgresPort, Durable: opts.Durable,
	})
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL: %w", err)
	}
	for _, svc := range registry.Services {
		if err := s.Postgres.CreateDatabase(ctx, svc.Name); err != nil {
			s.Close()
			return nil, err
		}
	}
	if _, err := startOnPort(opts.KafkaPort, "Kafka broker", func(port int) error {
		s.kport, s.kafkaAdr = port, fmt.Sprintf("127.0.0.1:%d", port)
		return s.StartBroker()
	}); err != nil {
		s.Close()
		return nil, err
	}
	// redisserver's and pickPort's errors name redis-server and the port.
	if _, err := startOnPort(opts.RedisPort, "redis-server", func(port int) (err error) {
		s.redis, err = redisserver.Start(redisserver.Options{Dir: filepath.Join(opts.Dir, "redis"), Port: port})
		return err
	}); err != nil {
		s.Close()
		return nil, err
	}
	for _, name := range instances {
		if err := s.StartService(name); err != nil {
			s.Close()
			return nil, err
		}
	}
	for _, name := range instances {
		err := s.WaitServing(ctx, name)
		// A free port picked earlier can be taken by any other socket
		// before the service binds it: with random ports, a service that
		// exits at start gets new ports and another try.
		for attempt := 1; err != nil && opts.RandomPorts && attempt < 3 && s.exited(name); attempt++ {
			if err = s.repickPorts(name); err == nil {
				if err = s.StartService(name); err == nil {
					err = s.WaitServing(ctx, name)
				}
			}
		}
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Port returns the fixed gRPC port of an instance (see
// [ExtraInstancePortStep]); 0 for an unknown name.
func Port(instance string) int {
	svc, ok := registry.Lookup(serviceOf(instance))
	if !ok {
		return 0
	}
	k := 1
	if instance != svc.Name {
		if _, err := fmt.Sscanf(strings.TrimPrefix(instance, svc.Name+"-"), "%d", &k); err != nil {
			return 0
		}
	}
	return svc.Port + (k-1)*ExtraInstancePortStep
}

// newBroker starts the in-process broker on port with its log in dir.
func newBroker(port int, dir string, sync bool) (*kafkaserver.Server, error) {
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir), kfake.ClusterID("switchyard-local")}
	if sync {
		// Acknowledge a produce only once it is on disk: a relay confirms
		// its position after the acknowledgement, so a crash of the machine
		// must not lose what was acknowledged.
		opts = append(opts, kfake.SyncWrites())
	}
	c, err := kafkaserver.Start(opts...)
	if err != nil {
		return nil, fmt.Errorf("start the Kafka broker on port %d: %w", port, err)
	}
	return c, nil
}

// ServeBroker runs a broker on port with its log in dir until ctx ends: the
// body of a [Options.BrokerCommand].
func ServeBroker(ctx context.Context, port int, dir string, sync bool) error {
	c, err := newBroker(port, dir, sync)
	if err != nil {
		return err
	}
	<-ctx.Done()
	c.Close()
	return nil
}

// StartBroker starts the broker, or starts it again after KillBroker, on
// the same port with the same data.
func (s *Stack) StartBroker() error {
	dir := filepath.Join(s.opts.Dir, "kafka")
	if len(s.opts.BrokerCommand) == 0 {
		var err error
		s.broker, err = newBroker(s.kport, dir, s.opts.Durable)
		return err
	}
	args := append(s.opts.BrokerCommand[1:len(s.opts.BrokerCommand):len(s.opts.BrokerCommand)], "-port", strconv.Itoa(s.kport), "-dir", dir)
	if s.opts.Durable {
		args = append(args, "-sync")
	}
	cmd := exec.Command(s.opts.BrokerCommand[0], args...)
	p, err := s.spawn("broker", cmd)
	if err != nil {
		return fmt.Errorf("start the broker: %w", err)
	}
	s.mu.Lock()
	s.brokerP = p
	s.mu.Unlock()
	// Ready once it accepts connections (it reloads its log first).
	deadline := time.Now().Add(time.Minute)
	for {
		if c, err := net.DialTimeout("tcp", s.kafkaAdr, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("the broker exited at start (%v); see its log lines above", p.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the broker did not listen on %s within a minute", s.kafkaAdr)
		}
	}
}

// KillBroker sends SIGKILL to a broker started with BrokerCommand and waits
// for it to die; its data stays for StartBroker.
func (s *Stack) KillBroker() error {
	s.mu.Lock()
	p := s.brokerP
	s.mu.Unlock()
	if p == nil {
		return errors.New("the broker runs in this process: set Options.BrokerCommand to kill it")
	}
	p.stop(syscall.SIGKILL)
	return nil
}

// RestartPostgres restarts PostgreSQL the way a crash does (see
// pgcluster.Cluster.RestartImmediate).
func (s *Stack) RestartPostgres(ctx context.Context) error { return s.Postgres.RestartImmediate(ctx) }

// Pause stops a service's process (SIGSTOP) without killing it: it holds
// its connections and group membership but answers nothing.
func (s *Stack) Pause(name string) { s.send(name, syscall.SIGSTOP) }

// Resume continues a paused service (SIGCONT).
func (s *Stack) Resume(name string) { s.send(name, syscall.SIGCONT) }

func (s *Stack) send(name string, sig syscall.Signal) {
	if p := s.proc(name); p != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// proc returns a service's process (nil if never started).
func (s *Stack) proc(name string) *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[name]
}

// exited reports whether a service's process has ended.
func (s *Stack) exited(name string) bool {
	select {
	case <-s.proc(name).done:
		return true
	default:
		return false
	}
}

// repickPorts gives a service new free gRPC and metrics ports.
func (s *Stack) repickPorts(name string) error {
	port, metrics, err := s.freePorts()
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ports[name], s.metricPorts[name] = port, metrics
	s.mu.Unlock()
	return nil
}

// freePorts returns two free ports that no instance of the stack has been
// given: the system hands a port out again once the listener that found
// it free is closed, and of two instances given the same port, one could
// not bind it while the other answered on it.
func (s *Stack) freePorts() (grpcPort, metricsPort int, err error) {
	s.mu.Lock()
	taken := map[int]bool{}
	for _, ports := range []map[string]int{s.ports, s.metricPorts} {
		for _, p := range ports {
			taken[p] = true
		}
	}
	s.mu.Unlock()
	var picked []int
	for len(picked) < 2 {
		p, err := pgcluster.FreePort()
		if err != nil {
			return 0, 0, err
		}
		if !taken[p] {
			taken[p] = true
			picked = append(picked, p)
		}
	}
	return picked[0], picked[1], nil
}

// startOnPort starts a server with start on port want or, when want is 0,
// on a free port, and returns the port. A port picked free can be taken by
// another socket (another test's stack) before the server binds it: then
// it picks another and starts again, up to three times.
func startOnPort(want int, what string, start func(port int) error) (int, error) {
	for attempt := 1; ; attempt++ {
		port, err := pickPort(want, what)
		if err != nil {
			return 0, err
		}
		err = start(port)
		if err == nil || want != 0 || attempt == 3 || !addrInUse(err) {
			return port, err
		}
	}
}

// addrInUse reports whether err says a port was taken, from the kernel or
// in a server's own words (redis-server logs "Address already in use").
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(strings.ToLower(err.Error()), "address already in use")
}

// pickPort returns want if it is free, or a free port when want is 0.
func pickPort(want int, what string) (int, error) {
	if want == 0 {
		return pgcluster.FreePort()
	}
	if err := pgcluster.CheckPortFree(want); err != nil {
		return 0, fmt.Errorf("%s: %w (is another `make run` still running?)", what, err)
	}
	return want, nil
}

// KafkaAddr is the broker's bootstrap address.
func (s *Stack) KafkaAddr() string { return s.kafkaAdr }

// RedisURL is the redis-server's URL for database db (0: the transport).
func (s *Stack) RedisURL(db int) string { return s.redis.URL(db) }

// CacheURL is inventory's SWITCHYARD_CACHE_URL, or "" with NoCache.
func (s *Stack) CacheURL() string {
	if s.opts.NoCache {
		return ""
	}
	return s.RedisURL(CacheDB)
}

// KillRedis kills the redis-server (SIGKILL); StartRedis brings it back
// with its data.
func (s *Stack) KillRedis() { s.redis.Stop() }

// StartRedis starts the redis-server again after KillRedis.
func (s *Stack) StartRedis() error { return s.redis.Start() }

// OpenTransport returns a client of the transport the services use (for
// example to read consumer groups' backlog); close it when done.
func (s *Stack) OpenTransport() (transport.Transport, error) {
	if s.Transport() == "redis" {
		return redisstream.New(redisstream.Config{URL: s.RedisURL(0)})
	}
	return broker.New(broker.Config{Brokers: s.kafkaAdr})
}

// Transport returns "kafka" or "redis": what the services use.
func (s *Stack) Transport() string {
	if s.opts.Transport == "" {
		return "kafka"
	}
	return s.opts.Transport
}

// Addr is a service's (or an instance's) gRPC address.
func (s *Stack) Addr(service string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr(service)
}

func (s *Stack) addr(service string) string { return fmt.Sprintf("127.0.0.1:%d", s.ports[service]) }

// MetricsURL is a service's (or an instance's) Prometheus endpoint.
func (s *Stack) MetricsURL(service string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("http://127.0.0.1:%d/metrics", s.metricPorts[service])
}

// DatabaseURL is a service's database.
func (s *Stack) DatabaseURL(service string) string { return s.Postgres.URL(service) }

// StartService starts (or restarts) one service process: a service's
// name, or an instance name (see [Instance]). An instance not started
// before gets free ports.
func (s *Stack) StartService(name string) error {
	s.mu.Lock()
	_, known := s.ports[name]
	s.mu.Unlock()
	if !known {
		if err := s.repickPorts(name); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.procs[name]; p != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s is already running", name)
		}
	}
	svc := serviceOf(name)
	cmd := exec.Command(filepath.Join(s.opts.BinDir, svc))
	cmd.Env = append(os.Environ(),
		"SWITCHYARD_GRPC_ADDR="+s.addr(name),
		fmt.Sprintf("SWITCHYARD_METRICS_ADDR=127.0.0.1:%d", s.metricPorts[name]),
		"SWITCHYARD_DATABASE_URL="+s.DatabaseURL(svc),
		"SWITCHYARD_KAFKA_BROKERS="+s.kafkaAdr,
		"SWITCHYARD_TRANSPORT="+s.Transport(),
		"SWITCHYARD_REDIS_URL="+s.RedisURL(0),
		"SWITCHYARD_LOG_FORMAT=text",
	)
	if svc == "inventory" && s.CacheURL() != "" {
		cmd.Env = append(cmd.Env, "SWITCHYARD_CACHE_URL="+s.CacheURL())
	}
	cmd.Env = append(cmd.Env, s.opts.Env...)
	p, err := s.spawn(name, cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w (did `make run` build it into %s?)", name, err, s.opts.BinDir)
	}
	s.procs[name] = p
	return nil
}

// spawn starts cmd as a child in its own process group (Ctrl-C in a
// terminal reaches only the runner, which then stops children in order)
// that dies with the runner, its output prefixed with name.
func (s *Stack) spawn(name string, cmd *exec.Cmd) (*process, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		prefix(s.opts.Log, name, out)
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop signals the process and waits for it to end, killing it after 30 s.
func (p *process) stop(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

var logMu sync.Mutex

// maxLogLine is how much of one line of a process's output is passed on;
// the rest of a longer line is cut, and the line says so.
const maxLogLine = 64 * 1024

// prefix copies r to w line by line, each line prefixed with name, until r
// ends. It reads everything, however long a line: a process whose output
// nobody reads blocks on its next write once the pipe is full.
func prefix(w io.Writer, name string, r io.Reader) {
	br := bufio.NewReaderSize(r, maxLogLine)
	tag := fmt.Sprintf("%-13s| ", name)
	for {
		part, more, err := br.ReadLine()
		if err != nil {
			return // the end of the output (or of the pipe)
		}
		text := tag + string(part)
		cut := 0
		for more && err == nil {
			part, more, err = br.ReadLine()
			cut += len(part)
		}
		if cut > 0 {
			text += fmt.Sprintf(" ... (line cut: %d more bytes)", cut)
		}
		logMu.Lock()
		fmt.Fprintln(w, text)
		logMu.Unlock()
	}
}

// Kill sends SIGKILL to a service and waits for it to die.
func (s *Stack) Kill(name string) { s.signal(name, syscall.SIGKILL) }

// Stop sends SIGTERM to a service and waits for its graceful exit.
func (s *Stack) Stop(name string) { s.signal(name, syscall.SIGTERM) }

func (s *Stack) signal(name string, sig syscall.Signal) {
	if p := s.proc(name); p != nil {
		p.stop(sig)
	}
}

// ExitCode returns a stopped service's exit code (-1 if still running or
// killed by a signal).
func (s *Stack) ExitCode(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.procs[name]
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// WaitServing waits until a service's health check reports SERVING for
// its own gRPC service (registry.Service.API), so that a port some other
// server took first is never mistaken for the service.
func (s *Stack) WaitServing(ctx context.Context, name string) error {
	svc, ok := registry.Lookup(serviceOf(name)) // an instance's service
	if !ok {
		return fmt.Errorf("no service %q in the shop", name)
	}
	conn, err := grpc.NewClient(s.Addr(name), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := client.Check(cctx, &healthpb.HealthCheckRequest{Service: svc.API})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		s.mu.Lock()
		p := s.procs[name]
		s.mu.Unlock()
		select {
		case <-p.done:
			return fmt.Errorf("%s exited with code %d before it was ready; see its log lines above", name, p.cmd.ProcessState.ExitCode())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) && err != nil {
			return fmt.Errorf("%s did not report SERVING within 2 minutes: %w", name, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not report SERVING within 2 minutes (last: %v)", name, resp.GetStatus())
		}
	}
}

// Close stops the services (SIGTERM to all of them at once, SIGKILL to
// any still running 30 s later), then the broker, redis-server and
// PostgreSQL.
func (s *Stack) Close() error {
	var errs []error
	s.mu.Lock()
	names := make([]string, 0, len(s.procs))
	for n := range s.procs {
		names = append(names, n)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() { defer wg.Done(); s.Stop(n) }()
	}
	wg.Wait()
	if s.broker != nil {
		s.broker.Close()
	}
	if s.brokerP != nil {
		s.brokerP.stop(syscall.SIGTERM)
	}
	if s.redis != nil {
		s.redis.Shutdown()
	}
	if s.Postgres != nil {
		s.Postgres.Stop()
	}
	return errors.Join(errs...)
}

// GrpcurlLines returns ready-to-paste grpcurl commands for this stack.
func (s *Stack) GrpcurlLines() string {
	var b strings.Builder
	for _, svc := range registry.Services {
		for k := 1; k <= max(1, s.opts.Instances[svc.Name]); k++ {
			name := Instance(svc.Name, k)
			fmt.Fprintf(&b, "  grpcurl -plaintext %s describe   # %s\n", s.Addr(name), name)
		}
	}
	return b.String()
}
