package cluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The Raft port carries two protocols, told apart by the first byte a
// dialer sends: Raft's own RPCs and the forwarding of commands to the leader.
const (
	muxRaft    byte = 'R'
	muxForward byte = 'F'
)

// mux accepts connections on the Raft port and routes them by first byte.
type mux struct {
	ln        net.Listener
	advertise net.Addr
	raftConns chan net.Conn
	onForward func(net.Conn)

	closeOnce sync.Once
	closed    chan struct{}
	// wg counts serve and every route goroutine (a forwarding connection
	// is served inside its route), so close returns only when they are
	// all done.
	wg sync.WaitGroup

	mu      sync.Mutex
	sorting map[net.Conn]struct{} // accepted, first byte not read yet
}

func newMux(ln net.Listener, advertise net.Addr, onForward func(net.Conn)) *mux {
	m := &mux{ln: ln, advertise: advertise, raftConns: make(chan net.Conn), onForward: onForward, closed: make(chan struct{}), sorting: make(map[net.Conn]struct{})}
	m.wg.Add(1)
	go m.serve()
	return m
}

func (m *mux) serve() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		select {
		case <-m.closed:
			m.mu.Unlock()
			c.Close()
			return
		default:
		}
		m.sorting[c] = struct{}{}
		m.wg.Add(1) // serve's own count is held, so this cannot race Wait
		m.mu.Unlock()
		go m.route(c)
	}
}

func (m *mux) route(c net.Conn) {
	defer m.wg.Done()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var kind [1]byte
	_, err := c.Read(kind[:])
	m.mu.Lock()
	delete(m.sorting, c)
	m.mu.Unlock()
	if err != nil {
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch kind[0] {
	case muxRaft:
		select {
		case m.raftConns <- c:
		case <-m.closed:
			c.Close()
		}
	case muxForward:
		m.onForward(c)
	default:
		c.Close()
	}
}

func (m *mux) close() {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		close(m.closed)
		// A dialer that never sends its first byte must not hold close
		// up for the read deadline.
		for c := range m.sorting {
			c.Close()
		}
		m.mu.Unlock()
		m.ln.Close()
	})
	m.wg.Wait()
}

// dialMux connects to a peer's Raft port for the given protocol.
func dialMux(addr string, kind byte, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{kind}); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, nil
}

// raftLayer is the raft.StreamLayer over the mux.
type raftLayer struct{ m *mux }

var _ raft.StreamLayer = raftLayer{}

func (l raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raftConns:
		return c, nil
	case <-l.m.closed:
		return nil, errors.New("raft listener closed")
	}
}

func (l raftLayer) Close() error   { l.m.close(); return nil }
func (l raftLayer) Addr() net.Addr { return l.m.advertise }

func (l raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dialMux(string(addr), muxRaft, timeout)
}
