package gateway

import (
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

// overflowSetup is a topic with a subscriber that has stopped reading (its
// socket buffers are a few KiB), a subscriber that reads every event and a
// publisher, over queues of 4 events.
type overflowSetup struct {
	s               *testServer
	slow, fast, pub *wsClient
}

const (
	overflowQueue  = 4
	overflowEvents = 100
)

func newOverflowSetup(t *testing.T, policy broker.OverflowPolicy, writeTimeout time.Duration) *overflowSetup {
	s := newTestServer(t, broker.Config{QueueSize: overflowQueue, Overflow: policy}, Config{WriteTimeout: writeTimeout})
	s.createTopic("orders")
	o := &overflowSetup{s: s, slow: s.dialSmallBuffer(), fast: s.dial(), pub: s.dial()}
	o.slow.subscribe("orders", "slow", 0)
	o.fast.subscribe("orders", "fast", 0)
	return o
}

// publishAll publishes overflowEvents events of 16 KiB, 1.6 MiB in all, far
// more than the slow subscriber's socket buffers and queue hold. Every
// publish is acked and the reading subscriber gets every event; it is kept
// in step with the publisher so its own 4-event queue never overflows.
func (o *overflowSetup) publishAll(t *testing.T) {
	t.Helper()
	pad := strings.Repeat("x", 16<<10)
	for n := 1; n <= overflowEvents; n++ {
		o.pub.publish("orders", map[string]any{"n": n, "pad": pad})
		o.fast.expectEvent("orders", n)
	}
}

func TestOverflowDropOldest(t *testing.T) {
	t.Parallel()
	o := newOverflowSetup(t, broker.DropOldest, 0)
	o.publishAll(t)

	st := o.s.topicStats("orders")
	if st.Dropped == 0 || st.Dropped >= overflowEvents {
		t.Fatalf("%d events dropped, want some but not all of %d", st.Dropped, overflowEvents)
	}
	if n := o.s.subscribers("orders"); n != 2 {
		t.Fatalf("GET /topics shows %d subscribers, want 2: drop_oldest keeps the slow one", n)
	}

	// The slow subscriber resumes: it gets events in ascending order, the
	// newest among them, and every event it misses was counted as dropped.
	received, last := 0, 0
	for last < overflowEvents {
		e := o.slow.expect("event")
		if e.seq() <= last {
			t.Fatalf("event %d after event %d", e.seq(), last)
		}
		if n, _ := e.payload()["n"].(float64); int(n) != e.seq() {
			t.Fatalf("event %d carries the payload of %v", e.seq(), n)
		}
		last = e.seq()
		received++
	}
	if uint64(received)+st.Dropped != overflowEvents {
		t.Fatalf("slow subscriber received %d and %d were dropped, want %d in all", received, st.Dropped, overflowEvents)
	}
	t.Logf("slow subscriber: %d received, %d dropped", received, st.Dropped)

	// Its subscription is intact.
	o.pub.publish("orders", map[string]any{"n": overflowEvents + 1})
	o.slow.expectEvent("orders", overflowEvents+1)
	o.fast.expectEvent("orders", overflowEvents+1)
}

func TestOverflowDisconnect(t *testing.T) {
	t.Parallel()
	o := newOverflowSetup(t, broker.Disconnect, 0)
	o.publishAll(t)

	// The overflow ended the slow subscription at once.
	if n := o.s.subscribers("orders"); n != 1 {
		t.Fatalf("GET /topics shows %d subscribers, want only the reading one", n)
	}
	if st := o.s.topicStats("orders"); st.Dropped != 0 {
		t.Fatalf("%d events dropped under the disconnect policy", st.Dropped)
	}

	// Reading again, the slow client gets the events queued before the
	// overflow, without a gap, then SLOW_CONSUMER, then a close frame.
	frames := o.slow.expectClose(websocket.ClosePolicyViolation, wait)
	if len(frames) < 2 {
		t.Fatalf("frames before the close: %v", frames)
	}
	events, errFrame := frames[:len(frames)-1], frames[len(frames)-1]
	for i, e := range events {
		if e.str("type") != "event" || e.seq() != i+1 {
			t.Fatalf("frame %d is %s, want event %d", i, e, i+1)
		}
	}
	if len(events) >= overflowEvents {
		t.Fatalf("the slow client received all %d events", len(events))
	}
	if errFrame.str("type") != "error" || errFrame.errorCode() != CodeSlowConsumer {
		t.Fatalf("last frame %s, want error SLOW_CONSUMER", errFrame)
	}
	waitFor(t, wait, "the slow connection to be released", func() bool { return o.s.gateway.Connections() == 2 })

	// The others carry on.
	o.pub.publish("orders", "after")
	o.fast.expectEvent("orders", overflowEvents+1)
}

// TestOverflowDisconnectNeverReading: a slow consumer that never reads again
// is closed too (when the write blocked on its socket times out).
func TestOverflowDisconnectNeverReading(t *testing.T) {
	t.Parallel()
	o := newOverflowSetup(t, broker.Disconnect, time.Second)
	o.publishAll(t)
	if n := o.s.subscribers("orders"); n != 1 {
		t.Fatalf("GET /topics shows %d subscribers, want only the reading one", n)
	}
	waitFor(t, wait, "the slow connection to be closed", func() bool { return o.s.gateway.Connections() == 2 })
	o.pub.publish("orders", "after")
	o.fast.expectEvent("orders", overflowEvents+1)
}
