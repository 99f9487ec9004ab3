package redisstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard/switchyard/platform/transport"
)

// subscriber is one member of a group. Its manager goroutine (Run) does the
// heartbeats, lease refreshes, acquisitions and releases; each claim has a
// reader goroutine and runs the consume function in another.
type subscriber struct {
	t      *Transport
	cfg    transport.SubscriberConfig
	log    *slog.Logger
	member string
	tick   time.Duration

	mu     sync.Mutex
	claims map[string]*claim // by stream key, from acquisition until fully released
	wg     sync.WaitGroup    // consume and release goroutines

	// frozen stops heartbeats and lease refreshes, as if the process were
	// paused; only tests set it.
	frozen atomic.Bool
}

// NewSubscriber returns a group member; Run joins the group.
func (t *Transport) NewSubscriber(cfg transport.SubscriberConfig) (transport.Subscriber, error) {
	return t.newSubscriber(cfg)
}

func (t *Transport) newSubscriber(cfg transport.SubscriberConfig) (*subscriber, error) {
	switch {
	case cfg.Group == "":
		return nil, errors.New("redisstream: Group is required")
	case len(cfg.Topics) == 0:
		return nil, errors.New("redisstream: Topics is required")
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 500
	}
	if cfg.RevokeTimeout <= 0 {
		cfg.RevokeTimeout = 10 * time.Second
	}
	logger := cfg.Logger
	if logger == nil {
		logger = t.log
	}
	host, _ := os.Hostname()
	member := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randomHex(4))
	tick := min(t.cfg.LeaseTTL/5, time.Second)
	t.addTopics(cfg.Topics...)
	return &subscriber{
		t:      t,
		cfg:    cfg,
		log:    logger.With("group", cfg.Group, "member", member),
		member: member,
		tick:   max(tick, 10*time.Millisecond),
		claims: map[string]*claim{},
	}, nil
}

// Run joins the group and manages this member's partitions until ctx ends.
// On the way out it gives every partition back as on a rebalance (Messages
// closed, up to RevokeTimeout for consume to return) and leaves the group.
func (s *subscriber) Run(ctx context.Context, consume func(transport.Claim)) error {
	if err := s.waitUsable(ctx); err != nil {
		return err
	}
	s.log.Info("joining redis consumer group", "topics", s.cfg.Topics)
	ticker := time.NewTicker(s.tick)
	defer ticker.Stop()
	for ctx.Err() == nil {
		if !s.frozen.Load() {
			s.manage(consume)
		}
		select {
		case <-ctx.Done():
		case <-ticker.C:
		}
	}
	s.leave()
	s.release(s.ownedClaims())
	// Keep the leases of the partitions being given back until they are.
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	for {
		select {
		case <-done:
			return nil
		case <-ticker.C:
			s.refresh()
		}
	}
}

// waitUsable waits until Redis answers and is safe to use; an evicting
// Redis is a fatal error, an unreachable one is waited for.
func (s *subscriber) waitUsable(ctx context.Context) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.t.checkServer(cctx)
		cancel()
		if err == nil || errors.Is(err, ErrEvictingServer) {
			return err
		}
		s.log.Warn("redis not usable yet", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// manage is one heartbeat: register, recompute the assignment, refresh the
// leases held, give back what is no longer ours and take what is.
func (s *subscriber) manage(consume func(transport.Claim)) {
	s.refresh()
	var revoke []*claim
	for _, topic := range s.cfg.Topics {
		mine, err := s.assignment(topic)
		if err != nil {
			s.log.Warn("redis heartbeat failed; keeping the current partitions", "topic", topic, "err", err)
			continue
		}
		for p := int32(0); p < int32(s.t.cfg.Partitions); p++ {
			c := s.claim(streamKey(topic, p))
			switch {
			case c != nil && !mine[p] && !c.releasing.Load():
				revoke = append(revoke, c)
			case c == nil && mine[p]:
				if err := s.acquire(topic, p, consume); err != nil {
					s.log.Warn("cannot take partition", "topic", topic, "partition", p, "err", err)
				}
			}
		}
	}
	if len(revoke) > 0 {
		s.release(revoke)
	}
}

// assignment heartbeats in topic's members set and returns the partitions
// that belong to this member: partition p to member p mod n of the sorted
// live members.
func (s *subscriber) assignment(topic string) (map[int32]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.t.cfg.LeaseTTL)
	defer cancel()
	ttl := strconv.FormatInt(s.t.cfg.LeaseTTL.Milliseconds(), 10)
	members, err := heartbeatScript.Run(ctx, s.t.rdb, []string{membersKey(s.cfg.Group, topic)}, s.member, ttl).StringSlice()
	if err != nil {
		return nil, err
	}
	slices.Sort(members)
	idx := slices.Index(members, s.member)
	mine := map[int32]bool{}
	if idx < 0 {
		return mine, nil
	}
	for p := idx; p < s.t.cfg.Partitions; p += len(members) {
		mine[int32(p)] = true
	}
	return mine, nil
}

// leave removes this member from the members sets, so the others take its
// partitions as soon as it gives them back.
func (s *subscriber) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, topic := range s.cfg.Topics {
		if err := s.t.rdb.ZRem(ctx, membersKey(s.cfg.Group, topic), s.member).Err(); err != nil {
			s.log.Warn("cannot leave redis consumer group", "topic", topic, "err", err)
		}
	}
}

func (s *subscriber) claim(stream string) *claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claims[stream]
}

func (s *subscriber) ownedClaims() []*claim {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*claim, 0, len(s.claims))
	for _, c := range s.claims {
		out = append(out, c)
	}
	return out
}

// forget drops c from the claims once it is over, so the partition can be
// taken again.
func (s *subscriber) forget(c *claim) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.claims[c.stream] == c {
		delete(s.claims, c.stream)
	}
}

// refresh extends every held lease. A lease found taken is lost at once; one
// that could not be confirmed for a whole LeaseTTL is lost too, since it may
// have expired and been taken meanwhile.
func (s *subscriber) refresh() {
	ttl := strconv.FormatInt(s.t.cfg.LeaseTTL.Milliseconds(), 10)
	for _, c := range s.ownedClaims() {
		if c.lost.Load() {
			continue
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), s.t.cfg.LeaseTTL/2)
		ok, err := refreshScript.Run(ctx, s.t.rdb, []string{c.lease}, c.token, ttl).Int()
		cancel()
		switch {
		case err == nil && ok == 1:
			c.validUntil = sent.Add(s.t.cfg.LeaseTTL)
		case err == nil:
			c.lose("lease taken by another member")
		case time.Now().After(c.validUntil):
			c.lose("lease not confirmed within its TTL: " + err.Error())
		default:
			s.log.Warn("cannot refresh partition lease", "stream", c.stream, "err", err)
		}
	}
}

// acquire takes the partition's lease if it is free and starts its claim.
func (s *subscriber) acquire(topic string, p int32, consume func(transport.Claim)) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.t.cfg.LeaseTTL)
	defer cancel()
	token := s.member + "/" + randomHex(4)
	sent := time.Now()
	lease := leaseKey(s.cfg.Group, topic, p)
	epoch, err := acquireScript.Run(ctx, s.t.rdb, []string{lease, epochKey(s.cfg.Group, topic, p)},
		token, s.t.cfg.LeaseTTL.Milliseconds()).Int64()
	if err != nil || epoch == 0 {
		return err
	}
	stream := streamKey(topic, p)
	if err := s.t.createGroup(ctx, stream, s.cfg.Group); err != nil {
		_ = releaseScript.Run(ctx, s.t.rdb, []string{lease}, token).Err()
		return err
	}
	cctx, ccancel := context.WithCancel(context.Background())
	c := &claim{
		s: s, topic: topic, partition: p, stream: stream, lease: lease,
		token: token, epoch: epoch, validUntil: sent.Add(s.t.cfg.LeaseTTL),
		msgs: make(chan []*transport.Message), ctx: cctx, cancel: ccancel,
		stop: make(chan struct{}), consumed: make(chan struct{}),
	}
	c.lag.Store(-1)
	s.mu.Lock()
	s.claims[stream] = c
	s.mu.Unlock()
	s.log.Info("partition assigned", "stream", stream, "epoch", epoch)
	go c.read()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(c.consumed)
		consume(c)
	}()
	return nil
}

// release gives claims back: Messages closed, up to RevokeTimeout in total
// for their consume calls to return, then their contexts cancelled and the
// leases still held deleted. It does not wait: the manager keeps refreshing
// their leases meanwhile.
func (s *subscriber) release(claims []*claim) {
	deadline := time.Now().Add(s.cfg.RevokeTimeout)
	for _, c := range claims {
		if c.releasing.Swap(true) {
			continue
		}
		s.log.Info("partition revoked", "stream", c.stream, "epoch", c.epoch)
		c.stopReading()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			select {
			case <-c.consumed:
			case <-time.After(time.Until(deadline)):
				s.log.Warn("partition's work did not finish within the revoke timeout; cancelling it", "stream", c.stream)
			}
			c.cancel()
			<-c.consumed
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := releaseScript.Run(ctx, s.t.rdb, []string{c.lease}, c.token).Err(); err != nil {
				s.log.Warn("cannot delete partition lease; it expires on its own", "stream", c.stream, "err", err)
			}
			s.forget(c)
		}()
	}
}

// createGroup creates group on stream, reading from the stream's beginning
// so that nothing written before the group existed is missed.
func (t *Transport) createGroup(ctx context.Context, stream, group string) error {
	err := t.rdb.XGroupCreateMkStream(ctx, stream, group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s on %s: %w", group, stream, err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// isNoGroup reports whether err says the stream or group is gone (Redis lost
// its data, or someone deleted them).
func isNoGroup(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOGROUP")
}
