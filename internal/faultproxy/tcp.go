package faultproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// TCP forwards raw TCP connections from 127.0.0.1 to one target, for protocols such as gRPC
// where an HTTP proxy would change what the client sees. All methods are safe for concurrent
// use.
type TCP struct {
	// Addr is the proxy's host:port on 127.0.0.1.
	Addr string

	target   string
	listener net.Listener

	mu          sync.Mutex
	toClient    cutBudget
	toServer    cutBudget
	cuts        int
	connections int
	closed      bool
	open        map[*tcpPair]bool
	wg          sync.WaitGroup
}

// cutBudget is a one-time cut armed for one direction.
type cutBudget struct {
	armed bool
	left  int64
}

// tcpPair is one client connection and its upstream connection.
type tcpPair struct {
	client, upstream net.Conn
	closeOnce        sync.Once
}

// NewTCP starts a TCP proxy to target ("127.0.0.1:P") and closes it and every connection on
// cleanup.
func NewTCP(t testing.TB, target string) *TCP {
	t.Helper()

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("faultproxy: listen on 127.0.0.1: %v", err)
	}

	p := &TCP{
		Addr:     listener.Addr().String(),
		target:   target,
		listener: listener,
		open:     map[*tcpPair]bool{},
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// CutAfter arms a one-time cut. Once bytes more bytes have gone from the target to clients,
// counted from this call over all connections, the proxy closes the connection that carried
// the last of them on both sides, with a TCP RST to the client. Connections made afterwards
// are forwarded normally. A new call replaces a cut that has not happened yet.
func (p *TCP) CutAfter(bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.toClient = cutBudget{armed: true, left: bytes}
}

// CutAfterToServer arms a one-time cut like CutAfter, but counts the bytes that clients send
// to the target, for example to break a ByteStream Write in the middle of a blob.
func (p *TCP) CutAfterToServer(bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.toServer = cutBudget{armed: true, left: bytes}
}

// Cuts returns how many connections CutAfter and CutAfterToServer have cut.
func (p *TCP) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()

	return p.cuts
}

// Connections returns how many client connections the proxy has accepted.
func (p *TCP) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()

	return p.connections
}

// CloseConnections resets every open connection, as a restarting peer or a broken network
// would. The proxy keeps accepting new connections.
func (p *TCP) CloseConnections() {
	p.mu.Lock()
	pairs := make([]*tcpPair, 0, len(p.open))
	for pair := range p.open {
		pairs = append(pairs, pair)
	}
	p.mu.Unlock()

	for _, pair := range pairs {
		pair.reset()
	}
}

func (p *TCP) accept() {
	defer p.wg.Done()

	for {
		client, err := p.listener.Accept()
		if err != nil {
			return
		}

		upstream, err := net.Dial("tcp", p.target)
		if err != nil {
			// The client sees the connection close, as it would if the target were down.
			client.Close()
			continue
		}

		pair := &tcpPair{client: client, upstream: upstream}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pair.reset()
			return
		}
		p.connections++
		p.open[pair] = true
		p.mu.Unlock()

		p.wg.Add(2)
		go p.copyToServer(pair)
		go p.copyToClient(pair)
	}
}

func (p *TCP) copyToServer(pair *tcpPair) {
	defer p.wg.Done()

	clientClosed := p.copyWithBudget(pair.upstream, pair.client, &p.toServer)
	if !clientClosed {
		p.forget(pair)
		pair.reset()
		return
	}

	// The client closed its sending side. Pass that on, and let copyToClient finish the reply.
	if tcp, ok := pair.upstream.(*net.TCPConn); ok {
		tcp.CloseWrite()
	}
}

func (p *TCP) copyToClient(pair *tcpPair) {
	defer p.wg.Done()

	p.copyWithBudget(pair.client, pair.upstream, &p.toClient)
	p.forget(pair)
	pair.reset()
}

// copyWithBudget copies from src to dst until src ends, a write fails, or the armed budget is
// spent. It returns whether src ended cleanly (EOF).
func (p *TCP) copyWithBudget(dst, src net.Conn, budget *cutBudget) bool {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			allowed, cut := p.takeBudget(budget, int64(n))
			if _, werr := dst.Write(buf[:allowed]); werr != nil {
				return false
			}
			if cut {
				return false
			}
		}
		if err != nil {
			return isEOF(err)
		}
	}
}

// takeBudget returns how many of n bytes may pass and whether the connection must be cut
// after them.
func (p *TCP) takeBudget(budget *cutBudget, n int64) (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()

	if !budget.armed {
		return n, false
	}
	if n < budget.left {
		budget.left -= n
		return n, false
	}

	allowed := budget.left
	*budget = cutBudget{}
	p.cuts++
	return allowed, true
}

func (p *TCP) forget(pair *tcpPair) {
	p.mu.Lock()
	defer p.mu.Unlock()

	delete(p.open, pair)
}

// reset closes both connections, the client one with a TCP RST.
func (pair *tcpPair) reset() {
	pair.closeOnce.Do(func() {
		if tcp, ok := pair.client.(*net.TCPConn); ok {
			tcp.SetLinger(0)
		}
		pair.client.Close()
		pair.upstream.Close()
	})
}

func (p *TCP) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()

	p.listener.Close()
	p.CloseConnections()
	p.wg.Wait()
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF)
}
