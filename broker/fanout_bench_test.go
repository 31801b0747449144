package broker_test

// Fan-out benchmarks: one committed event (published through the broker's
// MemoryCommitter, encoded once by gateway.EncodeEvent exactly as in
// production) handed to 1, 100 and 10,000 local subscriptions. No sockets.
//
// Three subscriber behaviours:
//
//   - drain=inline: the subscribers' owner drains every woken subscription
//     after every QueueSize/2 events, on the publishing goroutine, inside the
//     timed region. Queues never overflow; the figure is the whole cost of
//     moving an event to every subscriber and out of its queue.
//   - drain=background: a separate goroutine drains woken subscriptions as
//     they are woken (what a connection writer does), concurrently with the
//     publisher. Events may be dropped if it falls behind; drops are reported.
//   - drain=none: nobody drains, so every queue is full and each push drops the
//     oldest event (the drop_oldest overflow path).
//
// Metrics: ns/op and allocs/op per event, ns/subscriber (ns/op divided by
// the number of subscriptions) and allocs/subscriber (heap allocations per
// event per subscription, from runtime.MemStats). The goal is ≤1 µs and zero
// allocations per subscriber per event; the allocations an event costs once
// (the event, its frame, the commit) show up in allocs/op and vanish from
// allocs/subscriber as the subscriber count grows.

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/mr-enclave/enclave/broker"
	"github.com/mr-enclave/enclave/gateway"
)

const benchQueueSize = 100

var benchPayload = []byte(`{"order_id":123,"customer":"c-42","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"total":99.5}`)

// benchWaker collects woken subscriptions without allocating once its slice
// has grown to the number of subscriptions.
type benchWaker struct {
	mu     sync.Mutex
	woken  []*broker.Subscription
	notify chan struct{} // non-nil: signalled (never blocking) on each wake
}

func (w *benchWaker) Wake(s *broker.Subscription) {
	w.mu.Lock()
	w.woken = append(w.woken, s)
	w.mu.Unlock()
	if w.notify != nil {
		select {
		case w.notify <- struct{}{}:
		default:
		}
	}
}

// take swaps the woken list with spare (emptied) and returns it.
func (w *benchWaker) take(spare []*broker.Subscription) []*broker.Subscription {
	w.mu.Lock()
	got := w.woken
	w.woken = spare[:0]
	w.mu.Unlock()
	return got
}

// drainAll drains every woken subscription and returns the events drained
// and the scratch slices for reuse.
func (w *benchWaker) drainAll(spare []*broker.Subscription, events []*broker.Event) (int, []*broker.Subscription, []*broker.Event) {
	woken := w.take(spare)
	n := 0
	for i, s := range woken {
		events, _ = s.Drain(events[:0])
		n += len(events)
		clear(events)
		woken[i] = nil
	}
	return n, woken, events
}

func benchBroker(b *testing.B, subs int, w *benchWaker) *broker.Broker {
	b.Helper()
	br := broker.New(broker.Config{
		RingSize:    100,
		QueueSize:   benchQueueSize,
		Overflow:    broker.DropOldest,
		EncodeEvent: gateway.EncodeEvent,
	})
	if err := br.CreateTopic(context.Background(), "orders"); err != nil {
		b.Fatal(err)
	}
	w.woken = make([]*broker.Subscription, 0, subs)
	for i := 0; i < subs; i++ {
		s, err := br.Subscribe("orders", fmt.Sprintf("client-%d", i), 0, w)
		if err != nil {
			b.Fatal(err)
		}
		s.Start()
	}
	return br
}

func benchPublishOne(b *testing.B, br *broker.Broker, msg broker.Message) {
	res, err := br.Publish("orders", msg).Wait(context.Background())
	if err != nil || res.Err != nil {
		b.Fatalf("publish: %v %v", err, res.Err)
	}
}

func benchReportPerSubscriber(b *testing.B, subs int, mallocs uint64) {
	perEvent := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(perEvent/float64(subs), "ns/subscriber")
	b.ReportMetric(float64(mallocs)/float64(b.N)/float64(subs), "allocs/subscriber")
}

func benchMallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

func BenchmarkFanout(b *testing.B) {
	msg := broker.Message{ID: "550e8400-e29b-41d4-a716-446655440000", Payload: benchPayload}
	for _, subs := range []int{1, 100, 10_000} {
		b.Run(fmt.Sprintf("subs=%d/drain=inline", subs), func(b *testing.B) {
			w := &benchWaker{}
			br := benchBroker(b, subs, w)
			spare := make([]*broker.Subscription, 0, subs)
			events := make([]*broker.Event, 0, benchQueueSize)
			drainEvery := benchQueueSize / 2
			delivered := 0
			b.ReportAllocs()
			runtime.GC()
			m0 := benchMallocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				benchPublishOne(b, br, msg)
				if (i+1)%drainEvery == 0 || i == b.N-1 {
					var n int
					n, spare, events = w.drainAll(spare, events)
					delivered += n
				}
			}
			b.StopTimer()
			benchReportPerSubscriber(b, subs, benchMallocs()-m0)
			if want := b.N * subs; delivered != want {
				b.Fatalf("drained %d events, want %d", delivered, want)
			}
		})
		b.Run(fmt.Sprintf("subs=%d/drain=background", subs), func(b *testing.B) {
			w := &benchWaker{notify: make(chan struct{}, 1)}
			br := benchBroker(b, subs, w)
			stop := make(chan struct{})
			done := make(chan int)
			go func() {
				spare := make([]*broker.Subscription, 0, subs)
				events := make([]*broker.Event, 0, benchQueueSize)
				total := 0
				for {
					select {
					case <-w.notify:
					case <-stop:
						n, _, _ := w.drainAll(spare, events)
						done <- total + n
						return
					}
					var n int
					n, spare, events = w.drainAll(spare, events)
					total += n
				}
			}()
			b.ReportAllocs()
			runtime.GC()
			m0 := benchMallocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				benchPublishOne(b, br, msg)
			}
			b.StopTimer()
			close(stop)
			delivered := <-done
			benchReportPerSubscriber(b, subs, benchMallocs()-m0)
			dropped := uint64(0)
			for _, t := range br.Topics() {
				dropped += t.Dropped
			}
			b.ReportMetric(float64(dropped)/float64(b.N*subs), "dropped/delivery")
			if uint64(delivered)+dropped != uint64(b.N*subs) {
				b.Fatalf("delivered %d + dropped %d != %d", delivered, dropped, b.N*subs)
			}
		})
		b.Run(fmt.Sprintf("subs=%d/drain=none", subs), func(b *testing.B) {
			w := &benchWaker{}
			br := benchBroker(b, subs, w)
			// Fill every queue first so the timed loop is all overflow.
			for i := 0; i < benchQueueSize; i++ {
				benchPublishOne(b, br, msg)
			}
			b.ReportAllocs()
			runtime.GC()
			m0 := benchMallocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				benchPublishOne(b, br, msg)
			}
			b.StopTimer()
			benchReportPerSubscriber(b, subs, benchMallocs()-m0)
		})
	}
}
