package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// Topic admin sent to followers is carried to the leader; its outcome,
// refusals included, comes back through forwarding as the broker's sentinel
// errors, and the change is visible on every node.
func TestTopicAdminThroughFollower(t *testing.T) {
	c := newTestCluster(t, 3)
	c.Start()
	f := c.Followers()
	if len(f) != 2 {
		t.Fatalf("want 2 followers, got %d", len(f))
	}
	f1, f2 := f[0], f[1]
	ctx, cancel := context.WithTimeout(context.Background(), 4*testCommitTimeout)
	defer cancel()

	if err := f1.b.CreateTopic(ctx, "orders"); err != nil {
		t.Fatalf("CreateTopic via follower %s: %v", f1.id, err)
	}
	// Read-your-writes: the follower that acked it has applied it.
	if !f1.b.HasTopic("orders") {
		t.Errorf("%s acked CreateTopic but does not have the topic yet", f1.id)
	}
	waitFor(t, 5*time.Second, func() error {
		for _, tn := range c.nodes {
			if !tn.b.HasTopic("orders") {
				return fmt.Errorf("%s does not have topic orders", tn.id)
			}
		}
		return nil
	})

	// TOPIC_EXISTS through forwarding, from both followers, and locally on
	// the leader.
	for _, tn := range []*testNode{f1, f2, c.Leader()} {
		if err := tn.b.CreateTopic(ctx, "orders"); !errors.Is(err, broker.ErrTopicExists) {
			t.Errorf("second CreateTopic via %s: err = %v, want ErrTopicExists", tn.id, err)
		}
	}
	if err := f2.b.CreateTopic(ctx, "bad name!"); !errors.Is(err, broker.ErrInvalidTopicName) {
		t.Errorf("CreateTopic with an invalid name: err = %v, want ErrInvalidTopicName", err)
	}

	// A subscriber on another node ends when a follower deletes the topic.
	sub := subscribe(t, f2.b, "orders", "watcher", 0)
	if err := f1.b.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatalf("DeleteTopic via follower %s: %v", f1.id, err)
	}
	if f1.b.HasTopic("orders") {
		t.Errorf("%s acked DeleteTopic but still has the topic", f1.id)
	}
	waitFor(t, 5*time.Second, func() error {
		for _, tn := range c.nodes {
			if tn.b.HasTopic("orders") {
				return fmt.Errorf("%s still has topic orders", tn.id)
			}
		}
		if sub.End() != broker.EndTopicDeleted {
			return fmt.Errorf("subscriber on %s: end reason %v, want EndTopicDeleted", f2.id, sub.End())
		}
		return nil
	})

	// TOPIC_NOT_FOUND through forwarding: delete again, publish to it.
	for _, tn := range []*testNode{f1, f2} {
		if err := tn.b.DeleteTopic(ctx, "orders"); !errors.Is(err, broker.ErrTopicNotFound) {
			t.Errorf("second DeleteTopic via %s: err = %v, want ErrTopicNotFound", tn.id, err)
		}
		res, err := tn.b.Publish("orders", broker.Message{ID: "m1", Payload: []byte(`1`)}).Wait(ctx)
		if err != nil || !errors.Is(res.Err, broker.ErrTopicNotFound) {
			t.Errorf("Publish to a deleted topic via %s: err = %v, res.Err = %v, want ErrTopicNotFound", tn.id, err, res.Err)
		}
	}

	// Recreating it starts over at seq 1.
	if err := f2.b.CreateTopic(ctx, "orders"); err != nil {
		t.Fatalf("recreate via %s: %v", f2.id, err)
	}
	if res := publishOK(t, f2, "orders", "first"); res.Seq != 1 {
		t.Errorf("first publish to the recreated topic has seq %d, want 1", res.Seq)
	}
	c.WaitConverged(10 * time.Second)
}

// Publishes from every node at once, several pipelining goroutines per node,
// reach the subscribers of every node in one identical order: seq 1..N with
// no gap and no duplicate, each publisher's messages in submission order,
// and the seq each publisher was acked with is the one subscribers saw.
// Subscribers that join mid-stream with last_n get replay and live events
// joined without gap or duplicate. The "disturbed" variant drops every third
// gossip copy of an event and slows one node's Raft apply, so both delivery
// paths race and events arrive ahead of gaps.
func TestConcurrentPublishesOneOrderEverywhere(t *testing.T) {
	t.Run("plain", func(t *testing.T) { concurrentPublishes(t, false) })
	t.Run("disturbed", func(t *testing.T) { concurrentPublishes(t, true) })
}

func concurrentPublishes(t *testing.T, disturb bool) {
	const (
		perNode   = 3   // publishing goroutines per node
		perPub    = 150 // messages per goroutine
		window    = 40  // Pendings submitted before waiting
		ringTopic = "events"
	)
	c := newTestCluster(t, 3)
	if disturb {
		c.tweak = func(cfg *Config) {
			var copies atomic.Uint64
			cfg.Hooks.GossipEvent = func(string, uint64) bool { return copies.Add(1)%3 != 0 }
			if cfg.NodeID == "n2" {
				var applies atomic.Uint64
				cfg.Hooks.BeforeApply = func(uint64) {
					if applies.Add(1)%4 == 0 {
						time.Sleep(3 * time.Millisecond)
					}
				}
			}
		}
	}
	c.Start()
	c.CreateTopic(c.nodes[0], ringTopic)
	c.WaitConverged(10 * time.Second)

	var subs []*recorder
	for _, tn := range c.nodes {
		subs = append(subs, subscribe(t, tn.b, ringTopic, "sub-"+tn.id, 0))
	}

	type ack struct {
		id  string
		seq uint64
	}
	total := len(c.nodes) * perNode * perPub
	acks := make(chan ack, total)
	errs := make(chan error, len(c.nodes)*perNode)
	var acked atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for _, tn := range c.nodes {
		for g := 0; g < perNode; g++ {
			wg.Add(1)
			go func(tn *testNode, pub string) {
				defer wg.Done()
				var lastSeq uint64
				pend := make([]broker.Pending, 0, window)
				for i := 0; i < perPub; i += window {
					pend = pend[:0]
					for j := i; j < i+window && j < perPub; j++ {
						pend = append(pend, tn.b.Publish(ringTopic, broker.Message{ID: msgID(pub, j), Payload: payload(j)}))
					}
					for k, p := range pend {
						res, err := waitResult(p)
						if err == nil {
							err = res.Err
						}
						if err != nil {
							errs <- fmt.Errorf("%s message %d: %w", pub, i+k, err)
							return
						}
						if res.Seq <= lastSeq {
							errs <- fmt.Errorf("%s message %d acked with seq %d after seq %d: submission order lost", pub, i+k, res.Seq, lastSeq)
							return
						}
						lastSeq = res.Seq
						acked.Add(1)
						acks <- ack{id: msgID(pub, i+k), seq: res.Seq}
					}
				}
			}(tn, fmt.Sprintf("%s.g%d", tn.id, g))
		}
	}
	// Late subscribers, with a replay, while publishing goes on.
	waitFor(t, 20*time.Second, func() error {
		if n := acked.Load(); n < int64(total/3) {
			return fmt.Errorf("%d acks", n)
		}
		return nil
	})
	var late []*recorder
	for _, tn := range c.nodes {
		late = append(late, subscribe(t, tn.b, ringTopic, "late-"+tn.id, 20))
	}
	wg.Wait()
	close(errs)
	close(acks)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	elapsed := time.Since(start)
	t.Logf("%d acked publishes from %d goroutines in %v (%.0f/s)", total, len(c.nodes)*perNode, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds())

	ackSeq := make(map[string]uint64, total)
	for a := range acks {
		ackSeq[a.id] = a.seq
	}
	if len(ackSeq) != total {
		t.Fatalf("%d distinct acks, want %d", len(ackSeq), total)
	}

	var ref []rec
	for i, r := range subs {
		got := r.waitCount(t, total, 20*time.Second)
		if len(got) != total {
			t.Errorf("subscriber on %s got %d events, want %d", c.nodes[i].id, len(got), total)
		}
		if err := checkConsecutive(got, 1); err != nil {
			t.Errorf("subscriber on %s: %v", c.nodes[i].id, err)
		}
		if d := r.sub.Dropped(); d != 0 {
			t.Errorf("subscriber on %s dropped %d events", c.nodes[i].id, d)
		}
		if ref == nil {
			ref = got
			continue
		}
		for k := range ref {
			if k >= len(got) || got[k] != ref[k] {
				t.Fatalf("subscribers on %s and %s differ at position %d: %v vs %v", c.nodes[0].id, c.nodes[i].id, k, ref[k], got[min(k, len(got)-1)])
			}
		}
	}

	// Each publisher's messages in submission order, at the acked seq.
	next := map[string]int{}
	for _, e := range ref {
		pub, _, ok := strings.Cut(e.id, "-")
		if !ok {
			t.Fatalf("unexpected message id %q", e.id)
		}
		if want := msgID(pub, next[pub]); e.id != want {
			t.Fatalf("seq %d is %s, want %s next from publisher %s", e.seq, e.id, want, pub)
		}
		next[pub]++
		if s := ackSeq[e.id]; s != e.seq {
			t.Errorf("%s was acked with seq %d but delivered at seq %d", e.id, s, e.seq)
		}
	}

	// Late subscribers: a replay of up to 20, then live, consecutive to N.
	for i, r := range late {
		var got []rec
		waitFor(t, 20*time.Second, func() error {
			got = r.Events()
			if len(got) == 0 || got[len(got)-1].seq != uint64(total) {
				return fmt.Errorf("late subscriber on %s has %d events", c.nodes[i].id, len(got))
			}
			return nil
		})
		if err := checkConsecutive(got, got[0].seq); err != nil {
			t.Errorf("late subscriber on %s (from seq %d): %v", c.nodes[i].id, got[0].seq, err)
		}
		for _, e := range got {
			if ref[e.seq-1] != e {
				t.Errorf("late subscriber on %s: %v, want %v", c.nodes[i].id, e, ref[e.seq-1])
				break
			}
		}
	}

	st := c.WaitConverged(10 * time.Second)
	ts, _ := topicState(st, ringTopic)
	if ts.Count != uint64(total) || ts.LastSeq != uint64(total) {
		t.Errorf("replicated count=%d last_seq=%d, want %d", ts.Count, ts.LastSeq, total)
	}
}

// After a publish is acked through a follower, a subscribe with last_n on
// that same follower replays it: the follower resolves forwarded writes only
// once it has delivered them locally. The follower's Raft apply is slowed
// (and, in the last phase, the gossip copies dropped) so that the leader's
// answer reliably arrives before the follower has the event.
func TestReadYourWritesThroughFollower(t *testing.T) {
	var slowNode atomic.Value // node id whose apply is slowed
	slowNode.Store("")
	var dropGossip atomic.Bool
	c := newTestCluster(t, 3)
	c.tweak = func(cfg *Config) {
		id := cfg.NodeID
		cfg.Hooks.BeforeApply = func(uint64) {
			if slowNode.Load() == id {
				time.Sleep(20 * time.Millisecond)
			}
		}
		cfg.Hooks.GossipEvent = func(string, uint64) bool {
			return !(dropGossip.Load() && slowNode.Load() == id)
		}
	}
	c.Start()
	c.CreateTopic(c.nodes[0], "ryw")
	c.WaitConverged(10 * time.Second)
	phases := []struct {
		name       string
		slow, drop bool
	}{{"undisturbed", false, false}, {"slow-apply", true, false}, {"slow-apply-no-gossip", true, true}}
	for _, ph := range phases {
		for _, f := range c.Followers() {
			if ph.slow {
				slowNode.Store(f.id)
			} else {
				slowNode.Store("")
			}
			dropGossip.Store(ph.drop)
			for i := 0; i < 15; i++ {
				id := msgID("ryw-"+ph.name+"-"+f.id, i)
				res := publishOK(t, f, "ryw", id)
				r := &recorder{wake: make(chan struct{}, 1)}
				sub, err := f.b.Subscribe("ryw", "reader", 1, r)
				if err != nil {
					t.Fatal(err)
				}
				replay, _ := sub.Drain(nil)
				f.b.Unsubscribe(sub)
				if len(replay) != 1 || replay[0].Message.ID != id || replay[0].Seq != res.Seq {
					var got []string
					for _, e := range replay {
						got = append(got, fmt.Sprintf("%s#%d", e.Message.ID, e.Seq))
					}
					t.Fatalf("%s: on %s, last_n=1 right after the ack of %s (seq %d) replays %v", ph.name, f.id, id, res.Seq, got)
				}
			}
		}
	}
	slowNode.Store("")
	dropGossip.Store(false)
	c.WaitConverged(10 * time.Second)
}
