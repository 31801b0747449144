package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

// wait is the default bound for anything a test waits for. It is only ever
// reached when a test is failing.
const wait = 5 * time.Second

// testServer is one broker and gateway behind an httptest server.
type testServer struct {
	t       *testing.T
	broker  *broker.Broker
	gateway *Gateway
	http    *httptest.Server
	logs    *logRecorder // the gateway's log, printed if the test fails

	mu    sync.Mutex
	small map[string]bool // remote addresses of dialSmallBuffer clients
}

func newTestServer(t *testing.T, bcfg broker.Config, gcfg Config) *testServer {
	t.Helper()
	bcfg.EncodeEvent = EncodeEvent
	b := broker.New(bcfg)
	logs := newLogRecorder()
	if gcfg.Logger == nil {
		gcfg.Logger = slog.New(logs)
	}
	if gcfg.NodeID == "" {
		gcfg.NodeID = "test-node"
	}
	g := New(b, gcfg)
	s := &testServer{t: t, broker: b, gateway: g, logs: logs, small: map[string]bool{}}
	s.http = httptest.NewUnstartedServer(g.Handler())
	s.http.Config.ConnState = s.connState
	s.http.Start()
	t.Cleanup(func() {
		s.http.Close()
		if t.Failed() {
			logs.dump(t)
		}
	})
	return s
}

// connState caps the kernel send buffer of the server side of every
// dialSmallBuffer connection, so that the server's writes to such a client
// block after a few KiB once it stops reading, rather than after the several
// MiB that loopback buffers absorb. It runs when the upgrade request
// arrives, after dialSmallBuffer has recorded the address.
func (s *testServer) connState(c net.Conn, state http.ConnState) {
	if state != http.StateActive {
		return
	}
	s.mu.Lock()
	small := s.small[c.RemoteAddr().String()]
	s.mu.Unlock()
	if tc, ok := c.(*net.TCPConn); ok && small {
		_ = tc.SetWriteBuffer(4 << 10)
	}
}

func (s *testServer) wsURL() string { return "ws" + strings.TrimPrefix(s.http.URL, "http") + "/ws" }

// dial opens a WebSocket client; it is closed when the test ends.
func (s *testServer) dial() *wsClient {
	s.t.Helper()
	return s.dialWith(websocket.DefaultDialer)
}

// dialSmallBuffer opens a client whose socket buffers (its receive buffer
// and the server's send buffer) are a few KiB: once it stops reading, the
// server's writes to it block almost at once.
func (s *testServer) dialSmallBuffer() *wsClient {
	s.t.Helper()
	d := *websocket.DefaultDialer
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := nc.(*net.TCPConn); ok {
			s.mu.Lock()
			s.small[tc.LocalAddr().String()] = true
			s.mu.Unlock()
		}
		return nc, err
	}
	return s.dialWith(&d)
}

func (s *testServer) dialWith(d *websocket.Dialer) *wsClient {
	s.t.Helper()
	ws, _, err := d.Dial(s.wsURL(), nil)
	if err != nil {
		s.t.Fatalf("dial %s: %v", s.wsURL(), err)
	}
	s.t.Cleanup(func() { ws.Close() })
	return &wsClient{t: s.t, ws: ws}
}

// createTopic creates a topic through REST and fails the test otherwise.
func (s *testServer) createTopic(name string) {
	s.t.Helper()
	resp, err := http.Post(s.http.URL+"/topics", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		s.t.Fatalf("create topic %s: status %d", name, resp.StatusCode)
	}
}

// do sends a REST request and returns the status, headers and body.
func (s *testServer) do(method, path, body string) (int, http.Header, []byte) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.http.URL+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, data
}

// subscribers is the subscriber count GET /topics shows for topic, or -1
// when the topic is not listed.
func (s *testServer) subscribers(topic string) int {
	s.t.Helper()
	status, _, data := s.do(http.MethodGet, "/topics", "")
	if status != http.StatusOK {
		s.t.Fatalf("GET /topics: status %d %s", status, data)
	}
	var body struct {
		Topics []struct {
			Name        string `json:"name"`
			Subscribers int    `json:"subscribers"`
		} `json:"topics"`
	}
	if err := json.Unmarshal(data, &body); err != nil {
		s.t.Fatalf("GET /topics: %v in %s", err, data)
	}
	for _, tp := range body.Topics {
		if tp.Name == topic {
			return tp.Subscribers
		}
	}
	return -1
}

// topicStats is the broker's view of one topic (drops are not in the REST
// contract).
func (s *testServer) topicStats(topic string) broker.TopicStats {
	s.t.Helper()
	for _, st := range s.broker.Topics() {
		if st.Name == topic {
			return st
		}
	}
	s.t.Fatalf("topic %s does not exist", topic)
	return broker.TopicStats{}
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type wsClient struct {
	t  *testing.T
	ws *websocket.Conn
}

// send writes v (a string is sent as is, anything else as JSON).
func (c *wsClient) send(v any) {
	c.t.Helper()
	if err := c.trySend(v); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// trySend is send for goroutines other than the test's.
func (c *wsClient) trySend(v any) error {
	var data []byte
	switch x := v.(type) {
	case string:
		data = []byte(x)
	case []byte:
		data = x
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			return err
		}
	}
	return c.ws.WriteMessage(websocket.TextMessage, data)
}

// frame is a server frame decoded generically.
type frame map[string]any

func (f frame) str(key string) string { s, _ := f[key].(string); return s }

func (f frame) errorCode() string {
	e, _ := f["error"].(map[string]any)
	s, _ := e["code"].(string)
	return s
}

func (f frame) seq() int {
	n, _ := f["seq"].(float64)
	return int(n)
}

// message is an event's message object.
func (f frame) message() map[string]any {
	m, _ := f["message"].(map[string]any)
	return m
}

// payload is an event's message payload.
func (f frame) payload() map[string]any {
	p, _ := f.message()["payload"].(map[string]any)
	return p
}

// keys lists the frame's top-level keys, sorted.
func (f frame) keys() []string {
	out := make([]string, 0, len(f))
	for k := range f {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (f frame) String() string {
	b, _ := json.Marshal(f)
	return string(b)
}

// recv reads one frame or fails the test after timeout.
func (c *wsClient) recv(timeout time.Duration) frame {
	c.t.Helper()
	f, err := c.tryRecv(timeout)
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return f
}

// tryRecv is recv for goroutines other than the test's.
func (c *wsClient) tryRecv(timeout time.Duration) (frame, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("server sent invalid JSON %q: %v", data, err)
	}
	return f, nil
}

// expect reads one frame and fails unless it has type typ.
func (c *wsClient) expect(typ string) frame {
	c.t.Helper()
	f := c.recv(wait)
	if f.str("type") != typ {
		c.t.Fatalf("got %s, want a %s frame", f, typ)
	}
	return f
}

// expectAck reads one frame and fails unless it is the ack of requestID.
func (c *wsClient) expectAck(requestID, topic string) frame {
	c.t.Helper()
	f := c.expect("ack")
	if f.str("request_id") != requestID || f.str("topic") != topic || f.str("status") != "ok" {
		c.t.Fatalf("got %s, want the ack of %q on %q", f, requestID, topic)
	}
	return f
}

// expectError reads one frame and fails unless it is an error with code
// echoing requestID.
func (c *wsClient) expectError(code, requestID string) frame {
	c.t.Helper()
	f := c.expect("error")
	if f.errorCode() != code || f.str("request_id") != requestID {
		c.t.Fatalf("got %s, want error %s with request_id %q", f, code, requestID)
	}
	return f
}

// expectEvent reads one frame and fails unless it is the event seq of topic.
func (c *wsClient) expectEvent(topic string, seq int) frame {
	c.t.Helper()
	f := c.expect("event")
	if f.str("topic") != topic || f.seq() != seq {
		c.t.Fatalf("got %s, want event %d of %q", f, seq, topic)
	}
	return f
}

// ping sends a ping and expects its pong, proving the connection still
// serves requests. Heartbeats (info ping) before the pong are skipped.
func (c *wsClient) ping(requestID string) {
	c.t.Helper()
	c.send(map[string]any{"type": "ping", "request_id": requestID})
	f := c.recv(wait)
	for f.str("type") == "info" && f.str("msg") == "ping" {
		f = c.recv(wait)
	}
	if f.str("type") != "pong" || f.str("request_id") != requestID {
		c.t.Fatalf("got %s, want the pong of %q", f, requestID)
	}
}

// subscribe subscribes and waits for the ack (request_id "sub-<clientID>").
func (c *wsClient) subscribe(topic, clientID string, lastN int) {
	c.t.Helper()
	c.send(map[string]any{"type": "subscribe", "topic": topic, "client_id": clientID, "last_n": lastN, "request_id": "sub-" + clientID})
	c.expectAck("sub-"+clientID, topic)
}

// publishFrame is a publish request with a fresh message id.
func publishFrame(requestID, topic string, payload any) map[string]any {
	return map[string]any{
		"type":       "publish",
		"request_id": requestID,
		"topic":      topic,
		"message":    map[string]any{"id": uuid.NewString(), "payload": payload},
	}
}

// publish publishes payload and waits for the ack. Use it on a connection
// that is not subscribed to topic, so the ack is the next frame.
func (c *wsClient) publish(topic string, payload any) {
	c.t.Helper()
	rid := "pub-" + uuid.NewString()
	c.send(publishFrame(rid, topic, payload))
	c.expectAck(rid, topic)
}

// readUntilClose reads frames until the connection ends and returns them
// with the error that ended it (a *websocket.CloseError for a close frame).
func (c *wsClient) readUntilClose(timeout time.Duration) ([]frame, error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var frames []frame
	for {
		_ = c.ws.SetReadDeadline(deadline)
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.t.Fatalf("connection still open after %v; frames: %v", timeout, frames)
			}
			return frames, err
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			c.t.Fatalf("server sent invalid JSON %q: %v", data, err)
		}
		frames = append(frames, f)
	}
}

// expectClose reads until the connection ends and fails unless it ended with
// a close frame carrying code. It returns the frames read before it.
func (c *wsClient) expectClose(code int, timeout time.Duration) []frame {
	c.t.Helper()
	frames, err := c.readUntilClose(timeout)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != code {
		c.t.Fatalf("connection ended with %v, want close code %d (frames before: %v)", err, code, frames)
	}
	return frames
}

// logRecorder is a slog handler keeping every record for assertions.
type logRecorder struct {
	store *logStore
	attrs []slog.Attr
}

type logStore struct {
	mu   sync.Mutex
	recs []map[string]string // "msg", "time" and every attribute, as text
}

func newLogRecorder() *logRecorder { return &logRecorder{store: &logStore{}} }

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]string{"msg": rec.Message, "time": rec.Time.Format("15:04:05.000000"), "level": rec.Level.String()}
	for _, a := range r.attrs {
		m[a.Key] = a.Value.String()
	}
	rec.Attrs(func(a slog.Attr) bool {
		m[a.Key] = a.Value.String()
		return true
	})
	r.store.mu.Lock()
	r.store.recs = append(r.store.recs, m)
	r.store.mu.Unlock()
	return nil
}

func (r *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &logRecorder{store: r.store, attrs: append(slices.Clip(r.attrs), as...)}
}

func (r *logRecorder) WithGroup(string) slog.Handler { return r }

// has reports whether a record has every key/value in want.
func (r *logRecorder) has(want map[string]string) bool {
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
next:
	for _, rec := range r.store.recs {
		for k, v := range want {
			if rec[k] != v {
				continue next
			}
		}
		return true
	}
	return false
}

// atLeast returns the messages of the records at level or above.
func (r *logRecorder) atLeast(level slog.Level) []string {
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
	var out []string
	for _, rec := range r.store.recs {
		var l slog.Level
		if err := l.UnmarshalText([]byte(rec["level"])); err == nil && l >= level {
			out = append(out, rec["msg"])
		}
	}
	return out
}

// jsonHas reports whether the JSON object body has key with value want
// (numbers compare as float64).
func jsonHas(t *testing.T, body []byte, key string, want any) bool {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("%v in %s", err, body)
	}
	return m[key] == want
}

// dump prints every record to the test log.
func (r *logRecorder) dump(t *testing.T) {
	r.store.mu.Lock()
	defer r.store.mu.Unlock()
	t.Logf("server log (%d records):", len(r.store.recs))
	for _, rec := range r.store.recs {
		t.Logf("  %v", rec)
	}
}
