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
	wg        sync.WaitGroup
}

func newMux(ln net.Listener, advertise net.Addr, onForward func(net.Conn)) *mux {
	m := &mux{ln: ln, advertise: advertise, raftConns: make(chan net.Conn), onForward: onForward, closed: make(chan struct{})}
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
		go m.route(c)
	}
}

func (m *mux) route(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var kind [1]byte
	if _, err := c.Read(kind[:]); err != nil {
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
		close(m.closed)
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
