package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// A publish made after the node was closed fails at once with ErrClosed;
// it must not be queued where nothing will ever take it (and be answered
// only by the commit timeout, as ErrUnavailable).
func TestPublishAfterCloseFailsFast(t *testing.T) {
	c := newTestCluster(t, 1)
	c.Start()
	c.CreateTopic(c.nodes[0], "t")
	b := c.nodes[0].b
	c.Kill(0)
	for i := 0; i < 20; i++ {
		began := time.Now()
		_, err := waitResult(b.Publish("t", broker.Message{ID: msgID("late", i), Payload: []byte(`1`)}))
		took := time.Since(began)
		if !errors.Is(err, broker.ErrClosed) || took > time.Second {
			t.Fatalf("publish %d after Close: err = %v after %v, want ErrClosed at once", i, err, took)
		}
	}
}

// When the leader shuts down with forwarded commands still pending, the
// follower must learn ErrUnavailable/ErrClosed (outcome unknown) or see the
// link drop, never an unclassified error (which the gateway reports as
// INTERNAL). This drives serveForward over a loopback connection, with
// nothing committing the command, and cancels the node as Close does. Which
// of "answer" and "close the link" wins is a race, hence the rounds.
func TestForwardedOutcomeOnLeaderShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for round := 0; round < 50; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		n := &Node{
			cfg:      Config{CommitTimeout: 5 * time.Second},
			log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
			submitCh: make(chan submission, 16),
			ctx:      ctx,
			cancel:   cancel,
		}
		served := make(chan struct{})
		go func() {
			defer close(served)
			if c, err := ln.Accept(); err == nil {
				n.serveForward(c)
			}
		}()
		followerEnd, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}

		cmd := broker.Command{Op: broker.OpPublish, Topic: "t", Message: broker.Message{ID: "m", Payload: []byte(`1`)}}
		w := bufio.NewWriter(followerEnd)
		if err := writeFrame(w, appendCommand(binary.AppendUvarint(nil, 1), &cmd)); err != nil {
			t.Fatal(err)
		}
		_ = followerEnd.SetDeadline(time.Now().Add(5 * time.Second))
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		// The command reached the leader's queue: now the leader stops.
		select {
		case <-n.submitCh:
		case <-time.After(5 * time.Second):
			t.Fatal("forwarded command never submitted")
		}
		cancel()
		frame, err := readFrame(bufio.NewReader(followerEnd), nil)
		if err == nil {
			d := decoder{buf: frame}
			d.uvarint()
			_, res, cerr := d.outcome()
			if d.err != nil {
				t.Fatalf("round %d: malformed outcome: %v", round, d.err)
			}
			if !errors.Is(cerr, broker.ErrUnavailable) && !errors.Is(cerr, broker.ErrClosed) {
				t.Fatalf("round %d: the follower was told err=%v (res.Err=%v) for a command whose leader shut down; want ErrUnavailable or ErrClosed", round, cerr, res.Err)
			}
		}
		followerEnd.Close()
		<-served
		n.wg.Wait()
	}
}

// memberlist.Members returns pointers into memberlist's own node table,
// which it rewrites in place (Addr, Port, Meta, State) when an alive message
// arrives; reading them after Members returns is a data race (hashicorp/
// memberlist#306). This test makes one node re-announce its metadata while
// another reads its membership the ways this package does. It can only
// fail under -race.
func TestMembershipReadsDoNotRaceGossipUpdates(t *testing.T) {
	c := newTestCluster(t, 2)
	c.Start()
	waitFor(t, formTimeout, func() error {
		for _, tn := range c.nodes {
			if err := checkMembers(tn, c.nodes); err != nil {
				return err
			}
		}
		return nil
	})
	announcer, reader := c.nodes[0].node, c.nodes[1].node
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// Each update waits for its broadcast (up to ~0.7s here).
		for end := time.Now().Add(2 * time.Second); time.Now().Before(end); {
			announcer.refreshMeta()
		}
		close(stop)
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			reader.Members()
			reader.GossipAddr()
			reader.fanout.syncPeers()
		}
	}()
	wg.Wait()
}

// A forwarding frame carrying a command with an op code the state machine
// does not know (a corrupt frame, or a newer follower during a rolling
// upgrade) must be refused by the leader, not written into the Raft log
// where applying it panics on every node. The scenario runs in a child
// process so the panic it provokes does not take the test binary down.
func TestForwardedUnknownOpIsRefused(t *testing.T) {
	if os.Getenv("ENCLAVE_POISON_CHILD") == "1" {
		poisonScenario(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestForwardedUnknownOpIsRefused$", "-test.v")
	// The child's t.TempDir dirs land under ours, so a crashed child's
	// data dirs are removed too.
	cmd.Env = append(os.Environ(), "ENCLAVE_POISON_CHILD=1", "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		s := string(out)
		if i := strings.Index(s, "panic:"); i >= 0 {
			s = s[i:min(len(s), i+600)]
		} else if len(s) > 3000 {
			s = s[len(s)-3000:]
		}
		t.Fatalf("the cluster did not survive an unknown op in a forwarded frame (%v):\n%s", err, s)
	}
}

func poisonScenario(t *testing.T) {
	c := newTestCluster(t, 3)
	c.Start()
	c.CreateTopic(c.nodes[0], "t")
	leader := c.WaitLeader(5 * time.Second)
	conn, err := dialMux(leader.node.RaftAddr(), muxForward, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bad := broker.Command{Op: broker.Op(200), Topic: "t", TS: time.Now(), Message: broker.Message{ID: "poison", Payload: []byte(`1`)}}
	w := bufio.NewWriter(conn)
	if err := writeFrame(w, appendCommand(binary.AppendUvarint(nil, 1), &bad)); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// Whatever the leader answers (an error, or closing the link), the
	// cluster must go on committing on every node.
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, _ = readFrame(bufio.NewReader(conn), nil)
	for i, tn := range c.nodes {
		publishOK(t, tn, "t", msgID("after-poison", i))
	}
	c.WaitConverged(10 * time.Second)
}
