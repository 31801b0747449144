package broker

import "sort"

// TopicState is one topic's replicated state.
type TopicState struct {
	Name    string
	Epoch   uint64
	Count   uint64   // messages ever published
	LastSeq uint64   // seq of the newest message
	Ring    []*Event // newest RingSize events, oldest first
}

// State is the whole replicated state, as a snapshot holds it.
type State struct {
	Creations uint64 // topics ever created
	Topics    []TopicState
}

// State copies the replicated state. Events are immutable, so the copy
// shares them; it is cheap enough to take on the apply goroutine.
func (b *Broker) State() State {
	b.mu.RLock()
	defer b.mu.RUnlock()
	st := State{Creations: b.creations, Topics: make([]TopicState, 0, len(b.topics))}
	for _, t := range b.topics {
		t.mu.Lock()
		st.Topics = append(st.Topics, TopicState{
			Name: t.name, Epoch: t.epoch, Count: t.count, LastSeq: t.lastSeq, Ring: t.ring.last(t.ring.len()),
		})
		t.mu.Unlock()
	}
	sort.Slice(st.Topics, func(i, j int) bool { return st.Topics[i].Name < st.Topics[j].Name })
	return st
}

// Restore replaces the replicated state with st. The new state is built
// aside and swapped in under the lock; then local subscribers are brought in
// line: those of a topic that no longer exists end with EndTopicDeleted, the
// others move to the restored topic and receive, in order, the restored
// ring's events they had not been delivered yet.
func (b *Broker) Restore(st State) {
	fresh := make(map[string]*topic, len(st.Topics))
	for _, ts := range st.Topics {
		t := b.newTopic(ts.Name, ts.Epoch)
		t.count, t.lastSeq = ts.Count, ts.LastSeq
		for _, e := range ts.Ring {
			if e.Frame == nil && b.cfg.EncodeEvent != nil {
				e.Frame = b.cfg.EncodeEvent(e)
			}
			t.ring.push(e)
			t.history.push(e)
		}
		// Unless adopted below, delivery starts at the restored state.
		t.delivered = t.lastSeq
		fresh[ts.Name] = t
	}

	b.mu.Lock()
	old := b.topics
	b.topics = fresh
	b.creations = st.Creations
	for name, prev := range old {
		prev.mu.Lock()
		prev.retired = true
		next, ok := fresh[name]
		if !ok || next.epoch != prev.epoch {
			prev.endAllLocked(EndTopicDeleted)
			prev.releaseWatchersLocked()
			prev.mu.Unlock()
			continue
		}
		next.mu.Lock()
		next.adoptLocked(prev)
		next.mu.Unlock()
		prev.mu.Unlock()
	}
	b.mu.Unlock()
}

// adoptLocked moves prev's subscribers and delivery position to t and
// delivers the restored events they have not seen.
func (t *topic) adoptLocked(prev *topic) {
	t.subs, prev.subs = prev.subs, nil
	t.watchers, prev.watchers = prev.watchers, nil
	t.dropped = prev.dropped
	t.delivered = prev.delivered
	// prev is retired: nothing writes its history again, so t may keep
	// the same buffer.
	t.history = prev.history
	if t.delivered > t.lastSeq {
		// The restored log is behind what this node delivered: keep the
		// position, later applies are skipped until they pass it.
		return
	}
	// Events past the ring's start that this node never saw are gone for
	// its live subscribers (they see the jump in seq); the ring's are
	// delivered, which also brings the replay history up to date.
	for _, e := range t.ring.last(t.ring.len()) {
		if e.Seq > t.delivered {
			t.fanOutLocked(e)
		}
	}
	if t.delivered < t.lastSeq {
		t.delivered = t.lastSeq
	}
	t.notifyWatchersLocked()
}
