package redisstream

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Backlog sums, over every partition stream of topics, the entries group
// has not yet been delivered plus those delivered but not acknowledged. A
// stream the group has not read yet counts all its entries; a missing
// stream counts 0.
func (t *Transport) Backlog(ctx context.Context, group string, topics ...string) (int64, error) {
	var backlog int64
	for _, topic := range topics {
		for p := 0; p < t.cfg.Partitions; p++ {
			stream := streamKey(topic, int32(p))
			n, err := t.streamBacklog(ctx, stream, group)
			if err != nil {
				return 0, err
			}
			backlog += n
		}
	}
	return backlog, nil
}

func (t *Transport) streamBacklog(ctx context.Context, stream, group string) (int64, error) {
	groups, err := t.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if errors.Is(err, redis.Nil) || strings.Contains(err.Error(), "no such key") {
			return 0, nil
		}
		return 0, fmt.Errorf("XINFO GROUPS %s: %w", stream, err)
	}
	for _, g := range groups {
		if g.Name != group {
			continue
		}
		lag := g.Lag
		if lag < 0 {
			// Redis cannot tell (entries were deleted): count what lies
			// after the group's last delivered entry.
			after, err := t.rdb.XRange(ctx, stream, "("+g.LastDeliveredID, "+").Result()
			if err != nil {
				return 0, fmt.Errorf("XRANGE %s: %w", stream, err)
			}
			lag = int64(len(after))
		}
		return lag + g.Pending, nil
	}
	n, err := t.rdb.XLen(ctx, stream).Result()
	if err != nil {
		return 0, fmt.Errorf("XLEN %s: %w", stream, err)
	}
	return n, nil
}
