package service

import (
	"fmt"
	"log/slog"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/redisstream"
	"github.com/switchyard/switchyard/platform/transport"
)

// openTransport returns the transport SWITCHYARD_TRANSPORT names.
func openTransport(cfg Config, logger *slog.Logger) (transport.Transport, error) {
	switch cfg.Transport {
	case "kafka":
		return broker.New(broker.Config{Brokers: cfg.Brokers, Partitions: cfg.Partitions})
	case "redis":
		return redisstream.New(redisstream.Config{URL: cfg.RedisURL, Partitions: cfg.Partitions, Logger: logger})
	default:
		return nil, fmt.Errorf("SWITCHYARD_TRANSPORT: want kafka or redis, not %q", cfg.Transport)
	}
}
