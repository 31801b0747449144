package gateway

import (
	"fmt"
	"net/http"
	"reflect"
	"testing"

	"github.com/mr-enclave/enclave/broker"
)

// TestReplayLastN checks last_n against the history: none for 0, all of a
// shorter history, at most RING_SIZE, oldest first, exactly the events live
// subscribers saw, and followed directly by live events.
func TestReplayLastN(t *testing.T) {
	t.Parallel()
	const ringSize = 5
	tests := []struct {
		published, lastN int
		want             []int
	}{
		{published: 3, lastN: 0, want: nil},
		{published: 0, lastN: 5, want: nil},
		{published: 3, lastN: 2, want: []int{2, 3}},
		{published: 3, lastN: 3, want: []int{1, 2, 3}},
		{published: 3, lastN: 10, want: []int{1, 2, 3}},
		{published: 8, lastN: 5, want: []int{4, 5, 6, 7, 8}},
		{published: 8, lastN: 6, want: []int{4, 5, 6, 7, 8}},
		{published: 12, lastN: 1000, want: []int{8, 9, 10, 11, 12}},
	}
	s := newTestServer(t, broker.Config{RingSize: ringSize}, Config{})
	pub := s.dial()
	for i, tt := range tests {
		topic := fmt.Sprintf("replay-%d", i)
		t.Run(fmt.Sprintf("published=%d/last_n=%d", tt.published, tt.lastN), func(t *testing.T) {
			s.createTopic(topic)
			witness := s.dial()
			witness.subscribe(topic, "witness", 0)
			seen := map[int]frame{}
			for n := 1; n <= tt.published; n++ {
				pub.publish(topic, map[string]any{"n": n})
				seen[n] = witness.expectEvent(topic, n)
			}
			c := s.dial()
			c.send(map[string]any{"type": "subscribe", "topic": topic, "client_id": "late", "last_n": tt.lastN, "request_id": "late"})
			c.expectAck("late", topic) // the ack comes before the replay
			for _, seq := range tt.want {
				if e := c.expectEvent(topic, seq); !reflect.DeepEqual(e, seen[seq]) {
					t.Fatalf("replayed %s, live subscribers got %s", e, seen[seq])
				}
			}
			// The next frame is the next live event: nothing more was replayed.
			pub.publish(topic, "live")
			c.expectEvent(topic, tt.published+1)
		})
	}
}

// TestReplayMeetsLiveUnderConcurrentPublishing subscribes with last_n while
// a publisher is busy: each subscriber gets its ack, then seq strictly
// consecutive from the replay into the live events, with no gap or duplicate.
func TestReplayMeetsLiveUnderConcurrentPublishing(t *testing.T) {
	t.Parallel()
	const total, ringSize = 1000, 50
	s := newTestServer(t, broker.Config{RingSize: ringSize, QueueSize: 2 * total}, Config{})
	s.createTopic("orders")
	pub := s.dial()
	done := make(chan error, 1)
	go func() {
		for n := 1; n <= total; n++ {
			rid := fmt.Sprint(n)
			if err := pub.trySend(publishFrame(rid, "orders", n)); err != nil {
				done <- err
				return
			}
			f, err := pub.tryRecv(wait)
			if err != nil || f.str("type") != "ack" || f.str("request_id") != rid {
				done <- fmt.Errorf("publish %d: got %v, %v", n, f, err)
				return
			}
		}
		done <- nil
	}()
	type sub struct {
		c        *wsClient
		min, max int // bounds of the first seq: the replay is the last ringSize events
	}
	var subs []sub
	for i, at := range []uint64{0, 10, 150, 400, 700, 900} {
		waitFor(t, wait, fmt.Sprintf("%d messages", at), func() bool { return s.topicStats("orders").LastSeq >= at })
		c := s.dial()
		before := int(s.topicStats("orders").LastSeq)
		c.subscribe("orders", fmt.Sprint("sub-", i), ringSize)
		after := int(s.topicStats("orders").LastSeq)
		subs = append(subs, sub{c, max(1, before-ringSize+1), max(1, after-ringSize+1)})
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, sb := range subs {
		c := sb.c
		first := c.expect("event")
		if first.seq() < sb.min || first.seq() > sb.max {
			t.Fatalf("subscriber %d: first event %s, want seq in %d..%d", i, first, sb.min, sb.max)
		}
		for seq := first.seq() + 1; seq <= total; seq++ {
			c.expectEvent("orders", seq)
		}
		t.Logf("subscriber %d: events %d..%d", i, first.seq(), total)
	}
}

// TestDuplicateSubscribe: subscribing twice with one client_id on one
// connection is acked again and stays one subscription; on two connections
// the same client_id makes two subscriptions.
func TestDuplicateSubscribe(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	s.createTopic("orders")
	pub := s.dial()

	t.Run("same connection", func(t *testing.T) {
		c := s.dial()
		c.subscribe("orders", "dup", 0)
		pub.publish("orders", 1)
		c.expectEvent("orders", 1)
		c.send(map[string]any{"type": "subscribe", "topic": "orders", "client_id": "dup", "last_n": 5, "request_id": "again"})
		c.expectAck("again", "orders")
		if n := s.subscribers("orders"); n != 1 {
			t.Fatalf("GET /topics shows %d subscribers, want 1", n)
		}
		// No second replay and no second copy: each next frame is the next event.
		pub.publish("orders", 2)
		c.expectEvent("orders", 2)
		pub.publish("orders", 3)
		c.expectEvent("orders", 3)
		c.send(map[string]any{"type": "unsubscribe", "topic": "orders", "client_id": "dup", "request_id": "u"})
		c.expectAck("u", "orders")
		if n := s.subscribers("orders"); n != 0 {
			t.Fatalf("GET /topics shows %d subscribers after one unsubscribe, want 0", n)
		}
	})

	t.Run("two connections", func(t *testing.T) {
		c1, c2 := s.dial(), s.dial()
		c1.subscribe("orders", "same", 0)
		c2.subscribe("orders", "same", 0)
		if n := s.subscribers("orders"); n != 2 {
			t.Fatalf("GET /topics shows %d subscribers, want 2", n)
		}
		next := s.topicStats("orders").LastSeq + 1
		pub.publish("orders", "x")
		c1.expectEvent("orders", int(next))
		c2.expectEvent("orders", int(next))
		// Unsubscribing on one connection leaves the other's subscription.
		c1.send(map[string]any{"type": "unsubscribe", "topic": "orders", "client_id": "same", "request_id": "u1"})
		c1.expectAck("u1", "orders")
		pub.publish("orders", "y")
		c2.expectEvent("orders", int(next)+1)
		if n := s.subscribers("orders"); n != 1 {
			t.Fatalf("GET /topics shows %d subscribers, want 1", n)
		}
	})
}

// TestUnsubscribe covers unsubscribing without a subscription, twice, from a
// missing topic, and that no event follows the ack.
func TestUnsubscribe(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	s.createTopic("orders")
	pub := s.dial()
	unsub := func(c *wsClient, topic, clientID, rid string) {
		c.send(map[string]any{"type": "unsubscribe", "topic": topic, "client_id": clientID, "request_id": rid})
	}

	t.Run("never subscribed is acked", func(t *testing.T) {
		c := s.dial()
		unsub(c, "orders", "ghost", "u-ghost")
		c.expectAck("u-ghost", "orders")
	})

	t.Run("unknown topic", func(t *testing.T) {
		c := s.dial()
		unsub(c, "missing", "c", "u-missing")
		f := c.expectError(CodeTopicNotFound, "u-missing")
		if msg := f["error"].(map[string]any)["message"]; msg != "topic 'missing' does not exist" {
			t.Errorf("message %q", msg)
		}
	})

	t.Run("no event after the ack", func(t *testing.T) {
		c := s.dial()
		c.subscribe("orders", "a", 0)
		c.subscribe("orders", "b", 0)
		base := int(s.topicStats("orders").LastSeq)
		pub.publish("orders", 1)
		c.expectEvent("orders", base+1)
		c.expectEvent("orders", base+1)

		unsub(c, "orders", "a", "u-a")
		c.expectAck("u-a", "orders")
		unsub(c, "orders", "a", "u-a-again") // idempotent
		c.expectAck("u-a-again", "orders")
		if n := s.subscribers("orders"); n != 1 {
			t.Fatalf("GET /topics shows %d subscribers, want 1", n)
		}
		// Only b gets the next events. In lock step, a second copy of an
		// event would come before the next event.
		pub.publish("orders", 2)
		c.expectEvent("orders", base+2)
		pub.publish("orders", 3)
		c.expectEvent("orders", base+3)

		unsub(c, "orders", "b", "u-b")
		c.expectAck("u-b", "orders")
		pub.publish("orders", 4) // to nobody on c
		// A new subscription's first frame after its ack is the event
		// published after it: the event in between reached no one on c.
		c.subscribe("orders", "c", 0)
		pub.publish("orders", 5)
		c.expectEvent("orders", base+5)
	})
}

// TestTopicDeletedWithSubscribers: every subscriber learns of the deletion,
// its subscription ends for good, and the counts drop.
func TestTopicDeletedWithSubscribers(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	s.createTopic("orders")
	s.createTopic("other")
	pub := s.dial()
	a, b := s.dial(), s.dial()
	a.subscribe("orders", "a", 0)
	a.subscribe("other", "a", 0)
	b.subscribe("orders", "b", 0)
	if n := s.subscribers("orders"); n != 2 {
		t.Fatalf("GET /topics shows %d subscribers, want 2", n)
	}
	pub.publish("orders", "before")

	status, _, body := s.do(http.MethodDelete, "/topics/orders", "")
	if status != http.StatusOK || string(body) != `{"status":"deleted","topic":"orders"}`+"\n" {
		t.Fatalf("DELETE: %d %s", status, body)
	}
	for _, c := range []*wsClient{a, b} {
		c.expectEvent("orders", 1) // queued before the deletion, still delivered
		info := c.expect("info")
		if info.str("topic") != "orders" || info.str("msg") != "topic_deleted" ||
			!reflect.DeepEqual(info.keys(), []string{"msg", "topic", "ts", "type"}) {
			t.Fatalf("got %s, want info topic_deleted for orders", info)
		}
		checkTS(t, info["ts"])
	}
	if n := s.subscribers("orders"); n != -1 {
		t.Fatalf("deleted topic still listed with %d subscribers", n)
	}
	status, _, body = s.do(http.MethodGet, "/health", "")
	if status != http.StatusOK || !jsonHas(t, body, "subscribers", 1.0) || !jsonHas(t, body, "topics", 1.0) {
		t.Fatalf("/health after delete: %d %s, want 1 topic and 1 subscriber", status, body)
	}

	// Publishing to the deleted topic is refused.
	pub.send(publishFrame("gone", "orders", 1))
	pub.expectError(CodeTopicNotFound, "gone")

	// Re-created, the topic starts afresh and the old subscriptions stay ended.
	s.createTopic("orders")
	if n := s.subscribers("orders"); n != 0 {
		t.Fatalf("re-created topic shows %d subscribers, want 0", n)
	}
	pub.publish("orders", "to nobody")
	a.subscribe("orders", "a", 0)
	b.subscribe("orders", "b", 0)
	pub.publish("orders", "after")
	a.expectEvent("orders", 2)
	b.expectEvent("orders", 2)
	// The other topic's subscription on a was not touched.
	pub.publish("other", "still here")
	a.expectEvent("other", 1)
}
