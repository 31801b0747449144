package gateway

import (
	"log/slog"
	"slices"
	"testing"

	"github.com/mr-enclave/enclave/broker"
)

// TestLogLinesPerConnectionNotPerMessage: at INFO a connection logs when it
// opens and when it closes, and nothing for each message it publishes or
// receives.
func TestLogLinesPerConnectionNotPerMessage(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	s.createTopic("orders")
	sub := s.dial()
	sub.subscribe("orders", "s", 0)
	pub := s.dial()
	const messages = 50
	for i := 1; i <= messages; i++ {
		pub.publish("orders", map[string]any{"n": i})
		sub.expectEvent("orders", i)
	}
	pub.ping("p")
	pub.ws.Close()
	sub.ws.Close()
	waitFor(t, wait, "both connections to close", func() bool { return s.gateway.Connections() == 0 })

	got := s.logs.atLeast(slog.LevelInfo)
	want := []string{"websocket closed", "websocket closed", "websocket opened", "websocket opened"}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("INFO and above: %q, want only %q", got, want)
	}
}
