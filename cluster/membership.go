package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
)

// nodeMeta is what a node tells its peers about itself through gossip.
type nodeMeta struct {
	RaftAddr string `json:"raft"`
	HTTPAddr string `json:"http,omitempty"`
	// Bootstrapped says the node already has Raft state, so a fresh node
	// seeing it must join that cluster rather than bootstrap a new one.
	Bootstrapped bool `json:"boot,omitempty"`
	// Leaving is announced just before a graceful leave: memberlist's
	// callbacks do not tell a node that left from one that died.
	Leaving bool `json:"leaving,omitempty"`
	// Expect is the node's BootstrapExpect, so fresh nodes can refuse to
	// bootstrap with peers configured differently. Zero (metadata from a
	// build that did not send it) means unknown and is not a conflict.
	Expect int `json:"expect,omitempty"`
}

// parseMeta ignores fields it does not know, so nodes of different builds
// still read each other's metadata.
func parseMeta(b []byte) (nodeMeta, bool) {
	var m nodeMeta
	if err := json.Unmarshal(b, &m); err != nil || m.RaftAddr == "" {
		return m, false
	}
	return m, true
}

// gossipDelegate serves memberlist callbacks.
type gossipDelegate struct{ n *Node }

func (d gossipDelegate) NodeMeta(limit int) []byte {
	m := nodeMeta{
		RaftAddr:     d.n.advertise.String(),
		HTTPAddr:     d.n.cfg.HTTPAddr,
		Bootstrapped: d.n.bootstrapped(),
		Leaving:      d.n.leaving.Load(),
		Expect:       d.n.cfg.BootstrapExpect,
	}
	b, _ := json.Marshal(m)
	if len(b) > limit {
		return nil
	}
	return b
}

// NotifyMsg runs on memberlist's packet handler, which also processes
// alive, suspect and dead messages: delivering to subscribers here would
// hold membership up behind the broker. The message is copied (memberlist
// may reuse the buffer after the call) and handed to the node's gossip
// inbox; when that is full the copy is dropped, as gossip is best effort
// and the Raft apply path delivers every event anyway.
func (d gossipDelegate) NotifyMsg(msg []byte) {
	if len(msg) == 0 {
		return
	}
	select {
	case d.n.gossipIn <- append([]byte(nil), msg...):
	default:
		if dropped := d.n.gossipDropped.Add(1); dropped&(dropped-1) == 0 {
			// Logged at powers of two so a sustained overload stays quiet.
			d.n.log.Debug("gossip inbox full, message dropped", "dropped_total", dropped)
		}
	}
}

// receiveGossip delivers the messages NotifyMsg queued, until the node
// stops.
func (n *Node) receiveGossip() {
	defer n.wg.Done()
	for {
		select {
		case msg := <-n.gossipIn:
			n.fanout.receive(msg)
		case <-n.ctx.Done():
			return
		}
	}
}

func (gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (gossipDelegate) LocalState(join bool) []byte                { return nil }
func (gossipDelegate) MergeRemoteState(buf []byte, join bool)     {}

// Memberlist calls these with its lock held and rewrites the *Node in place
// later (hashicorp/memberlist#306): copy what we need, never keep the
// pointer, and never call back into memberlist here.
func (d gossipDelegate) NotifyJoin(m *memberlist.Node)   { d.n.recordMember(m, false) }
func (d gossipDelegate) NotifyUpdate(m *memberlist.Node) { d.n.recordMember(m, false) }
func (d gossipDelegate) NotifyLeave(m *memberlist.Node)  { d.n.recordMember(m, true) }

// recordMember notes a member's state. memberlist does not fill in
// Node.State in callbacks: NotifyLeave means dead, or left when the node
// announced it was leaving.
func (n *Node) recordMember(m *memberlist.Node, gone bool) {
	meta, ok := parseMeta(m.Meta)
	state := memberlist.StateAlive
	if gone {
		state = memberlist.StateDead
	}
	rec := member{id: m.Name, addr: m.Addr.String(), port: m.Port, state: state, meta: meta}
	n.memberMu.Lock()
	old, known := n.memberMap[m.Name]
	if !ok && known {
		rec.meta = old.meta
		ok = true
	}
	if gone && (rec.meta.Leaving || (known && old.meta.Leaving)) {
		rec.state = memberlist.StateLeft
	}
	if ok {
		n.memberMap[m.Name] = rec
	}
	n.memberMu.Unlock()
	n.membersChanged()
}

func (n *Node) membersChanged() {
	select {
	case n.memberCh <- struct{}{}:
	default: // a reconcile is already pending
	}
}

func (n *Node) bootstrapped() bool {
	if n.hadState {
		return true
	}
	cfg := n.raft.GetConfiguration()
	return cfg.Error() == nil && len(cfg.Configuration().Servers) > 0
}

func (n *Node) startMembership() error {
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.cfg.NodeID
	mc.BindAddr = n.cfg.BindAddr
	mc.BindPort = n.cfg.GossipPort
	mc.AdvertiseAddr = n.cfg.AdvertiseAddr
	mc.AdvertisePort = n.cfg.GossipPort
	mc.Delegate = gossipDelegate{n}
	mc.Events = gossipDelegate{n}
	mc.Logger = newStdLogger(n.log, "memberlist")
	// A node recreated with a new address keeps its name: let it take the
	// name over once the old address has been declared dead.
	mc.DeadNodeReclaimTime = 2 * time.Second
	// Event packets are small and frequent; compressing each costs more
	// than it saves on a LAN.
	mc.EnableCompression = false
	if len(n.cfg.ClusterKey) > 0 {
		mc.SecretKey = n.cfg.ClusterKey
	}
	list, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("start gossip: %w", err)
	}
	n.list = list
	// Port 0 picked a free port (Create wrote it back into mc).
	n.cfg.GossipPort = mc.AdvertisePort
	n.gossipAddr = net.JoinHostPort(mc.AdvertiseAddr, strconv.Itoa(mc.AdvertisePort))
	n.wg.Add(4)
	go n.receiveGossip()
	go n.joinLoop()
	go n.reconcileLoop()
	go n.fanout.countsLoop()
	return nil
}

// joinLoop contacts the JOIN peers until this node is a member of the Raft
// configuration at its current address, and later whenever it finds itself
// alone (after a partition or a restart of every peer). Joining again is
// what gets a node that came back with a new IP accepted: peers refuse the
// new address until the old one is declared dead and reclaimable.
func (n *Node) joinLoop() {
	defer n.wg.Done()
	var peers []string
	for _, p := range n.cfg.Join {
		if p != "" && p != n.gossipAddr {
			peers = append(peers, p)
		}
	}
	if len(peers) == 0 {
		return
	}
	delay := 200 * time.Millisecond
	for {
		settled := n.list.NumMembers() > 1 && n.inConfigurationHere()
		if !settled {
			joined, err := n.list.Join(peers)
			if err != nil && joined == 0 {
				n.log.Debug("join: no peer answered yet", "peers", peers, "err", err)
			} else {
				n.log.Debug("contacted cluster peers", "contacted", joined)
			}
		}
		wait := delay
		if settled {
			wait = 10 * time.Second
		} else if delay < 2*time.Second {
			delay *= 2
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// inConfigurationHere reports whether Raft's configuration lists this node
// at its current address.
func (n *Node) inConfigurationHere() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.NodeID) {
			return s.Address == raft.ServerAddress(n.advertise.String())
		}
	}
	return false
}

// member is a gossip member with usable metadata.
type member struct {
	id    string
	addr  string // gossip IP
	port  uint16 // gossip port
	state memberlist.NodeStateType
	meta  nodeMeta
}

// members lists every member seen, alive or not, from this node's own copy.
func (n *Node) members() []member {
	n.memberMu.Lock()
	out := make([]member, 0, len(n.memberMap))
	for _, m := range n.memberMap {
		out = append(out, m)
	}
	n.memberMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// maybeBootstrap bootstraps Raft the way Consul does (server_serf.go
// maybeBootstrap): only while no alive member already belongs to a
// cluster, only when every alive member expects the same number of servers,
// and only when exactly that many are alive. It then bootstraps with all of
// them, so every fresh node computes the same configuration, which Raft
// accepts from each. More fresh servers than expected, or a member that
// expects another count, is a misconfiguration: no node bootstraps, rather
// than two of them bootstrapping different clusters.
//
// Gossip converges in a few hundred milliseconds on a LAN, so a candidate
// set must be seen unchanged bootstrapStable times in a row first: a node
// joining right then is seen before anyone bootstraps without it.
func (n *Node) maybeBootstrap() {
	defer n.wg.Done()
	if n.hadState {
		return
	}
	const bootstrapStable = 3
	var (
		lastSet   string
		seen      int
		lastError string
	)
	for {
		if n.bootstrapped() {
			n.refreshMeta()
			return
		}
		servers, problem := n.bootstrapCandidates()
		switch {
		case problem != "":
			seen = 0
			if problem != lastError {
				n.log.Error("not bootstrapping the cluster: "+problem, "bootstrap_expect", n.cfg.BootstrapExpect)
				lastError = problem
			}
		case servers == nil:
			seen, lastError = 0, ""
		default:
			lastError = ""
			set := fmt.Sprint(servers)
			if set != lastSet {
				lastSet, seen = set, 0
			}
			if seen++; seen < bootstrapStable {
				break
			}
			err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
			if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
				n.log.Error("bootstrap failed", "err", err)
			} else {
				n.log.Info("bootstrapped the cluster", "servers", len(servers))
			}
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// bootstrapCandidates is the configuration to bootstrap with now, sorted by
// id, or nil to keep waiting. problem, when not empty, says why the alive
// members must not bootstrap together at all.
func (n *Node) bootstrapCandidates() (servers []raft.Server, problem string) {
	self := false
	for _, m := range n.members() {
		if m.state != memberlist.StateAlive {
			continue
		}
		if m.meta.Bootstrapped && m.id != n.cfg.NodeID {
			// An existing cluster will add us as a voter; wait for it.
			return nil, ""
		}
		if m.meta.Expect != 0 && m.meta.Expect != n.cfg.BootstrapExpect {
			return nil, fmt.Sprintf("member %s expects %d servers; every server must be started with the same BOOTSTRAP_EXPECT", m.id, m.meta.Expect)
		}
		self = self || m.id == n.cfg.NodeID
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.id), Address: raft.ServerAddress(m.meta.RaftAddr)})
	}
	switch {
	case !self || len(servers) < n.cfg.BootstrapExpect:
		return nil, ""
	case len(servers) > n.cfg.BootstrapExpect:
		return nil, fmt.Sprintf("%d fresh servers are alive but %d are expected", len(servers), n.cfg.BootstrapExpect)
	}
	return servers, ""
}

// refreshMeta re-announces this node's metadata.
func (n *Node) refreshMeta() {
	if err := n.list.UpdateNode(2 * time.Second); err != nil {
		n.log.Debug("gossip metadata update", "err", err)
	}
}

// watchLeadership follows Raft's NotifyCh (LeaderCh may drop changes).
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	for {
		select {
		case leader := <-n.notifyCh:
			n.leading.Store(leader)
			if leader {
				n.log.Info("became the leader")
				// Act as leader only once the FSM has caught up.
				if err := n.raft.Barrier(n.cfg.CommitTimeout).Error(); err != nil {
					n.log.Warn("leader barrier", "err", err)
				}
				n.membersChanged()
			} else {
				n.log.Info("lost leadership")
			}
		case <-n.ctx.Done():
			return
		}
	}
}

// reconcileLoop brings the Raft configuration in line with gossip
// membership, on the leader, when members change and every few seconds.
func (n *Node) reconcileLoop() {
	defer n.wg.Done()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-n.memberCh:
		case <-tick.C:
		case <-n.ctx.Done():
			return
		}
		n.fanout.syncPeers()
		if n.raft.State() == raft.Leader {
			n.reconcile()
		}
	}
}

// reconcile adds alive servers Raft does not know (or knows at another
// address) and removes servers that left gracefully. Failed servers stay
// voters: they are expected back.
func (n *Node) reconcile() {
	future := n.raft.GetConfiguration()
	if err := future.Error(); err != nil {
		return
	}
	known := map[string]raft.ServerAddress{}
	for _, s := range future.Configuration().Servers {
		known[string(s.ID)] = s.Address
	}
	for _, m := range n.members() {
		addr, inRaft := known[m.id]
		switch m.state {
		case memberlist.StateAlive:
			if inRaft && addr == raft.ServerAddress(m.meta.RaftAddr) {
				continue
			}
			// AddVoter updates the address of a known server (a node that
			// came back with a new IP); for a new one it adds it. Any
			// other server at that address is an older identity: remove it.
			for id, a := range known {
				if a == raft.ServerAddress(m.meta.RaftAddr) && id != m.id {
					n.removeServer(id)
				}
			}
			if err := n.raft.AddVoter(raft.ServerID(m.id), raft.ServerAddress(m.meta.RaftAddr), 0, n.cfg.CommitTimeout).Error(); err != nil {
				n.log.Warn("add voter", "node", m.id, "err", err)
			} else {
				n.log.Info("added voter", "node", m.id, "raft_addr", m.meta.RaftAddr)
			}
		case memberlist.StateLeft:
			if inRaft && m.id != n.cfg.NodeID {
				n.removeServer(m.id)
			}
		}
	}
}

func (n *Node) removeServer(id string) {
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.CommitTimeout).Error(); err != nil {
		n.log.Warn("remove server", "node", id, "err", err)
		return
	}
	n.log.Info("removed server", "node", id)
}

// MemberStatus is one server as GET /cluster reports it.
type MemberStatus struct {
	ID       string
	Address  string
	RaftAddr string
	HTTPAddr string
	Status   string // alive, suspect, dead, left, or unknown (not in gossip)
	Voter    bool
}

// Members lists Raft's servers and gossip members, by id.
func (n *Node) Members() []MemberStatus {
	byID := map[string]*MemberStatus{}
	gossipState := map[string]memberlist.NodeStateType{}
	for _, m := range n.members() {
		gossipState[m.id] = m.state
		if m.state == memberlist.StateLeft {
			continue // gone for good; listed below only while still in Raft
		}
		byID[m.id] = &MemberStatus{ID: m.id, Address: m.addr, RaftAddr: m.meta.RaftAddr, HTTPAddr: m.meta.HTTPAddr, Status: stateName(m.state)}
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			ms, ok := byID[string(s.ID)]
			if !ok {
				host, _, _ := net.SplitHostPort(string(s.Address))
				ms = &MemberStatus{ID: string(s.ID), Address: host, RaftAddr: string(s.Address), Status: "unknown"}
				if st, ok := gossipState[string(s.ID)]; ok {
					ms.Status = stateName(st)
				}
				byID[string(s.ID)] = ms
			}
			ms.Voter = s.Suffrage == raft.Voter
		}
	}
	out := make([]MemberStatus, 0, len(byID))
	for _, ms := range byID {
		out = append(out, *ms)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown(" + strconv.Itoa(int(s)) + ")"
}
