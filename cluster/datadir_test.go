package cluster

import (
	"bytes"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			// A snapshot being written or reaped vanished under us.
			return nil
		}
		if info, err := d.Info(); err == nil && !d.IsDir() {
			total += info.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("size of %s: %v", dir, err)
	}
	return total
}

// Under endless publishing the data directory levels off: snapshots let
// Raft truncate its log, and raft.db reuses the freed pages. The second half
// of the run writes as much as the first, and the directory barely grows.
func TestDataDirLevelsOff(t *testing.T) {
	const (
		perHalf = 10000
		round   = 250 // concurrent publishes: about one entry of 250 KiB
	)
	c := newTestCluster(t, 1)
	c.tweak = func(cfg *Config) {
		cfg.SnapshotInterval = 100 * time.Millisecond
		cfg.SnapshotThreshold = 8
		cfg.TrailingLogs = 8
	}
	c.Start()
	tn := c.nodes[0]
	c.CreateTopic(tn, "endless")
	body := bytes.Repeat([]byte("x"), 1024)
	published := 0
	publish := func(count int) {
		t.Helper()
		ps := make([]broker.Pending, 0, round)
		for published < count {
			ps = ps[:0]
			for i := 0; i < round; i++ {
				ps = append(ps, tn.b.Publish("endless", broker.Message{ID: msgID("e", published), Payload: body}))
				published++
			}
			for _, p := range ps {
				res, err := waitResult(p)
				if err == nil {
					err = res.Err
				}
				if err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
		}
	}
	// Raft checks every 100-200ms and snapshots once threshold entries
	// have piled up: wait until no snapshot is due, so both halves are
	// measured just after the log was cut.
	snapshotPast := func(index uint64) {
		t.Helper()
		waitFor(t, 10*time.Second, func() error {
			if s := lastSnapshotIndex(tn); s+8 <= index {
				return errNoSnapshot
			}
			return nil
		})
	}

	publish(perHalf)
	snapshotPast(tn.node.AppliedIndex())
	first := dirSize(t, tn.dir)
	firstIndex, _ := tn.node.store.FirstIndex()

	publish(2 * perHalf)
	snapshotPast(tn.node.AppliedIndex())
	second := dirSize(t, tn.dir)
	laterFirst, err := tn.node.store.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	written := int64(perHalf * len(body))
	t.Logf("data dir %d KiB after the first half, %d KiB after the second (each half wrote %d KiB of payload); log starts at %d, then %d",
		first>>10, second>>10, written>>10, firstIndex, laterFirst)
	if laterFirst <= firstIndex || laterFirst <= 1 {
		t.Errorf("the log was not truncated: first index %d, then %d", firstIndex, laterFirst)
	}
	// Without truncation the second half would add about written bytes.
	// The margin is for raft.db, which grows by doubling its map while
	// small: a peak of the log in the second half may cost one step.
	if second > first+written/2 {
		t.Errorf("data dir grew from %d to %d bytes over a half that wrote %d: not levelling off", first, second, written)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

const errNoSnapshot = errString("a snapshot is still due")

// A second process on the same DATA_DIR fails to start, with an error that
// says so, instead of waiting forever on raft.db's lock.
func TestSecondNodeOnSameDataDirFails(t *testing.T) {
	c := newTestCluster(t, 1)
	c.Start()
	tn := c.nodes[0]
	cfg := c.config(tn, nil)
	cfg.RaftPort, cfg.GossipPort = 0, 0
	done := make(chan error, 1)
	go func() {
		n, err := Start(broker.New(c.brokerCfg), cfg)
		if err == nil {
			n.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "data dir") {
			t.Fatalf("second node on %s: err = %v, want a data dir error", tn.dir, err)
		}
	case <-time.After(10 * boltLockTimeout):
		t.Fatalf("second node on the same data dir still starting after %v", 10*boltLockTimeout)
	}
	// The first node is unaffected.
	c.CreateTopic(tn, "still-here")
}

// Raft's and memberlist's log lines reach the node's slog logger, at their
// own level, tagged with their component; lines below the logger's level
// are dropped.
func TestLibraryLogsReachSlog(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))

	hc := newHCLogger(l, "raft")
	hc.Debug("too detailed", "k", 1)
	hc.Info("entering follower state", "id", "n1")
	hc.Warn("heartbeat timeout reached")
	hc.Error("failed to contact quorum")
	std := newStdLogger(l, "memberlist")
	std.Printf("[DEBUG] memberlist: Stream connection from=127.0.0.1:1")
	std.Printf("[WARN] memberlist: Refuting a suspect message")
	std.Printf("[ERR] memberlist: Failed to send ping")
	std.Printf("[INFO] memberlist: Marking n2 as failed")

	want := []struct{ level, component, text string }{
		{"INFO", "raft", "entering follower state"},
		{"WARN", "raft", "heartbeat timeout reached"},
		{"ERROR", "raft", "failed to contact quorum"},
		{"WARN", "memberlist", "Refuting a suspect message"},
		{"ERROR", "memberlist", "Failed to send ping"},
		{"INFO", "memberlist", "Marking n2 as failed"},
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		line := lines[i]
		if !strings.Contains(line, "level="+w.level) || !strings.Contains(line, "component="+w.component) || !strings.Contains(line, w.text) {
			t.Errorf("line %d = %q, want level=%s component=%s %q", i, line, w.level, w.component, w.text)
		}
		if strings.Contains(line, "[") {
			t.Errorf("line %d keeps the library's level tag: %q", i, line)
		}
	}
	if strings.Contains(buf.String(), "too detailed") || strings.Contains(buf.String(), "Stream connection") {
		t.Errorf("debug lines passed an INFO logger:\n%s", buf.String())
	}

	// At DEBUG they pass, as DEBUG.
	buf.Reset()
	l = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	newHCLogger(l, "raft").Debug("too detailed")
	newStdLogger(l, "memberlist").Printf("[DEBUG] memberlist: Stream connection")
	if got := strings.Count(buf.String(), "level=DEBUG"); got != 2 {
		t.Errorf("at DEBUG, %d debug lines came through, want 2:\n%s", got, buf.String())
	}
}
