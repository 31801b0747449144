package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Node is one enclave node's two addresses.
type Node struct {
	WS   string // ws://host:port/ws
	HTTP string // http://host:port
}

// ParseNode accepts ws://host:port/ws, wss://…, http://host:port,
// https://… or host:port and returns both addresses.
func ParseNode(s string) (Node, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Node{}, errors.New("empty node address")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return Node{}, fmt.Errorf("node %q: %w", s, err)
	}
	if u.Host == "" {
		return Node{}, fmt.Errorf("node %q has no host", s)
	}
	var wsScheme, httpScheme string
	switch u.Scheme {
	case "ws", "http":
		wsScheme, httpScheme = "ws", "http"
	case "wss", "https":
		wsScheme, httpScheme = "wss", "https"
	default:
		return Node{}, fmt.Errorf("node %q: scheme must be ws, wss, http or https", s)
	}
	base := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/ws")
	return Node{
		WS:   wsScheme + "://" + u.Host + base + "/ws",
		HTTP: httpScheme + "://" + u.Host + base,
	}, nil
}

// Enclave drives enclave nodes over the WebSocket protocol (and REST for
// the topic). It implements System and, given PIDs, ProcessStats.
type Enclave struct {
	nodes   []Node
	pids    PIDStats
	http    *http.Client
	dialer  websocket.Dialer
	runID   string
	nextPub atomic.Uint32

	mu      sync.Mutex
	created map[string]bool
}

var (
	_ System       = (*Enclave)(nil)
	_ ProcessStats = (*Enclave)(nil)
)

// NewEnclave returns a System over nodes. pids, when given, are the server
// processes of the nodes in the same order (0 for unknown).
func NewEnclave(nodes []Node, pids []int) *Enclave {
	return &Enclave{
		nodes: nodes,
		pids:  PIDStats(pids),
		http:  &http.Client{Timeout: 15 * time.Second},
		dialer: websocket.Dialer{
			HandshakeTimeout: 15 * time.Second,
			ReadBufferSize:   4096,
			WriteBufferSize:  4096,
			WriteBufferPool:  &sync.Pool{},
		},
		runID:   randomHex(4),
		created: map[string]bool{},
	}
}

// Name implements System.
func (e *Enclave) Name() string { return "enclave" }

// Nodes implements System.
func (e *Enclave) Nodes() []string {
	out := make([]string, len(e.nodes))
	for i, n := range e.nodes {
		out[i] = n.WS
	}
	return out
}

// ServerStats implements ProcessStats.
func (e *Enclave) ServerStats(node int) (int64, time.Duration, bool) {
	return e.pids.ServerStats(node)
}

// Prepare creates topic through node 1's REST API unless it exists
// (retrying while the node is unreachable or answers 503, as a cluster does
// before it has a leader, until ctx ends), then waits until every node
// knows it.
func (e *Enclave) Prepare(ctx context.Context, topic string) error {
	body, _ := json.Marshal(map[string]string{"name": topic})
	var lastErr error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.nodes[0].HTTP+"/topics", bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.http.Do(req)
		if err == nil {
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusCreated:
				e.mu.Lock()
				e.created[topic] = true
				e.mu.Unlock()
			case http.StatusConflict:
			default:
				err = fmt.Errorf("POST /topics: %s: %s", resp.Status, bytes.TrimSpace(data))
			}
			// 503 (no leader yet) is worth retrying; others are not.
			if err != nil && resp.StatusCode != http.StatusServiceUnavailable {
				return err
			}
		}
		if err == nil {
			break
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), lastErr)
		case <-time.After(250 * time.Millisecond):
		}
	}
	for i, n := range e.nodes {
		if err := e.waitTopic(ctx, n, topic); err != nil {
			return fmt.Errorf("node %d: %w", i+1, err)
		}
	}
	return nil
}

func (e *Enclave) waitTopic(ctx context.Context, n Node, topic string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.HTTP+"/topics", nil)
		if err != nil {
			return err
		}
		resp, err := e.http.Do(req)
		if err == nil {
			var body struct {
				Topics []struct {
					Name string `json:"name"`
				} `json:"topics"`
			}
			err = json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body)
			resp.Body.Close()
			for _, t := range body.Topics {
				if t.Name == topic {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("topic %q not visible: %w (last: %v)", topic, ctx.Err(), err)
			}
			return fmt.Errorf("topic %q not visible: %w", topic, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Cleanup deletes topic if Prepare created it.
func (e *Enclave) Cleanup(ctx context.Context, topic string) error {
	e.mu.Lock()
	created := e.created[topic]
	delete(e.created, topic)
	e.mu.Unlock()
	if !created {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, e.nodes[0].HTTP+"/topics/"+url.PathEscape(topic), nil)
	if err != nil {
		return err
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// wsConn is the common part of a publisher's and a subscriber's connection.
type wsConn struct {
	c       *websocket.Conn
	closing atomic.Bool
	done    chan struct{} // closed when the reader returns
}

func (e *Enclave) dial(ctx context.Context, node int) (*wsConn, error) {
	c, resp, err := e.dialer.DialContext(ctx, e.nodes[node].WS, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %s)", e.nodes[node].WS, err, resp.Status)
		}
		return nil, fmt.Errorf("dial %s: %w", e.nodes[node].WS, err)
	}
	return &wsConn{c: c, done: make(chan struct{})}, nil
}

func (w *wsConn) Close() error {
	w.closing.Store(true)
	_ = w.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	err := w.c.Close()
	<-w.done
	return err
}

// readLoop reads text frames into a reused buffer and hands each to fn,
// with the time it was read. It reports the connection's loss, unless it
// is being closed by us.
func (w *wsConn) readLoop(fn func(frame []byte, at time.Time), failed func(string)) {
	defer close(w.done)
	var buf bytes.Buffer
	for {
		typ, rd, err := w.c.NextReader()
		if err != nil {
			if !w.closing.Load() {
				failed("CLOSED")
			}
			return
		}
		buf.Reset()
		if _, err := buf.ReadFrom(rd); err != nil {
			if !w.closing.Load() {
				failed("CLOSED")
			}
			return
		}
		at := time.Now()
		if typ != websocket.TextMessage {
			failed("BINARY_FRAME")
			continue
		}
		fn(buf.Bytes(), at)
	}
}

// Frame fields are read by scanning for their keys instead of decoding the
// JSON: on a 2-core machine the client's CPU is taken from the server.

// frameType returns the value of a frame's "type".
func frameType(p []byte) string {
	return stringField(p, `"type":"`)
}

// stringField returns the string value that follows key (which ends with
// the opening quote), without unescaping.
func stringField(p []byte, key string) string {
	i := bytes.Index(p, []byte(key))
	if i < 0 {
		return ""
	}
	p = p[i+len(key):]
	j := bytes.IndexByte(p, '"')
	if j < 0 {
		return ""
	}
	return string(p[:j])
}

// uintField returns the unsigned integer value that follows key.
func uintField(p []byte, key string) (uint64, bool) {
	i := bytes.Index(p, []byte(key))
	if i < 0 {
		return 0, false
	}
	p = p[i+len(key):]
	var n uint64
	j := 0
	for ; j < len(p) && j < 20 && p[j] >= '0' && p[j] <= '9'; j++ {
		n = n*10 + uint64(p[j]-'0')
	}
	return n, j > 0
}

// errorCode returns an error frame's error.code.
func errorCode(p []byte) string {
	if c := stringField(p, `"code":"`); c != "" {
		return c
	}
	return "ERROR"
}

type wsPublisher struct {
	*wsConn
	topic string
	id    []byte // UUID prefix unique to this publisher
	frame []byte
}

// DialPublisher implements System. Each publish carries request_id = its n,
// so acks are matched by id (the server acks one connection's publishes in
// the order they were sent, which the publisher checks too).
func (e *Enclave) DialPublisher(ctx context.Context, node int, topic string, h PublisherHandler) (Publisher, error) {
	w, err := e.dial(ctx, node)
	if err != nil {
		return nil, err
	}
	idx := e.nextPub.Add(1)
	p := &wsPublisher{wsConn: w, topic: topic, id: fmt.Appendf(nil, "%s-%04x-4%03x-8000-", e.runID, idx>>12&0xffff, idx&0xfff)}
	var next uint64
	go w.readLoop(func(f []byte, _ time.Time) {
		switch frameType(f) {
		case "ack":
			n, ok := uintField(f, `"request_id":"`)
			if !ok {
				h.Failed("ACK_WITHOUT_REQUEST_ID")
				return
			}
			if n != next {
				h.Failed("ACK_OUT_OF_ORDER")
			}
			next = n + 1
			h.Done(n, "")
		case "error":
			n, ok := uintField(f, `"request_id":"`)
			if !ok {
				h.Failed(errorCode(f))
				return
			}
			next = n + 1
			h.Done(n, errorCode(f))
		case "info", "pong":
		default:
			h.Failed("UNEXPECTED_FRAME")
		}
	}, h.Failed)
	return p, nil
}

// Publish implements Publisher.
func (p *wsPublisher) Publish(n uint64, payload []byte) error {
	f := append(p.frame[:0], `{"type":"publish","topic":"`...)
	f = append(f, p.topic...)
	f = append(f, `","request_id":"`...)
	f = strconv.AppendUint(f, n, 10)
	f = append(f, `","message":{"id":"`...)
	f = append(f, p.id...)
	f = fmt.Appendf(f, "%012x", n&0xffffffffffff)
	f = append(f, `","payload":`...)
	f = append(f, payload...)
	f = append(f, `}}`...)
	p.frame = f
	return p.c.WriteMessage(websocket.TextMessage, f)
}

type wsSubscriber struct{ *wsConn }

// DialSubscriber implements System: it subscribes with last_n 0 and returns
// after the ack. Each event's seq is checked: a seq not above the previous
// one is an ORDER error (a gap is left to the delivered count).
func (e *Enclave) DialSubscriber(ctx context.Context, node int, topic string, h SubscriberHandler) (Subscriber, error) {
	w, err := e.dial(ctx, node)
	if err != nil {
		return nil, err
	}
	sub := fmt.Appendf(nil, `{"type":"subscribe","topic":%q,"client_id":"bench","last_n":0,"request_id":"sub"}`, topic)
	if dl, ok := ctx.Deadline(); ok {
		_ = w.c.SetReadDeadline(dl)
	} else {
		_ = w.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	}
	fail := func(err error) (Subscriber, error) {
		w.c.Close()
		return nil, err
	}
	if err := w.c.WriteMessage(websocket.TextMessage, sub); err != nil {
		return fail(fmt.Errorf("subscribe: %w", err))
	}
	for acked := false; !acked; {
		typ, data, err := w.c.ReadMessage()
		if err != nil {
			return fail(fmt.Errorf("waiting for the subscribe ack: %w", err))
		}
		if typ != websocket.TextMessage {
			continue
		}
		switch frameType(data) {
		case "ack":
			acked = true
		case "error":
			return fail(fmt.Errorf("subscribe: %s: %s", errorCode(data), data))
		}
	}
	_ = w.c.SetReadDeadline(time.Time{})
	var lastSeq uint64
	go w.readLoop(func(f []byte, at time.Time) {
		switch frameType(f) {
		case "event":
			if seq, ok := uintField(f, `"seq":`); ok {
				if seq <= lastSeq {
					h.Failed("ORDER")
				}
				lastSeq = seq
			}
			i := bytes.Index(f, []byte(`"payload":`))
			if i < 0 {
				h.Failed("BAD_EVENT")
				return
			}
			h.Event(f[i+len(`"payload":`):], at)
		case "info":
			if stringField(f, `"msg":"`) == "topic_deleted" {
				h.Failed("TOPIC_DELETED")
			}
		case "error":
			h.Failed(errorCode(f))
		case "ack", "pong":
		default:
			h.Failed("UNEXPECTED_FRAME")
		}
	}, h.Failed)
	return &wsSubscriber{w}, nil
}
