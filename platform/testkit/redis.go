package testkit

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/pgcluster"
	"github.com/switchyard/switchyard/platform/redisserver"
)

// RedisServer is a throw-away redis-server for one test: a random free port
// on 127.0.0.1, its own temporary directory and the durable settings
// Switchyard requires (see package redisserver). It can be killed (Stop,
// SIGKILL) and started again on the same port and directory, so a test can
// check what survives a crash.
type RedisServer struct {
	*redisserver.Server
}

// Redis starts a redis-server for this test; it is killed when the test
// ends. settings are extra "name", "value" pairs of server configuration
// that override the defaults (for example "maxmemory-policy",
// "allkeys-lru").
func Redis(t testing.TB, settings ...string) *RedisServer {
	t.Helper()
	SkipShort(t, "redis-server")
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatalf("testkit: free port: %v", err)
	}
	s, err := redisserver.Start(redisserver.Options{Dir: t.TempDir(), Port: port, Settings: settings})
	if err != nil {
		t.Fatalf("testkit: %v", err)
	}
	t.Cleanup(s.Stop)
	return &RedisServer{s}
}

// URL returns the server's URL for database 0.
func (s *RedisServer) URL() string { return s.Server.URL(0) }

// Client returns a go-redis client for the server, closed when the test ends.
func (s *RedisServer) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}
