package cluster

// In-process multi-node test harness: real Raft (raft-boltdb in t.TempDir)
// and real memberlist gossip, all on 127.0.0.x loopback addresses, in the
// style of rqlite's store_multi_test.go and nats' checkFor. Nothing here
// sleeps to assert: every wait polls a condition with a deadline.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// Timings used by every test cluster. Raft's heartbeat and election
// timeouts are the production defaults (1s): 500ms (with the leader lease
// then at 250ms) elected faster, but under -race on two busy cores a leader
// stepped down after a ~0.8s stall ("failed to contact quorum"), failing
// unrelated setup writes. ENCLAVE_TEST_RAFT_TIMEOUT overrides both.
var (
	testHeartbeat = envDuration("ENCLAVE_TEST_RAFT_TIMEOUT", time.Second)
	testElection  = testHeartbeat
)

const (
	testCommitTimeout = 3 * time.Second
	testLeaderWait    = 1500 * time.Millisecond

	// formTimeout bounds how long a fresh cluster may take to elect a
	// leader and agree on membership.
	formTimeout = 20 * time.Second
)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// logSink keeps the last lines the nodes logged, to dump when a test fails.
type logSink struct {
	mu    sync.Mutex
	lines []string
	max   int
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	if over := len(s.lines) - s.max; over > 0 {
		s.lines = append(s.lines[:0:0], s.lines[over:]...)
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.lines, "\n")
}

// testLogLevel is WARN unless ENCLAVE_TEST_LOG says debug or info.
func testLogLevel() slog.Level {
	switch strings.ToLower(os.Getenv("ENCLAVE_TEST_LOG")) {
	case "debug":
		return slog.LevelDebug
	case "info":
		return slog.LevelInfo
	}
	return slog.LevelWarn
}

// testNode is one server of a testCluster. node and b are nil while the
// node is down; dir, ports and address survive restarts.
type testNode struct {
	idx        int
	id         string
	dir        string
	ip         string // bind and advertise address
	raftPort   int    // 0 until first started
	gossipPort int
	b          *broker.Broker
	node       *Node
}

func (tn *testNode) up() bool { return tn.node != nil }

// testCluster is a set of nodes in this process.
type testCluster struct {
	t     testing.TB
	nodes []*testNode
	logs  *logSink
	// tweak adjusts each node's Config before it starts (tests that need
	// another timeout or batch size set it before Start).
	tweak func(*Config)
	// brokerCfg is the broker configuration of every node.
	brokerCfg broker.Config
}

func newTestCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	c := &testCluster{
		t:         t,
		logs:      &logSink{max: 4000},
		brokerCfg: broker.Config{RingSize: 100, QueueSize: 1 << 16},
	}
	for i := 0; i < n; i++ {
		// Make the data dirs before registering Shutdown, so Cleanup
		// (LIFO) closes the nodes before the dirs are removed.
		c.nodes = append(c.nodes, &testNode{idx: i, id: "n" + strconv.Itoa(i+1), dir: t.TempDir(), ip: "127.0.0.1"})
	}
	t.Cleanup(func() {
		c.Shutdown()
		if t.Failed() || os.Getenv("ENCLAVE_TEST_LOG") != "" {
			t.Logf("node logs (last lines, level >= %v):\n%s", testLogLevel(), c.logs.String())
		}
	})
	return c
}

// config is the node's cluster.Config for a (re)start.
func (c *testCluster) config(tn *testNode, join []string) Config {
	cfg := Config{
		NodeID:           tn.id,
		DataDir:          tn.dir,
		BindAddr:         tn.ip,
		AdvertiseAddr:    tn.ip,
		RaftPort:         tn.raftPort,
		GossipPort:       tn.gossipPort,
		Join:             join,
		BootstrapExpect:  len(c.nodes),
		HeartbeatTimeout: testHeartbeat,
		ElectionTimeout:  testElection,
		CommitTimeout:    testCommitTimeout,
		LeaderWait:       testLeaderWait,
		Logger: slog.New(slog.NewTextHandler(c.logs, &slog.HandlerOptions{Level: testLogLevel()})).
			With("node", tn.id),
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	return cfg
}

// startNode starts tn with a fresh broker (a process restart) and records
// the ports it got.
func (c *testCluster) startNode(tn *testNode, join []string) {
	c.t.Helper()
	if tn.up() {
		c.t.Fatalf("%s is already running", tn.id)
	}
	b := broker.New(c.brokerCfg)
	n, err := Start(b, c.config(tn, join))
	if err != nil {
		c.t.Fatalf("start %s: %v", tn.id, err)
	}
	tn.b, tn.node = b, n
	tn.raftPort = portOf(c.t, n.RaftAddr())
	tn.gossipPort = portOf(c.t, n.GossipAddr())
}

func portOf(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("bad address %q: %v", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("bad port in %q: %v", addr, err)
	}
	return port
}

// Start starts every node: the first with no JOIN (its port is not known
// before it starts), the others joining the first node's gossip address,
// all with BootstrapExpect = len(nodes). It waits for a leader.
func (c *testCluster) Start() {
	c.t.Helper()
	first := c.nodes[0]
	c.startNode(first, nil)
	join := []string{first.node.GossipAddr()}
	for _, tn := range c.nodes[1:] {
		c.startNode(tn, join)
	}
	c.WaitLeader(formTimeout)
}

// StartSameJoin starts every node with the same JOIN list (every node's
// gossip address, its own included), as a deployment does. Gossip ports
// are reserved up front.
func (c *testCluster) StartSameJoin() []string {
	c.t.Helper()
	var join []string
	for _, tn := range c.nodes {
		tn.gossipPort = freePort(c.t, tn.ip)
		join = append(join, net.JoinHostPort(tn.ip, strconv.Itoa(tn.gossipPort)))
	}
	for _, tn := range c.nodes {
		c.startNode(tn, join)
	}
	return join
}

// freePort finds a port free for both TCP and UDP on ip (memberlist binds
// both). The port is released before use: a tiny race, tolerable on
// loopback.
func freePort(t testing.TB, ip string) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		tl, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatalf("reserve a port: %v", err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		return port
	}
	t.Fatalf("no port free for both TCP and UDP on %s", ip)
	return 0
}

// Live are the nodes currently running.
func (c *testCluster) Live() []*testNode {
	var out []*testNode
	for _, tn := range c.nodes {
		if tn.up() {
			out = append(out, tn)
		}
	}
	return out
}

// Leader is the running node that is the Raft leader, or nil.
func (c *testCluster) Leader() *testNode {
	for _, tn := range c.Live() {
		if tn.node.Leader() {
			return tn
		}
	}
	return nil
}

// Followers are the running nodes that are not the leader.
func (c *testCluster) Followers() []*testNode {
	var out []*testNode
	for _, tn := range c.Live() {
		if !tn.node.Leader() {
			out = append(out, tn)
		}
	}
	return out
}

// WaitLeader waits until exactly one running node is the leader and every
// running node names it as leader, and returns it.
func (c *testCluster) WaitLeader(timeout time.Duration) *testNode {
	c.t.Helper()
	var leader *testNode
	waitFor(c.t, timeout, func() error {
		leader = nil
		var leaders []string
		for _, tn := range c.Live() {
			if tn.node.Leader() {
				leaders = append(leaders, tn.id)
				leader = tn
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("leaders among running nodes: %v", leaders)
		}
		for _, tn := range c.Live() {
			if id := tn.node.LeaderID(); id != leader.id {
				return fmt.Errorf("%s thinks the leader is %q, not %s", tn.id, id, leader.id)
			}
		}
		return nil
	})
	return leader
}

// Kill stops node i as a crash-free process exit would (Close, no leave).
func (c *testCluster) Kill(i int) {
	c.t.Helper()
	tn := c.nodes[i]
	if !tn.up() {
		return
	}
	done := make(chan error, 1)
	go func() { done <- tn.node.Close() }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Logf("close %s: %v", tn.id, err)
		}
	case <-time.After(30 * time.Second):
		c.t.Fatalf("Close of %s did not return within 30s", tn.id)
	}
	tn.node, tn.b = nil, nil
}

// Restart starts node i again with the same NodeID, data dir, address and
// ports, joining the other running nodes.
func (c *testCluster) Restart(i int) {
	c.t.Helper()
	tn := c.nodes[i]
	c.startNode(tn, c.joinList(tn))
}

// RestartAt starts node i again with the same NodeID and data dir but on a
// new IP with new ports, as a container rescheduled elsewhere.
func (c *testCluster) RestartAt(i int, ip string) {
	c.t.Helper()
	tn := c.nodes[i]
	tn.ip, tn.raftPort, tn.gossipPort = ip, 0, 0
	c.startNode(tn, c.joinList(tn))
}

func (c *testCluster) joinList(self *testNode) []string {
	var join []string
	for _, tn := range c.nodes {
		if tn != self && tn.gossipPort != 0 {
			join = append(join, net.JoinHostPort(tn.ip, strconv.Itoa(tn.gossipPort)))
		}
	}
	return join
}

// Shutdown closes every running node, in parallel.
func (c *testCluster) Shutdown() {
	var wg sync.WaitGroup
	for _, tn := range c.Live() {
		wg.Add(1)
		go func(tn *testNode) {
			defer wg.Done()
			done := make(chan struct{})
			go func() { tn.node.Close(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				c.t.Errorf("Close of %s did not return within 30s", tn.id)
			}
		}(tn)
	}
	wg.Wait()
	for _, tn := range c.nodes {
		tn.node, tn.b = nil, nil
	}
}

// WaitConverged waits until every running node has the same replicated
// state as the leader (after a barrier on the leader), and returns it.
func (c *testCluster) WaitConverged(timeout time.Duration) broker.State {
	c.t.Helper()
	var want broker.State
	waitFor(c.t, timeout, func() error {
		leader := c.Leader()
		if leader == nil {
			return errors.New("no leader")
		}
		if err := leader.node.Barrier(time.Second); err != nil {
			return fmt.Errorf("barrier on %s: %w", leader.id, err)
		}
		want = leader.b.State()
		for _, tn := range c.Live() {
			if err := stateDiff(want, tn.b.State()); err != nil {
				return fmt.Errorf("%s differs from leader %s: %w", tn.id, leader.id, err)
			}
		}
		return nil
	})
	return want
}

// CreateTopic creates a topic through node tn and fails the test on error.
// It is test setup, so it rides out a leadership change: an ErrUnavailable
// is retried, and TOPIC_EXISTS after such a retry means the first attempt
// committed after all.
func (c *testCluster) CreateTopic(tn *testNode, name string) {
	c.t.Helper()
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*testCommitTimeout)
		err = tn.b.CreateTopic(ctx, name)
		cancel()
		if attempt > 0 && errors.Is(err, broker.ErrTopicExists) {
			err = nil
		}
		if !errors.Is(err, broker.ErrUnavailable) {
			break
		}
		c.t.Logf("create topic %q on %s: %v; retrying", name, tn.id, err)
	}
	if err != nil {
		c.t.Fatalf("create topic %q on %s: %v", name, tn.id, err)
	}
}

// waitFor polls cond every 20ms until it returns nil, and fails the test
// with cond's last error after timeout (nats' checkFor).
func waitFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := poll(timeout, cond); err != nil {
		t.Fatalf("condition not met within %v: %v", timeout, err)
	}
}

// poll is waitFor without the test: it returns cond's last error.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stateDiff describes the first difference between two replicated states.
func stateDiff(want, got broker.State) error {
	if len(want.Topics) != len(got.Topics) {
		return fmt.Errorf("topics %v, want %v", topicNames(got), topicNames(want))
	}
	if want.Creations != got.Creations {
		return fmt.Errorf("creations %d, want %d", got.Creations, want.Creations)
	}
	for i := range want.Topics {
		w, g := want.Topics[i], got.Topics[i]
		if w.Name != g.Name || w.Epoch != g.Epoch || w.Count != g.Count || w.LastSeq != g.LastSeq {
			return fmt.Errorf("topic %s epoch=%d count=%d last_seq=%d, want %s epoch=%d count=%d last_seq=%d",
				g.Name, g.Epoch, g.Count, g.LastSeq, w.Name, w.Epoch, w.Count, w.LastSeq)
		}
		if len(w.Ring) != len(g.Ring) {
			return fmt.Errorf("topic %s ring holds %d events, want %d", w.Name, len(g.Ring), len(w.Ring))
		}
		for j := range w.Ring {
			if err := eventDiff(w.Ring[j], g.Ring[j]); err != nil {
				return fmt.Errorf("topic %s ring[%d]: %w", w.Name, j, err)
			}
		}
	}
	return nil
}

func eventDiff(w, g *broker.Event) error {
	switch {
	case w.Topic != g.Topic, w.Seq != g.Seq, w.Message.ID != g.Message.ID:
		return fmt.Errorf("event %s#%d %q, want %s#%d %q", g.Topic, g.Seq, g.Message.ID, w.Topic, w.Seq, w.Message.ID)
	case !w.TS.Equal(g.TS):
		return fmt.Errorf("event seq %d ts %v, want %v", w.Seq, g.TS, w.TS)
	case !bytes.Equal(w.Message.Payload, g.Message.Payload):
		return fmt.Errorf("event seq %d payload %q, want %q", w.Seq, g.Message.Payload, w.Message.Payload)
	}
	return nil
}

func topicNames(st broker.State) []string {
	var out []string
	for _, t := range st.Topics {
		out = append(out, t.Name)
	}
	return out
}

func topicState(st broker.State, name string) (broker.TopicState, bool) {
	for _, t := range st.Topics {
		if t.Name == name {
			return t, true
		}
	}
	return broker.TopicState{}, false
}

// rec is one event as a subscriber saw it.
type rec struct {
	seq uint64
	id  string
}

// recorder is a Waker-driven subscriber: a goroutine drains its
// subscription whenever it is woken and records (seq, message id).
type recorder struct {
	b    *broker.Broker
	sub  *broker.Subscription
	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	events []rec
	end    broker.EndReason
}

// Wake implements broker.Waker; it never blocks.
func (r *recorder) Wake(*broker.Subscription) {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// subscribe registers a recording subscriber on b and starts it.
func subscribe(t testing.TB, b *broker.Broker, topic, clientID string, lastN int) *recorder {
	t.Helper()
	r := &recorder{b: b, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	sub, err := b.Subscribe(topic, clientID, lastN, r)
	if err != nil {
		t.Fatalf("subscribe %s/%s: %v", topic, clientID, err)
	}
	r.sub = sub
	go r.run()
	sub.Start()
	t.Cleanup(r.close)
	return r
}

func (r *recorder) run() {
	defer close(r.done)
	var buf []*broker.Event
	for {
		select {
		case <-r.wake:
		case <-r.stop:
			return
		}
		var end broker.EndReason
		buf, end = r.sub.Drain(buf[:0])
		r.mu.Lock()
		for _, e := range buf {
			r.events = append(r.events, rec{seq: e.Seq, id: e.Message.ID})
		}
		r.end = end
		r.mu.Unlock()
		clear(buf)
	}
}

func (r *recorder) close() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
		<-r.done
	}
}

// Events is a copy of what was recorded so far.
func (r *recorder) Events() []rec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]rec(nil), r.events...)
}

// End is the subscription's end reason as last drained.
func (r *recorder) End() broker.EndReason {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.end
}

// waitCount waits until r has recorded at least n events.
func (r *recorder) waitCount(t testing.TB, n int, timeout time.Duration) []rec {
	t.Helper()
	var got []rec
	waitFor(t, timeout, func() error {
		got = r.Events()
		if len(got) < n {
			return fmt.Errorf("recorded %d events, want %d", len(got), n)
		}
		return nil
	})
	return got
}

// checkConsecutive reports a gap or duplicate: seqs must be first, first+1, ...
func checkConsecutive(events []rec, first uint64) error {
	for i, e := range events {
		if want := first + uint64(i); e.seq != want {
			return fmt.Errorf("event %d has seq %d, want %d (gap or duplicate)", i, e.seq, want)
		}
	}
	return nil
}

// msgID is a message id that says who published it and in which order.
func msgID(publisher string, i int) string { return fmt.Sprintf("%s-%06d", publisher, i) }

func payload(i int) []byte { return []byte(`{"i":` + strconv.Itoa(i) + `}`) }

// waitResult waits for p with a deadline well past the commit timeout, so a
// Pending that never resolves fails the test instead of hanging it.
func waitResult(p broker.Pending) (broker.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*testCommitTimeout)
	defer cancel()
	return p.Wait(ctx)
}

// publishOK publishes one message through tn and fails the test unless it
// is acked.
func publishOK(t testing.TB, tn *testNode, topic, id string) broker.Result {
	t.Helper()
	res, err := waitResult(tn.b.Publish(topic, broker.Message{ID: id, Payload: []byte(`"x"`)}))
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("publish %s to %s via %s: %v", id, topic, tn.id, err)
	}
	return res
}

// ringIDs maps message id to seq for a topic's ring in st, failing on a
// duplicated id.
func ringIDs(t testing.TB, st broker.State, topic string) map[string]uint64 {
	t.Helper()
	ts, ok := topicState(st, topic)
	if !ok {
		t.Fatalf("topic %s missing from state %v", topic, topicNames(st))
	}
	out := make(map[string]uint64, len(ts.Ring))
	for _, e := range ts.Ring {
		if prev, dup := out[e.Message.ID]; dup {
			t.Fatalf("topic %s: message %s committed twice (seq %d and %d)", topic, e.Message.ID, prev, e.Seq)
		}
		out[e.Message.ID] = e.Seq
	}
	return out
}

var _ io.Writer = (*logSink)(nil)

// checkLoopbackIP reports whether this machine can listen on ip (the whole
// 127/8 is loopback on Linux, not on every system).
func checkLoopbackIP(ip string) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return err
	}
	ln.Close()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return err
	}
	return pc.Close()
}
