package gateway

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

// testServer is one broker and gateway behind an httptest server.
type testServer struct {
	t       *testing.T
	broker  *broker.Broker
	gateway *Gateway
	http    *httptest.Server
}

func newTestServer(t *testing.T, bcfg broker.Config, gcfg Config) *testServer {
	t.Helper()
	bcfg.EncodeEvent = EncodeEvent
	b := broker.New(bcfg)
	if gcfg.Logger == nil {
		gcfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if gcfg.NodeID == "" {
		gcfg.NodeID = "test-node"
	}
	g := New(b, gcfg)
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return &testServer{t: t, broker: b, gateway: g, http: srv}
}

func (s *testServer) wsURL() string { return "ws" + strings.TrimPrefix(s.http.URL, "http") + "/ws" }

// dial opens a WebSocket client; it is closed when the test ends.
func (s *testServer) dial() *wsClient {
	s.t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(s.wsURL(), nil)
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

type wsClient struct {
	t  *testing.T
	ws *websocket.Conn
}

// send writes v (a string is sent as is, anything else as JSON).
func (c *wsClient) send(v any) {
	c.t.Helper()
	var data []byte
	switch x := v.(type) {
	case string:
		data = []byte(x)
	case []byte:
		data = x
	default:
		var err error
		if data, err = json.Marshal(v); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, data); err != nil {
		c.t.Fatalf("send: %v", err)
	}
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

// recv reads one frame or fails the test after timeout.
func (c *wsClient) recv(timeout time.Duration) frame {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, data, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		c.t.Fatalf("server sent invalid JSON %q: %v", data, err)
	}
	return f
}

// expectNothing fails if a frame arrives within d.
func (c *wsClient) expectNothing(d time.Duration) {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(d))
	_, data, err := c.ws.ReadMessage()
	if err == nil {
		c.t.Fatalf("unexpected frame %s", data)
	}
}
