package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// latencyHistogram counts latencies in 50 µs buckets up to 2 s.
type latencyHistogram struct {
	buckets [40000]atomic.Uint64
	count   atomic.Uint64
}

func (h *latencyHistogram) add(d time.Duration) {
	i := int(d / (50 * time.Microsecond))
	if i >= len(h.buckets) {
		i = len(h.buckets) - 1
	}
	h.buckets[i].Add(1)
	h.count.Add(1)
}

func (h *latencyHistogram) quantile(q float64) time.Duration {
	want := uint64(float64(h.count.Load()) * q)
	var seen uint64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen > want {
			return time.Duration(i+1) * 50 * time.Microsecond
		}
	}
	return 0
}

// benchSubscriber drains one subscription on its own goroutine and records,
// for each event, the time since the send time stamped in its payload.
type benchSubscriber struct {
	wake chan struct{}
	sub  *broker.Subscription
	got  atomic.Uint64
	hist *latencyHistogram
	last chan uint64 // seq of each event, when not nil
}

func (s *benchSubscriber) Wake(*broker.Subscription) {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *benchSubscriber) run(ctx context.Context) {
	var events []*broker.Event
	for {
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		}
		events, _ = s.sub.Drain(events[:0])
		now := time.Now()
		for _, e := range events {
			sent := int64(binary.BigEndian.Uint64(e.Message.Payload[1:9]))
			s.hist.add(now.Sub(time.Unix(0, sent)))
			if s.last != nil {
				s.last <- e.Seq
			}
		}
		s.got.Add(uint64(len(events)))
	}
}

// stampedPayload is a JSON string whose bytes 1..8 carry the send time.
func stampedPayload(t time.Time) []byte {
	p := make([]byte, 0, 64)
	p = append(p, '"')
	p = binary.BigEndian.AppendUint64(p, uint64(t.UnixNano()))
	p = append(p, make([]byte, 32)...)
	return append(p, '"')
}

func followers(nodes []*Node) []*Node {
	var out []*Node
	for _, n := range nodes {
		if !n.Leader() {
			out = append(out, n)
		}
	}
	return out
}

// BenchmarkCrossNodeLatency publishes on one follower, one message at a
// time, with the subscriber on the other follower, and reports the
// publisher's ack latency and the subscriber's event latency.
func BenchmarkCrossNodeLatency(b *testing.B) {
	// Counts, on every node, the events that arrived as gossip copies.
	var viaGossip atomic.Uint64
	nodes := benchNodes(b, 3, func(cfg *Config) {
		cfg.Hooks.GossipEvent = func(string, uint64) bool { viaGossip.Add(1); return true }
	})
	fs := followers(nodes)
	if len(fs) != 2 {
		b.Fatalf("want 2 followers, have %d", len(fs))
	}
	pubNode, subNode := fs[0], fs[1]

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := &latencyHistogram{}
	s := &benchSubscriber{wake: make(chan struct{}, 1), hist: events, last: make(chan uint64, 16)}
	sub, err := subNode.broker.Subscribe("bench", "lat", 0, s)
	if err != nil {
		b.Fatal(err)
	}
	s.sub = sub
	sub.Start()
	go s.run(ctx)

	acks := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		res, err := pubNode.broker.Publish("bench", broker.Message{ID: "00000000-0000-0000-0000-000000000000", Payload: stampedPayload(start)}).Wait(ctx)
		if err == nil {
			err = res.Err
		}
		if err != nil {
			b.Fatal(err)
		}
		acks = append(acks, time.Since(start))
		select {
		case seq := <-s.last:
			if seq != res.Seq {
				b.Fatalf("event seq %d, acked seq %d", seq, res.Seq)
			}
		case <-time.After(5 * time.Second):
			b.Fatal("event not delivered on the other follower")
		}
	}
	b.StopTimer()
	slices.Sort(acks)
	b.ReportMetric(ms(acks[len(acks)/2]), "ack-p50-ms")
	b.ReportMetric(ms(acks[len(acks)*99/100]), "ack-p99-ms")
	b.ReportMetric(ms(events.quantile(0.5)), "event-p50-ms")
	b.ReportMetric(ms(events.quantile(0.99)), "event-p99-ms")
	// Two peers of the leader receive a copy of each event.
	b.ReportMetric(float64(viaGossip.Load())/float64(2*b.N), "gossip-copies/event/peer")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkClusterFanout: three nodes, 1,000 subscriptions spread over them
// on one topic, publishes at a fixed 2,000/s spread over the nodes. Every
// event must reach every subscription; latency is measured from the
// intended send time, so a stalled publisher cannot hide delays.
func BenchmarkClusterFanout(b *testing.B) {
	const subscribers, rate = 1000, 2000
	nodes := benchNodes(b, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hist := &latencyHistogram{}
	subs := make([]*benchSubscriber, subscribers)
	var wg sync.WaitGroup
	for i := range subs {
		s := &benchSubscriber{wake: make(chan struct{}, 1), hist: hist}
		sub, err := nodes[i%3].broker.Subscribe("bench", fmt.Sprint(i), 0, s)
		if err != nil {
			b.Fatal(err)
		}
		s.sub = sub
		sub.Start()
		subs[i] = s
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx) }()
	}
	b.ResetTimer()
	start := time.Now()
	interval := time.Second / rate
	var pubs sync.WaitGroup
	for p := 0; p < 3; p++ {
		pubs.Add(1)
		go func(p int) {
			defer pubs.Done()
			var window []broker.Pending
			for i := p; i < b.N; i += 3 {
				intended := start.Add(time.Duration(i) * interval)
				time.Sleep(time.Until(intended))
				window = append(window, nodes[p].broker.Publish("bench", broker.Message{ID: "00000000-0000-0000-0000-000000000000", Payload: stampedPayload(intended)}))
				if len(window) == 256 {
					for _, w := range window {
						if _, err := w.Wait(ctx); err != nil {
							b.Error(err)
						}
					}
					window = window[:0]
				}
			}
			for _, w := range window {
				if _, err := w.Wait(ctx); err != nil {
					b.Error(err)
				}
			}
		}(p)
	}
	pubs.Wait()
	want := uint64(b.N)
	deadline := time.Now().Add(10 * time.Second)
	for _, s := range subs {
		for s.got.Load() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	b.StopTimer()
	var delivered uint64
	for _, s := range subs {
		delivered += s.got.Load()
	}
	cancel()
	wg.Wait()
	b.ReportMetric(float64(delivered)/float64(want*subscribers), "delivered-ratio")
	b.ReportMetric(ms(hist.quantile(0.5)), "p50-ms")
	b.ReportMetric(ms(hist.quantile(0.99)), "p99-ms")
	if delivered != want*subscribers {
		b.Errorf("delivered %d of %d events", delivered, want*subscribers)
	}
}
