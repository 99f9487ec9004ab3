package relay

import (
	"context"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
)

// stallingProxy forwards TCP connections to a server until stall is
// called; from then on it forwards nothing, on open connections or new
// ones, which is how a network path a firewall dropped looks to both ends.
type stallingProxy struct {
	ln       net.Listener
	target   string
	stalled  chan struct{}
	once     sync.Once
	accepted atomic.Int64

	mu     sync.Mutex
	closed bool
	open   []net.Conn
}

func newStallingProxy(t *testing.T, target string) *stallingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallingProxy{ln: ln, target: target, stalled: make(chan struct{})}
	var conns sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		p.closed = true
		for _, c := range p.open {
			c.Close()
		}
		p.mu.Unlock()
		conns.Wait()
	})
	conns.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			if !p.track(client) {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			if !p.track(server) {
				return
			}
			conns.Go(func() { p.forward(server, client) })
			conns.Go(func() { p.forward(client, server) })
		}
	})
	return p
}

// track keeps c to close at cleanup, or closes it and reports false when
// cleanup has begun.
func (p *stallingProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.open = append(p.open, c)
	return true
}

// forward copies from src to dst until either closes, dropping what
// arrives once the proxy has stalled.
func (p *stallingProxy) forward(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.stalled:
			default:
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *stallingProxy) stall() { p.once.Do(func() { close(p.stalled) }) }

// TestGateQueryTimesOut covers a gate whose network path goes silent: its
// query, and the connect of its one retry on a new connection, end at the
// gate's own timeout rather than hang the relay's term until the caller
// gives up.
func TestGateQueryTimesOut(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testkit.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := newStallingProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	g := newVisibilityGate(u.String())
	defer g.close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := g.visible(ctx, 1); err != nil {
		t.Fatalf("before the stall: %v", err)
	}
	g.timeout = 500 * time.Millisecond // queryTimeout is 5 s
	proxy.stall()
	connected := proxy.accepted.Load() // pgx may try more than one per connect (sslmode=prefer)
	_, err = g.visible(ctx, 1)
	if err == nil {
		t.Fatal("a query on a silent connection succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("the query waited for its caller's deadline, not its own timeout: %v", err)
	}
	if g.conn != nil {
		t.Fatal("the gate kept the connection its query timed out on")
	}
	if n := proxy.accepted.Load() - connected; n == 0 {
		t.Fatal("no connection made after the query timed out: the gate did not retry on a new one")
	}
}
