package relay

import (
	"context"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/testkit"
)

// stallingProxy forwards TCP connections to a server until stall is
// called; from then on it forwards nothing, on open connections or new
// ones, which is how a network path a firewall dropped looks to both ends.
type stallingProxy struct {
	ln      net.Listener
	target  string
	stalled chan struct{}
	once    sync.Once
}

func newStallingProxy(t *testing.T, target string) *stallingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallingProxy{ln: ln, target: target, stalled: make(chan struct{})}
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	track := func(c net.Conn) {
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		conns.Wait()
	})
	conns.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			track(client)
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			track(server)
			conns.Go(func() { p.forward(server, client) })
			conns.Go(func() { p.forward(client, server) })
		}
	})
	return p
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
// query, and the connect of its one retry, end at the gate's own timeout
// rather than hang the relay's term until the caller gives up.
func TestGateQueryTimesOut(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testkit.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := newStallingProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	g := newVisibilityGate(u.String())
	g.timeout = 500 * time.Millisecond // queryTimeout is 5 s
	defer g.close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := g.visible(ctx, 1); err != nil {
		t.Fatalf("before the stall: %v", err)
	}
	proxy.stall()
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
}
