package broker

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Event is a committed message as subscribers see it. It is immutable once
// built: every subscriber's queue shares the same *Event and its Frame.
type Event struct {
	Topic   string
	Seq     uint64
	TS      time.Time
	Message Message
	// Frame is the event's wire encoding, made once by Config.EncodeEvent.
	Frame []byte
}

// Config sizes the broker. Zero values take the spec's defaults.
type Config struct {
	RingSize  int            // events kept per topic for last_n (default 100)
	QueueSize int            // outbound queue per subscription (default 100)
	Overflow  OverflowPolicy // what a full queue does
	// EncodeEvent renders an event for the wire once, before fan-out. Nil
	// leaves Frame empty.
	EncodeEvent func(*Event) []byte
}

func (c Config) withDefaults() Config {
	if c.RingSize <= 0 {
		c.RingSize = 100
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 100
	}
	return c
}

// maxAheadFactor bounds, in multiples of RingSize, the events a topic holds
// that arrived ahead of a gap. Copies beyond it are dropped: the Raft apply
// path delivers them again in order.
const maxAheadFactor = 4

type topic struct {
	name  string
	epoch uint64 // which creation of this name: copies of events carry it

	mu sync.Mutex
	// replicated
	ring    eventRing
	count   uint64 // messages ever published
	lastSeq uint64
	// node-local
	delivered uint64
	history   eventRing
	ahead     map[uint64]*Event
	subs      []*Subscription
	dropped   uint64 // counted when a subscription ends; live ones add theirs
	watchers  []deliveryWatcher
	// retired is set, under mu, once the topic has left b.topics (deleted,
	// or replaced by a Restore). A caller that looked the topic up before
	// that looks it up again (lockTopic).
	retired bool
}

// deliveryWatcher is called once the topic has delivered seq locally.
type deliveryWatcher struct {
	seq  uint64
	done func()
}

// Broker is the node-local core. All replicated changes go through its
// Committer; Apply is called back once they are committed.
type Broker struct {
	cfg       Config
	committer Committer

	mu        sync.RWMutex
	topics    map[string]*topic
	creations uint64 // topics ever created: the next topic's epoch (replicated)
}

var _ Applier = (*Broker)(nil)

// New returns a broker that commits through a MemoryCommitter until
// SetCommitter is called.
func New(cfg Config) *Broker {
	b := &Broker{cfg: cfg.withDefaults(), topics: make(map[string]*topic)}
	b.committer = NewMemoryCommitter(b)
	return b
}

// SetCommitter replaces the committer. Call it before serving requests.
func (b *Broker) SetCommitter(c Committer) { b.committer = c }

// Config returns the effective configuration.
func (b *Broker) Config() Config { return b.cfg }

// CreateTopic commits the creation of a topic.
func (b *Broker) CreateTopic(ctx context.Context, name string) error {
	if !ValidTopicName(name) {
		return ErrInvalidTopicName
	}
	return b.commitAdmin(ctx, Command{Op: OpCreateTopic, Topic: name})
}

// DeleteTopic commits the deletion of a topic; its subscriptions end with
// EndTopicDeleted on every node.
func (b *Broker) DeleteTopic(ctx context.Context, name string) error {
	if !ValidTopicName(name) {
		return ErrTopicNotFound
	}
	return b.commitAdmin(ctx, Command{Op: OpDeleteTopic, Topic: name})
}

func (b *Broker) commitAdmin(ctx context.Context, cmd Command) error {
	res, err := b.committer.Submit(cmd).Wait(ctx)
	if err != nil {
		return err
	}
	return res.Err
}

// Publish submits a message for commit and returns at once; Wait on the
// result for the ack. Publishes submitted by one goroutine commit in order.
func (b *Broker) Publish(topicName string, msg Message) Pending {
	return b.committer.Submit(Command{Op: OpPublish, Topic: topicName, Message: msg})
}

// Apply changes the replicated state. It is called by the Committer, on every
// node, for each committed command in log order, and must stay deterministic.
func (b *Broker) Apply(cmd Command) Result {
	switch cmd.Op {
	case OpCreateTopic:
		return b.applyCreate(cmd)
	case OpDeleteTopic:
		return b.applyDelete(cmd)
	case OpPublish:
		return b.applyPublish(cmd)
	default:
		panic(fmt.Sprintf("broker: unknown op %d in committed command", cmd.Op))
	}
}

func (b *Broker) newTopic(name string, epoch uint64) *topic {
	return &topic{
		name:    name,
		epoch:   epoch,
		ring:    newEventRing(b.cfg.RingSize),
		history: newEventRing(b.cfg.RingSize),
	}
}

func (b *Broker) applyCreate(cmd Command) Result {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.topics[cmd.Topic]; ok {
		return Result{Err: ErrTopicExists, TS: cmd.TS}
	}
	b.creations++
	b.topics[cmd.Topic] = b.newTopic(cmd.Topic, b.creations)
	return Result{TS: cmd.TS, Epoch: b.creations}
}

func (b *Broker) applyDelete(cmd Command) Result {
	b.mu.Lock()
	t, ok := b.topics[cmd.Topic]
	if ok {
		delete(b.topics, cmd.Topic)
	}
	b.mu.Unlock()
	if !ok {
		return Result{Err: ErrTopicNotFound, TS: cmd.TS}
	}
	t.mu.Lock()
	t.retired = true
	t.endAllLocked(EndTopicDeleted)
	t.releaseWatchersLocked()
	t.mu.Unlock()
	return Result{TS: cmd.TS}
}

// lockTopic returns the live topic of that name, locked, or nil. The map is
// read under b.mu and the topic locked after it is released, so that a
// fan-out holds no broker-wide lock; a topic retired in between is looked
// up again.
func (b *Broker) lockTopic(name string) *topic {
	for {
		b.mu.RLock()
		t, ok := b.topics[name]
		b.mu.RUnlock()
		if !ok {
			return nil
		}
		t.mu.Lock()
		if !t.retired {
			return t
		}
		t.mu.Unlock()
	}
}

func (b *Broker) applyPublish(cmd Command) Result {
	t := b.lockTopic(cmd.Topic)
	if t == nil {
		return Result{Err: ErrTopicNotFound, TS: cmd.TS}
	}
	defer t.mu.Unlock()
	t.lastSeq++
	t.count++
	e := &Event{Topic: t.name, Seq: t.lastSeq, TS: cmd.TS, Message: cmd.Message}
	if b.cfg.EncodeEvent != nil {
		e.Frame = b.cfg.EncodeEvent(e)
	}
	t.ring.push(e)
	b.deliverLocked(t, e)
	return Result{Seq: e.Seq, TS: e.TS, Epoch: t.epoch}
}

// Deliver hands an event that was committed elsewhere (a copy carried from
// the leader) to local subscribers. Whichever of Deliver and Apply brings a
// seq first delivers it; the other is skipped. An event ahead of a gap waits
// for the gap to fill.
// epoch is the topic's creation the event belongs to (Result.Epoch); a copy
// from an older creation of the same name is ignored.
func (b *Broker) Deliver(topicName string, epoch, seq uint64, ts time.Time, msg Message) {
	t := b.lockTopic(topicName)
	if t == nil {
		return
	}
	defer t.mu.Unlock()
	if t.epoch != epoch || seq <= t.delivered || t.ahead[seq] != nil {
		return
	}
	e := &Event{Topic: t.name, Seq: seq, TS: ts, Message: msg}
	if b.cfg.EncodeEvent != nil {
		e.Frame = b.cfg.EncodeEvent(e)
	}
	b.deliverLocked(t, e)
}

func (b *Broker) deliverLocked(t *topic, e *Event) {
	switch {
	case e.Seq <= t.delivered:
		return
	case e.Seq > t.delivered+1:
		if t.ahead == nil {
			t.ahead = make(map[uint64]*Event)
		}
		if len(t.ahead) < maxAheadFactor*b.cfg.RingSize {
			t.ahead[e.Seq] = e
		}
		return
	}
	t.fanOutLocked(e)
	for len(t.ahead) > 0 {
		next, ok := t.ahead[t.delivered+1]
		if !ok {
			break
		}
		delete(t.ahead, next.Seq)
		t.fanOutLocked(next)
	}
	if len(t.ahead) > 0 {
		for seq := range t.ahead {
			if seq <= t.delivered {
				delete(t.ahead, seq)
			}
		}
	}
	if len(t.watchers) > 0 {
		t.notifyWatchersLocked()
	}
}

func (t *topic) notifyWatchersLocked() {
	k := 0
	for _, w := range t.watchers {
		if w.seq <= t.delivered {
			w.done()
			continue
		}
		t.watchers[k] = w
		k++
	}
	clear(t.watchers[k:])
	t.watchers = t.watchers[:k]
}

func (t *topic) releaseWatchersLocked() {
	for _, w := range t.watchers {
		w.done()
	}
	t.watchers = nil
}

// OnDelivered calls done once this node has delivered seq of the topic's
// given epoch to its local subscribers, or at once if it already has, or if
// that topic is gone. done runs with the topic locked: it must be quick and
// must not call the broker.
func (b *Broker) OnDelivered(topicName string, epoch, seq uint64, done func()) {
	t := b.lockTopic(topicName)
	if t == nil {
		done()
		return
	}
	defer t.mu.Unlock()
	if t.epoch != epoch || seq <= t.delivered {
		done()
		return
	}
	t.watchers = append(t.watchers, deliveryWatcher{seq: seq, done: done})
}

func (t *topic) fanOutLocked(e *Event) {
	t.delivered = e.Seq
	t.history.push(e)
	removed := false
	for _, s := range t.subs {
		wake, overflowed := s.push(e)
		if wake {
			s.owner.Wake(s)
		}
		removed = removed || overflowed
	}
	if removed {
		t.compactLocked()
	}
}

// compactLocked drops ended subscriptions from t.subs.
func (t *topic) compactLocked() {
	kept := t.subs[:0]
	for _, s := range t.subs {
		s.mu.Lock()
		ended := s.end != Active
		s.mu.Unlock()
		if ended {
			t.dropped += s.Dropped()
			s.index = -1
			continue
		}
		s.index = len(kept)
		kept = append(kept, s)
	}
	clear(t.subs[len(kept):])
	t.subs = kept
}

func (t *topic) endAllLocked(reason EndReason) {
	for _, s := range t.subs {
		if s.finish(reason) {
			s.owner.Wake(s)
		}
		s.index = -1
	}
	t.subs = nil
}

// Subscribe registers a subscription and, in the same step, queues the last
// lastN delivered events (at most RingSize), so replay and live events meet
// with no gap and no duplicate. The subscription is held: call Start once the
// owner is ready to be woken.
func (b *Broker) Subscribe(topicName, clientID string, lastN int, owner Waker) (*Subscription, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	t, ok := b.topics[topicName]
	if !ok {
		return nil, ErrTopicNotFound
	}
	s := &Subscription{
		topicName: topicName,
		clientID:  clientID,
		owner:     owner,
		policy:    b.cfg.Overflow,
		queue:     make([]*Event, b.cfg.QueueSize),
		held:      true,
	}
	t.mu.Lock()
	s.replay = t.history.last(lastN)
	s.index = len(t.subs)
	t.subs = append(t.subs, s)
	t.mu.Unlock()
	return s, nil
}

// Unsubscribe removes s from its topic. It is idempotent.
func (b *Broker) Unsubscribe(s *Subscription) {
	b.mu.RLock()
	t, ok := b.topics[s.topicName]
	if ok {
		t.mu.Lock()
	}
	b.mu.RUnlock()
	if !ok {
		s.finish(EndUnsubscribed)
		return
	}
	defer t.mu.Unlock()
	s.finish(EndUnsubscribed)
	if s.index >= 0 && s.index < len(t.subs) && t.subs[s.index] == s {
		last := len(t.subs) - 1
		t.subs[s.index] = t.subs[last]
		t.subs[s.index].index = s.index
		t.subs[last] = nil
		t.subs = t.subs[:last]
		s.index = -1
		t.dropped += s.Dropped()
	}
}

// TopicStats describes one topic on this node.
type TopicStats struct {
	Name        string
	Messages    uint64 // ever published (replicated)
	LastSeq     uint64
	Subscribers int    // local subscriptions
	Dropped     uint64 // events dropped from local subscriptions' queues
}

// Topics lists every topic, sorted by name.
func (b *Broker) Topics() []TopicStats {
	b.mu.RLock()
	out := make([]TopicStats, 0, len(b.topics))
	for _, t := range b.topics {
		t.mu.Lock()
		st := TopicStats{Name: t.name, Messages: t.count, LastSeq: t.lastSeq, Subscribers: len(t.subs), Dropped: t.dropped}
		for _, s := range t.subs {
			st.Dropped += s.Dropped()
		}
		t.mu.Unlock()
		out = append(out, st)
	}
	b.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// HasTopic reports whether the topic exists in the local replicated state.
func (b *Broker) HasTopic(name string) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	_, ok := b.topics[name]
	return ok
}
