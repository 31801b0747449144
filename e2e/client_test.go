//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// REST.

var httpClient = &http.Client{Timeout: 20 * time.Second}

type clusterStatus struct {
	NodeID   string `json:"node_id"`
	LeaderID string `json:"leader_id"`
	Members  []struct {
		ID      string `json:"id"`
		Address string `json:"address"`
		Status  string `json:"status"`
		Voter   bool   `json:"voter"`
	} `json:"members"`
}

func (s clusterStatus) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: leader=%q members=[", s.NodeID, s.LeaderID)
	for i, m := range s.Members {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s@%s:%s", m.ID, m.Address, m.Status)
		if !m.Voter {
			b.WriteString("(nonvoter)")
		}
	}
	b.WriteString("]")
	return b.String()
}

// member returns id's entry.
func (s clusterStatus) member(id string) (address, status string, voter, ok bool) {
	for _, m := range s.Members {
		if m.ID == id {
			return m.Address, m.Status, m.Voter, true
		}
	}
	return "", "", false, false
}

// healthy reports whether s shows a leader and exactly want as alive voters.
func (s clusterStatus) healthy(want []string) bool {
	if s.LeaderID == "" || len(s.Members) != len(want) {
		return false
	}
	for _, id := range want {
		if _, st, voter, ok := s.member(id); !ok || st != "alive" || !voter {
			return false
		}
	}
	return true
}

// restResult is one REST call's outcome.
type restResult struct {
	status int
	body   []byte
	err    error
}

func (r restResult) code() string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

func (r restResult) String() string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("%d %s", r.status, strings.TrimSpace(string(r.body)))
}

func (c *cluster) do(method, node, path string, body any) restResult {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url(node, path), rd)
	if err != nil {
		return restResult{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return restResult{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return restResult{status: resp.StatusCode, body: b, err: err}
}

func (c *cluster) status(node string) (clusterStatus, error) {
	r := c.do("GET", node, "/cluster", nil)
	var s clusterStatus
	if r.err != nil {
		return s, r.err
	}
	if r.status != 200 {
		return s, fmt.Errorf("GET /cluster on %s: %s", node, r)
	}
	err := json.Unmarshal(r.body, &s)
	return s, err
}

// topics lists the topic names node knows.
func (c *cluster) topics(node string) ([]string, error) {
	r := c.do("GET", node, "/topics", nil)
	if r.err != nil {
		return nil, r.err
	}
	if r.status != 200 {
		return nil, fmt.Errorf("GET /topics on %s: %s", node, r)
	}
	var body struct {
		Topics []struct {
			Name string `json:"name"`
		} `json:"topics"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		return nil, err
	}
	var names []string
	for _, t := range body.Topics {
		names = append(names, t.Name)
	}
	return names, nil
}

// messages is GET /stats' message count of topic on node.
func (c *cluster) messages(node, topic string) (uint64, error) {
	r := c.do("GET", node, "/stats", nil)
	if r.err != nil {
		return 0, r.err
	}
	if r.status != 200 {
		return 0, fmt.Errorf("GET /stats on %s: %s", node, r)
	}
	var body struct {
		Topics map[string]struct {
			Messages uint64 `json:"messages"`
		} `json:"topics"`
	}
	if err := json.Unmarshal(r.body, &body); err != nil {
		return 0, err
	}
	t, ok := body.Topics[topic]
	if !ok {
		return 0, fmt.Errorf("%s has no topic %q", node, topic)
	}
	return t.Messages, nil
}

// WebSocket.

type message struct {
	ID      string          `json:"id"`
	Payload json.RawMessage `json:"payload"`
}

// frame is any server frame.
type frame struct {
	Type      string   `json:"type"`
	RequestID string   `json:"request_id"`
	Status    string   `json:"status"`
	Topic     string   `json:"topic"`
	Message   *message `json:"message"`
	Seq       uint64   `json:"seq"`
	TS        string   `json:"ts"`
	Msg       string   `json:"msg"`
	Error     *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`

	at time.Time // when it was read
}

func (f frame) code() string {
	if f.Error != nil {
		return f.Error.Code
	}
	return ""
}

// wsClient is one WebSocket connection: replies are matched to requests by
// request_id; events and infos are queued in arrival order.
type wsClient struct {
	node string
	conn *websocket.Conn
	wmu  sync.Mutex

	mu      sync.Mutex
	waiters map[string]chan frame
	late    map[string]frame // replies that came after their waiter gave up
	nextID  atomic.Uint64

	events chan frame
	infos  chan frame
	done   chan struct{}
	err    error // why the connection ended, once done is closed
}

func (c *cluster) dial(node string) (*wsClient, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	conn, _, err := d.Dial(c.wsURL(node), nil)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", node, err)
	}
	w := &wsClient{
		node:    node,
		conn:    conn,
		waiters: map[string]chan frame{},
		late:    map[string]frame{},
		events:  make(chan frame, 200_000),
		infos:   make(chan frame, 1024),
		done:    make(chan struct{}),
	}
	go w.read()
	return w, nil
}

func (w *wsClient) read() {
	defer close(w.done)
	for {
		_, data, err := w.conn.ReadMessage()
		if err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		var f frame
		if err := json.Unmarshal(data, &f); err != nil {
			w.mu.Lock()
			w.err = fmt.Errorf("undecodable frame %q: %w", data, err)
			w.mu.Unlock()
			w.conn.Close()
			return
		}
		f.at = time.Now()
		switch {
		case f.Type == "event":
			select {
			case w.events <- f:
			default:
				w.mu.Lock()
				w.err = errors.New("test client's event buffer overflowed")
				w.mu.Unlock()
				w.conn.Close()
				return
			}
		case f.Type == "info":
			select {
			case w.infos <- f:
			default:
			}
		case f.RequestID != "":
			w.mu.Lock()
			ch, ok := w.waiters[f.RequestID]
			delete(w.waiters, f.RequestID)
			if !ok {
				w.late[f.RequestID] = f
			}
			w.mu.Unlock()
			if ok {
				ch <- f
			}
		}
	}
}

func (w *wsClient) closeErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *wsClient) Close() { w.conn.Close() }

// send writes req with a fresh request_id and returns the channel its reply
// arrives on.
func (w *wsClient) send(req map[string]any) (string, chan frame, error) {
	id := w.node + "-r" + strconv.FormatUint(w.nextID.Add(1), 10)
	req["request_id"] = id
	ch := make(chan frame, 1)
	w.mu.Lock()
	w.waiters[id] = ch
	w.mu.Unlock()
	b, _ := json.Marshal(req)
	w.wmu.Lock()
	_ = w.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	err := w.conn.WriteMessage(websocket.TextMessage, b)
	w.wmu.Unlock()
	if err != nil {
		w.forget(id)
		return id, nil, err
	}
	return id, ch, nil
}

func (w *wsClient) forget(id string) {
	w.mu.Lock()
	delete(w.waiters, id)
	w.mu.Unlock()
}

// wait waits for the reply on ch. On timeout the waiter is dropped; a reply
// that comes later is kept in late.
func (w *wsClient) wait(id string, ch chan frame, timeout time.Duration) (frame, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case f := <-ch:
		return f, nil
	case <-w.done:
		select {
		case f := <-ch:
			return f, nil
		default:
		}
		return frame{}, fmt.Errorf("connection to %s closed: %v", w.node, w.closeErr())
	case <-timer.C:
		w.forget(id)
		select {
		case f := <-ch:
			return f, nil
		default:
		}
		return frame{}, fmt.Errorf("no reply from %s within %s", w.node, timeout)
	}
}

// lateReply is the reply to id that came after wait gave up, if any.
func (w *wsClient) lateReply(id string) (frame, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f, ok := w.late[id]
	return f, ok
}

func (w *wsClient) request(req map[string]any, timeout time.Duration) (frame, error) {
	id, ch, err := w.send(req)
	if err != nil {
		return frame{}, err
	}
	return w.wait(id, ch, timeout)
}

func (w *wsClient) subscribe(topic, clientID string, lastN int) error {
	f, err := w.request(map[string]any{"type": "subscribe", "topic": topic, "client_id": clientID, "last_n": lastN}, 20*time.Second)
	if err != nil {
		return err
	}
	if f.Type != "ack" {
		return fmt.Errorf("subscribe to %s on %s: %s %s", topic, w.node, f.Type, f.code())
	}
	return nil
}

func publishReq(topic, id string, payload any) map[string]any {
	return map[string]any{"type": "publish", "topic": topic, "message": map[string]any{"id": id, "payload": payload}}
}

// publish sends one message and waits for its ack or error.
func (w *wsClient) publish(topic, id string, payload any, timeout time.Duration) (frame, error) {
	return w.request(publishReq(topic, id, payload), timeout)
}

// nextEvent returns the next event, or an error after timeout.
func (w *wsClient) nextEvent(timeout time.Duration) (frame, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case f := <-w.events:
		return f, nil
	case <-timer.C:
		return frame{}, fmt.Errorf("no event on %s within %s", w.node, timeout)
	case <-w.done:
		select {
		case f := <-w.events:
			return f, nil
		default:
		}
		return frame{}, fmt.Errorf("connection to %s closed: %v", w.node, w.closeErr())
	}
}
