package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/websocket"
)

const crashRingSize = 5000

// crashNode is the real binary in single-node mode on fixed ports and a
// fixed data directory, so that it can be killed and started again.
type crashNode struct {
	t                          *testing.T
	bin, dataDir               string
	port, raftPort, gossipPort int
	cmd                        *exec.Cmd
	exited                     chan error
	log                        *syncBuffer
}

func (n *crashNode) start() {
	t := n.t
	t.Helper()
	n.cmd = exec.Command(n.bin)
	n.cmd.Env = append(os.Environ(),
		"PORT="+strconv.Itoa(n.port),
		"RAFT_PORT="+strconv.Itoa(n.raftPort),
		"GOSSIP_PORT="+strconv.Itoa(n.gossipPort),
		"DATA_DIR="+n.dataDir,
		"NODE_ID=crash",
		"RING_SIZE="+strconv.Itoa(crashRingSize),
		"LOG_LEVEL=INFO",
		"JOIN=",
	)
	n.cmd.SysProcAttr = interopDieWithTest()
	n.log = &syncBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.exited = make(chan error, 1)
	go func(cmd *exec.Cmd, exited chan error) { exited <- cmd.Wait() }(n.cmd, n.exited)
	if _, err := waitHealthy(n.url(""), n.exited, 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, n.log.String())
	}
}

// kill9 sends SIGKILL: no shutdown code runs.
func (n *crashNode) kill9() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		n.t.Fatal("server still running 10s after SIGKILL")
	}
}

func (n *crashNode) url(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(n.port) + path
}

func (n *crashNode) getJSON(path string, v any) {
	n.t.Helper()
	resp, err := http.Get(n.url(path))
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		n.t.Fatalf("GET %s: %v", path, err)
	}
}

// TestSingleNodeSurvivesKill9: the real binary in single-node mode is
// killed with SIGKILL while a client is publishing; started again on the
// same DATA_DIR it has every topic, and every message that was acked is in
// the topic's ring, in seq order with no gap, before it serves anything.
func TestSingleNodeSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and restarts the binary")
	}
	dir := t.TempDir()
	n := &crashNode{
		t: t, bin: interopBuild(t, dir), dataDir: filepath.Join(dir, "data"),
		port: interopFreePort(t), raftPort: interopFreePort(t), gossipPort: interopFreePort(t),
	}
	n.start()
	t.Cleanup(func() {
		if n.cmd.ProcessState == nil {
			_ = n.cmd.Process.Kill()
			<-n.exited
		}
		if t.Failed() {
			t.Logf("last server log:\n%s", n.log.String())
		}
	})
	for _, topic := range []string{"orders", "kept-empty"} {
		resp, err := http.Post(n.url("/topics"), "application/json", strings.NewReader(`{"name":"`+topic+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("create %s: %d", topic, resp.StatusCode)
		}
	}

	// A pipelined publisher; the server is killed once a few hundred
	// publishes have been acked, with more still in flight.
	ws, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:"+strconv.Itoa(n.port)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	const maxPublishes = 20000
	ids := make([]string, maxPublishes)
	var (
		mu    sync.Mutex
		acked []string
	)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				return // the server was killed
			}
			var f struct {
				Type      string `json:"type"`
				RequestID string `json:"request_id"`
			}
			if json.Unmarshal(data, &f) == nil && f.Type == "ack" {
				i, _ := strconv.Atoi(f.RequestID)
				mu.Lock()
				acked = append(acked, ids[i])
				mu.Unlock()
			}
		}
	}()
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	for i := 0; i < maxPublishes; i++ {
		ids[i] = uuid.NewString()
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for i := 0; i < maxPublishes; i++ {
			frame := fmt.Sprintf(`{"type":"publish","topic":"orders","request_id":"%d","message":{"id":"%s","payload":{"n":%d}}}`, i, ids[i], i)
			if ws.WriteMessage(websocket.TextMessage, []byte(frame)) != nil {
				return
			}
			if i%64 == 63 {
				time.Sleep(time.Millisecond) // keep a few publishes in flight, not thousands
			}
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ackedCount() < 500; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d publishes acked after 30s", ackedCount())
		}
		time.Sleep(5 * time.Millisecond)
	}
	n.kill9()
	<-readerDone
	ws.Close()
	<-writerDone
	mu.Lock()
	wantIDs := append([]string(nil), acked...)
	mu.Unlock()
	t.Logf("killed with %d publishes acked", len(wantIDs))

	n.start()
	var topics struct {
		Topics []struct{ Name string } `json:"topics"`
	}
	n.getJSON("/topics", &topics)
	if got := fmt.Sprint(topics.Topics); got != "[{kept-empty} {orders}]" {
		t.Fatalf("topics after restart: %s", got)
	}
	var stats struct {
		Topics map[string]struct{ Messages int } `json:"topics"`
	}
	n.getJSON("/stats", &stats)
	committed := stats.Topics["orders"].Messages
	if committed < len(wantIDs) {
		t.Fatalf("%d messages after restart, but %d were acked", committed, len(wantIDs))
	}
	if committed > crashRingSize {
		t.Fatalf("%d messages committed: more than the ring of %d holds, the check below needs a larger RING_SIZE", committed, crashRingSize)
	}

	// The ring replays every committed message: the acked ones first, in
	// the order they were acked, then any committed before the kill whose
	// ack never left.
	sub, _, err := websocket.DefaultDialer.Dial("ws://127.0.0.1:"+strconv.Itoa(n.port)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	req := fmt.Sprintf(`{"type":"subscribe","topic":"orders","client_id":"c","last_n":%d,"request_id":"s"}`, committed)
	if err := sub.WriteMessage(websocket.TextMessage, []byte(req)); err != nil {
		t.Fatal(err)
	}
	_ = sub.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, data, err := sub.ReadMessage(); err != nil || !strings.Contains(string(data), `"type":"ack"`) {
		t.Fatalf("subscribe: %s %v", data, err)
	}
	for seq := 1; seq <= committed; seq++ {
		_, data, err := sub.ReadMessage()
		if err != nil {
			t.Fatalf("replay event %d of %d: %v", seq, committed, err)
		}
		var e struct {
			Seq     int `json:"seq"`
			Message struct {
				ID string `json:"id"`
			} `json:"message"`
		}
		if err := json.Unmarshal(data, &e); err != nil || e.Seq != seq {
			t.Fatalf("replay event %d: %s (%v)", seq, data, err)
		}
		if seq <= len(wantIDs) && e.Message.ID != wantIDs[seq-1] {
			t.Fatalf("replay event %d is %s, the %dth ack was for %s", seq, e.Message.ID, seq, wantIDs[seq-1])
		}
	}
}
