package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// Forwarding carries commands from a follower to the leader over one kept
// connection per follower. Frames are a 4-byte big-endian length and a body;
// a request body is a uvarint id and a command, a response body a uvarint id
// and an outcome. The leader submits requests in the order they arrive and
// answers in the same order, so one connection's publishes keep their order.

const (
	maxForwardFrame = 64 << 20
	// forwardDialTimeout is short: a leader that died on a network that
	// drops packets never refuses the dial, and the router retries with
	// the newly elected leader.
	forwardDialTimeout = 500 * time.Millisecond
	// forwardQueue bounds the requests a leader holds for one follower
	// before it stops reading that follower's connection.
	forwardQueue = 4096
)

func writeFrame(w *bufio.Writer, body []byte) error {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxForwardFrame {
		return nil, fmt.Errorf("forward frame of %d bytes exceeds the limit", n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, err
}

// serveForward answers one follower's forwarding connection on the leader.
func (n *Node) serveForward(c net.Conn) {
	type answer struct {
		id uint64
		p  *pending
	}
	stop := context.AfterFunc(n.ctx, func() { c.Close() })
	defer stop()
	answers := make(chan answer, forwardQueue)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer c.Close()
		w := bufio.NewWriterSize(c, 32<<10)
		var body []byte
	answering:
		for a := range answers {
			// About to wait for a commit still under way: send what is
			// written first, or acks sit in the buffer while requests keep
			// the queue from ever running empty.
			select {
			case <-a.p.done:
			default:
				if w.Buffered() > 0 {
					_ = c.SetWriteDeadline(time.Now().Add(n.cfg.CommitTimeout))
					if err := w.Flush(); err != nil {
						break answering
					}
				}
			}
			res, err := a.p.Wait(n.ctx)
			if n.ctx.Err() != nil {
				// Shutting down: drop the link; the follower answers
				// UNAVAILABLE for what it was waiting on.
				break
			}
			body = binary.AppendUvarint(body[:0], a.id)
			body = appendOutcome(body, a.p.committedIndex(), res, err)
			if err := writeFrame(w, body); err != nil {
				break
			}
			if len(answers) == 0 {
				_ = c.SetWriteDeadline(time.Now().Add(n.cfg.CommitTimeout))
				if err := w.Flush(); err != nil {
					break
				}
			}
		}
		for range answers { // drain after a write failure
		}
	}()
	defer close(answers)
	r := bufio.NewReaderSize(c, 32<<10)
	var buf []byte
	for {
		frame, err := readFrame(r, buf)
		if err != nil {
			return
		}
		buf = frame
		d := decoder{buf: frame}
		id := d.uvarint()
		cmd := d.command()
		if d.err == nil {
			d.err = validForwarded(&cmd)
		}
		if d.err != nil {
			n.log.Warn("dropping malformed forwarding connection", "remote", c.RemoteAddr().String(), "err", d.err)
			return
		}
		select {
		case answers <- answer{id: id, p: n.submit(cmd, false)}:
		case <-n.ctx.Done():
			return
		}
	}
}

// forwarder is a follower's link to the leader.
type forwarder struct {
	n *Node

	mu      sync.Mutex
	addr    string
	conn    net.Conn
	w       *bufio.Writer
	nextID  uint64
	waiting map[uint64]*pending
	body    []byte
}

var errForwardLinkLost = errors.New("link to the leader lost before the outcome was known")

// send writes cmds to the leader at addr, dialling or redialling as needed.
func (f *forwarder) send(addr string, subs []submission) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && f.addr != addr {
		f.dropLocked(f.conn, broker.ErrUnavailable)
	}
	if f.conn == nil {
		c, err := dialMux(addr, muxForward, forwardDialTimeout)
		if err != nil {
			return fmt.Errorf("dial leader %s: %w", addr, err)
		}
		f.conn, f.addr, f.w = c, addr, bufio.NewWriterSize(c, 32<<10)
		f.waiting = make(map[uint64]*pending)
		f.n.wg.Add(1)
		go f.readResponses(c)
	}
	for _, s := range subs {
		f.nextID++
		f.waiting[f.nextID] = s.p
		f.body = binary.AppendUvarint(f.body[:0], f.nextID)
		f.body = appendCommand(f.body, &s.cmd)
		if err := writeFrame(f.w, f.body); err != nil {
			f.dropLocked(f.conn, broker.ErrUnavailable)
			return nil // the submissions were failed with the link
		}
	}
	deadline := time.Now().Add(f.n.cfg.CommitTimeout)
	_ = f.conn.SetWriteDeadline(deadline)
	_ = f.conn.SetReadDeadline(deadline)
	if err := f.w.Flush(); err != nil {
		f.dropLocked(f.conn, broker.ErrUnavailable)
	}
	return nil
}

// dropLocked closes c and fails what was waiting on it. The outcome of those
// commands is unknown: they may still commit.
func (f *forwarder) dropLocked(c net.Conn, err error) {
	if f.conn != c {
		return
	}
	c.Close()
	for id, p := range f.waiting {
		p.resolve(broker.Result{}, fmt.Errorf("%w: %w", err, errForwardLinkLost))
		delete(f.waiting, id)
	}
	f.conn, f.w = nil, nil
}

func (f *forwarder) readResponses(c net.Conn) {
	defer f.n.wg.Done()
	r := bufio.NewReaderSize(c, 32<<10)
	var buf []byte
	for {
		frame, err := readFrame(r, buf)
		if err != nil {
			f.mu.Lock()
			f.dropLocked(c, broker.ErrUnavailable)
			f.mu.Unlock()
			return
		}
		buf = frame
		d := decoder{buf: frame}
		id := d.uvarint()
		index, res, cerr := d.outcome()
		f.mu.Lock()
		if d.err != nil {
			f.dropLocked(c, broker.ErrUnavailable)
			f.mu.Unlock()
			return
		}
		p := f.waiting[id]
		delete(f.waiting, id)
		if len(f.waiting) > 0 {
			_ = c.SetReadDeadline(time.Now().Add(f.n.cfg.CommitTimeout))
		} else {
			_ = c.SetReadDeadline(time.Time{})
		}
		f.mu.Unlock()
		if p != nil {
			f.n.resolveAfterApply(p, index, res, cerr)
		}
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	if f.conn != nil {
		f.dropLocked(f.conn, broker.ErrClosed)
	}
	f.mu.Unlock()
}

// validForwarded refuses a forwarded command this version could not apply:
// committed, it would stop every node (Apply panics on a corrupt log).
func validForwarded(cmd *broker.Command) error {
	switch cmd.Op {
	case broker.OpCreateTopic, broker.OpDeleteTopic, broker.OpPublish:
	default:
		return fmt.Errorf("unknown op %d", cmd.Op)
	}
	if !broker.ValidTopicName(cmd.Topic) {
		return fmt.Errorf("invalid topic name %q", cmd.Topic)
	}
	return nil
}
