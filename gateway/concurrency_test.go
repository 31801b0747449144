package gateway

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// TestConcurrentPublishersAndSubscribers runs 50 publishing and 50
// subscribing connections over 3 topics at once. Every subscriber gets every
// event of its topic exactly once, with consecutive seqs, and each
// publisher's messages in the order it sent them; every publisher gets its
// acks in order.
//
// It runs with commits answered at once (MemoryCommitter) and with commits
// answered later, as Raft answers them, so the pipelined publish path runs
// under the race detector too.
func TestConcurrentPublishersAndSubscribers(t *testing.T) {
	t.Parallel()
	for _, delay := range []time.Duration{0, 2 * time.Millisecond} {
		t.Run(fmt.Sprintf("commit-delay=%v", delay), func(t *testing.T) {
			t.Parallel()
			testConcurrentPublishersAndSubscribers(t, delay)
		})
	}
}

func testConcurrentPublishersAndSubscribers(t *testing.T, commitDelay time.Duration) {
	const publishers, subscribers, perPublisher = 50, 50, 20
	topics := []string{"t0", "t1", "t2"}
	// Queues larger than a topic's whole traffic: nothing may be dropped.
	bcfg := broker.Config{QueueSize: publishers * perPublisher}
	var s *testServer
	if commitDelay > 0 {
		s, _ = newDelayedTestServer(t, bcfg, Config{}, commitDelay)
	} else {
		s = newTestServer(t, bcfg, Config{})
	}
	want := map[string]int{}
	for _, tp := range topics {
		s.createTopic(tp)
	}
	for p := 0; p < publishers; p++ {
		want[topics[p%len(topics)]] += perPublisher
	}

	subs := make([]*wsClient, subscribers)
	for i := range subs {
		subs[i] = s.dial()
		subs[i].subscribe(topics[i%len(topics)], fmt.Sprint("s", i), 0)
	}
	pubs := make([]*wsClient, publishers)
	for p := range pubs {
		pubs[p] = s.dial()
	}

	var wg sync.WaitGroup
	for i, c := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := topics[i%len(topics)]
			lastOf := map[int]int{}
			for seq := 1; seq <= want[topic]; seq++ {
				f, err := c.tryRecv(wait)
				if err != nil {
					t.Errorf("subscriber %d: event %d: %v", i, seq, err)
					return
				}
				if f.str("type") != "event" || f.str("topic") != topic || f.seq() != seq {
					t.Errorf("subscriber %d: got %s, want event %d of %s", i, f, seq, topic)
					return
				}
				p, n := int(f.payload()["p"].(float64)), int(f.payload()["n"].(float64))
				if prev, ok := lastOf[p]; ok && n != prev+1 || !ok && n != 0 {
					t.Errorf("subscriber %d: publisher %d's message %d after %d", i, p, n, prev)
					return
				}
				lastOf[p] = n
			}
		}()
	}
	for p, c := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := topics[p%len(topics)]
			// Pipelined: every publish is sent before any ack is read.
			for n := 0; n < perPublisher; n++ {
				if err := c.trySend(publishFrame(fmt.Sprint(n), topic, map[string]any{"p": p, "n": n})); err != nil {
					t.Errorf("publisher %d: %v", p, err)
					return
				}
			}
			for n := 0; n < perPublisher; n++ {
				f, err := c.tryRecv(wait)
				if err != nil || f.str("type") != "ack" || f.str("request_id") != fmt.Sprint(n) {
					t.Errorf("publisher %d: got %v, %v; want the ack of %d", p, f, err, n)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, tp := range topics {
		if st := s.topicStats(tp); st.Messages != uint64(want[tp]) || st.Dropped != 0 {
			t.Errorf("topic %s: %+v, want %d messages and no drop", tp, st, want[tp])
		}
	}
}
