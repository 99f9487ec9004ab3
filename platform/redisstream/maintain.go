package redisstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// Stats describes the streams this transport has used, as of its last
// maintenance pass, plus counters since it was created.
type Stats struct {
	// Groups has one row per consumer group and partition stream.
	Groups []GroupStats
	// StalledGroups counts the rows of Groups that are stalled.
	StalledGroups int
	// TrimmedEntries counts the entries trimming removed.
	TrimmedEntries int64
	// DroppedPending counts pending entries whose message no longer existed
	// when a consumer read them: acknowledged and skipped, never looped.
	DroppedPending int64
}

// GroupStats is one consumer group's state on one partition stream.
type GroupStats struct {
	Stream string // the partition stream, "<topic>:<partition>"
	Group  string // the consumer group
	// Lag is how many entries were not yet delivered to the group (-1 when
	// Redis cannot tell).
	Lag int64
	// Pending is how many entries were delivered but not acknowledged.
	Pending int64
	// Stalled is set when the group has had work (lag or pending entries)
	// without advancing for Config.StallAfter.
	Stalled bool
}

// progress remembers where a group was on a stream, and since when.
type progress struct {
	mark     string
	since    time.Time
	reported bool
}

// Stats returns the transport's statistics.
func (t *Transport) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Groups = slices.Clone(s.Groups)
	return s
}

func (t *Transport) countDropped() {
	t.mu.Lock()
	t.stats.DroppedPending++
	t.mu.Unlock()
}

func (t *Transport) maintainLoop() {
	defer close(t.done)
	ticker := time.NewTicker(t.cfg.MaintainInterval)
	defer ticker.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-ticker.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), t.cfg.MaintainInterval)
		if err := t.Maintain(ctx); err != nil {
			t.log.Warn("redis stream maintenance failed", "err", err)
		}
		cancel()
	}
}

// Maintain runs one maintenance pass now (it also runs every
// Config.MaintainInterval): it trims every partition stream of the topics
// this transport has used and updates [Transport.Stats].
func (t *Transport) Maintain(ctx context.Context) error {
	t.mu.Lock()
	topics := make([]string, 0, len(t.topics))
	for topic := range t.topics {
		topics = append(topics, topic)
	}
	t.mu.Unlock()
	slices.Sort(topics)
	var rows []GroupStats
	var errs []error
	for _, topic := range topics {
		for p := int32(0); p < int32(t.cfg.Partitions); p++ {
			r, err := t.maintainStream(ctx, streamKey(topic, p))
			rows = append(rows, r...)
			errs = append(errs, err)
		}
	}
	stalled := 0
	for _, r := range rows {
		if r.Stalled {
			stalled++
		}
	}
	t.mu.Lock()
	t.stats.Groups, t.stats.StalledGroups = rows, stalled
	t.mu.Unlock()
	return errors.Join(errs...)
}

// maintainStream checks each group of stream for progress and trims the
// stream to what the groups and the retention still need.
func (t *Transport) maintainStream(ctx context.Context, stream string) ([]GroupStats, error) {
	groups, err := t.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if isNoSuchKey(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("XINFO GROUPS %s: %w", stream, err)
	}
	// needed is the oldest entry some group still needs: its first pending
	// entry, or else the one after its last delivered (kept: MINID is
	// inclusive, and one entry too many is harmless).
	needed := ""
	rows := make([]GroupStats, 0, len(groups))
	for i, g := range groups {
		need := g.LastDeliveredID
		if g.Pending > 0 {
			summary, err := t.rdb.XPending(ctx, stream, g.Name).Result()
			if err != nil {
				return rows, fmt.Errorf("XPENDING %s %s: %w", stream, g.Name, err)
			}
			// The group may have acknowledged everything since XINFO
			// GROUPS: then there is no lowest pending entry, and its
			// empty id must not count as the oldest of all.
			if summary.Count > 0 && compareIDs(summary.Lower, need) < 0 {
				need = summary.Lower
			}
		}
		if i == 0 || compareIDs(need, needed) < 0 {
			needed = need
		}
		rows = append(rows, GroupStats{
			Stream: stream, Group: g.Name, Lag: g.Lag, Pending: g.Pending,
			Stalled: t.stalled(stream, g, need),
		})
	}
	if t.cfg.Retention <= 0 {
		return rows, nil
	}
	minID := fmt.Sprintf("%d-0", time.Now().Add(-t.cfg.Retention).UnixMilli())
	if len(groups) > 0 && compareIDs(needed, minID) < 0 {
		minID = needed
	}
	n, err := t.rdb.XTrimMinID(ctx, stream, minID).Result()
	if err != nil {
		return rows, fmt.Errorf("XTRIM %s MINID %s: %w", stream, minID, err)
	}
	if n > 0 {
		t.mu.Lock()
		t.stats.TrimmedEntries += n
		t.mu.Unlock()
	}
	return rows, nil
}

// stalled reports whether group g has had work on stream without moving
// (its first needed entry and its last delivered one unchanged) for
// Config.StallAfter, and logs it once per stall.
func (t *Transport) stalled(stream string, g redis.XInfoGroup, need string) bool {
	key := stream + "\x00" + g.Name
	mark := need + "/" + g.LastDeliveredID
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.stall[key]
	if p == nil || p.mark != mark {
		t.stall[key] = &progress{mark: mark, since: now}
		return false
	}
	if g.Lag == 0 && g.Pending == 0 {
		p.since, p.reported = now, false // idle, not stalled
		return false
	}
	if now.Sub(p.since) < t.cfg.StallAfter {
		return false
	}
	if !p.reported {
		p.reported = true
		t.log.Warn("consumer group is not advancing; its unprocessed entries keep the stream from being trimmed",
			"stream", stream, "group", g.Name, "since", p.since, "lag", g.Lag, "pending", g.Pending)
	}
	return true
}
