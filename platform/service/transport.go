package service

import (
	"fmt"
	"log/slog"

	"github.com/switchyard/switchyard/platform/broker"
	"github.com/switchyard/switchyard/platform/transport"
)

// openTransport returns the transport SWITCHYARD_TRANSPORT names.
func openTransport(cfg Config, _ *slog.Logger) (transport.Transport, error) {
	switch cfg.Transport {
	case "kafka":
		return broker.New(broker.Config{Brokers: cfg.Brokers, Partitions: cfg.Partitions})
	default:
		return nil, fmt.Errorf("SWITCHYARD_TRANSPORT=%s is not available in this build", cfg.Transport)
	}
}
