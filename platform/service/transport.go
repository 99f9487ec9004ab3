package service

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/transport"
)

// openTransport returns the transport SWITCHYARD_TRANSPORT names.
func openTransport(cfg Config, logger *slog.Logger) (transport.Transport, error) {
	switch cfg.Transport {
	case "kafka":
		return broker.New(broker.Config{Brokers: cfg.Brokers, Partitions: cfg.Partitions, Retention: cfg.TopicRetention})
	case "redis":
		// go-redis logs connection trouble through a process-wide logger;
		// route it to the service's structured log.
		redis.SetLogger(redisLog{logger})
		return redisstream.New(redisstream.Config{URL: cfg.RedisURL, Partitions: cfg.Partitions, Retention: cfg.TopicRetention, Logger: logger})
	default:
		return nil, fmt.Errorf("SWITCHYARD_TRANSPORT: want kafka or redis, not %q", cfg.Transport)
	}
}

// redisLog adapts go-redis's internal logging to slog.
type redisLog struct{ logger *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.logger.WarnContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}
