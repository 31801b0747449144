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
	// The writer belongs to this call, which the mux waits for on close:
	// it is started and waited for here, not through n.wg, which Close
	// may already be waiting on.
	written := make(chan struct{})
	defer func() {
		close(answers)
		<-written
	}()
	go func() {
		defer close(written)
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
		// After a write failure the follower gets no more answers here:
		// stop the reader from taking requests, then drain.
		c.Close()
		for range answers {
		}
	}()
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

// forwarder is a follower's link to the leader. Only the router goroutine
// sends; readResponses, one per link, takes the answers.
//
// Lock order: mu, then link.mu. Neither is held across socket I/O, so the
// reader can always take answers off the socket while a send is blocked
// writing: otherwise a leader that stopped reading (its forwardQueue full)
// would wait on answers the follower could not read.
type forwarder struct {
	n *Node

	// slots bounds the requests awaiting an answer, below the leader's
	// forwardQueue, so the leader never stops reading this link. A slot is
	// taken before a request is written and given back when its answer
	// arrives or its link is dropped.
	slots chan struct{}

	mu   sync.Mutex
	link *forwardLink

	// Used by the sending goroutine only.
	nextID uint64
	body   []byte
}

// forwardInflight is the most requests a follower has unanswered on its
// link: half the leader's queue, leaving room for a leader change.
const forwardInflight = forwardQueue / 2

// forwardLink is one connection to a leader.
type forwardLink struct {
	addr string
	conn net.Conn
	w    *bufio.Writer // used by the sending goroutine only

	mu      sync.Mutex
	dead    bool
	waiting map[uint64]*pending
}

var errForwardLinkLost = errors.New("link to the leader lost before the outcome was known")

func (f *forwarder) init(n *Node) {
	f.n = n
	f.slots = make(chan struct{}, forwardInflight)
}

// send writes subs to the leader at addr, dialling or redialling as
// needed. It returns an error only when nothing was sent (the router then
// retries); otherwise every submission is answered by the link.
func (f *forwarder) send(addr string, subs []submission) error {
	l, err := f.linkTo(addr)
	if err != nil {
		return err
	}
	slots := f.slots
	for i, s := range subs {
		select {
		case slots <- struct{}{}:
		default:
			// Full: what is buffered must reach the leader for answers to
			// come back and free slots.
			if !f.flush(l) {
				fail(subs[i:], broker.ErrUnavailable)
				return nil
			}
			if !f.waitSlot(slots) {
				fail(subs[i:], broker.ErrUnavailable)
				return nil
			}
		}
		f.nextID++
		l.mu.Lock()
		if l.dead {
			l.mu.Unlock()
			<-slots
			fail(subs[i:], fmt.Errorf("%w: %w", broker.ErrUnavailable, errForwardLinkLost))
			return nil
		}
		l.waiting[f.nextID] = s.p
		// The answer is due within the commit timeout; readResponses
		// moves the deadline on as answers arrive.
		_ = l.conn.SetReadDeadline(time.Now().Add(f.n.cfg.CommitTimeout))
		l.mu.Unlock()
		f.body = binary.AppendUvarint(f.body[:0], f.nextID)
		f.body = appendCommand(f.body, &s.cmd)
		if err := writeFrame(l.w, f.body); err != nil {
			f.drop(l, broker.ErrUnavailable)
			fail(subs[i+1:], fmt.Errorf("%w: %w", broker.ErrUnavailable, errForwardLinkLost))
			return nil
		}
	}
	f.flush(l)
	return nil
}

// waitSlot waits for an answer to free a slot. The link's read deadline
// drops a leader that stopped answering, which frees every slot it held,
// so the wait is bounded; the timer is a backstop.
func (f *forwarder) waitSlot(slots chan struct{}) bool {
	t := time.NewTimer(f.n.cfg.CommitTimeout)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-f.n.ctx.Done():
		return false
	}
}

// flush sends what is buffered, dropping the link when it cannot.
func (f *forwarder) flush(l *forwardLink) bool {
	if l.w.Buffered() == 0 {
		return true
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(f.n.cfg.CommitTimeout))
	if err := l.w.Flush(); err != nil {
		f.drop(l, broker.ErrUnavailable)
		return false
	}
	return true
}

// linkTo returns a live link to addr, replacing one to another leader.
func (f *forwarder) linkTo(addr string) (*forwardLink, error) {
	f.mu.Lock()
	old := f.link
	f.mu.Unlock()
	if old != nil {
		old.mu.Lock()
		dead := old.dead
		old.mu.Unlock()
		if !dead && old.addr == addr {
			return old, nil
		}
		f.drop(old, broker.ErrUnavailable)
	}
	c, err := dialMux(addr, muxForward, forwardDialTimeout)
	if err != nil {
		return nil, fmt.Errorf("dial leader %s: %w", addr, err)
	}
	l := &forwardLink{addr: addr, conn: c, w: bufio.NewWriterSize(c, 32<<10), waiting: make(map[uint64]*pending)}
	f.mu.Lock()
	if f.n.ctx.Err() != nil {
		// Close already dropped the links; do not leave this one open.
		f.mu.Unlock()
		c.Close()
		return nil, broker.ErrClosed
	}
	f.link = l
	f.mu.Unlock()
	f.n.wg.Add(1)
	go f.readResponses(l)
	return l, nil
}

// drop closes l and fails what was waiting on it, giving back its slots.
// The outcome of those commands is unknown: they may still commit.
func (f *forwarder) drop(l *forwardLink, err error) {
	f.mu.Lock()
	if f.link == l {
		f.link = nil
	}
	f.mu.Unlock()
	l.mu.Lock()
	if l.dead {
		l.mu.Unlock()
		return
	}
	l.dead = true
	waiting := l.waiting
	l.waiting = nil
	l.mu.Unlock()
	l.conn.Close()
	for _, p := range waiting {
		<-f.slots
		p.resolve(broker.Result{}, fmt.Errorf("%w: %w", err, errForwardLinkLost))
	}
}

func (f *forwarder) readResponses(l *forwardLink) {
	defer f.n.wg.Done()
	r := bufio.NewReaderSize(l.conn, 32<<10)
	var buf []byte
	for {
		frame, err := readFrame(r, buf)
		if err != nil {
			f.drop(l, broker.ErrUnavailable)
			return
		}
		buf = frame
		d := decoder{buf: frame}
		id := d.uvarint()
		index, res, cerr := d.outcome()
		if d.err != nil {
			f.drop(l, broker.ErrUnavailable)
			return
		}
		l.mu.Lock()
		p, ok := l.waiting[id]
		delete(l.waiting, id)
		if len(l.waiting) > 0 {
			_ = l.conn.SetReadDeadline(time.Now().Add(f.n.cfg.CommitTimeout))
		} else {
			_ = l.conn.SetReadDeadline(time.Time{})
		}
		l.mu.Unlock()
		if ok {
			<-f.slots
			f.n.resolveAfterApply(p, index, res, cerr)
		}
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	l := f.link
	f.mu.Unlock()
	if l != nil {
		f.drop(l, broker.ErrClosed)
	}
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
