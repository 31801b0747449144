package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/mr-enclave/enclave/broker"
	"go.etcd.io/bbolt"
)

// Config configures one node.
type Config struct {
	NodeID        string
	DataDir       string
	BindAddr      string // address to listen on for Raft and gossip (default 0.0.0.0)
	AdvertiseAddr string // address peers use to reach this node
	RaftPort      int    // 0 picks a free port
	GossipPort    int    // 0 picks a free port
	HTTPAddr      string // advertised to peers in gossip metadata
	Join          []string
	// BootstrapExpect is the number of servers that must see each other
	// before the cluster bootstraps. 1 is single-node mode.
	BootstrapExpect int
	// LeaveOnShutdown makes Close leave the cluster for good (the leader
	// removes the node from Raft) instead of just stopping.
	LeaveOnShutdown bool

	// CommitTimeout bounds how long a write may wait for its commit before
	// UNAVAILABLE (default 5s).
	CommitTimeout time.Duration
	// LeaderWait is how long a write waits for a leader to appear (default 4s).
	LeaderWait time.Duration
	// MaxBatch and MaxBatchBytes bound the publishes grouped into one entry.
	MaxBatch      int
	MaxBatchBytes int
	// MaxInflight bounds the entries appended but not yet committed; while
	// it is reached, waiting commands pile up into the next, bigger batch.
	MaxInflight int

	// FanoutPacketBytes bounds the UDP packets that carry events to peers
	// (default 8 KiB; larger packets are IP-fragmented on most links).
	FanoutPacketBytes int
	// ClusterKey, when set (16, 24 or 32 bytes), encrypts gossip traffic:
	// membership and the event copies.
	ClusterKey []byte
	// Hooks are for tests.
	Hooks TestHooks

	// Snapshots: Raft checks every SnapshotInterval (randomised to 1-2x)
	// whether SnapshotThreshold entries have accumulated since the last
	// snapshot; if so it snapshots and truncates the log to the newest
	// TrailingLogs entries. Under endless publishing the log therefore
	// holds at most about TrailingLogs entries plus what is committed in
	// 2 x SnapshotInterval (or SnapshotThreshold entries, whichever is
	// more), and raft.db, which reuses freed pages but never shrinks,
	// levels off at that high-water mark; two snapshots are kept beside it.
	//
	// The defaults (5s, 4096 entries, 256 kept) trade a snapshot every
	// 5-10 s under load (it encodes every topic's ring, RING_SIZE events
	// each: cheap for the usual few MiB of rings, and taken off the apply
	// path by raft) for a log of at most ~10 s of writes: at the ~8 MiB/s
	// a 3-node cluster commits at full speed, under 100 MiB. An entry is a
	// batch of up to MaxBatch publishes, so 256 entries still cover a
	// follower that falls a few seconds behind; one further behind is sent
	// a snapshot, which is small because it holds only topics and rings.
	// The cost of a lower SnapshotInterval is CPU for more frequent ring
	// encoding; of fewer TrailingLogs, more snapshot installs.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64

	// Raft timing; zero values take the defaults below.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration

	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.BindAddr == "" {
		c.BindAddr = "0.0.0.0"
	}
	if c.BootstrapExpect <= 0 {
		c.BootstrapExpect = 1
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = 5 * time.Second
	}
	if c.LeaderWait <= 0 {
		// An election after a leader dies takes HeartbeatTimeout plus a
		// randomised ElectionTimeout: 1-3 s with the defaults.
		c.LeaderWait = 4 * time.Second
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 1 << 20
	}
	if c.MaxInflight <= 0 {
		// One entry in flight: whatever arrives during a commit becomes the
		// next entry. Measured on 3 nodes (2 cores): 33k acked/s vs 37.5k
		// with 4 in flight, but ack p99 at 10k/s 11.8 ms vs 23.5 ms.
		c.MaxInflight = 1
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = time.Second
	}
	if c.ElectionTimeout <= 0 {
		c.ElectionTimeout = time.Second
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 4096
	}
	if c.SnapshotInterval <= 0 {
		c.SnapshotInterval = 5 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 256
	}
	if c.FanoutPacketBytes <= 0 {
		c.FanoutPacketBytes = 8 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// boltLockTimeout bounds the wait for raft.db's file lock, held by another
// process using the same data directory.
const boltLockTimeout = time.Second

// gossipInbox bounds the gossip messages waiting for delivery: with
// FanoutPacketBytes packets of 8 KiB, 8 MiB at most.
const gossipInbox = 1024

type submission struct {
	cmd broker.Command
	p   *pending
	at  time.Time // when it was submitted
	// forwardable is false for commands a follower forwarded to us: if we
	// are no longer the leader they fail rather than hop again.
	forwardable bool
}

// Node is one server: Raft over the broker's state, memberlist membership,
// and the committer that routes writes to the leader.
type Node struct {
	cfg    Config
	log    *slog.Logger
	broker *broker.Broker

	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	mux       *mux
	list      *memberlist.Memberlist
	fwd       forwarder
	fanout    fanout
	inflight  chan struct{}
	submitCh  chan submission
	notifyCh  chan bool
	memberCh  chan struct{}
	// gossipIn carries user messages from memberlist's handler to
	// receiveGossip; gossipDropped counts those it had no room for.
	gossipIn      chan []byte
	gossipDropped atomic.Uint64
	hadState      bool
	advertise     *net.TCPAddr
	gossipAddr    string

	memberMu  sync.Mutex
	memberMap map[string]member // copied from memberlist's callbacks
	closeMu   sync.RWMutex      // Submit holds it shared; Close exclusively
	closing   bool              // set under closeMu by Close
	leaving   atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	applyMu     sync.Mutex
	applied     uint64          // highest index applied here, as the FSM saw it
	applyWaiter []appliedWaiter // forwarded outcomes waiting for the local apply, by index

	mu     sync.Mutex
	closed bool
	// leading follows NotifyCh. The FSM reads it rather than n.raft, which
	// it can run before NewRaft has returned.
	leading atomic.Bool
}

var _ broker.Committer = (*Node)(nil)

// Start opens the node's stores, starts Raft and gossip, and makes the node
// b's committer.
func Start(b *broker.Broker, cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if cfg.NodeID == "" {
		return nil, errors.New("cluster: NodeID is required")
	}
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger,
		broker:    b,
		inflight:  make(chan struct{}, cfg.MaxInflight),
		submitCh:  make(chan submission, 4*cfg.MaxBatch),
		notifyCh:  make(chan bool, 16),
		memberCh:  make(chan struct{}, 1),
		gossipIn:  make(chan []byte, gossipInbox),
		memberMap: make(map[string]member),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.fwd.init(n)
	n.fanout.init(n)
	if err := n.startRaft(); err != nil {
		n.cancel()
		return nil, err
	}
	if err := n.startMembership(); err != nil {
		n.Close()
		return nil, err
	}
	b.SetCommitter(n)
	n.wg.Add(3)
	go n.route()
	go n.watchLeadership()
	go n.maybeBootstrap()
	return n, nil
}

func (n *Node) startRaft() (err error) {
	if err := os.MkdirAll(n.cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	ip := net.ParseIP(n.cfg.AdvertiseAddr)
	if ip == nil {
		return fmt.Errorf("advertise address %q is not an IP address", n.cfg.AdvertiseAddr)
	}
	// Open the store before listening: a second process on the same
	// DATA_DIR fails here, after the bolt lock timeout, and never shows up
	// on the Raft port.
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(n.cfg.DataDir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: boltLockTimeout},
	})
	if err != nil {
		return fmt.Errorf("open raft store %s (is another node using this data dir?): %w", filepath.Join(n.cfg.DataDir, "raft.db"), err)
	}
	defer func() {
		if err != nil {
			store.Close()
		}
	}()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, 2, newHCLogger(n.log, "raft-snap"))
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	hadState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("inspect raft state: %w", err)
	}

	ln, err := net.Listen("tcp", net.JoinHostPort(n.cfg.BindAddr, strconv.Itoa(n.cfg.RaftPort)))
	if err != nil {
		return fmt.Errorf("listen for raft: %w", err)
	}
	advertise := &net.TCPAddr{IP: ip, Port: ln.Addr().(*net.TCPAddr).Port}
	m := newMux(ln, advertise, n.serveForward)
	transport := raft.NewNetworkTransportWithLogger(raftLayer{m}, 3, 10*time.Second, newHCLogger(n.log, "raft-net"))
	defer func() {
		if err != nil {
			transport.Close() // closes the mux and the listener
		}
	}()

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = newHCLogger(n.log, "raft")
	rc.NotifyCh = n.notifyCh
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.HeartbeatTimeout
	rc.CommitTimeout = 5 * time.Millisecond
	// BatchApplyCh stays off: futures left in its buffer when Raft shuts
	// down are never resolved. The router already groups commands into
	// entries, and Raft still writes every entry waiting into one append.
	rc.MaxAppendEntries = 256
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.SnapshotInterval = n.cfg.SnapshotInterval

	// The FSM may run (restoring a snapshot, replaying the log) before
	// NewRaft returns, so everything it calls back into is set first.
	n.store, n.advertise, n.mux, n.transport, n.hadState = store, advertise, m, transport, hadState
	f := &fsm{
		broker:      n.broker,
		afterApply:  n.noteApplied,
		onApplied:   n.fanout.onApplied,
		beforeApply: n.cfg.Hooks.BeforeApply,
	}
	r, err := raft.NewRaft(rc, f, store, store, snaps, transport)
	if err != nil {
		n.store, n.mux, n.transport = nil, nil, nil
		return fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	return nil
}

// Submit implements broker.Committer.
func (n *Node) Submit(cmd broker.Command) broker.Pending {
	return n.submit(cmd, true)
}

func (n *Node) submit(cmd broker.Command, forwardable bool) *pending {
	p := newPending(n.cfg.CommitTimeout)
	p.topic = cmd.Topic
	n.closeMu.RLock()
	defer n.closeMu.RUnlock()
	if n.closing || n.ctx.Err() != nil {
		p.resolve(broker.Result{}, broker.ErrClosed)
		return p
	}
	select {
	case n.submitCh <- submission{cmd: cmd, p: p, at: time.Now(), forwardable: forwardable}:
	case <-n.ctx.Done():
		p.resolve(broker.Result{}, broker.ErrClosed)
	}
	return p
}

// route takes submissions in order and sends each batch to Raft (on the
// leader) or to the leader. One goroutine does both so submission order is
// commit order.
func (n *Node) route() {
	defer n.wg.Done()
	batch := make([]submission, 0, n.cfg.MaxBatch)
	for {
		var first submission
		select {
		case first = <-n.submitCh:
		case <-n.ctx.Done():
			n.failQueued()
			return
		}
		batch = append(batch[:0], first)
		n.dispatch(batch)
	}
}

// takeMore moves waiting submissions into batch, up to the batch bounds.
func (n *Node) takeMore(batch []submission) []submission {
	size := 0
	for i := range batch {
		size += commandSize(&batch[i].cmd)
	}
	for len(batch) < n.cfg.MaxBatch && size < n.cfg.MaxBatchBytes {
		select {
		case s := <-n.submitCh:
			batch = append(batch, s)
			size += commandSize(&s.cmd)
		default:
			return batch
		}
	}
	return batch
}

func (n *Node) dispatch(batch []submission) {
	// The wait for a leader counts from submission, so a backlog built up
	// while there was none fails together instead of batch after batch.
	deadline := batch[0].at.Add(n.cfg.LeaderWait)
	for {
		if n.raft.State() == raft.Leader {
			select {
			case n.inflight <- struct{}{}:
			case <-n.ctx.Done():
				fail(batch, broker.ErrClosed)
				return
			}
			n.apply(n.takeMore(batch))
			return
		}
		if !batch[0].forwardable {
			// A forwarded command reached a node that is not the leader:
			// answer rather than bounce it around.
			fail(batch, broker.ErrUnavailable)
			return
		}
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			batch = n.takeMore(batch)
			err := n.fwd.send(string(addr), batch)
			if err == nil {
				return
			}
			n.log.Debug("forwarding to the leader failed", "leader", addr, "err", err)
		}
		if time.Now().After(deadline) {
			fail(batch, broker.ErrUnavailable)
			return
		}
		// No leader yet: wait a little, with jitter so followers do not
		// retry in step.
		select {
		case <-time.After(20*time.Millisecond + rand.N(30*time.Millisecond)):
		case <-n.ctx.Done():
			fail(batch, broker.ErrClosed)
			return
		}
	}
}

func fail(batch []submission, err error) {
	for _, s := range batch {
		s.p.resolve(broker.Result{}, err)
	}
}

func (n *Node) failQueued() {
	for {
		select {
		case s := <-n.submitCh:
			s.p.resolve(broker.Result{}, broker.ErrClosed)
		default:
			return
		}
	}
}

// apply appends batch as one entry. The leader stamps the time here, just
// before the commands enter the log. A slot of n.inflight is held until the
// entry is committed.
func (n *Node) apply(batch []submission) {
	// Commands whose client already gave up (answered UNAVAILABLE) are not
	// committed behind its back.
	live := batch[:0]
	for _, s := range batch {
		if !s.p.abandoned.Load() {
			live = append(live, s)
		}
	}
	if batch = live; len(batch) == 0 {
		<-n.inflight
		return
	}
	now := time.Now().UTC()
	cmds := make([]broker.Command, len(batch))
	for i := range batch {
		batch[i].cmd.TS = now
		cmds[i] = batch[i].cmd
	}
	future := n.raft.Apply(encodeBatch(cmds), n.cfg.CommitTimeout)
	waiting := make([]*pending, len(batch))
	for i := range batch {
		waiting[i] = batch[i].p
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer func() { <-n.inflight }()
		err := future.Error()
		if err != nil {
			if !errors.Is(err, raft.ErrRaftShutdown) {
				n.log.Warn("raft apply failed", "err", err, "commands", len(waiting))
			}
			for _, p := range waiting {
				p.resolve(broker.Result{}, fmt.Errorf("%w: %w", broker.ErrUnavailable, err))
			}
			return
		}
		results, ok := future.Response().([]broker.Result)
		index := future.Index()
		for i, p := range waiting {
			p.index = index
			if !ok || i >= len(results) {
				p.resolve(broker.Result{}, errors.New("raft entry applied without results"))
				continue
			}
			p.resolve(results[i], nil)
		}
	}()
}

// Leader reports whether this node is the Raft leader.
func (n *Node) Leader() bool { return n.raft.State() == raft.Leader }

// LeaderID is the current leader's node id, empty when there is none.
func (n *Node) LeaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// RemoteSubscribers counts, per topic, the subscriptions on the other alive
// nodes, as they last reported them (every 750 ms).
func (n *Node) RemoteSubscribers() map[string]int { return n.fanout.remoteSubscribers() }

// RaftAddr is the address peers reach this node's Raft port on.
func (n *Node) RaftAddr() string { return n.advertise.String() }

// GossipAddr is the address peers join this node's gossip on.
func (n *Node) GossipAddr() string { return n.gossipAddr }

// Barrier waits until every entry committed before it is applied here.
func (n *Node) Barrier(timeout time.Duration) error { return n.raft.Barrier(timeout).Error() }

// AppliedIndex is the index of the last entry applied to the broker.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// Close stops the node: gossip (leaving the cluster only with
// LeaveOnShutdown), Raft, forwarding and the stores. Writes still waiting
// fail with ErrClosed.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	var errs []error
	if n.list != nil {
		if n.cfg.LeaveOnShutdown {
			n.leaving.Store(true)
			if err := n.list.UpdateNode(2 * time.Second); err != nil {
				errs = append(errs, fmt.Errorf("announce leave: %w", err))
			}
			if err := n.list.Leave(2 * time.Second); err != nil {
				errs = append(errs, fmt.Errorf("leave gossip: %w", err))
			}
		}
		if err := n.list.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("stop gossip: %w", err))
		}
	}
	n.cancel()
	// Once every Submit under way has returned, nothing more can be queued.
	n.closeMu.Lock()
	n.closing = true
	n.closeMu.Unlock()
	n.fwd.close()
	if n.raft != nil {
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("stop raft: %w", err))
		}
	}
	if n.transport != nil {
		n.transport.Close()
	}
	n.wg.Wait()
	n.failQueued()
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
	}
	return errors.Join(errs...)
}

// WaitReady waits until there is a leader and this node has applied every
// entry committed before the call (on the leader, through a Barrier).
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if n.raft.State() == raft.Leader {
			return n.raft.Barrier(time.Until(deadline)).Error()
		}
		if n.LeaderID() != "" && n.raft.AppliedIndex() >= n.raft.CommitIndex() {
			return nil
		}
		if time.Now().After(deadline) {
			return broker.ErrUnavailable
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

type appliedWaiter struct {
	index uint64
	p     *pending
	res   broker.Result
	err   error
}

// resolveAfterApply resolves a forwarded command once this node has applied
// the entry that committed it, so a client that was acked through a follower
// reads its own write there (a later last_n replay includes it).
func (n *Node) resolveAfterApply(p *pending, index uint64, res broker.Result, err error) {
	if err == nil && res.Err == nil && res.Seq > 0 {
		// A publish: waiting for its local delivery is enough for a later
		// replay here to include it, and the event copy usually arrives
		// by gossip before Raft tells this node about the commit.
		n.broker.OnDelivered(p.topic, res.Epoch, res.Seq, func() { p.resolve(res, nil) })
		return
	}
	n.applyMu.Lock()
	if err != nil || index == 0 || index <= n.applied {
		n.applyMu.Unlock()
		p.resolve(res, err)
		return
	}
	// Outcomes arrive in log order on one link, so the queue stays sorted
	// but for a leader change, where waiting on the head only delays.
	n.applyWaiter = append(n.applyWaiter, appliedWaiter{index: index, p: p, res: res, err: err})
	n.applyMu.Unlock()
}

// noteApplied is called by the FSM after each entry.
func (n *Node) noteApplied(index uint64) {
	n.applyMu.Lock()
	n.applied = index
	k := 0
	for k < len(n.applyWaiter) && n.applyWaiter[k].index <= index {
		k++
	}
	ready := n.applyWaiter[:k:k]
	n.applyWaiter = n.applyWaiter[k:]
	n.applyMu.Unlock()
	for _, w := range ready {
		w.p.resolve(w.res, w.err)
	}
}
