package cluster

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// errNoLeader is what a "has a leader appeared?" poll returns while none has.
var errNoLeader = errors.New("no leader")

func anyLeader(c *testCluster) error {
	for _, tn := range c.Live() {
		if id := tn.node.LeaderID(); id != "" {
			return nil
		}
	}
	return errNoLeader
}

// gossipSees waits until each of nodes sees exactly want gossip members.
func gossipSees(t *testing.T, nodes []*testNode, want int) {
	t.Helper()
	waitFor(t, formTimeout, func() error {
		for _, tn := range nodes {
			if got := tn.node.list.NumMembers(); got != want {
				return fmt.Errorf("%s sees %d gossip members, want %d", tn.id, got, want)
			}
		}
		return nil
	})
}

// Nodes that see each other but were started with different
// BOOTSTRAP_EXPECT must not bootstrap: with n3 expecting 2, n1 and n2
// (expecting 3) would otherwise bootstrap {n1,n2,n3} while n3, at another
// moment, could bootstrap a different pair. Every node logs why it waits.
func TestMismatchedBootstrapExpectDoesNotBootstrap(t *testing.T) {
	c := newTestCluster(t, 3)
	c.tweak = func(cfg *Config) {
		if cfg.NodeID == "n3" {
			cfg.BootstrapExpect = 2
		}
	}
	c.StartSameJoin()
	gossipSees(t, c.nodes, 3)
	// Bootstrapping takes a few polls of 200ms once gossip agrees, and an
	// election about a second: 5s would show a leader if one was coming.
	if err := poll(5*time.Second, func() error { return anyLeader(c) }); err == nil {
		t.Fatalf("a leader was elected although the nodes disagree on BOOTSTRAP_EXPECT: %+v", c.nodes[0].node.Members())
	}
	for _, tn := range c.nodes {
		if tn.node.bootstrapped() {
			t.Errorf("%s bootstrapped with a conflicting expect", tn.id)
		}
	}
	if logs := c.logs.String(); !strings.Contains(logs, "same BOOTSTRAP_EXPECT") {
		t.Errorf("no node logged the conflicting BOOTSTRAP_EXPECT; logs:\n%s", logs)
	}
}

// The same CLUSTER_KEY on every node: three nodes form and deliver. A node
// with another key cannot decrypt their gossip and never becomes a member.
func TestClusterKey(t *testing.T) {
	key := []byte("0123456789abcdef")
	other := []byte("fedcba9876543210")
	c := newTestCluster(t, 4)
	c.tweak = func(cfg *Config) {
		cfg.BootstrapExpect = 3
		cfg.ClusterKey = key
		if cfg.NodeID == "n4" {
			cfg.ClusterKey = other
		}
	}
	c.startNode(c.nodes[0], nil)
	join := []string{c.nodes[0].node.GossipAddr()}
	c.startNode(c.nodes[1], join)
	c.startNode(c.nodes[2], join)
	c.WaitLeader(formTimeout)

	c.CreateTopic(c.nodes[0], "secret")
	c.WaitConverged(10 * time.Second)
	rs := make([]*recorder, 3)
	for i := range rs {
		rs[i] = subscribe(t, c.nodes[i].b, "secret", "sub", 0)
	}
	for i := 0; i < 10; i++ {
		publishOK(t, c.nodes[i%3], "secret", msgID("p", i))
	}
	for i, r := range rs {
		if err := checkConsecutive(r.waitCount(t, 10, 10*time.Second), 1); err != nil {
			t.Errorf("subscriber on %s: %v", c.nodes[i].id, err)
		}
	}

	c.startNode(c.nodes[3], join)
	stranger := c.nodes[3]
	seen := poll(4*time.Second, func() error {
		if n := stranger.node.list.NumMembers(); n > 1 {
			return nil
		}
		for _, tn := range c.nodes[:3] {
			for _, m := range tn.node.Members() {
				if m.ID == stranger.id {
					return nil
				}
			}
		}
		return errors.New("not seen")
	})
	if seen == nil {
		t.Fatalf("a node with another cluster key joined: it sees %d members; n1 sees %+v", stranger.node.list.NumMembers(), c.nodes[0].node.Members())
	}
	if id := stranger.node.LeaderID(); id != "" {
		t.Errorf("the node with another key follows leader %s", id)
	}
}

// Subscriptions on one node show up in the cluster-wide counts every other
// node reports (GET /topics and /stats add them to the local ones), and go
// away after an unsubscribe, within a few sharing periods.
func TestRemoteSubscriberCounts(t *testing.T) {
	const bound = 2500 * time.Millisecond // 750ms period, plus gossip
	c := newTestCluster(t, 3)
	c.Start()
	c.CreateTopic(c.nodes[0], "counted")
	a, others := c.nodes[0], c.nodes[1:]

	r1 := subscribe(t, a.b, "counted", "s1", 0)
	r2 := subscribe(t, a.b, "counted", "s2", 0)
	countsAre := func(want int) func() error {
		return func() error {
			for _, tn := range others {
				if got := tn.node.RemoteSubscribers()["counted"]; got != want {
					return fmt.Errorf("%s counts %d remote subscribers, want %d", tn.id, got, want)
				}
			}
			if got := a.node.RemoteSubscribers()["counted"]; got != 0 {
				return fmt.Errorf("%s counts its own subscribers as remote: %d", a.id, got)
			}
			return nil
		}
	}
	waitFor(t, bound, countsAre(2))
	a.b.Unsubscribe(r1.sub)
	waitFor(t, bound, countsAre(1))
	a.b.Unsubscribe(r2.sub)
	waitFor(t, bound, countsAre(0))
}

// gate blocks callers while closed; release opens it for good.
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate     { return &gate{ch: make(chan struct{})} }
func (g *gate) wait()    { <-g.ch }
func (g *gate) release() { g.once.Do(func() { close(g.ch) }) }

func (g *gate) open() bool {
	select {
	case <-g.ch:
		return true
	default:
		return false
	}
}

// With one follower's Raft apply held up, its subscribers still receive
// every event, in order, from the leader's gossip copies; when the apply
// catches up it delivers nothing twice.
func TestDelayedApplyDeliversByGossipOnce(t *testing.T) {
	const n = 50
	hold := newGate()
	var blocked atomic.Value // node id whose apply is held
	blocked.Store("")
	var heldAt atomic.Uint64
	c := newTestCluster(t, 3)
	t.Cleanup(hold.release) // before the cluster shuts down (LIFO)
	c.tweak = func(cfg *Config) {
		id := cfg.NodeID
		cfg.Hooks.BeforeApply = func(index uint64) {
			if blocked.Load() == id && !hold.open() {
				heldAt.CompareAndSwap(0, index)
				hold.wait()
			}
		}
	}
	c.Start()
	c.CreateTopic(c.nodes[0], "gossiped")
	leader := c.WaitLeader(5 * time.Second)
	slow := c.Followers()[0]
	c.WaitConverged(10 * time.Second)
	r := subscribe(t, slow.b, "gossiped", "slow-sub", 0)
	blocked.Store(slow.id)

	for i := 0; i < n; i++ {
		publishOK(t, leader, "gossiped", msgID("e", i))
	}
	got := r.waitCount(t, n, 10*time.Second)
	if heldAt.Load() == 0 {
		t.Fatalf("%s never reached the held apply", slow.id)
	}
	// Raft's AppliedIndex counts entries handed to the FSM, not applied:
	// the replicated state shows the apply is really held.
	if ts, _ := topicState(slow.b.State(), "gossiped"); ts.LastSeq >= n {
		t.Fatalf("%s applied up to seq %d although its apply is held at entry %d", slow.id, ts.LastSeq, heldAt.Load())
	}
	if err := checkConsecutive(got, 1); err != nil {
		t.Fatalf("while its apply was held: %v", err)
	}
	for i, e := range got {
		if e.id != msgID("e", i) {
			t.Fatalf("event %d is %s, want %s", i, e.id, msgID("e", i))
		}
	}

	hold.release()
	c.WaitConverged(10 * time.Second)
	// Give the released apply path time to (wrongly) deliver again: the
	// broker delivers synchronously in Apply, but the subscriber's drain
	// is asynchronous.
	_ = poll(300*time.Millisecond, func() error {
		if len(r.Events()) > n {
			return nil
		}
		return errors.New("no duplicate yet")
	})
	if err := checkConsecutive(r.Events(), 1); err != nil || len(r.Events()) != n {
		t.Fatalf("after the apply caught up: %d events (%v), want exactly %d", len(r.Events()), err, n)
	}
}

// memberlist hands user messages to the delegate on the goroutine that
// also processes alive, suspect and dead messages. A node whose local
// delivery is stalled must still follow membership: here it learns of a
// node that joined through another member, which only gossip tells it.
func TestStalledDeliveryDoesNotStallMembership(t *testing.T) {
	hold := newGate()
	var stalled atomic.Value
	stalled.Store("")
	entered := make(chan struct{}, 1)
	c := newTestCluster(t, 4)
	t.Cleanup(hold.release)
	c.tweak = func(cfg *Config) {
		cfg.BootstrapExpect = 3
		id := cfg.NodeID
		cfg.Hooks.GossipEvent = func(string, uint64) bool {
			if stalled.Load() == id && !hold.open() {
				select {
				case entered <- struct{}{}:
				default:
				}
				hold.wait()
			}
			return true
		}
	}
	c.startNode(c.nodes[0], nil)
	join := []string{c.nodes[0].node.GossipAddr()}
	c.startNode(c.nodes[1], join)
	c.startNode(c.nodes[2], join)
	leader := c.WaitLeader(formTimeout)
	c.CreateTopic(leader, "t")
	// The stalled node must not be the one the newcomer contacts.
	var slow *testNode
	for _, tn := range c.nodes[1:3] {
		if tn != leader {
			slow = tn
			break
		}
	}
	stalled.Store(slow.id)
	publishOK(t, leader, "t", "stall")
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatalf("no event copy reached %s by gossip", slow.id)
	}

	c.startNode(c.nodes[3], join)
	waitFor(t, 6*time.Second, func() error {
		for _, m := range slow.node.Members() {
			if m.ID == "n4" && m.Status == "alive" {
				return nil
			}
		}
		return fmt.Errorf("%s (delivery stalled) does not list n4 as alive: %+v", slow.id, slow.node.Members())
	})
}
