package broker

import "github.com/switchyard/switchyard/platform/transport"

// Pauses returns how many times sub paused a partition for a full backlog.
func Pauses(sub transport.Subscriber) int64 { return sub.(*subscriber).pauses.Load() }

// PartitionBacklog is partitionBacklog, for the table test.
var PartitionBacklog = partitionBacklog
