package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

// TestWSReplies sends each request type, with and without a request_id, and
// checks the reply's exact shape.
func TestWSReplies(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	s.createTopic("orders")
	msg := map[string]any{"id": testUUID, "payload": map[string]any{"order_id": 123}}
	tests := []struct {
		name   string
		req    map[string]any
		keys   []string
		fields map[string]any
	}{
		{"ping", map[string]any{"type": "ping", "request_id": "ping-1"},
			[]string{"request_id", "ts", "type"}, map[string]any{"type": "pong", "request_id": "ping-1"}},
		{"ping without request_id", map[string]any{"type": "ping"},
			[]string{"ts", "type"}, map[string]any{"type": "pong"}},
		{"subscribe", map[string]any{"type": "subscribe", "topic": "orders", "client_id": "c1", "request_id": "r-sub-1"},
			[]string{"request_id", "status", "topic", "ts", "type"}, map[string]any{"type": "ack", "request_id": "r-sub-1", "status": "ok", "topic": "orders"}},
		{"subscribe without request_id", map[string]any{"type": "subscribe", "topic": "orders", "client_id": "c1", "last_n": 3},
			[]string{"status", "topic", "ts", "type"}, map[string]any{"type": "ack", "status": "ok", "topic": "orders"}},
		{"unsubscribe", map[string]any{"type": "unsubscribe", "topic": "orders", "client_id": "c1", "request_id": "r-unsub-1"},
			[]string{"request_id", "status", "topic", "ts", "type"}, map[string]any{"type": "ack", "request_id": "r-unsub-1", "status": "ok", "topic": "orders"}},
		{"publish", map[string]any{"type": "publish", "topic": "orders", "message": msg, "request_id": "r-pub-1"},
			[]string{"request_id", "status", "topic", "ts", "type"}, map[string]any{"type": "ack", "request_id": "r-pub-1", "status": "ok", "topic": "orders"}},
		{"publish without request_id", map[string]any{"type": "publish", "topic": "orders", "message": msg},
			[]string{"status", "topic", "ts", "type"}, map[string]any{"type": "ack", "status": "ok", "topic": "orders"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := s.dial()
			c.send(tt.req)
			f := c.recv(wait)
			if got := f.keys(); !reflect.DeepEqual(got, tt.keys) {
				t.Fatalf("reply %s has keys %v, want %v", f, got, tt.keys)
			}
			for k, v := range tt.fields {
				if f[k] != v {
					t.Errorf("%s = %v, want %v in %s", k, f[k], v, f)
				}
			}
			checkTS(t, f["ts"])
		})
	}
}

// TestWSEventIsThePublishedMessage checks the event every subscriber gets:
// its exact keys, the published id and payload, seq, and one ts for all.
func TestWSEventIsThePublishedMessage(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	s.createTopic("orders")
	a, b, pub := s.dial(), s.dial(), s.dial()
	a.subscribe("orders", "a", 0)
	b.subscribe("orders", "b", 0)
	payloads := []string{
		`{"order_id":123}`,
		`{ "nested" : { "list" : [1, "two", null, true, 1.5e-3] }, "s" : "é \" \\ \u00e9 😀" }`,
		`"text"`,
		`[1,2,3]`,
		`-7`,
		`false`,
		`null`,
	}
	for i, p := range payloads {
		id := uuid.NewString()
		before := time.Now().UTC().Truncate(time.Microsecond)
		pub.send(`{"type":"publish","topic":"orders","request_id":"p","message":{"id":"` + id + `","payload":` + p + `}}`)
		pub.expectAck("p", "orders")
		after := time.Now().UTC()
		var want any
		if err := json.Unmarshal([]byte(p), &want); err != nil {
			t.Fatal(err)
		}
		ea, eb := a.expectEvent("orders", i+1), b.expectEvent("orders", i+1)
		for _, e := range []frame{ea, eb} {
			if got := e.keys(); !reflect.DeepEqual(got, []string{"message", "seq", "topic", "ts", "type"}) {
				t.Fatalf("event %s has keys %v", e, got)
			}
			m := e.message()
			if got := frame(m).keys(); !reflect.DeepEqual(got, []string{"id", "payload"}) {
				t.Fatalf("event message %v has keys %v", m, got)
			}
			if m["id"] != id || !reflect.DeepEqual(m["payload"], want) {
				t.Fatalf("event %s does not carry message %s / %s", e, id, p)
			}
			if ts := checkTS(t, e["ts"]); ts.Before(before) || ts.After(after) {
				t.Fatalf("event ts %v is not between the publish (%v) and its ack (%v)", ts, before, after)
			}
		}
		if ea["ts"] != eb["ts"] {
			t.Fatalf("subscribers got different ts for one event: %v and %v", ea["ts"], eb["ts"])
		}
	}
}

// TestWSErrors sends each request the server must refuse and checks the
// error code, the echoed request_id, that the connection still answers a
// ping, and that no other client received anything.
func TestWSErrors(t *testing.T) {
	t.Parallel()
	const maxBytes = 1024
	s := newTestServer(t, broker.Config{}, Config{MaxMessageBytes: maxBytes})
	s.createTopic("orders")
	bystander := s.dial()
	bystander.subscribe("orders", "bystander", 0)

	pub := func(rid, topic, id string) string {
		return `{"type":"publish","request_id":"` + rid + `","topic":"` + topic + `","message":{"id":"` + id + `","payload":{"a":1}}}`
	}
	tooLarge := `{"request_id":"big-1","type":"publish","topic":"orders","message":{"id":"` + testUUID + `","payload":"` + strings.Repeat("x", maxBytes) + `"}}`
	tests := []struct {
		name      string
		msgType   int
		data      string
		code      string
		requestID string
		message   string // part of the error message
	}{
		{"malformed JSON", websocket.TextMessage, `{"request_id":"r-1","type":"ping"`, CodeBadRequest, "r-1", "malformed JSON"},
		{"not an object", websocket.TextMessage, `["ping"]`, CodeBadRequest, "", "JSON object"},
		{"invalid UTF-8", websocket.TextMessage, "{\"type\":\"ping\",\"x\":\"\xff\"}", CodeBadRequest, "", "UTF-8"},
		{"invalid UTF-8 after a request_id", websocket.TextMessage, "{\"type\":\"ping\",\"request_id\":\"u-1\",\"x\":\"\xff\"}", CodeBadRequest, "u-1", "UTF-8"},
		{"binary frame", websocket.BinaryMessage, `{"type":"ping","request_id":"bin"}`, CodeBadRequest, "bin", "binary"},
		{"binary frame, not JSON", websocket.BinaryMessage, "\x00\x01\x02", CodeBadRequest, "", "binary"},
		{"missing type", websocket.TextMessage, `{"request_id":"r-2"}`, CodeBadRequest, "r-2", "type is required"},
		{"unknown type", websocket.TextMessage, `{"type":"hello","request_id":"r-3"}`, CodeBadRequest, "r-3", "unknown type"},
		{"missing topic", websocket.TextMessage, `{"type":"subscribe","client_id":"c","request_id":"r-4"}`, CodeBadRequest, "r-4", "topic is required"},
		{"invalid topic name", websocket.TextMessage, `{"type":"subscribe","topic":"a b","client_id":"c","request_id":"r-5"}`, CodeBadRequest, "r-5", "invalid topic name"},
		{"missing client_id", websocket.TextMessage, `{"type":"unsubscribe","topic":"orders","request_id":"r-6"}`, CodeBadRequest, "r-6", "client_id"},
		{"negative last_n", websocket.TextMessage, `{"type":"subscribe","topic":"orders","client_id":"c","last_n":-1,"request_id":"r-7"}`, CodeBadRequest, "r-7", "last_n"},
		{"wrong field type", websocket.TextMessage, `{"type":"subscribe","topic":"orders","client_id":"c","last_n":"3","request_id":"r-8"}`, CodeBadRequest, "r-8", "last_n"},
		{"invalid UUID", websocket.TextMessage, pub("r-9", "orders", "123"), CodeBadRequest, "r-9", "UUID"},
		{"missing payload", websocket.TextMessage, `{"type":"publish","topic":"orders","message":{"id":"` + testUUID + `"},"request_id":"r-10"}`, CodeBadRequest, "r-10", "payload"},
		{"message too large", websocket.TextMessage, tooLarge, CodeBadRequest, "big-1", "too large"},
		{"publish to unknown topic", websocket.TextMessage, pub("r-11", "nope", testUUID), CodeTopicNotFound, "r-11", "topic 'nope' does not exist"},
		{"subscribe to unknown topic", websocket.TextMessage, `{"type":"subscribe","topic":"nope","client_id":"c","request_id":"r-12"}`, CodeTopicNotFound, "r-12", "topic 'nope' does not exist"},
		{"unsubscribe from unknown topic", websocket.TextMessage, `{"type":"unsubscribe","topic":"nope","client_id":"c","request_id":"r-13"}`, CodeTopicNotFound, "r-13", "topic 'nope' does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := s.dial()
			if err := c.ws.WriteMessage(tt.msgType, []byte(tt.data)); err != nil {
				t.Fatal(err)
			}
			f := c.expectError(tt.code, tt.requestID)
			if got := f.keys(); tt.requestID != "" && !reflect.DeepEqual(got, []string{"error", "request_id", "ts", "type"}) ||
				tt.requestID == "" && !reflect.DeepEqual(got, []string{"error", "ts", "type"}) {
				t.Errorf("error frame %s has keys %v", f, got)
			}
			if msg, _ := f["error"].(map[string]any)["message"].(string); !strings.Contains(msg, tt.message) {
				t.Errorf("error message %q does not mention %q", msg, tt.message)
			}
			c.ping("after-" + tt.name)
		})
	}
	// Nothing reached the subscriber: its next frame is the event published now.
	s.dial().publish("orders", map[string]any{"sentinel": true})
	if e := bystander.expectEvent("orders", 1); e.payload()["sentinel"] != true {
		t.Fatalf("bystander got %s", e)
	}
	if st := s.topicStats("orders"); st.Messages != 1 {
		t.Fatalf("topic has %d messages, want only the sentinel", st.Messages)
	}
}

// TestWSBadFramesInSequence sends several bad frames back to back on one
// connection: each gets its own error, in order, and the connection then
// serves requests normally.
func TestWSBadFramesInSequence(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{MaxMessageBytes: 512})
	s.createTopic("orders")
	c := s.dial()
	c.send(`{"request_id":"a"`)
	if err := c.ws.WriteMessage(websocket.BinaryMessage, []byte{0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	c.send(`{"type":"nope","request_id":"b"}`)
	c.send(`{"request_id":"c","pad":"` + strings.Repeat("x", 600) + `"}`)
	c.send(`{"type":"subscribe","topic":"nope","client_id":"x","request_id":"d"}`)
	c.expectError(CodeBadRequest, "a")
	c.expectError(CodeBadRequest, "")
	c.expectError(CodeBadRequest, "b")
	c.expectError(CodeBadRequest, "c")
	c.expectError(CodeTopicNotFound, "d")
	c.subscribe("orders", "x", 0)
	s.dial().publish("orders", 1)
	c.expectEvent("orders", 1)
}

// publishOfSize is a publish frame of exactly n bytes (n >= 120).
func publishOfSize(t *testing.T, requestID string, n int) string {
	t.Helper()
	head := `{"request_id":"` + requestID + `","type":"publish","topic":"orders","message":{"id":"` + testUUID + `","payload":"`
	tail := `"}}`
	pad := n - len(head) - len(tail)
	if pad < 0 {
		t.Fatalf("frame of %d bytes is too small", n)
	}
	return head + strings.Repeat("x", pad) + tail
}

// TestWSMessageSizeLimit checks MAX_MESSAGE_BYTES at its edges: a frame of
// exactly the limit is accepted, one byte more is BAD_REQUEST with the
// connection kept, and a frame far beyond the limit closes it with 1009.
func TestWSMessageSizeLimit(t *testing.T) {
	t.Parallel()
	const maxBytes = 2048
	hardLimit := 4*maxBytes + 64<<10
	s := newTestServer(t, broker.Config{}, Config{MaxMessageBytes: maxBytes})
	s.createTopic("orders")
	bystander := s.dial()
	bystander.subscribe("orders", "bystander", 0)

	c := s.dial()
	c.send(publishOfSize(t, "at-limit", maxBytes))
	c.expectAck("at-limit", "orders")
	bystander.expectEvent("orders", 1)

	c.send(publishOfSize(t, "over-limit", maxBytes+1))
	f := c.expectError(CodeBadRequest, "over-limit")
	if msg := f["error"].(map[string]any)["message"].(string); !strings.Contains(msg, "2048") {
		t.Errorf("error %q does not state the limit", msg)
	}
	c.send(publishOfSize(t, "at-hard-limit", hardLimit))
	c.expectError(CodeBadRequest, "at-hard-limit")
	c.ping("still-open")

	far := s.dial()
	far.send(publishOfSize(t, "far-beyond", hardLimit+1))
	frames := far.expectClose(websocket.CloseMessageTooBig, wait)
	if len(frames) != 0 {
		t.Fatalf("frames before the close: %v", frames)
	}
	waitFor(t, wait, "the closed connection to be released", func() bool { return s.gateway.Connections() == 2 })

	// Only the publish at the limit was committed; the others are unaffected.
	c.ping("other-connection")
	s.dial().publish("orders", "sentinel")
	bystander.expectEvent("orders", 2)
	if st := s.topicStats("orders"); st.Messages != 2 {
		t.Fatalf("topic has %d messages, want 2", st.Messages)
	}
}

// TestWSUpgradeRefusals: ALLOWED_ORIGINS lets listed browser Origins (and
// clients that send none) open /ws and refuses others with a JSON 403
// UNAUTHORIZED; a plain GET without upgrade headers is a JSON 400.
func TestWSUpgradeRefusals(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{AllowedOrigins: []string{"https://app.example"}})
	for _, tc := range []struct {
		origin string
		status int
		code   string
	}{
		{"", http.StatusSwitchingProtocols, ""},
		{"https://app.example", http.StatusSwitchingProtocols, ""},
		{"HTTPS://APP.EXAMPLE", http.StatusSwitchingProtocols, ""},
		{"https://evil.example", http.StatusForbidden, CodeUnauthorized},
	} {
		header := http.Header{}
		if tc.origin != "" {
			header.Set("Origin", tc.origin)
		}
		ws, resp, err := websocket.DefaultDialer.Dial(s.wsURL(), header)
		if resp == nil {
			t.Fatalf("origin %q: no response: %v", tc.origin, err)
		}
		if resp.StatusCode != tc.status {
			t.Fatalf("origin %q: status %d, want %d", tc.origin, resp.StatusCode, tc.status)
		}
		if ws != nil {
			ws.Close()
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("origin %q: Content-Type %q", tc.origin, ct)
		}
		checkRESTError(t, body, tc.code)
	}

	status, header, body := s.do(http.MethodGet, "/ws", "")
	if status != http.StatusBadRequest || !strings.HasPrefix(header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /ws without upgrade: %d %q %s", status, header.Get("Content-Type"), body)
	}
	checkRESTError(t, body, CodeBadRequest)
}
