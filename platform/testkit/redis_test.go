package testkit

import (
	"context"
	"testing"
)

// TestRedisSurvivesKill checks that a write acknowledged by the test kit's
// redis-server survives a SIGKILL and a restart on the same address.
func TestRedisSurvivesKill(t *testing.T) {
	t.Parallel()
	s := Redis(t)
	c := s.Client(t)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"appendonly", "appendfsync", "maxmemory-policy", "save"} {
		got, err := c.ConfigGet(ctx, name).Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s = %q", name, got[name])
	}
	s.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Stop")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("after kill and restart: GET k = %q, %v; want \"v\"", got, err)
	}
}

// TestRedisSettings checks that extra settings override the defaults.
func TestRedisSettings(t *testing.T) {
	t.Parallel()
	s := Redis(t, "maxmemory-policy", "allkeys-lru")
	got, err := s.Client(t).ConfigGet(context.Background(), "maxmemory-policy").Result()
	if err != nil {
		t.Fatal(err)
	}
	if got["maxmemory-policy"] != "allkeys-lru" {
		t.Fatalf("maxmemory-policy = %q, want allkeys-lru", got["maxmemory-policy"])
	}
}
