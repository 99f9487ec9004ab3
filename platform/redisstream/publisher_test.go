package redisstream

import (
	"context"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchyard/switchyard/platform/testkit"
	"github.com/switchyard/switchyard/platform/transport"
)

// xaddStart finds where each XADD command starts in what go-redis writes.
var xaddStart = regexp.MustCompile(`(?i)\*\d+\r\n\$4\r\nxadd\r\n`)

// gatedConn hands each write that holds an XADD to onWrite, which writes it.
type gatedConn struct {
	net.Conn
	onWrite func(c net.Conn, b []byte) (int, error)
}

func (c *gatedConn) Write(b []byte) (int, error) {
	if xaddStart.Match(b) {
		return c.onWrite(c.Conn, b)
	}
	return c.Conn.Write(b)
}

// oomErrors returns how many commands Redis has refused for lack of memory.
func oomErrors(t *testing.T, rdb *redis.Client) int {
	info, err := rdb.Info(context.Background(), "errorstats").Result()
	if err != nil {
		t.Error(err) // called from the publisher's goroutine: no Fatal
		return 0
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "errorstat_OOM:count="); ok {
			n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
			return n
		}
	}
	return 0
}

// When Redis refuses the first entry of a batch (out of memory) and then
// has memory again for the second, the batch stores neither: a stream
// never holds an entry without the one published before it, which the
// relay's resend would then put after it.
func TestRefusedEntryLeavesNoGap(t *testing.T) {
	t.Parallel()
	srv := testkit.Redis(t)
	ctrl := srv.Client(t)
	ctx := context.Background()
	tr := newTransport(t, srv)

	release := make(chan struct{})
	var writes atomic.Int32
	opts := *tr.rdb.Options()
	opts.Dialer = func(dctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(dctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &gatedConn{Conn: conn, onWrite: func(c net.Conn, b []byte) (int, error) {
			if writes.Add(1) == 1 {
				<-release // the first batch waits until the next two are queued
				return c.Write(b)
			}
			starts := xaddStart.FindAllIndex(b, -1)
			if len(starts) < 2 {
				return c.Write(b)
			}
			// Out of memory for the first entry, memory again for the second.
			before := oomErrors(t, ctrl)
			if err := ctrl.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
				t.Error(err)
			}
			n, err := c.Write(b[:starts[1][0]])
			if err != nil {
				return n, err
			}
			deadline := time.Now().Add(10 * time.Second)
			for oomErrors(t, ctrl) == before && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if err := ctrl.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
				t.Error(err)
			}
			m, err := c.Write(b[starts[1][0]:])
			return n + m, err
		}}, nil
	}
	tr.rdb = redis.NewClient(&opts)
	t.Cleanup(func() { _ = tr.rdb.Close() })

	p, err := tr.NewPublisher("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	var acked []string
	for seq := range 3 {
		if err := p.Publish(ctx, event("k", seq), func(d transport.Delivery) {
			mu.Lock()
			acked = append(acked, d.Position)
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
		if seq == 0 {
			testkit.WaitFor(t, 10*time.Second, "the first batch to be written", func() bool { return writes.Load() == 1 })
		}
	}
	close(release)
	select {
	case err := <-p.Failed():
		t.Logf("publisher failed, as it must: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the publisher did not fail when Redis refused an entry")
	}
	stream := streamKey(testTopic, transport.Partition([]byte("k"), tr.cfg.Partitions))
	entries, err := ctrl.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		payload, _ := e.Values[fieldPayload].(string)
		if _, seq := seqOf(t, &transport.Message{Value: []byte(payload)}); seq != i {
			t.Fatalf("the stream holds event %d at place %d: an entry stored without the one before it", seq, i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acked) > len(entries) {
		t.Fatalf("%d entries acknowledged, %d stored", len(acked), len(entries))
	}
}
