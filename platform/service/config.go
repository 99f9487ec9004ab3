package service

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard/switchyard/platform/outbox"
)

// Config is the environment-driven configuration common to all services.
type Config struct {
	GRPCAddr       string        // SWITCHYARD_GRPC_ADDR, default ":<port>"
	MetricsAddr    string        // SWITCHYARD_METRICS_ADDR, default ":<port+1000>" (Prometheus /metrics)
	DatabaseURL    string        // SWITCHYARD_DATABASE_URL, required
	Transport      string        // SWITCHYARD_TRANSPORT: kafka (default) or redis
	Brokers        string        // SWITCHYARD_KAFKA_BROKERS, default 127.0.0.1:19092
	RedisURL       string        // SWITCHYARD_REDIS_URL, default redis://127.0.0.1:16379/0
	TopicPrefix    string        // SWITCHYARD_TOPIC_PREFIX, default "switchyard."
	OutboxMode     outbox.Mode   // SWITCHYARD_OUTBOX_MODE, cdc (default) or poll
	Partitions     int           // SWITCHYARD_TOPIC_PARTITIONS, default 6
	TopicRetention time.Duration // SWITCHYARD_TOPIC_RETENTION, default 0: keep events for ever
	// IdempotencyRetention is how long idempotency keys are kept
	// (SWITCHYARD_IDEMPOTENCY_RETENTION, default 24h); a retry after it runs
	// the request again.
	IdempotencyRetention time.Duration
	// WatchMaxStreams bounds the watch streams (WatchOrder, ...) a process
	// serves at once (SWITCHYARD_WATCH_MAX_STREAMS, default 1000); past it
	// they fail with RESOURCE_EXHAUSTED.
	WatchMaxStreams int
	// WatchDBConns is the size of the watch streams' own connection pool
	// (SWITCHYARD_WATCH_DB_CONNS, default 4), apart from the pool consumers
	// and other RPCs use, plus one LISTEN connection per hub.
	WatchDBConns int
	// WatchRecheck is how often a watch stream reads its state again
	// without being told of a change (SWITCHYARD_WATCH_RECHECK, default
	// 5s): the safety net for a change announcement lost to a crash or a
	// failed send (see watch.Hub.Changed).
	WatchRecheck time.Duration
	// DatabaseMaxConns is the size of the service's PostgreSQL pool
	// (SWITCHYARD_DATABASE_MAX_CONNS, default 16). 0 means the URL's
	// pool_max_conns, used when the variable is unset and the URL has one.
	// The outbox relay opens up to 2 connections outside the pool.
	DatabaseMaxConns int32
	ShutdownTimeout  time.Duration // SWITCHYARD_SHUTDOWN_TIMEOUT, default 20s
	LogLevel         slog.Level    // SWITCHYARD_LOG_LEVEL, default info
	LogFormat        string        // SWITCHYARD_LOG_FORMAT: json (default) or text
	// CacheURL is the Redis a service may cache reads in
	// (SWITCHYARD_CACHE_URL, default none: no cache). See package cache.
	CacheURL string
}

// LoadConfig reads the configuration of a service whose default port is
// port through getenv (os.Getenv in production).
func LoadConfig(port int, getenv func(string) string) (Config, error) {
	get := func(k, def string) string {
		if v := strings.TrimSpace(getenv(k)); v != "" {
			return v
		}
		return def
	}
	cfg := Config{
		GRPCAddr:    get("SWITCHYARD_GRPC_ADDR", ":"+strconv.Itoa(port)),
		MetricsAddr: get("SWITCHYARD_METRICS_ADDR", ":"+strconv.Itoa(port+1000)),
		DatabaseURL: get("SWITCHYARD_DATABASE_URL", ""),
		Transport:   get("SWITCHYARD_TRANSPORT", "kafka"),
		Brokers:     get("SWITCHYARD_KAFKA_BROKERS", "127.0.0.1:19092"),
		RedisURL:    get("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:16379/0"),
		TopicPrefix: get("SWITCHYARD_TOPIC_PREFIX", "switchyard."),
		LogFormat:   get("SWITCHYARD_LOG_FORMAT", "json"),
		CacheURL:    get("SWITCHYARD_CACHE_URL", ""),
	}
	var errs []error
	if cfg.DatabaseURL == "" {
		errs = append(errs, errors.New("SWITCHYARD_DATABASE_URL is required"))
	}
	var err error
	if v := get("SWITCHYARD_DATABASE_MAX_CONNS", ""); v != "" {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("SWITCHYARD_DATABASE_MAX_CONNS: want a positive integer"))
		}
		cfg.DatabaseMaxConns = int32(n)
	} else if !strings.Contains(cfg.DatabaseURL, "pool_max_conns") {
		// pgxpool's default (max(4, CPUs)) starves a service whose consumer
		// applies several partitions at once while serving RPCs.
		cfg.DatabaseMaxConns = 16
	}
	if cfg.OutboxMode, err = outbox.ParseMode(get("SWITCHYARD_OUTBOX_MODE", "cdc")); err != nil {
		errs = append(errs, fmt.Errorf("SWITCHYARD_OUTBOX_MODE: %w", err))
	}
	if cfg.Partitions, err = strconv.Atoi(get("SWITCHYARD_TOPIC_PARTITIONS", "6")); err != nil || cfg.Partitions < 1 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_TOPIC_PARTITIONS: want a positive integer"))
	}
	if cfg.TopicRetention, err = time.ParseDuration(get("SWITCHYARD_TOPIC_RETENTION", "0s")); err != nil || cfg.TopicRetention < 0 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_TOPIC_RETENTION: want a duration such as 168h, or 0 for unlimited"))
	}
	if cfg.IdempotencyRetention, err = time.ParseDuration(get("SWITCHYARD_IDEMPOTENCY_RETENTION", "24h")); err != nil || cfg.IdempotencyRetention <= 0 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_IDEMPOTENCY_RETENTION: want a positive duration such as 24h"))
	}
	if cfg.WatchMaxStreams, err = strconv.Atoi(get("SWITCHYARD_WATCH_MAX_STREAMS", "1000")); err != nil || cfg.WatchMaxStreams < 1 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_WATCH_MAX_STREAMS: want a positive integer"))
	}
	if cfg.WatchDBConns, err = strconv.Atoi(get("SWITCHYARD_WATCH_DB_CONNS", "4")); err != nil || cfg.WatchDBConns < 1 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_WATCH_DB_CONNS: want a positive integer"))
	}
	if cfg.WatchRecheck, err = time.ParseDuration(get("SWITCHYARD_WATCH_RECHECK", "5s")); err != nil || cfg.WatchRecheck <= 0 {
		errs = append(errs, fmt.Errorf("SWITCHYARD_WATCH_RECHECK: want a positive duration such as 5s"))
	}
	if cfg.ShutdownTimeout, err = time.ParseDuration(get("SWITCHYARD_SHUTDOWN_TIMEOUT", "20s")); err != nil {
		errs = append(errs, fmt.Errorf("SWITCHYARD_SHUTDOWN_TIMEOUT: %w", err))
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(get("SWITCHYARD_LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("SWITCHYARD_LOG_LEVEL: %w", err))
	}
	if cfg.Transport != "kafka" && cfg.Transport != "redis" {
		errs = append(errs, fmt.Errorf("SWITCHYARD_TRANSPORT: want kafka or redis, not %q", cfg.Transport))
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("SWITCHYARD_LOG_FORMAT: want json or text"))
	}
	return cfg, errors.Join(errs...)
}
