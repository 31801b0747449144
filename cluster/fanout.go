package cluster

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/mr-enclave/enclave/broker"
)

// The leader carries every committed event to the other nodes in UDP
// packets through memberlist, so their subscribers need not wait for Raft
// to tell followers about the commit. A packet may be lost: the node's own
// Raft apply delivers that event too, and the broker delivers whichever copy
// comes first, in seq order, exactly once.
//
// SendReliable would dial a TCP connection per call; SendBestEffort is one
// packet, so each peer has one bounded sender that packs whatever is waiting
// into packets of at most FanoutPacketBytes.

// Gossip message types (the first byte of a user message).
const (
	gossipEvents      byte = 1
	gossipSubscribers byte = 2
)

const (
	// maxPeerQueueBytes bounds the events waiting for one peer; beyond it
	// copies are dropped and that peer relies on Raft for them.
	maxPeerQueueBytes = 8 << 20
	subscriberPeriod  = 750 * time.Millisecond
	// subscriberTTL drops counts of a node not heard from for this long.
	subscriberTTL = 3 * subscriberPeriod
)

// TestHooks let tests disturb the two delivery paths. Nil fields do nothing.
type TestHooks struct {
	// GossipEvent is called on a receiving node for each event copy that
	// arrived by gossip; returning false drops the copy. It may sleep.
	GossipEvent func(topic string, seq uint64) bool
	// BeforeApply is called before each Raft log entry is applied; it may
	// sleep to delay the Raft path.
	BeforeApply func(index uint64)
}

type peerSender struct {
	name  string
	node  atomic.Pointer[memberlist.Node]
	wake  chan struct{}
	stop  chan struct{}
	mu    sync.Mutex
	queue [][]byte
	bytes int
	lost  uint64
}

type remoteCounts struct {
	gen     uint64
	parts   int
	got     int
	partial map[string]int
	counts  map[string]int
	heard   time.Time
}

type fanout struct {
	n         *Node
	maxPacket int

	mu     sync.Mutex
	peers  map[string]*peerSender
	remote map[string]*remoteCounts
}

func (f *fanout) init(n *Node) {
	f.n = n
	f.maxPacket = n.cfg.FanoutPacketBytes
	f.peers = make(map[string]*peerSender)
	f.remote = make(map[string]*remoteCounts)
}

// syncPeers starts a sender for each alive member and stops those of
// members gone. It must not run inside a memberlist callback.
func (f *fanout) syncPeers() {
	alive := map[string]*memberlist.Node{}
	for _, m := range f.n.members() {
		if m.id != f.n.cfg.NodeID && m.state == memberlist.StateAlive {
			alive[m.id] = &memberlist.Node{Name: m.id, Addr: net.ParseIP(m.addr), Port: m.port}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, p := range f.peers {
		if alive[name] == nil {
			close(p.stop)
			delete(f.peers, name)
			delete(f.remote, name)
		}
	}
	for name, node := range alive {
		p, ok := f.peers[name]
		if !ok {
			p = &peerSender{name: name, wake: make(chan struct{}, 1), stop: make(chan struct{})}
			f.peers[name] = p
			f.n.wg.Add(1)
			go f.send(p)
		}
		p.node.Store(node)
	}
}

// onApplied runs on every node after an entry is applied; the leader
// carries the entry's events to its peers.
func (f *fanout) onApplied(cmds []broker.Command, results []broker.Result) {
	if !f.n.leading.Load() {
		return
	}
	size := 0
	for i := range cmds {
		if cmds[i].Op == broker.OpPublish && results[i].Err == nil {
			size += commandSize(&cmds[i]) + 2*binary.MaxVarintLen64
		}
	}
	if size == 0 {
		return
	}
	buf := make([]byte, 0, size)
	records := make([][]byte, 0, len(cmds))
	for i := range cmds {
		c, r := &cmds[i], &results[i]
		if c.Op != broker.OpPublish || r.Err != nil {
			continue
		}
		start := len(buf)
		buf = appendString(buf, c.Topic)
		buf = binary.AppendUvarint(buf, r.Epoch)
		buf = binary.AppendUvarint(buf, r.Seq)
		buf = binary.AppendVarint(buf, c.TS.UnixNano())
		buf = appendString(buf, c.Message.ID)
		buf = appendBytes(buf, c.Message.Payload)
		records = append(records, buf[start:len(buf):len(buf)])
	}
	f.mu.Lock()
	for _, p := range f.peers {
		p.enqueue(records)
	}
	f.mu.Unlock()
}

func (p *peerSender) enqueue(records [][]byte) {
	p.mu.Lock()
	for _, r := range records {
		if p.bytes+len(r) > maxPeerQueueBytes {
			p.lost++
			continue
		}
		p.queue = append(p.queue, r)
		p.bytes += len(r)
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// send is one peer's sender: it packs waiting events into packets.
func (f *fanout) send(p *peerSender) {
	defer f.n.wg.Done()
	var batch [][]byte
	pkt := make([]byte, 0, f.maxPacket)
	for {
		select {
		case <-p.wake:
		case <-p.stop:
			return
		case <-f.n.ctx.Done():
			return
		}
		p.mu.Lock()
		batch, p.queue = p.queue, batch[:0]
		p.bytes = 0
		p.mu.Unlock()

		pkt = append(pkt[:0], gossipEvents)
		for i, r := range batch {
			if 1+len(r) > f.maxPacket {
				continue // too big for one packet: Raft delivers it
			}
			if len(pkt)+len(r) > f.maxPacket {
				f.sendPacket(p, pkt)
				pkt = append(pkt[:0], gossipEvents)
			}
			pkt = append(pkt, r...)
			batch[i] = nil
		}
		if len(pkt) > 1 {
			f.sendPacket(p, pkt)
		}
		clear(batch)
	}
}

func (f *fanout) sendPacket(p *peerSender, pkt []byte) {
	if err := f.n.list.SendBestEffort(p.node.Load(), pkt); err != nil {
		f.n.log.Debug("event copy not sent", "peer", p.name, "err", err)
	}
}

// receive handles a user message from a peer.
func (f *fanout) receive(msg []byte) {
	if len(msg) == 0 {
		return
	}
	switch msg[0] {
	case gossipEvents:
		f.receiveEvents(msg[1:])
	case gossipSubscribers:
		f.receiveCounts(msg[1:])
	}
}

func (f *fanout) receiveEvents(body []byte) {
	d := decoder{buf: body}
	hook := f.n.cfg.Hooks.GossipEvent
	for len(d.buf) > 0 && d.err == nil {
		topic := d.string()
		epoch := d.uvarint()
		seq := d.uvarint()
		ts := time.Unix(0, d.varint()).UTC()
		id := d.string()
		payload := d.bytes()
		if d.err != nil {
			f.n.log.Debug("malformed event packet", "err", d.err)
			return
		}
		if hook != nil && !hook(topic, seq) {
			continue
		}
		f.n.broker.Deliver(topic, epoch, seq, ts, broker.Message{ID: id, Payload: payload})
	}
}

// shareCounts sends this node's subscriber count per topic to every peer,
// in as many packets as it takes.
func (f *fanout) shareCounts() {
	gen := uint64(time.Now().UnixNano())
	var parts [][]byte
	part := []byte{}
	for _, t := range f.n.broker.Topics() {
		if t.Subscribers == 0 {
			continue
		}
		entry := appendString(nil, t.Name)
		entry = binary.AppendUvarint(entry, uint64(t.Subscribers))
		if len(part)+len(entry) > f.maxPacket-64 && len(part) > 0 {
			parts = append(parts, part)
			part = []byte{}
		}
		part = append(part, entry...)
	}
	parts = append(parts, part)
	f.mu.Lock()
	peers := make([]*peerSender, 0, len(f.peers))
	for _, p := range f.peers {
		peers = append(peers, p)
	}
	f.mu.Unlock()
	for i, body := range parts {
		msg := []byte{gossipSubscribers}
		msg = appendString(msg, f.n.cfg.NodeID)
		msg = binary.AppendUvarint(msg, gen)
		msg = binary.AppendUvarint(msg, uint64(i))
		msg = binary.AppendUvarint(msg, uint64(len(parts)))
		msg = append(msg, body...)
		for _, p := range peers {
			f.sendPacket(p, msg)
		}
	}
}

func (f *fanout) receiveCounts(body []byte) {
	d := decoder{buf: body}
	from := d.string()
	gen := d.uvarint()
	part := d.uvarint()
	parts := d.uvarint()
	counts := map[string]int{}
	for len(d.buf) > 0 && d.err == nil {
		name := d.string()
		counts[name] = int(d.uvarint())
	}
	if d.err != nil || parts == 0 || part >= parts || parts > 1<<16 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.peers[from] == nil {
		return // not (or no longer) an alive member
	}
	rc := f.remote[from]
	if rc == nil {
		rc = &remoteCounts{}
		f.remote[from] = rc
	}
	if gen < rc.gen {
		return
	}
	if gen > rc.gen {
		rc.gen, rc.parts, rc.got, rc.partial = gen, int(parts), 0, map[string]int{}
	}
	for k, v := range counts {
		rc.partial[k] = v
	}
	rc.got++
	if rc.got == rc.parts {
		rc.counts, rc.partial = rc.partial, nil
		rc.heard = time.Now()
	}
}

// remoteSubscribers sums the fresh counts of the other alive nodes.
func (f *fanout) remoteSubscribers() map[string]int {
	out := map[string]int{}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rc := range f.remote {
		if time.Since(rc.heard) > subscriberTTL {
			continue
		}
		for k, v := range rc.counts {
			out[k] += v
		}
	}
	return out
}

func (f *fanout) countsLoop() {
	defer f.n.wg.Done()
	t := time.NewTicker(subscriberPeriod)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f.shareCounts()
		case <-f.n.ctx.Done():
			return
		}
	}
}
