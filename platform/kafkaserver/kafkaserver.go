// Package kafkaserver runs the in-process Kafka-protocol broker (kfake) that
// the local stack (`make run`) and the test kit use, with a workaround for a
// kfake defect that can stall a consumer group (see [Server]).
package kafkaserver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// keepInterval is how often the session keeper looks for members to arm.
const keepInterval = 500 * time.Millisecond

// Server is a kfake cluster plus a session keeper for its classic consumer
// groups.
//
// The keeper works around a kfake defect (kfake
// v0.0.0-20260918054303-01f206a7e32c, the newest): kfake starts a member's
// session timer when it delivers the member's JoinGroup response, and a
// member that joined for the first time has no timer before that. A member
// whose process dies while its JoinGroup waits for the rest of the group to
// rejoin (a process killed during a rebalance) never gets one: delivering
// the response to its closed connection fails, or not, at random. That
// member then stays in the group for good, with partitions assigned that no
// one consumes, and the next rebalance waits the whole rebalance timeout
// (librdkafka sends max.poll.interval.ms, 5 minutes) for it to rejoin.
// Kafka starts every member's session when the join completes, delivered
// or not. So once a member's JoinGroup has been answered (the group's
// generation has moved past the one it joined in) and the member is still
// there, the keeper sends one heartbeat on its behalf: a heartbeat starts
// the member's session timer, so a dead member is removed one session
// timeout later, and a live one has had one more heartbeat.
type Server struct {
	*kfake.Cluster

	client *kgo.Client
	stop   context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	joined map[member]int32 // members whose session may be unarmed, by the generation they joined in
}

// member is a member of a group.
type member struct{ group, id string }

// Start starts a kfake cluster with opts and its session keeper.
func Start(opts ...kfake.Opt) (*Server, error) {
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start kfake: %w", err)
	}
	client, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("client of the session keeper: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{Cluster: c, client: client, stop: stop, done: make(chan struct{}), joined: map[member]int32{}}
	// Runs before kfake handles the JoinGroup: the generation read here is
	// the one the join completes after. (kfake keeps the last JoinGroup of
	// each connection for a control function: a few hundred bytes per
	// client connection over the cluster's life.)
	c.ControlKey(int16(kmsg.JoinGroup), func(r kmsg.Request) (kmsg.Response, error, bool) {
		req := r.(*kmsg.JoinGroupRequest)
		if req.MemberID == "" {
			return nil, nil, false // asks for a member id: not a member yet
		}
		var generation int32 // a group kfake has yet to create starts at 0
		if info := c.GroupInfo(req.Group); info != nil {
			generation = info.Epoch
		}
		s.mu.Lock()
		s.joined[member{req.Group, req.MemberID}] = generation
		s.mu.Unlock()
		return nil, nil, false // kfake handles it as usual
	})
	go s.keep(ctx)
	return s, nil
}

// Close stops the session keeper and the cluster.
func (s *Server) Close() {
	s.stop()
	<-s.done
	s.client.Close()
	s.Cluster.Close()
}

// keep arms the sessions of members whose join has been answered, every
// keepInterval, until ctx ends.
func (s *Server) keep(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(keepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		pending := make(map[member]int32, len(s.joined))
		for m, g := range s.joined {
			pending[m] = g
		}
		s.mu.Unlock()
		for m, joinedIn := range pending {
			if s.arm(ctx, m, joinedIn) {
				s.mu.Lock()
				if s.joined[m] == joinedIn { // unless it has joined again since
					delete(s.joined, m)
				}
				s.mu.Unlock()
			}
		}
	}
}

// arm sends a heartbeat for m once its join has been answered. It reports
// whether m needs nothing more: its session timer is running, or it has
// left the group. Anything else (the join still waiting, the generation
// moving on meanwhile, a failed request) is tried again on the next tick.
func (s *Server) arm(ctx context.Context, m member, joinedIn int32) bool {
	info := s.GroupInfo(m.group)
	if info == nil {
		return true
	}
	var instanceID *string
	found := false
	for _, gm := range info.Members {
		if gm.MemberID == m.id {
			found, instanceID = true, gm.InstanceID
		}
	}
	if !found {
		return true
	}
	if info.Epoch <= joinedIn {
		// Its JoinGroup still waits for the group: not now, since kfake
		// (unlike Kafka) would expire a session armed now while the
		// member waits, and never answer it.
		return false
	}
	req := kmsg.NewPtrHeartbeatRequest()
	req.Group, req.Generation, req.MemberID, req.InstanceID = m.group, info.Epoch, m.id, instanceID
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := req.RequestWith(rctx, s.client)
	if err != nil {
		return false
	}
	switch resp.ErrorCode {
	case 0, kerr.RebalanceInProgress.Code: // kfake restarted its session timer
		return true
	case kerr.UnknownMemberID.Code: // gone meanwhile
		return true
	default: // for one, IllegalGeneration: a rebalance completed meanwhile
		return false
	}
}
