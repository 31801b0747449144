package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mr-enclave/enclave/broker"
)

// bareNode is a Node with just what the forwarder and the apply
// bookkeeping use: no Raft, no gossip.
func bareNode(t *testing.T) *Node {
	t.Helper()
	n := &Node{
		cfg:    Config{NodeID: "bare", CommitTimeout: 10 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}.withDefaults(),
		broker: broker.New(broker.Config{RingSize: 10, QueueSize: 10}),
	}
	n.log = n.cfg.Logger
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.fwd.init(n)
	t.Cleanup(func() {
		n.cancel()
		n.fwd.close()
		n.wg.Wait()
	})
	return n
}

// fakeLeader reads forwarded requests and answers them only once released.
type fakeLeader struct {
	ln      net.Listener
	release chan struct{}
	stop    chan struct{} // the test is over

	mu   sync.Mutex
	conn net.Conn
	got  int
	errs []error
}

func newFakeLeader(t *testing.T) *fakeLeader {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &fakeLeader{ln: ln, release: make(chan struct{}), stop: make(chan struct{})}
	done := make(chan struct{})
	go l.serve(done)
	t.Cleanup(func() {
		close(l.stop)
		ln.Close()
		l.mu.Lock()
		if l.conn != nil {
			l.conn.Close()
		}
		l.mu.Unlock()
		<-done
	})
	return l
}

func (l *fakeLeader) received() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.got
}

func (l *fakeLeader) serve(done chan struct{}) {
	defer close(done)
	c, err := l.ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	l.mu.Lock()
	l.conn = c
	l.mu.Unlock()

	r := bufio.NewReader(c)
	var kind [1]byte
	if _, err := io.ReadFull(r, kind[:]); err != nil || kind[0] != muxForward {
		return
	}
	ids := make(chan uint64, 1<<16)
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		select {
		case <-l.release:
		case <-l.stop:
			return
		}
		w := bufio.NewWriter(c)
		for id := range ids {
			body := binary.AppendUvarint(nil, id)
			body = appendOutcome(body, 0, broker.Result{}, nil)
			if writeFrame(w, body) != nil {
				return
			}
			if len(ids) == 0 && w.Flush() != nil {
				return
			}
		}
	}()
	defer func() { close(ids); <-answered }()
	var buf []byte
	for {
		frame, err := readFrame(r, buf)
		if err != nil {
			return
		}
		buf = frame
		d := decoder{buf: frame}
		id := d.uvarint()
		d.command()
		if d.err != nil {
			l.mu.Lock()
			l.errs = append(l.errs, d.err)
			l.mu.Unlock()
			return
		}
		l.mu.Lock()
		l.got++
		l.mu.Unlock()
		ids <- id
	}
}

// A follower never has more forwarded requests unanswered than the
// leader's queue holds, so the leader never stops reading its link; and the
// answers still get through while the follower's router waits for room.
func TestForwardingBoundsInflight(t *testing.T) {
	n := bareNode(t)
	leader := newFakeLeader(t)
	const total = 3 * forwardInflight
	subs := make([]submission, total)
	for i := range subs {
		subs[i] = submission{
			cmd: broker.Command{Op: broker.OpPublish, Topic: "t", Message: broker.Message{ID: msgID("f", i), Payload: payload(i)}},
			p:   newPending(n.cfg.CommitTimeout),
		}
	}
	sent := make(chan error, 1)
	go func() {
		// As the router does: one batch at a time, in order.
		for i := 0; i < total; i += 512 {
			if err := n.fwd.send(leader.ln.Addr().String(), subs[i:min(i+512, total)]); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()

	waitFor(t, 10*time.Second, func() error {
		if got := leader.received(); got < forwardInflight {
			return fmt.Errorf("leader received %d requests", got)
		}
		return nil
	})
	// The limit holds while no answer comes back.
	if err := poll(300*time.Millisecond, func() error {
		if got := leader.received(); got > forwardInflight {
			return fmt.Errorf("%d", got)
		}
		return errors.New("within the limit")
	}); err == nil || leader.received() > forwardInflight {
		t.Fatalf("follower sent %d requests unanswered, more than %d", leader.received(), forwardInflight)
	}

	close(leader.release)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for i, s := range subs {
		if _, err := s.p.Wait(ctx); err != nil {
			t.Fatalf("forwarded command %d: %v", i, err)
		}
	}
	if err := <-sent; err != nil {
		t.Fatalf("send: %v", err)
	}
	if got := leader.received(); got != total {
		t.Fatalf("leader received %d requests, want %d", got, total)
	}
	leader.mu.Lock()
	defer leader.mu.Unlock()
	if len(leader.errs) > 0 {
		t.Fatalf("leader decoded bad frames: %v", leader.errs)
	}
	if left := len(n.fwd.slots); left != 0 {
		t.Errorf("%d in-flight slots still taken after every answer", left)
	}
}

// A forwarded topic admin command whose entry reaches this node inside an
// installed snapshot (it was far behind) is acked when the snapshot is
// restored, not left waiting for a later entry and answered UNAVAILABLE.
func TestRestoreReleasesForwardedOutcomes(t *testing.T) {
	n := bareNode(t)
	// The leader's side: five entries, then a snapshot.
	lb := broker.New(broker.Config{RingSize: 10, QueueSize: 10})
	lf := &fsm{broker: lb}
	cmds := []broker.Command{{Op: broker.OpCreateTopic, Topic: "a"}, {Op: broker.OpCreateTopic, Topic: "b"}}
	for i := 0; i < 5; i++ {
		cmds = append(cmds, broker.Command{Op: broker.OpPublish, Topic: "a", Message: broker.Message{ID: msgID("m", i), Payload: payload(i)}})
	}
	for i, cmd := range cmds {
		lf.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: encodeBatch([]broker.Command{cmd})})
	}
	snaps := raft.NewInmemSnapshotStore()
	sink, err := snaps.Create(raft.SnapshotVersionMax, uint64(len(cmds)), 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := lf.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Persist(sink); err != nil {
		t.Fatal(err)
	}

	// The follower forwarded "create b" (entry 2) and got its outcome
	// before its own log reached entry 2.
	p := newPending(2 * time.Second)
	n.resolveAfterApply(p, 2, broker.Result{}, nil)
	_, rc, err := snaps.Open(sink.ID())
	if err != nil {
		t.Fatal(err)
	}
	ff := &fsm{broker: n.broker, afterApply: n.noteApplied}
	if err := ff.Restore(rc); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if _, err := p.Wait(context.Background()); err != nil {
		t.Fatalf("forwarded create covered by the restored snapshot: %v", err)
	}
	if !n.broker.HasTopic("b") {
		t.Fatal("restored state lacks topic b")
	}
	// A snapshot taken right after the restore carries the same index.
	if s, _ := ff.Snapshot(); s.(snapshot).index != uint64(len(cmds)) {
		t.Errorf("snapshot after restore at index %d, want %d", s.(snapshot).index, len(cmds))
	}
}
