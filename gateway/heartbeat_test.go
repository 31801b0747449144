package gateway

import (
	"errors"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

const heartbeat = 250 * time.Millisecond

func newHeartbeatServer(t *testing.T) *testServer {
	return newTestServer(t, broker.Config{}, Config{HeartbeatInterval: heartbeat})
}

// countPings makes c count WebSocket pings; it answers them only if answer.
func countPings(c *wsClient, answer bool) *atomic.Int32 {
	var n atomic.Int32
	c.ws.SetPingHandler(func(data string) error {
		n.Add(1)
		if !answer {
			return nil
		}
		return c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	return &n
}

// expectHeartbeat reads one frame and fails unless it is the info ping.
func expectHeartbeat(t *testing.T, c *wsClient) {
	t.Helper()
	f := c.expect("info")
	if f.str("msg") != "ping" || !reflect.DeepEqual(f.keys(), []string{"msg", "ts", "type"}) {
		t.Fatalf("got %s, want the info ping heartbeat", f)
	}
	checkTS(t, f["ts"])
}

// TestHeartbeat runs the heartbeat cases in parallel with each other only:
// they measure time against the server's timers, which CPU-heavy tests
// running alongside (under -race, on two cores) can delay by hundreds of
// milliseconds.
func TestHeartbeat(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"answered":         heartbeatAnswered,
		"unanswered":       heartbeatUnanswered,
		"any frame counts": heartbeatAnyFrameCounts,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t)
		})
	}
}

// heartbeatAnswered: an idle client gets an info ping and a WebSocket ping
// each interval, and answering the pings keeps it open well past three
// intervals.
func heartbeatAnswered(t *testing.T) {
	s := newHeartbeatServer(t)
	c := s.dial()
	pings := countPings(c, true)
	for i := 0; i < 5; i++ {
		expectHeartbeat(t, c)
	}
	// Each info ping is followed by a WebSocket ping, handled while reading
	// the next frame.
	if n := pings.Load(); n < 4 {
		t.Fatalf("%d WebSocket pings with 5 heartbeats", n)
	}
	c.ping("still-open")
}

// heartbeatUnanswered: a client that neither answers pings nor sends
// anything is closed after three intervals.
func heartbeatUnanswered(t *testing.T) {
	s := newHeartbeatServer(t)
	start := time.Now()
	c := s.dial()
	pings := countPings(c, false)
	frames, err := c.readUntilClose(wait)
	elapsed := time.Since(start)
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure {
		t.Fatalf("closed with %v, want the connection dropped", err)
	}
	if elapsed < 3*heartbeat-heartbeat/2 {
		t.Fatalf("closed after %v, before three heartbeat intervals (%v)", elapsed, 3*heartbeat)
	}
	if len(frames) < 1 || pings.Load() < 1 {
		t.Fatalf("%d frames and %d pings before the close, want heartbeats first", len(frames), pings.Load())
	}
	for _, f := range frames {
		if f.str("type") != "info" || f.str("msg") != "ping" {
			t.Fatalf("unexpected frame %s", f)
		}
	}
	waitFor(t, wait, "the connection to be released", func() bool { return s.gateway.Connections() == 0 })
}

// heartbeatAnyFrameCounts: a client that ignores WebSocket pings but keeps
// sending requests answers the heartbeat: it stays open well past three
// intervals.
func heartbeatAnyFrameCounts(t *testing.T) {
	s := newHeartbeatServer(t)
	c := s.dial()
	countPings(c, false)
	deadline := time.Now().Add(5 * heartbeat)
	for time.Now().Before(deadline) {
		// A heartbeat may still come if this goroutine is starved for an
		// interval; the connection must not close.
		c.ping("keepalive")
		time.Sleep(heartbeat / 5)
	}
	c.ping("still-open")
}
