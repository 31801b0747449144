package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// populate gives a cluster a varied state through node tn: a topic whose
// ring has wrapped, a small one, a deleted one and a recreated one.
func populate(t *testing.T, c *testCluster, tn *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*testCommitTimeout)
	defer cancel()
	for _, name := range []string{"wrapped", "small", "gone", "again"} {
		c.CreateTopic(tn, name)
	}
	var pend []broker.Pending
	for i := 0; i < 250; i++ {
		pend = append(pend, tn.b.Publish("wrapped", broker.Message{ID: msgID("w", i), Payload: payload(i)}))
	}
	for i := 0; i < 7; i++ {
		pend = append(pend, tn.b.Publish("small", broker.Message{ID: msgID("s", i), Payload: []byte(`{"nested":{"a":[1,2,3]},"s":"é\n"}`)}))
		pend = append(pend, tn.b.Publish("again", broker.Message{ID: msgID("a", i), Payload: payload(i)}))
	}
	for _, p := range pend {
		if res, err := p.Wait(ctx); err != nil || res.Err != nil {
			t.Fatalf("publish: %v / %v", err, res.Err)
		}
	}
	for _, step := range []func() error{
		func() error { return tn.b.DeleteTopic(ctx, "gone") },
		func() error { return tn.b.DeleteTopic(ctx, "again") },
		func() error { return tn.b.CreateTopic(ctx, "again") },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	publishOK(t, tn, "again", "again-after-recreate")
}

// checkReplay checks a last_n subscription on tn replays the newest n
// events of the topic's ring in want.
func checkReplay(t *testing.T, tn *testNode, want broker.State, topic string, n int) {
	t.Helper()
	ts, ok := topicState(want, topic)
	if !ok {
		t.Fatalf("no topic %s", topic)
	}
	r := subscribe(t, tn.b, topic, "replay-"+topic, n)
	got := r.waitCount(t, min(n, len(ts.Ring)), 5*time.Second)
	ring := ts.Ring[len(ts.Ring)-len(got):]
	for i := range got {
		if got[i].seq != ring[i].Seq || got[i].id != ring[i].Message.ID {
			t.Fatalf("%s: last_n=%d replay[%d] = %v, want %d %s", tn.id, n, i, got[i], ring[i].Seq, ring[i].Message.ID)
		}
	}
}

// Stopping every node and starting them again (same ids, dirs, addresses)
// keeps topics, rings, counts and seqs; the local last_n history is rebuilt
// and numbering continues.
func TestWholeClusterRestartKeepsState(t *testing.T) {
	c := newTestCluster(t, 3)
	c.Start()
	populate(t, c, c.Followers()[0])
	before := c.WaitConverged(10 * time.Second)
	if ts, _ := topicState(before, "wrapped"); ts.Count != 250 || len(ts.Ring) != 100 || ts.Ring[0].Seq != 151 {
		t.Fatalf("unexpected state before the restart: count=%d ring=%d", ts.Count, len(ts.Ring))
	}

	c.Shutdown()
	began := time.Now()
	for i := range c.nodes {
		c.Restart(i)
	}
	c.WaitLeader(formTimeout)
	after := c.WaitConverged(15 * time.Second)
	t.Logf("cluster back with its state %v after the restart", time.Since(began).Round(time.Millisecond))
	if err := stateDiff(before, after); err != nil {
		t.Fatalf("state after a whole-cluster restart: %v", err)
	}
	for _, tn := range c.nodes {
		checkReplay(t, tn, after, "wrapped", 10)
	}
	if res := publishOK(t, c.nodes[2], "wrapped", "after"); res.Seq != 251 {
		t.Errorf("first publish after the restart has seq %d, want 251", res.Seq)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*testCommitTimeout)
	defer cancel()
	if err := c.nodes[1].b.CreateTopic(ctx, "gone"); err != nil {
		t.Errorf("recreating a topic deleted before the restart: %v", err)
	}
}

// A single node (BootstrapExpect 1, no JOIN) keeps every topic and acked
// message across a restart, and has replayed them all once WaitReady
// returns.
func TestSingleNodeRestartKeepsState(t *testing.T) {
	c := newTestCluster(t, 1)
	c.Start()
	tn := c.nodes[0]
	populate(t, c, tn)
	before := tn.b.State()

	c.Kill(0)
	c.Restart(0)
	ctx, cancel := context.WithTimeout(context.Background(), formTimeout)
	defer cancel()
	began := time.Now()
	if err := tn.node.WaitReady(ctx, formTimeout); err != nil {
		t.Fatalf("WaitReady after restart: %v", err)
	}
	t.Logf("single node ready %v after the restart", time.Since(began).Round(time.Millisecond))
	// No polling: WaitReady promises the whole log is applied.
	if err := stateDiff(before, tn.b.State()); err != nil {
		t.Fatalf("state right after WaitReady: %v", err)
	}
	if ms := tn.node.Members(); len(ms) != 1 || ms[0].ID != "n1" || !ms[0].Voter || ms[0].Status != "alive" {
		t.Errorf("Members() = %+v", ms)
	}
	checkReplay(t, tn, before, "wrapped", 100)
	if res := publishOK(t, tn, "wrapped", "after"); res.Seq != 251 {
		t.Errorf("first publish after the restart has seq %d, want 251", res.Seq)
	}
	// And once more, with that publish in the log.
	after := tn.b.State()
	c.Kill(0)
	c.Restart(0)
	if err := tn.node.WaitReady(ctx, formTimeout); err != nil {
		t.Fatalf("WaitReady after the second restart: %v", err)
	}
	if err := stateDiff(after, tn.b.State()); err != nil {
		t.Fatalf("state after the second restart: %v", err)
	}
}

// A node that comes back on a new IP address (and new ports) rejoins: the
// leader updates its Raft address, it catches up, and it is a working voter
// (with another node down, the cluster still commits thanks to it).
func TestRestartOnNewAddressRejoins(t *testing.T) {
	requireLoopbackIP(t, "127.0.0.2")
	c := newTestCluster(t, 3)
	c.Start()
	c.CreateTopic(c.nodes[0], "moving")
	for i := 0; i < 20; i++ {
		publishOK(t, c.nodes[i%3], "moving", msgID("before", i))
	}
	leader := c.WaitLeader(5 * time.Second)
	moved := c.Followers()[0]
	oldRaft := moved.node.RaftAddr()
	c.Kill(moved.idx)
	// Commits go on while it is away.
	for i := 0; i < 20; i++ {
		publishOK(t, leader, "moving", msgID("away", i))
	}

	began := time.Now()
	c.RestartAt(moved.idx, "127.0.0.2")
	newRaft := moved.node.RaftAddr()
	if !strings.HasPrefix(newRaft, "127.0.0.2:") || !strings.HasPrefix(moved.node.GossipAddr(), "127.0.0.2:") {
		t.Fatalf("restarted node listens on raft %s gossip %s", newRaft, moved.node.GossipAddr())
	}
	t.Logf("%s moved from raft %s to %s", moved.id, oldRaft, newRaft)
	// The old address must first be declared dead (memberlist's suspicion
	// timeout, ~6s here) and then DeadNodeReclaimTime (2s) pass before
	// gossip lets the name move; 25s leaves room for that and a retry.
	waitFor(t, 25*time.Second, func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		for _, m := range l.node.Members() {
			if m.ID == moved.id {
				if m.RaftAddr != newRaft || !m.Voter || m.Status != "alive" || m.Address != "127.0.0.2" {
					return fmt.Errorf("leader %s sees %+v", l.id, m)
				}
				return nil
			}
		}
		return fmt.Errorf("leader %s does not list %s", l.id, moved.id)
	})
	t.Logf("leader lists %s at its new address %v after the restart", moved.id, time.Since(began).Round(time.Millisecond))
	c.WaitConverged(20 * time.Second)
	t.Logf("%s caught up %v after the restart", moved.id, time.Since(began).Round(time.Millisecond))
	// Every node agrees on the membership.
	waitFor(t, 20*time.Second, func() error {
		for _, tn := range c.nodes {
			if err := checkMembers(tn, c.nodes); err != nil {
				return err
			}
		}
		return nil
	})

	// Writes through the moved node (forwarded from its new address) commit
	// and are delivered there.
	sub := subscribe(t, moved.b, "moving", "on-moved", 0)
	res := publishOK(t, moved, "moving", "via-moved")
	if got := sub.waitCount(t, 1, 5*time.Second); got[0].seq != res.Seq {
		t.Errorf("subscriber on the moved node got %v, want seq %d", got[0], res.Seq)
	}

	// Take down the third node: the leader and the moved node must form the
	// quorum, which needs the moved node as a voter at its new address.
	var other *testNode
	for _, tn := range c.Live() {
		if tn != moved && !tn.node.Leader() {
			other = tn
		}
	}
	if other == nil {
		t.Fatalf("no third node to stop (leader %v)", c.Leader())
	}
	c.Kill(other.idx)
	c.WaitLeader(10 * time.Second)
	for i := 0; i < 10; i++ {
		publishOK(t, c.Live()[i%2], "moving", msgID("pair", i))
	}
	c.WaitConverged(10 * time.Second)
}

func requireLoopbackIP(t *testing.T, ip string) {
	t.Helper()
	if err := checkLoopbackIP(ip); err != nil {
		t.Skipf("cannot use %s on this machine: %v", ip, err)
	}
}

// A node closed with LeaveOnShutdown leaves for good: the leader removes it
// from the Raft configuration, so the remaining two are the whole cluster.
func TestLeaveOnShutdownRemovesVoter(t *testing.T) {
	c := newTestCluster(t, 3)
	c.tweak = func(cfg *Config) { cfg.LeaveOnShutdown = true }
	c.Start()
	c.CreateTopic(c.nodes[0], "t")
	leaving := c.Followers()[0]
	c.Kill(leaving.idx)
	waitFor(t, 12*time.Second, func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		for _, m := range l.node.Members() {
			if m.ID == leaving.id {
				return fmt.Errorf("leader %s still lists %+v", l.id, m)
			}
		}
		return nil
	})
	for i, tn := range c.Live() {
		publishOK(t, tn, "t", msgID("after-leave", i))
	}
}
