package broker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// recordingWaker counts the wake-ups of each subscription.
type recordingWaker struct {
	mu    sync.Mutex
	wakes map[*broker.Subscription]int
}

func (w *recordingWaker) Wake(s *broker.Subscription) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wakes == nil {
		w.wakes = make(map[*broker.Subscription]int)
	}
	w.wakes[s]++
}

func (w *recordingWaker) count(s *broker.Subscription) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.wakes[s]
}

func newBroker(t *testing.T, cfg broker.Config, topics ...string) *broker.Broker {
	t.Helper()
	b := broker.New(cfg)
	for _, name := range topics {
		if err := b.CreateTopic(context.Background(), name); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	return b
}

// publish commits one message and returns its result.
func publish(t *testing.T, b *broker.Broker, topic, payload string) broker.Result {
	t.Helper()
	res, err := b.Publish(topic, broker.Message{ID: fmt.Sprintf("id-%s", payload), Payload: []byte(payload)}).Wait(context.Background())
	if err != nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
	return res
}

func publishN(t *testing.T, b *broker.Broker, topic string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if res := publish(t, b, topic, fmt.Sprint(i)); res.Err != nil {
			t.Fatalf("publish to %s: %v", topic, res.Err)
		}
	}
}

func subscribe(t *testing.T, b *broker.Broker, topic string, lastN int, w broker.Waker) *broker.Subscription {
	t.Helper()
	s, err := b.Subscribe(topic, "client", lastN, w)
	if err != nil {
		t.Fatalf("subscribe to %s: %v", topic, err)
	}
	return s
}

// drainSeqs drains s and returns the seqs it held and its end reason.
func drainSeqs(s *broker.Subscription) ([]uint64, broker.EndReason) {
	events, end := s.Drain(nil)
	seqs := make([]uint64, len(events))
	for i, e := range events {
		seqs[i] = e.Seq
	}
	return seqs, end
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func expectDrain(t *testing.T, s *broker.Subscription, want []uint64, wantEnd broker.EndReason) {
	t.Helper()
	got, end := drainSeqs(s)
	if fmt.Sprint(got) != fmt.Sprint(want) || end != wantEnd {
		t.Fatalf("drained %v (end %d), want %v (end %d)", got, end, want, wantEnd)
	}
}

func stats(t *testing.T, b *broker.Broker, topic string) broker.TopicStats {
	t.Helper()
	for _, st := range b.Topics() {
		if st.Name == topic {
			return st
		}
	}
	t.Fatalf("no topic %s", topic)
	return broker.TopicStats{}
}

func TestTopicAdmin(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, broker.Config{})
	for _, name := range []string{"", "a b", "a/b", "ü", strings.Repeat("x", 129)} {
		if err := b.CreateTopic(ctx, name); !errors.Is(err, broker.ErrInvalidTopicName) {
			t.Errorf("CreateTopic(%q) = %v, want ErrInvalidTopicName", name, err)
		}
	}
	for _, name := range []string{"orders", "a", "A.b_c-9", strings.Repeat("x", 128)} {
		if err := b.CreateTopic(ctx, name); err != nil {
			t.Errorf("CreateTopic(%q) = %v", name, err)
		}
		if !b.HasTopic(name) {
			t.Errorf("HasTopic(%q) = false after create", name)
		}
	}
	if err := b.CreateTopic(ctx, "orders"); !errors.Is(err, broker.ErrTopicExists) {
		t.Errorf("second CreateTopic = %v, want ErrTopicExists", err)
	}
	var names []string
	for _, st := range b.Topics() {
		names = append(names, st.Name)
	}
	if want := []string{"A.b_c-9", "a", "orders", strings.Repeat("x", 128)}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("Topics() = %v, want sorted %v", names, want)
	}
	if err := b.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	if b.HasTopic("orders") {
		t.Error("HasTopic after delete")
	}
	for _, name := range []string{"orders", "never", "bad name"} {
		if err := b.DeleteTopic(ctx, name); !errors.Is(err, broker.ErrTopicNotFound) {
			t.Errorf("DeleteTopic(%q) = %v, want ErrTopicNotFound", name, err)
		}
	}
	if res := publish(t, b, "orders", "x"); !errors.Is(res.Err, broker.ErrTopicNotFound) {
		t.Errorf("publish to deleted topic: %v", res.Err)
	}
	if _, err := b.Subscribe("orders", "c", 0, &recordingWaker{}); !errors.Is(err, broker.ErrTopicNotFound) {
		t.Errorf("subscribe to deleted topic: %v", err)
	}
}

func TestPublishAssignsSeqAndTS(t *testing.T) {
	encoded := 0
	b := newBroker(t, broker.Config{RingSize: 2, EncodeEvent: func(e *broker.Event) []byte {
		encoded++
		return []byte(fmt.Sprintf("frame-%d", e.Seq))
	}}, "orders", "other")
	w := &recordingWaker{}
	s := subscribe(t, b, "orders", 0, w)
	s.Start()
	var last time.Time
	for i := 1; i <= 5; i++ {
		before := time.Now()
		res := publish(t, b, "orders", fmt.Sprint(i))
		if res.Err != nil || res.Seq != uint64(i) {
			t.Fatalf("publish %d: seq %d, err %v", i, res.Seq, res.Err)
		}
		if res.TS.Location() != time.UTC || res.TS.Before(before.Add(-time.Millisecond)) || res.TS.Before(last) {
			t.Fatalf("publish %d: ts %v (previous %v)", i, res.TS, last)
		}
		last = res.TS
	}
	if res := publish(t, b, "other", "x"); res.Seq != 1 {
		t.Fatalf("seq on another topic starts at %d, want 1", res.Seq)
	}
	events, _ := s.Drain(nil)
	for i, e := range events {
		if e.Seq != uint64(i+1) || e.Topic != "orders" || string(e.Message.Payload) != fmt.Sprint(i+1) ||
			e.Message.ID != fmt.Sprint("id-", i+1) || string(e.Frame) != fmt.Sprint("frame-", i+1) {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	if len(events) != 5 || encoded != 6 {
		t.Fatalf("%d events, %d encodings; want 5 events and one encoding per event", len(events), encoded)
	}
	st := stats(t, b, "orders")
	if st.Messages != 5 || st.LastSeq != 5 || st.Subscribers != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSubscriptionHeldUntilStart(t *testing.T) {
	b := newBroker(t, broker.Config{}, "orders")
	publishN(t, b, "orders", 2)
	w := &recordingWaker{}
	s := subscribe(t, b, "orders", 1, w)
	publishN(t, b, "orders", 2)
	if n := w.count(s); n != 0 {
		t.Fatalf("woken %d times before Start", n)
	}
	s.Start()
	if n := w.count(s); n != 1 {
		t.Fatalf("woken %d times by Start, want 1", n)
	}
	// The replay comes first, then what arrived while held.
	expectDrain(t, s, []uint64{2, 3, 4}, broker.Active)
	if s.Topic() != "orders" || s.ClientID() != "client" {
		t.Fatalf("subscription names %s/%s", s.Topic(), s.ClientID())
	}

	// Start with nothing queued does not wake.
	s2 := subscribe(t, b, "orders", 0, w)
	s2.Start()
	if n := w.count(s2); n != 0 {
		t.Fatalf("empty subscription woken %d times by Start", n)
	}
}

func TestWakeOncePerDrain(t *testing.T) {
	b := newBroker(t, broker.Config{}, "orders")
	w := &recordingWaker{}
	s := subscribe(t, b, "orders", 0, w)
	s.Start()
	publishN(t, b, "orders", 3)
	if n := w.count(s); n != 1 {
		t.Fatalf("woken %d times for 3 events before a drain, want 1", n)
	}
	expectDrain(t, s, []uint64{1, 2, 3}, broker.Active)
	expectDrain(t, s, nil, broker.Active)
	publishN(t, b, "orders", 1)
	if n := w.count(s); n != 2 {
		t.Fatalf("woken %d times, want 2 after drain and another event", n)
	}
	expectDrain(t, s, []uint64{4}, broker.Active)
}

func TestReplay(t *testing.T) {
	const ring = 3
	tests := []struct {
		published, lastN int
		want             []uint64
	}{
		{0, 5, nil},
		{5, 0, nil},
		{5, -1, nil},
		{2, 5, []uint64{1, 2}},
		{5, 2, []uint64{4, 5}},
		{5, 3, []uint64{3, 4, 5}},
		{5, 1000, []uint64{3, 4, 5}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("published=%d/last_n=%d", tt.published, tt.lastN), func(t *testing.T) {
			b := newBroker(t, broker.Config{RingSize: ring}, "orders")
			publishN(t, b, "orders", tt.published)
			s := subscribe(t, b, "orders", tt.lastN, &recordingWaker{})
			s.Start()
			publishN(t, b, "orders", 1) // live, right after the replay
			expectDrain(t, s, append(tt.want, uint64(tt.published+1)), broker.Active)
		})
	}
}

func TestOverflowDropOldest(t *testing.T) {
	b := newBroker(t, broker.Config{QueueSize: 4, Overflow: broker.DropOldest}, "orders")
	w := &recordingWaker{}
	slow := subscribe(t, b, "orders", 0, w)
	slow.Start()
	fast := subscribe(t, b, "orders", 0, w)
	fast.Start()
	var fastGot []uint64
	for i := 0; i < 10; i++ {
		publishN(t, b, "orders", 1) // never blocks, whatever slow does
		seqs, _ := drainSeqs(fast)
		fastGot = append(fastGot, seqs...)
	}
	if fmt.Sprint(fastGot) != fmt.Sprint(seqRange(1, 10)) || fast.Dropped() != 0 {
		t.Fatalf("fast subscriber got %v, dropped %d", fastGot, fast.Dropped())
	}
	if n := w.count(slow); n != 1 {
		t.Fatalf("slow subscriber woken %d times, want 1", n)
	}
	if slow.Dropped() != 6 || stats(t, b, "orders").Dropped != 6 {
		t.Fatalf("dropped %d (topic %d), want 6", slow.Dropped(), stats(t, b, "orders").Dropped)
	}
	expectDrain(t, slow, seqRange(7, 10), broker.Active) // the newest 4, oldest first
	publishN(t, b, "orders", 1)
	expectDrain(t, slow, []uint64{11}, broker.Active)

	// The count survives the subscription's end.
	b.Unsubscribe(slow)
	if st := stats(t, b, "orders"); st.Dropped != 6 || st.Subscribers != 1 {
		t.Fatalf("after unsubscribe: %+v, want 6 dropped and 1 subscriber", st)
	}
}

func TestOverflowDisconnect(t *testing.T) {
	b := newBroker(t, broker.Config{QueueSize: 4, Overflow: broker.Disconnect}, "orders")
	w := &recordingWaker{}
	slow := subscribe(t, b, "orders", 0, w)
	slow.Start()
	fast := subscribe(t, b, "orders", 0, w)
	fast.Start()
	for i := 0; i < 4; i++ {
		publishN(t, b, "orders", 1)
		drainSeqs(fast)
	}
	if slow.Ended() {
		t.Fatal("subscription ended with a full but not overflowing queue")
	}
	publishN(t, b, "orders", 1) // the fifth: overflow
	if !slow.Ended() {
		t.Fatal("subscription still active after its queue overflowed")
	}
	if st := stats(t, b, "orders"); st.Subscribers != 1 || st.Dropped != 0 {
		t.Fatalf("stats %+v, want the slow subscription gone and nothing dropped", st)
	}
	publishN(t, b, "orders", 3)
	// What was queued is still handed over, then the end.
	expectDrain(t, slow, seqRange(1, 4), broker.EndSlowConsumer)
	expectDrain(t, slow, nil, broker.EndSlowConsumer)
	expectDrain(t, fast, seqRange(5, 8), broker.Active)
	if n := w.count(slow); n != 1 {
		t.Fatalf("slow subscriber woken %d times, want 1", n)
	}
	b.Unsubscribe(slow) // the owner's cleanup is harmless
	if st := stats(t, b, "orders"); st.Subscribers != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestOverflowDisconnectWakes: a subscription that overflows while its
// owner has nothing pending wakes the owner to learn of the end.
func TestOverflowDisconnectWakes(t *testing.T) {
	b := newBroker(t, broker.Config{QueueSize: 2, Overflow: broker.Disconnect}, "orders")
	w := &recordingWaker{}
	s := subscribe(t, b, "orders", 0, w)
	publishN(t, b, "orders", 3) // overflows while held
	if !s.Ended() || w.count(s) != 0 {
		t.Fatalf("ended %v, woken %d times while held", s.Ended(), w.count(s))
	}
	s.Start()
	if n := w.count(s); n != 1 {
		t.Fatalf("woken %d times by Start of an ended subscription, want 1", n)
	}
	expectDrain(t, s, []uint64{1, 2}, broker.EndSlowConsumer)
}

func TestUnsubscribe(t *testing.T) {
	b := newBroker(t, broker.Config{}, "orders")
	w := &recordingWaker{}
	s := subscribe(t, b, "orders", 0, w)
	s.Start()
	other := subscribe(t, b, "orders", 0, w)
	other.Start()
	publishN(t, b, "orders", 2)
	b.Unsubscribe(s)
	b.Unsubscribe(s) // idempotent
	if n := w.count(s); n != 1 {
		t.Fatalf("woken %d times, want only the first event's wake", n)
	}
	// Nothing queued before the unsubscribe is handed over after it.
	expectDrain(t, s, nil, broker.EndUnsubscribed)
	publishN(t, b, "orders", 1)
	expectDrain(t, s, nil, broker.EndUnsubscribed)
	expectDrain(t, other, seqRange(1, 3), broker.Active)
	if st := stats(t, b, "orders"); st.Subscribers != 1 {
		t.Fatalf("stats %+v, want 1 subscriber", st)
	}
	b.Unsubscribe(other)
	if st := stats(t, b, "orders"); st.Subscribers != 0 {
		t.Fatalf("stats %+v, want no subscriber", st)
	}
}

func TestDeleteTopicEndsSubscriptions(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, broker.Config{}, "orders", "other")
	w := &recordingWaker{}
	pending := subscribe(t, b, "orders", 0, w) // has an undrained event
	pending.Start()
	idle := subscribe(t, b, "orders", 0, w) // drained: must be woken by the deletion
	idle.Start()
	bystander := subscribe(t, b, "other", 0, w)
	bystander.Start()
	publishN(t, b, "orders", 1)
	drainSeqs(idle)

	if err := b.DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if w.count(pending) != 1 || w.count(idle) != 2 || w.count(bystander) != 0 {
		t.Fatalf("wakes: pending %d, idle %d, bystander %d; want 1, 2, 0", w.count(pending), w.count(idle), w.count(bystander))
	}
	expectDrain(t, pending, []uint64{1}, broker.EndTopicDeleted)
	expectDrain(t, idle, nil, broker.EndTopicDeleted)

	// Re-created, the topic starts afresh; the old subscriptions stay ended.
	if err := b.CreateTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if res := publish(t, b, "orders", "new"); res.Seq != 1 {
		t.Fatalf("seq %d on the re-created topic, want 1", res.Seq)
	}
	expectDrain(t, pending, nil, broker.EndTopicDeleted)
	b.Unsubscribe(pending)
	if st := stats(t, b, "orders"); st.Subscribers != 0 || st.Messages != 1 {
		t.Fatalf("re-created topic: %+v", st)
	}
	publishN(t, b, "other", 1)
	expectDrain(t, bystander, []uint64{1}, broker.Active)
}

// TestDeliverInSeqOrderOnce hands events to a node in any order and twice
// (a copy from the leader, then the node's own commit): subscribers get each
// once, in seq order, and copies from an older creation of the topic are
// ignored.
func TestDeliverInSeqOrderOnce(t *testing.T) {
	b := newBroker(t, broker.Config{})
	created := b.Apply(broker.Command{Op: broker.OpCreateTopic, Topic: "orders"})
	if created.Err != nil {
		t.Fatal(created.Err)
	}
	epoch := created.Epoch
	w := &recordingWaker{}
	s := subscribe(t, b, "orders", 0, w)
	s.Start()
	ts := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)
	msg := func(n int) broker.Message {
		return broker.Message{ID: fmt.Sprint("id-", n), Payload: []byte(fmt.Sprint(n))}
	}
	b.Deliver("orders", epoch, 3, ts, msg(3))
	b.Deliver("orders", epoch, 2, ts, msg(2))
	expectDrain(t, s, nil, broker.Active)       // waiting for 1
	b.Deliver("orders", epoch+1, 1, ts, msg(1)) // another creation's: ignored
	expectDrain(t, s, nil, broker.Active)
	b.Deliver("orders", epoch, 1, ts, msg(1))
	b.Deliver("orders", epoch, 2, ts, msg(2))
	expectDrain(t, s, seqRange(1, 3), broker.Active)
	// The node's own commits of 1..3 arrive later and are skipped; 4 is new.
	publishN(t, b, "orders", 4)
	expectDrain(t, s, []uint64{4}, broker.Active)
	b.Deliver("nope", epoch, 1, ts, msg(1)) // unknown topic: ignored

	// Re-created, the topic takes no copies of the old creation's events.
	if err := b.DeleteTopic(context.Background(), "orders"); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateTopic(context.Background(), "orders"); err != nil {
		t.Fatal(err)
	}
	s2 := subscribe(t, b, "orders", 0, w)
	s2.Start()
	b.Deliver("orders", epoch, 1, ts, msg(1))
	expectDrain(t, s2, nil, broker.Active)
	publishN(t, b, "orders", 1)
	expectDrain(t, s2, []uint64{1}, broker.Active)
}

// TestConcurrentPublishSubscribe runs publishers, draining subscribers and
// late subscribers with replay at once (run it with -race): every
// subscription sees consecutive seqs, each publisher's messages in the order
// it sent them, and nothing is dropped while queues are large enough.
func TestConcurrentPublishSubscribe(t *testing.T) {
	const publishers, perPublisher, subscribers = 8, 300, 16
	const total = publishers * perPublisher
	b := newBroker(t, broker.Config{QueueSize: total, RingSize: 64}, "orders")

	type chanWaker chan struct{}
	var wg sync.WaitGroup
	errs := make(chan error, publishers+2*subscribers)
	consume := func(s *broker.Subscription, wake chanWaker) {
		defer wg.Done()
		next := uint64(0)
		lastOf := make(map[string]int)
		for next != total {
			<-wake
			events, end := s.Drain(nil)
			if end != broker.Active {
				errs <- fmt.Errorf("subscription ended: %d", end)
				return
			}
			for _, e := range events {
				if next != 0 && e.Seq != next+1 {
					errs <- fmt.Errorf("seq %d after %d", e.Seq, next)
					return
				}
				next = e.Seq
				var p string
				var n int
				fmt.Sscanf(string(e.Message.Payload), "%s %d", &p, &n)
				if prev, ok := lastOf[p]; ok && n != prev+1 {
					errs <- fmt.Errorf("publisher %s: message %d after %d", p, n, prev)
					return
				}
				lastOf[p] = n
			}
		}
	}
	wakers := make([]chanWaker, 2*subscribers)
	for i := range wakers {
		wakers[i] = make(chanWaker, 1)
	}
	subscribeWith := func(i, lastN int) {
		w := wakers[i]
		s, err := b.Subscribe("orders", fmt.Sprint("c", i), lastN, wakeFunc(func(*broker.Subscription) {
			select {
			case w <- struct{}{}:
			default:
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		wg.Add(1)
		go consume(s, w)
	}
	for i := 0; i < subscribers; i++ {
		subscribeWith(i, 0)
	}
	var pubs sync.WaitGroup
	for p := 0; p < publishers; p++ {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for n := 0; n < perPublisher; n++ {
				msg := broker.Message{ID: "x", Payload: []byte(fmt.Sprintf("p%d %d", p, n))}
				if res, err := b.Publish("orders", msg).Wait(context.Background()); err != nil || res.Err != nil {
					errs <- fmt.Errorf("publish: %v %v", err, res.Err)
					return
				}
			}
		}()
	}
	// Late subscribers join while publishing is under way.
	for i := subscribers; i < 2*subscribers; i++ {
		subscribeWith(i, 64)
	}
	pubs.Wait()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := stats(t, b, "orders"); st.Messages != total || st.Dropped != 0 || st.Subscribers != 2*subscribers {
		t.Fatalf("stats %+v", st)
	}
}

type wakeFunc func(*broker.Subscription)

func (f wakeFunc) Wake(s *broker.Subscription) { f(s) }

func TestMemoryCommitterStampsUTC(t *testing.T) {
	var got []broker.Command
	c := broker.NewMemoryCommitter(applierFunc(func(cmd broker.Command) broker.Result {
		got = append(got, cmd)
		return broker.Result{Seq: uint64(len(got))}
	}))
	res, err := c.Submit(broker.Command{Op: broker.OpPublish, Topic: "t"}).Wait(context.Background())
	if err != nil || res.Seq != 1 || len(got) != 1 {
		t.Fatalf("Submit: %+v %v", res, err)
	}
	if got[0].TS.IsZero() || got[0].TS.Location() != time.UTC {
		t.Fatalf("command stamped %v, want a UTC time", got[0].TS)
	}
}

type applierFunc func(broker.Command) broker.Result

func (f applierFunc) Apply(cmd broker.Command) broker.Result { return f(cmd) }

func TestValidTopicName(t *testing.T) {
	for name, want := range map[string]bool{
		"orders": true, "a": true, "A-Z_0.9": true, "...": true, strings.Repeat("x", 128): true,
		"": false, " ": false, "a b": false, "a/b": false, "a:b": false, "é": false, "a\n": false,
		strings.Repeat("x", 129): false, "a*": false, "'": false,
	} {
		if got := broker.ValidTopicName(name); got != want {
			t.Errorf("ValidTopicName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestParseOverflowPolicy(t *testing.T) {
	for in, want := range map[string]broker.OverflowPolicy{"drop_oldest": broker.DropOldest, "disconnect": broker.Disconnect} {
		got, ok := broker.ParseOverflowPolicy(in)
		if !ok || got != want || got.String() != in {
			t.Errorf("ParseOverflowPolicy(%q) = %v, %v", in, got, ok)
		}
	}
	for _, in := range []string{"", "Disconnect", "drop", "block"} {
		if _, ok := broker.ParseOverflowPolicy(in); ok {
			t.Errorf("ParseOverflowPolicy(%q) accepted", in)
		}
	}
}

// TestDeliverDuringRestore: copies of events and delivery watchers that
// arrive while a snapshot is being restored land in the restored topic, not
// in the one it replaced. The subscriber gets every seq once, in order, and
// every watcher fires.
func TestDeliverDuringRestore(t *testing.T) {
	const events = 3000
	b := newBroker(t, broker.Config{QueueSize: events, RingSize: 16})
	created := b.Apply(broker.Command{Op: broker.OpCreateTopic, Topic: "orders"})
	if created.Err != nil {
		t.Fatal(created.Err)
	}
	s := subscribe(t, b, "orders", 0, &recordingWaker{})
	s.Start()
	ts := time.Date(2025, 1, 15, 10, 30, 0, 0, time.UTC)

	stop := make(chan struct{})
	restored := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				restored <- n
				return
			default:
			}
			b.Restore(b.State())
			n++
		}
	}()
	var fired sync.WaitGroup
	fired.Add(events)
	for seq := uint64(1); seq <= events; seq++ {
		b.OnDelivered("orders", created.Epoch, seq, fired.Done)
		b.Deliver("orders", created.Epoch, seq, ts, broker.Message{ID: fmt.Sprint(seq), Payload: []byte("1")})
	}
	close(stop)
	if n := <-restored; n == 0 {
		t.Fatal("no restore ran during the deliveries")
	}
	done := make(chan struct{})
	go func() { fired.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("delivery watchers never fired")
	}
	expectDrain(t, s, seqRange(1, events), broker.Active)
}
