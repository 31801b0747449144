package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

// fillSlowSubscriber subscribes a client that is not reading and publishes
// n events of 16 KiB to it, far more than its socket buffers hold, so that
// most of them wait in its queue. It returns the client.
func fillSlowSubscriber(t *testing.T, s *testServer, n int) *wsClient {
	t.Helper()
	slow := s.dialSmallBuffer()
	slow.subscribe("orders", "slow", 0)
	pub := s.dial()
	pad := strings.Repeat("x", 16<<10)
	for i := 1; i <= n; i++ {
		pub.publish("orders", map[string]any{"n": i, "pad": pad})
	}
	pub.ws.Close()
	return slow
}

// TestShutdownFlushesThenCloses: Shutdown sends what is queued, refuses new
// work with UNAVAILABLE, closes every connection with 1001 and returns once
// they are gone.
func TestShutdownFlushesThenCloses(t *testing.T) {
	t.Parallel()
	const events = 40
	s := newTestServer(t, broker.Config{QueueSize: 1000}, Config{})
	s.createTopic("orders")
	idle := s.dial()
	slow := fillSlowSubscriber(t, s, events)

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		shutdown <- s.gateway.Shutdown(ctx)
	}()
	idle.expectClose(websocket.CloseGoingAway, wait)

	// New connections are refused while connections are draining.
	status, _, body := s.do(http.MethodGet, "/ws", "")
	if status != http.StatusServiceUnavailable {
		t.Fatalf("GET /ws during shutdown: %d %s", status, body)
	}
	checkRESTError(t, body, CodeUnavailable)
	if _, resp, err := websocket.DefaultDialer.Dial(s.wsURL(), nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("WebSocket dial during shutdown: %v, %v", resp, err)
	}

	// A request on the draining connection is refused, not lost: once its
	// refusal is logged, a later bad frame's too, the reply is queued before
	// the close frame.
	slow.send(publishFrame("late", "orders", 1))
	slow.send(`{"type":"nope","request_id":"after-late"}`)
	waitFor(t, wait, "the late publish to be refused", func() bool {
		return s.logs.has(map[string]string{"msg": "request refused", "request_id": "after-late"})
	})

	// The slow client reads again: every queued event arrives, in order,
	// then the close frame.
	frames := slow.expectClose(websocket.CloseGoingAway, wait)
	next, refused := 1, false
	for _, f := range frames {
		switch {
		case f.str("type") == "event" && f.seq() == next:
			next++
		case f.str("type") == "error" && f.str("request_id") == "late" && f.errorCode() == CodeUnavailable:
			refused = true
		case f.str("type") == "error" && f.str("request_id") == "after-late":
		default:
			t.Fatalf("unexpected frame %s (next event %d)", f, next)
		}
	}
	if next != events+1 || !refused {
		t.Fatalf("got events up to %d (want %d) and UNAVAILABLE %v", next-1, events, refused)
	}
	select {
	case err := <-shutdown:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Shutdown did not return after every connection closed")
	}
	if n := s.gateway.Connections(); n != 0 {
		t.Fatalf("%d connections after Shutdown", n)
	}
	if st := s.topicStats("orders"); st.Messages != events {
		t.Fatalf("%d messages, want %d: the late publish was committed", st.Messages, events)
	}
}

// TestShutdownTimeout: connections that do not finish by the deadline are
// cut off and Shutdown reports the deadline.
func TestShutdownTimeout(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{QueueSize: 1000}, Config{})
	s.createTopic("orders")
	fillSlowSubscriber(t, s, 40) // never reads again
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.gateway.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want the deadline", err)
	}
	if n := s.gateway.Connections(); n != 0 {
		t.Fatalf("%d connections after Shutdown", n)
	}
}

// TestShutdownAnswersPublishesInFlight: publishes still being committed
// when Shutdown starts are answered before the close frame, so a publisher
// never sees 1001 without the ack of a message that was committed (it would
// publish it again).
func TestShutdownAnswersPublishesInFlight(t *testing.T) {
	t.Parallel()
	const publishes = 30
	s, committer := newDelayedTestServer(t, broker.Config{}, Config{}, 200*time.Millisecond)
	s.createTopic("orders")
	pub := s.dial()
	base := committer.submitted.Load()
	for i := 0; i < publishes; i++ {
		pub.send(publishFrame(fmt.Sprint("p", i), "orders", map[string]any{"n": i}))
	}
	waitFor(t, wait, "every publish to be submitted", func() bool {
		return committer.submitted.Load()-base == publishes
	})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		_ = s.gateway.Shutdown(ctx)
	}()
	frames := pub.expectClose(websocket.CloseGoingAway, wait)
	if len(frames) != publishes {
		t.Fatalf("%d frames before the close, want %d acks: %v", len(frames), publishes, frames)
	}
	for i, f := range frames {
		if f.str("type") != "ack" || f.str("request_id") != fmt.Sprint("p", i) {
			t.Fatalf("frame %d is %s, want the ack of p%d", i, f, i)
		}
	}
	if st := s.topicStats("orders"); st.Messages != publishes {
		t.Fatalf("%d messages committed, want %d", st.Messages, publishes)
	}
}
