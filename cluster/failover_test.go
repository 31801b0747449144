package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// ackLog collects what continuous publishers saw.
type ackLog struct {
	mu      sync.Mutex
	acked   map[string]uint64 // id -> seq
	ackedAt []time.Time
	failed  map[string]error
	bad     []error // errors other than ErrUnavailable/ErrClosed, or waits too long
}

func newAckLog() *ackLog {
	return &ackLog{acked: map[string]uint64{}, failed: map[string]error{}}
}

func (l *ackLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

// publishLoop publishes through tn until stop is closed, window messages
// at a time (submitted together, then waited for in order), recording acks
// and failures. Every Wait must end within maxWait of the submission.
func publishLoop(tn *testNode, topic, pub string, window int, maxWait time.Duration, log *ackLog, stop <-chan struct{}) {
	b, nodeID := tn.b, tn.id // tn's fields change when the harness kills it
	type sent struct {
		id string
		p  broker.Pending
		at time.Time
	}
	batch := make([]sent, 0, window)
	for i := 0; ; {
		select {
		case <-stop:
			return
		default:
		}
		batch = batch[:0]
		for k := 0; k < window; k, i = k+1, i+1 {
			id := msgID(pub, i)
			batch = append(batch, sent{id: id, at: time.Now(), p: b.Publish(topic, broker.Message{ID: id, Payload: payload(i)})})
		}
		closed, failed := false, false
		for _, s := range batch {
			res, err := waitResult(s.p)
			took := time.Since(s.at)
			if err == nil {
				err = res.Err
			}
			log.mu.Lock()
			switch {
			case err == nil:
				log.acked[s.id] = res.Seq
				log.ackedAt = append(log.ackedAt, time.Now())
			case errors.Is(err, broker.ErrUnavailable) || errors.Is(err, broker.ErrClosed):
				log.failed[s.id] = err
			default:
				log.bad = append(log.bad, fmt.Errorf("%s via %s: unexpected error after %v: %w", s.id, nodeID, took, err))
			}
			if took > maxWait {
				log.bad = append(log.bad, fmt.Errorf("%s via %s: Wait took %v (> %v), err=%v", s.id, nodeID, took, maxWait, err))
			}
			log.mu.Unlock()
			closed = closed || errors.Is(err, broker.ErrClosed)
			failed = failed || err != nil
		}
		if closed {
			return // this node is gone
		}
		if failed {
			time.Sleep(10 * time.Millisecond) // a client backing off
		}
	}
}

// Killing the leader while every node publishes: a new leader is elected
// within a few seconds, publishing resumes, failures during the window are
// ErrUnavailable or ErrClosed and never take longer than the commit timeout
// (plus the leader wait), and every acked message is in the replicated ring
// of every survivor, and of the old leader once it has restarted.
func TestLeaderKilledUnderLoad(t *testing.T) {
	c := newTestCluster(t, 3)
	c.brokerCfg.RingSize = 100000 // the ring keeps every message
	c.Start()
	const topic = "load"
	c.CreateTopic(c.nodes[0], topic)
	old := c.WaitLeader(10 * time.Second)

	// Every publish is answered within this long of being submitted.
	maxWait := testCommitTimeout + testLeaderWait + time.Second
	log := newAckLog()
	// One stop channel per node: the old leader's clients stop sending
	// when it goes down (their connections would drop), but what they had
	// in flight must still be answered.
	stops := make([]chan struct{}, len(c.nodes))
	var wg sync.WaitGroup
	for i, tn := range c.nodes {
		stops[i] = make(chan struct{})
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func(tn *testNode, pub string, stop chan struct{}) {
				defer wg.Done()
				publishLoop(tn, topic, pub, 8, maxWait, log, stop)
			}(tn, fmt.Sprintf("%s.g%d", tn.id, g), stops[i])
		}
	}
	stopped := false
	stopPublishers := func() {
		if !stopped {
			stopped = true
			for _, s := range stops {
				select {
				case <-s:
				default:
					close(s)
				}
			}
			wg.Wait()
		}
	}
	defer stopPublishers()

	waitFor(t, 10*time.Second, func() error {
		if n := log.count(); n < 200 {
			return fmt.Errorf("%d acks before the kill", n)
		}
		return nil
	})
	before := log.count()
	killedAt := time.Now()
	close(stops[old.idx])
	c.Kill(old.idx)
	newLeader := c.WaitLeader(10 * time.Second)
	elected := time.Since(killedAt)
	if newLeader == old {
		t.Fatalf("old leader still leader")
	}
	waitFor(t, 15*time.Second, func() error {
		if n := log.count(); n < before+200 {
			return fmt.Errorf("%d acks after the kill, want %d", n-before, 200)
		}
		return nil
	})
	stopPublishers()

	// The unavailability window: the longest time without any ack from
	// just before the kill on.
	log.mu.Lock()
	at := append([]time.Time(nil), log.ackedAt...)
	bad := append([]error(nil), log.bad...)
	failed := len(log.failed)
	acked := make(map[string]uint64, len(log.acked))
	for k, v := range log.acked {
		acked[k] = v
	}
	log.mu.Unlock()
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	var window time.Duration
	for i := 1; i < len(at); i++ {
		if at[i].After(killedAt) {
			window = max(window, at[i].Sub(at[i-1]))
		}
	}
	t.Logf("leader %s killed; %s elected after %v; no ack for %v; %d acked, %d failed with UNAVAILABLE/CLOSED",
		old.id, newLeader.id, elected.Round(time.Millisecond), window.Round(time.Millisecond), len(acked), failed)
	for i, err := range bad {
		if i == 5 {
			t.Errorf("... and %d more such failures", len(bad)-5)
			break
		}
		t.Error(err)
	}
	if elected > 5*time.Second {
		t.Errorf("new leader took %v", elected)
	}

	checkAcked := func(tn *testNode) {
		t.Helper()
		ring := ringIDs(t, tn.b.State(), topic)
		missing := 0
		for id, seq := range acked {
			got, ok := ring[id]
			if !ok || got != seq {
				if missing < 5 {
					t.Errorf("%s: acked %s (seq %d) is at seq %d present=%v", tn.id, id, seq, got, ok)
				}
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%s: %d of %d acked messages missing or moved", tn.id, missing, len(acked))
		}
	}
	c.WaitConverged(15 * time.Second)
	for _, tn := range c.Live() {
		checkAcked(tn)
	}

	// The old leader comes back, catches up and has every acked message.
	c.Restart(old.idx)
	c.WaitConverged(20 * time.Second)
	checkAcked(old)
	// And it takes part again: writes through it commit.
	publishOK(t, old, topic, "after-restart")
}

// With two of three nodes down the survivor answers writes with
// ErrUnavailable within a bounded time, whether it was the leader or a
// follower, and keeps serving reads.
func TestNoQuorum(t *testing.T) {
	for _, survivorWasLeader := range []bool{false, true} {
		name := "survivor-follower"
		if survivorWasLeader {
			name = "survivor-leader"
		}
		t.Run(name, func(t *testing.T) {
			c := newTestCluster(t, 3)
			c.Start()
			const topic = "nq"
			c.CreateTopic(c.nodes[0], topic)
			for i := 0; i < 5; i++ {
				publishOK(t, c.nodes[i%3], topic, msgID("before", i))
			}
			before := c.WaitConverged(10 * time.Second)

			leader := c.Leader()
			survivor := c.Followers()[0]
			if survivorWasLeader {
				survivor = leader
			}
			for _, tn := range c.Live() {
				if tn != survivor {
					c.Kill(tn.idx)
				}
			}

			bound := testCommitTimeout + testLeaderWait + 2*time.Second
			for i := 0; i < 2; i++ {
				began := time.Now()
				res, err := waitResult(survivor.b.Publish(topic, broker.Message{ID: msgID("nq", i), Payload: []byte(`1`)}))
				took := time.Since(began)
				t.Logf("write %d on %s without quorum: err=%v after %v", i, survivor.id, err, took.Round(time.Millisecond))
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("write %d: err = %v (res %+v), want ErrUnavailable", i, err, res)
				}
				if took > bound {
					t.Errorf("write %d took %v, want < %v", i, took, bound)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*testCommitTimeout)
			defer cancel()
			began := time.Now()
			if err := survivor.b.CreateTopic(ctx, "nq2"); !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("CreateTopic without quorum: err = %v, want ErrUnavailable", err)
			}
			if took := time.Since(began); took > bound {
				t.Errorf("CreateTopic took %v, want < %v", took, bound)
			}

			// Reads keep working on the local state.
			if err := stateDiff(before, survivor.b.State()); err != nil {
				t.Errorf("state changed without quorum: %v", err)
			}
			if ts := survivor.b.Topics(); len(ts) != 1 || ts[0].Name != topic || ts[0].Messages != 5 {
				t.Errorf("Topics() = %+v", ts)
			}
			r := subscribe(t, survivor.b, topic, "late", 5)
			if got := r.waitCount(t, 5, 5*time.Second); checkConsecutive(got, 1) != nil {
				t.Errorf("last_n replay without quorum: %v", got)
			}
		})
	}
}

// A burst of writes during an outage must not block Publish itself: each
// caller gets its ErrUnavailable within the bound, however many others are
// waiting. (Submissions whose caller already gave up must not clog the
// queue either.)
func TestNoQuorumBurstAnswersPromptly(t *testing.T) {
	done := make(chan struct{})
	t.Cleanup(func() {
		// Runs after the cluster's cleanup closed the survivor, which
		// releases any writer still blocked in Publish.
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("writers still blocked after the node was closed")
		}
	})
	c := newTestCluster(t, 3)
	c.tweak = func(cfg *Config) { cfg.MaxBatch = 2 } // a submit queue of 8
	c.Start()
	const topic = "burst"
	c.CreateTopic(c.nodes[0], topic)
	survivor := c.Followers()[0]
	for _, tn := range c.Live() {
		if tn != survivor {
			c.Kill(tn.idx)
		}
	}
	waitFor(t, 5*time.Second, func() error {
		if id := survivor.node.LeaderID(); id != "" {
			return fmt.Errorf("%s still sees leader %s", survivor.id, id)
		}
		return nil
	})

	const writers = 20
	burst := 5 * time.Second
	bound := testCommitTimeout + testLeaderWait + 2*time.Second
	b := survivor.b
	var mu sync.Mutex
	var worst time.Duration
	var answered, slow, wrong int
	began := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Since(began) < burst; i++ {
				t0 := time.Now()
				// Publish, then Wait, as the gateway does. Publish itself
				// must not block: the gateway calls it on the reading
				// goroutine of a connection.
				_, err := waitResult(b.Publish(topic, broker.Message{ID: msgID(fmt.Sprint("w", w), i), Payload: []byte(`1`)}))
				took := time.Since(t0)
				mu.Lock()
				answered++
				worst = max(worst, took)
				if took > bound {
					slow++
				}
				if !errors.Is(err, broker.ErrUnavailable) && !errors.Is(err, broker.ErrClosed) {
					wrong++
				}
				mu.Unlock()
			}
		}(w)
	}
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(burst + bound):
		t.Errorf("writers still blocked %v after the burst began", burst+bound)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d publishes answered without quorum in %v; slowest %v; %d slower than %v",
		answered, time.Since(began).Round(time.Millisecond), worst.Round(time.Millisecond), slow, bound)
	if slow > 0 {
		t.Errorf("%d publishes took longer than %v to be answered", slow, bound)
	}
	if wrong > 0 {
		t.Errorf("%d publishes failed with an error other than ErrUnavailable", wrong)
	}
}
