package redisstream

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/transport"
)

// Ends returns, for each partition stream of topics that holds or held
// entries, its last entry id and the count of entries ever added to it,
// as "<id> <count>": the count lets BacklogBefore tell how many entries
// came after the end without reading them.
func (t *Transport) Ends(ctx context.Context, topics ...string) (transport.Ends, error) {
	ends := transport.Ends{}
	for _, topic := range topics {
		for p := int32(0); p < int32(t.cfg.Partitions); p++ {
			stream := streamKey(topic, p)
			info, err := t.rdb.XInfoStream(ctx, stream).Result()
			if isNoSuchKey(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("XINFO STREAM %s: %w", stream, err)
			}
			if info.EntriesAdded > 0 {
				ends[transport.EndsKey(topic, p)] = info.LastGeneratedID + " " + strconv.FormatInt(info.EntriesAdded, 10)
			}
		}
	}
	return ends, nil
}

// BacklogBefore sums, over the partition streams of ends, the entries up
// to the end that group has not been delivered yet plus those delivered
// but not acknowledged. A group that has not read a stream yet has every
// entry up to the end left; a missing stream counts 0.
func (t *Transport) BacklogBefore(ctx context.Context, group string, ends transport.Ends) (int64, error) {
	var backlog int64
	for key, pos := range ends {
		topic, p, err := transport.SplitEndsKey(key)
		if err != nil {
			return 0, err
		}
		end, added, err := parseEnd(pos)
		if err != nil {
			return 0, fmt.Errorf("end of %s: %w", key, err)
		}
		n, err := t.streamBacklog(ctx, streamKey(topic, p), group, end, added)
		if err != nil {
			return 0, err
		}
		backlog += n
	}
	return backlog, nil
}

// parseEnd reads a position Ends wrote.
func parseEnd(pos string) (id string, added int64, err error) {
	id, count, ok := strings.Cut(pos, " ")
	added, perr := strconv.ParseInt(count, 10, 64)
	if !ok || perr != nil || !validID(id) {
		return "", 0, fmt.Errorf("%q is not \"<entry id> <entries added>\"", pos)
	}
	return id, added, nil
}

// streamBacklog is group's backlog on stream up to the entry end, the
// last of the first added entries.
func (t *Transport) streamBacklog(ctx context.Context, stream, group, end string, added int64) (int64, error) {
	info, err := t.rdb.XInfoStream(ctx, stream).Result()
	if isNoSuchKey(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("XINFO STREAM %s: %w", stream, err)
	}
	// Entries after the end are never trimmed before those up to it, so
	// this many of the stream's entries lie after the end. (Fewer added
	// than at the end: Redis lost the stream since, and counting all it
	// holds now errs on the side of waiting.)
	after := max(0, info.EntriesAdded-added)
	groups, err := t.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return 0, fmt.Errorf("XINFO GROUPS %s: %w", stream, err)
	}
	i := slices.IndexFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == group })
	if i < 0 {
		return max(0, info.Length-after), nil
	}
	g := groups[i]
	var undelivered int64
	if compareIDs(g.LastDeliveredID, end) < 0 {
		if g.Lag >= 0 {
			undelivered = max(0, g.Lag-after)
		} else {
			// Redis cannot tell the lag (entries were deleted): count
			// what lies between the last delivered entry and the end.
			between, err := t.rdb.XRange(ctx, stream, "("+g.LastDeliveredID, end).Result()
			if err != nil {
				return 0, fmt.Errorf("XRANGE %s: %w", stream, err)
			}
			undelivered = int64(len(between))
		}
	}
	if g.Pending == 0 {
		return undelivered, nil
	}
	pending, err := t.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: group, Start: "-", End: end, Count: g.Pending}).Result()
	if err != nil {
		return 0, fmt.Errorf("XPENDING %s %s: %w", stream, group, err)
	}
	return undelivered + int64(len(pending)), nil
}

// DeleteGroup destroys group on every partition stream of topics and
// deletes its leases, epochs and members sets, in one script: it fails
// with [transport.ErrGroupInUse] while a member is alive or holds a lease
// (a member that stopped without leaving counts until its lease expires).
func (t *Transport) DeleteGroup(ctx context.Context, group string, topics ...string) error {
	keys := make([]string, 0, len(topics)*(1+3*t.cfg.Partitions))
	for _, topic := range topics {
		keys = append(keys, membersKey(group, topic))
	}
	for _, topic := range topics {
		for p := int32(0); p < int32(t.cfg.Partitions); p++ {
			keys = append(keys, streamKey(topic, p), leaseKey(group, topic, p), epochKey(group, topic, p))
		}
	}
	err := deleteGroupScript.Run(ctx, t.rdb, keys, group, len(topics)).Err()
	if err != nil && strings.HasPrefix(err.Error(), "INUSE") {
		return fmt.Errorf("delete group %s: %w: %w", group, transport.ErrGroupInUse, err)
	}
	if err != nil {
		return fmt.Errorf("delete group %s: %w", group, err)
	}
	return nil
}
