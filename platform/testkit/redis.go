package testkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/pgcluster"
)

// ErrRedisNotFound is returned when no redis-server binary can be found.
var ErrRedisNotFound = errors.New("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)")

// RedisServer is a throw-away redis-server for one test: a random free port
// on 127.0.0.1, its own temporary directory and the durable settings
// Switchyard requires (append-only file fsynced on every write, no
// eviction, no RDB snapshots). It can be killed (SIGKILL) and started again
// on the same port and directory, so a test can check what survives a crash.
type RedisServer struct {
	bin      string
	port     int
	dir      string
	settings []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// FindRedisServer returns the path of the installed redis-server.
func FindRedisServer() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	// Debian puts it in /usr/bin, but PATH may be trimmed; Homebrew elsewhere.
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", ErrRedisNotFound
}

// Redis starts a redis-server for this test; it is killed when the test
// ends. settings are extra "name", "value" pairs of server configuration
// that override the defaults (for example "maxmemory-policy",
// "allkeys-lru").
func Redis(t testing.TB, settings ...string) *RedisServer {
	t.Helper()
	if len(settings)%2 != 0 {
		t.Fatalf("testkit: Redis settings come in name, value pairs: %q", settings)
	}
	bin, err := FindRedisServer()
	if err != nil {
		t.Fatalf("testkit: %v", err)
	}
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatalf("testkit: free port: %v", err)
	}
	s := &RedisServer{bin: bin, port: port, dir: t.TempDir(), settings: settings}
	if err := s.Start(); err != nil {
		t.Fatalf("testkit: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Addr returns "127.0.0.1:port".
func (s *RedisServer) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// URL returns the server's URL for database 0.
func (s *RedisServer) URL() string { return "redis://" + s.Addr() + "/0" }

// Dir returns the server's data directory (append-only files, log).
func (s *RedisServer) Dir() string { return s.dir }

// Start starts the server if it is not running, on the same port and with
// the same data as before, and returns once it answers PING (after
// replaying its append-only file).
func (s *RedisServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--logfile", "redis.log",
		"--daemonize", "no",
		"--appendonly", "yes",
		"--appendfsync", "always",
		"--maxmemory-policy", "noeviction",
		"--save", "",
	}
	for i := 0; i+1 < len(s.settings); i += 2 {
		args = append(args, "--"+s.settings[i], s.settings[i+1])
	}
	logPath := filepath.Join(s.dir, "redis.log")
	var lastErr error
	// After a SIGKILL the port can stay busy for a moment; retry a few times.
	for attempt := 0; attempt < 20; attempt++ {
		cmd := exec.Command(s.bin, args...)
		cmd.Dir = s.dir
		// No server outlives the test process, however it ends.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", s.bin, err)
		}
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		if lastErr = waitRedis(s.Addr(), done); lastErr == nil {
			s.cmd, s.done = cmd, done
			return nil
		}
		_ = cmd.Process.Kill()
		<-done
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("redis-server on %s: %w; see %s:\n%s", s.Addr(), lastErr, logPath, logTail(logPath))
}

// waitRedis waits until the server at addr answers PING, or reports why not.
func waitRedis(addr string, exited <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("exited during start-up")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within 30s: %w", err)
		}
	}
}

// Stop kills the server with SIGKILL (no shutdown, no final fsync) and
// waits for it to exit. Start brings it back.
func (s *RedisServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.cmd, s.done = nil, nil
}

// Client returns a go-redis client for the server, closed when the test ends.
func (s *RedisServer) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// logTail returns the end of the server log at path, for error messages.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
