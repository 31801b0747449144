package bench

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSystem is an in-memory broker: a publish is acked at once and handed
// to every subscriber, except every dropEvery-th event (0: none).
type fakeSystem struct {
	mu        sync.Mutex
	subs      []SubscriberHandler
	dropEvery int
	n         int
}

func (f *fakeSystem) Name() string                          { return "fake" }
func (f *fakeSystem) Nodes() []string                       { return []string{"a", "b"} }
func (f *fakeSystem) Prepare(context.Context, string) error { return nil }
func (f *fakeSystem) Cleanup(context.Context, string) error { return nil }
func (f *fakeSystem) DialSubscriber(_ context.Context, _ int, _ string, h SubscriberHandler) (Subscriber, error) {
	f.mu.Lock()
	f.subs = append(f.subs, h)
	f.mu.Unlock()
	return fakeConn{}, nil
}

type fakeConn struct{}

func (fakeConn) Close() error { return nil }

type fakePub struct {
	f *fakeSystem
	h PublisherHandler
}

func (f *fakeSystem) DialPublisher(_ context.Context, _ int, _ string, h PublisherHandler) (Publisher, error) {
	return &fakePub{f, h}, nil
}

func (p *fakePub) Publish(n uint64, payload []byte) error {
	p.f.mu.Lock()
	p.f.n++
	drop := p.f.dropEvery > 0 && p.f.n%p.f.dropEvery == 0
	subs := p.f.subs
	p.f.mu.Unlock()
	p.h.Done(n, "")
	for i, s := range subs {
		if drop && i == 0 {
			continue
		}
		s.Event(payload, time.Now())
	}
	return nil
}

func (p *fakePub) Close() error { return nil }

func TestRunCountsAndBounds(t *testing.T) {
	res, err := Run(context.Background(), &fakeSystem{}, Params{Workload: WorkloadFanout, Subscribers: 5, Rate: -1, Count: 1000, Duration: 5 * time.Second, Window: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Sent != 1000 || res.Acked != 1000 || res.Expected != 5000 || res.Delivered != 5000 {
		t.Fatalf("%+v", res)
	}
	if len(res.ByNode) != 2 || res.ByNode[0].Latency.Count != 3000 || res.ByNode[1].Latency.Count != 2000 {
		t.Fatalf("subscribers not spread over the nodes: %+v", res.ByNode)
	}
	// Paced: 200/s for 500 ms is 100 publishes, whatever the machine.
	start := time.Now()
	res, err = Run(context.Background(), &fakeSystem{}, Params{Workload: WorkloadLatency, Rate: 200, Duration: 500 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 100 || res.Params.Subscribers != 2 || res.Delivered != 200 {
		t.Fatalf("paced run: sent %d, subscribers %d, delivered %d", res.Sent, res.Params.Subscribers, res.Delivered)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("paced run took %v", el)
	}
}

func TestLostEventsFailTheRun(t *testing.T) {
	var out, errOut bytes.Buffer
	o := Options{Params: Params{Workload: WorkloadFanout, Subscribers: 3, Rate: 1000, Count: 100, Duration: 2 * time.Second, Drain: 200 * time.Millisecond}, Quiet: true}
	if code := Execute(context.Background(), &fakeSystem{dropEvery: 10}, o, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "delivered 290 of 300 expected") || !strings.Contains(errOut.String(), "FAIL") {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
	}
	o.AllowErrors = true
	out.Reset()
	if code := Execute(context.Background(), &fakeSystem{dropEvery: 10}, o, &out, &errOut); code != 0 {
		t.Fatalf("--allow-errors: exit %d", code)
	}
}
