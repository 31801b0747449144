package cluster

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Three nodes started with the same JOIN list (each one's own address
// included, the first started before the others exist) form one cluster:
// exactly one leader, and every node's Members() lists all three as alive
// voters at their advertised addresses.
func TestClusterFormsFromSameJoinList(t *testing.T) {
	c := newTestCluster(t, 3)
	start := time.Now()
	join := c.StartSameJoin()
	leader := c.WaitLeader(formTimeout)
	t.Logf("leader %s elected %v after start (join list %v)", leader.id, time.Since(start).Round(time.Millisecond), join)

	waitFor(t, formTimeout, func() error {
		for _, tn := range c.nodes {
			if err := checkMembers(tn, c.nodes); err != nil {
				return err
			}
		}
		return nil
	})
	t.Logf("membership agreed %v after start", time.Since(start).Round(time.Millisecond))

	// Still exactly one leader, and every node agrees on it.
	if got := c.WaitLeader(5 * time.Second); got != leader {
		t.Logf("leadership moved from %s to %s during formation", leader.id, got.id)
	}
	for _, tn := range c.nodes {
		if tn.node.ID() != tn.id {
			t.Errorf("ID() = %q, want %q", tn.node.ID(), tn.id)
		}
		if !strings.HasPrefix(tn.node.RaftAddr(), "127.0.0.1:") || !strings.HasPrefix(tn.node.GossipAddr(), "127.0.0.1:") {
			t.Errorf("%s listens on raft %s gossip %s, want 127.0.0.1", tn.id, tn.node.RaftAddr(), tn.node.GossipAddr())
		}
	}

	// The cluster commits.
	c.CreateTopic(c.nodes[2], "formed")
	c.WaitConverged(10 * time.Second)
}

// checkMembers checks tn.node.Members() lists exactly the nodes in all, each
// an alive voter at its advertised addresses.
func checkMembers(tn *testNode, all []*testNode) error {
	ms := tn.node.Members()
	if len(ms) != len(all) {
		return fmt.Errorf("%s sees %d members, want %d: %+v", tn.id, len(ms), len(all), ms)
	}
	var errs []error
	for i, m := range ms {
		want := all[i]
		if m.ID != want.id {
			errs = append(errs, fmt.Errorf("%s: member %d is %q, want %q", tn.id, i, m.ID, want.id))
			continue
		}
		if m.Status != "alive" || !m.Voter {
			errs = append(errs, fmt.Errorf("%s sees %s status=%s voter=%v", tn.id, m.ID, m.Status, m.Voter))
		}
		if m.Address != want.ip {
			errs = append(errs, fmt.Errorf("%s sees %s at address %s, want %s", tn.id, m.ID, m.Address, want.ip))
		}
		if want.up() && m.RaftAddr != want.node.RaftAddr() {
			errs = append(errs, fmt.Errorf("%s sees %s raft address %s, want %s", tn.id, m.ID, m.RaftAddr, want.node.RaftAddr()))
		}
	}
	return errors.Join(errs...)
}
