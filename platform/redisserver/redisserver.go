// Package redisserver runs a local redis-server from the installed binary,
// with the settings Switchyard's Redis transport requires: an append-only
// file fsynced on every write (an acknowledged entry survives a kill -9), no
// eviction, no RDB snapshots. The test kit uses it for throw-away servers,
// the local stack (`make run`) for one whose data is kept across runs.
package redisserver

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
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotFound is returned when no redis-server binary can be found.
var ErrNotFound = errors.New("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)")

// Options configure a server.
type Options struct {
	// Dir holds the append-only file and the log (created if missing).
	Dir string
	// Port on 127.0.0.1.
	Port int
	// Settings are extra "name", "value" pairs of server configuration
	// that override the defaults (for example "maxmemory-policy",
	// "allkeys-lru").
	Settings []string
}

// Server is a redis-server child process. It can be killed and started
// again on the same port and directory.
type Server struct {
	bin      string
	port     int
	dir      string
	settings []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Find returns the path of the installed redis-server.
func Find() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	// Debian puts it in /usr/bin, but PATH may be trimmed; Homebrew elsewhere.
	for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/opt/homebrew/bin/redis-server"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", ErrNotFound
}

// Start starts a server and returns once it answers PING.
func Start(opts Options) (*Server, error) {
	if len(opts.Settings)%2 != 0 {
		return nil, fmt.Errorf("redisserver: settings come in name, value pairs: %q", opts.Settings)
	}
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("redisserver: %w", err)
	}
	s := &Server{bin: bin, port: opts.Port, dir: opts.Dir, settings: opts.Settings}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// URL returns the server's URL for database db.
func (s *Server) URL(db int) string { return fmt.Sprintf("redis://%s/%d", s.Addr(), db) }

// Dir returns the server's data directory (append-only files, log).
func (s *Server) Dir() string { return s.dir }

// Start starts the server if it is not running, on the same port and with
// the same data as before, and returns once it answers PING (after
// replaying its append-only file).
func (s *Server) Start() error {
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
		// No server outlives the process that started it, however it ends;
		// its own process group keeps a terminal's Ctrl-C away from it.
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
func (s *Server) Stop() { s.signal(syscall.SIGKILL) }

// Shutdown stops the server gracefully (SIGTERM: it finishes writing its
// append-only file) and waits for it to exit.
func (s *Server) Shutdown() { s.signal(syscall.SIGTERM) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd, s.done = nil, nil
}

// logTail returns the end of the server log at path, for error messages.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
