package broker

import (
	"sync"
	"sync/atomic"
)

// OverflowPolicy says what happens when a subscription's queue is full.
type OverflowPolicy uint8

const (
	// DropOldest drops the oldest queued event and counts it.
	DropOldest OverflowPolicy = iota
	// Disconnect ends the subscription with EndSlowConsumer; its owner is
	// expected to close the connection.
	Disconnect
)

// ParseOverflowPolicy maps the configuration spelling to a policy.
func ParseOverflowPolicy(s string) (OverflowPolicy, bool) {
	switch s {
	case "drop_oldest":
		return DropOldest, true
	case "disconnect":
		return Disconnect, true
	}
	return DropOldest, false
}

func (p OverflowPolicy) String() string {
	if p == Disconnect {
		return "disconnect"
	}
	return "drop_oldest"
}

// EndReason says why a subscription stopped receiving events.
type EndReason uint8

const (
	Active          EndReason = iota
	EndUnsubscribed           // the owner unsubscribed
	EndTopicDeleted           // the topic was deleted
	EndSlowConsumer           // queue overflow under the Disconnect policy
	EndClosed                 // the broker shut down
)

// Waker is told that a subscription has something to drain (or has ended).
// It is called at most once per Drain cycle, from the delivering goroutine
// with the topic lock held: it must not block and must not call the broker.
type Waker interface {
	Wake(s *Subscription)
}

// Subscription is one client's interest in one topic. Its bounded queue is
// filled by the fan-out and emptied by its owner through Drain; the fan-out
// never waits for the owner.
type Subscription struct {
	topicName string
	clientID  string
	owner     Waker
	policy    OverflowPolicy
	index     int // position in topic.subs, guarded by topic.mu

	dropped atomic.Uint64

	mu        sync.Mutex
	replay    []*Event // last_n events, drained before the queue
	queue     []*Event // ring of cap QUEUE_SIZE
	head, n   int
	signalled bool // owner already woken and has not drained since
	held      bool // created, not started: pushes do not wake
	end       EndReason
}

// Topic is the subscribed topic's name.
func (s *Subscription) Topic() string { return s.topicName }

// ClientID is the client's name for the subscription.
func (s *Subscription) ClientID() string { return s.clientID }

// Dropped counts events dropped from this subscription by DropOldest.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Start lets the subscription wake its owner. Until Start, events (including
// the replay) queue up silently, so the owner can send its ack first.
func (s *Subscription) Start() {
	s.mu.Lock()
	s.held = false
	wake := !s.signalled && (s.n > 0 || len(s.replay) > 0 || s.end != Active)
	if wake {
		s.signalled = true
	}
	s.mu.Unlock()
	if wake {
		s.owner.Wake(s)
	}
}

// Ended reports whether the subscription has stopped receiving events.
func (s *Subscription) Ended() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.end != Active
}

// Drain appends every queued event, oldest first, to dst and reports whether
// the subscription has ended. After an end is reported the subscription
// receives nothing more.
func (s *Subscription) Drain(dst []*Event) ([]*Event, EndReason) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = append(dst, s.replay...)
	clear(s.replay)
	s.replay = nil
	for s.n > 0 {
		dst = append(dst, s.queue[s.head])
		s.queue[s.head] = nil
		s.head++
		if s.head == len(s.queue) {
			s.head = 0
		}
		s.n--
	}
	s.signalled = false
	return dst, s.end
}

// push queues e and reports whether the owner must be woken and whether the
// subscription just overflowed under the Disconnect policy.
func (s *Subscription) push(e *Event) (wake, overflowed bool) {
	s.mu.Lock()
	if s.end != Active {
		s.mu.Unlock()
		return false, false
	}
	if s.n == len(s.queue) {
		if s.policy == Disconnect {
			s.end = EndSlowConsumer
			wake = !s.signalled && !s.held
			s.signalled = s.signalled || wake
			s.mu.Unlock()
			return wake, true
		}
		s.queue[s.head] = nil
		s.head++
		if s.head == len(s.queue) {
			s.head = 0
		}
		s.n--
		s.dropped.Add(1)
	}
	i := s.head + s.n
	if i >= len(s.queue) {
		i -= len(s.queue)
	}
	s.queue[i] = e
	s.n++
	wake = !s.signalled && !s.held
	if wake {
		s.signalled = true
	}
	s.mu.Unlock()
	return wake, false
}

// finish ends the subscription for reason and reports whether the owner must
// be woken to learn about it.
func (s *Subscription) finish(reason EndReason) (wake bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.end != Active {
		return false
	}
	s.end = reason
	if reason == EndUnsubscribed {
		// Nothing queued before an unsubscribe is sent after its ack.
		clear(s.replay)
		s.replay = nil
		clear(s.queue)
		s.head, s.n = 0, 0
	}
	wake = !s.signalled && !s.held && reason != EndUnsubscribed
	if wake {
		s.signalled = true
	}
	return wake
}
