package bench

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseNode(t *testing.T) {
	for _, c := range []struct{ in, ws, http string }{
		{"ws://127.0.0.1:8001/ws", "ws://127.0.0.1:8001/ws", "http://127.0.0.1:8001"},
		{"http://127.0.0.1:8001", "ws://127.0.0.1:8001/ws", "http://127.0.0.1:8001"},
		{"http://127.0.0.1:8001/", "ws://127.0.0.1:8001/ws", "http://127.0.0.1:8001"},
		{"127.0.0.1:8002", "ws://127.0.0.1:8002/ws", "http://127.0.0.1:8002"},
		{"wss://example.test/prefix/ws", "wss://example.test/prefix/ws", "https://example.test/prefix"},
		{"https://example.test", "wss://example.test/ws", "https://example.test"},
	} {
		n, err := ParseNode(c.in)
		if err != nil {
			t.Errorf("ParseNode(%q): %v", c.in, err)
			continue
		}
		if n.WS != c.ws || n.HTTP != c.http {
			t.Errorf("ParseNode(%q) = %+v, want %s %s", c.in, n, c.ws, c.http)
		}
	}
	for _, bad := range []string{"", "ftp://x:1", "http://"} {
		if _, err := ParseNode(bad); err == nil {
			t.Errorf("ParseNode(%q) accepted", bad)
		}
	}
}

func TestParseArgs(t *testing.T) {
	o, err := ParseArgs([]string{
		"--nodes", "ws://127.0.0.1:8001/ws, http://127.0.0.1:8002,127.0.0.1:8003",
		"--workload", "fanout", "--subscribers", "30", "--rate", "max", "--duration", "3s",
		"--count", "500", "--server-pid", "11,12,13", "--json", "--size", "64",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Nodes) != 3 || o.Nodes[1].WS != "ws://127.0.0.1:8002/ws" {
		t.Fatalf("nodes %+v", o.Nodes)
	}
	if o.Workload != "fanout" || o.Subscribers != 30 || o.Duration != 3*time.Second || o.Count != 500 || !o.JSON || o.Size != 64 {
		t.Fatalf("options %+v", o)
	}
	if p := Defaults(o.Params); p.Rate != 0 || p.Publishers != 1 || p.Window != 64 {
		t.Fatalf("--rate max: defaults %+v", p)
	}
	if len(o.PIDs) != 3 || o.PIDs[2] != 13 {
		t.Fatalf("pids %v", o.PIDs)
	}

	o, err = ParseArgs([]string{"--workload", "fanout"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if p := Defaults(o.Params); p.Rate != 100 || p.Subscribers != 1000 {
		t.Fatalf("fanout defaults %+v", p)
	}
	if o.Nodes[0].WS != "ws://127.0.0.1:8000/ws" {
		t.Fatalf("default node %+v", o.Nodes)
	}

	for _, args := range [][]string{
		{},                                       // no workload
		{"--workload", "nope"},                   // unknown workload
		{"--workload", "publish", "--size", "8"}, // below the stamp's size
		{"--workload", "publish", "--depth", "-1"},
		{"--workload", "publish", "--duration", "2h"},
		{"--workload", "publish", "--rate", "fast"},
		{"--workload", "publish", "--nodes", "a:1,b:2", "--server-pid", "1"},
		{"--workload", "publish", "--nodes", ","},
		{"--workload", "connections", "--connections", "-3"},
		{"--workload", "publish", "extra"},
	} {
		if _, err := ParseArgs(args, io.Discard); err == nil {
			t.Errorf("ParseArgs(%q) accepted", args)
		}
	}
	var help bytes.Buffer
	if _, err := ParseArgs([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "--workload publish|fanout|latency|connections") {
		t.Fatalf("help: %v\n%s", err, help.String())
	}
}

func TestMainUsageErrors(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main([]string{"--workload", "nope"}, &out, &errOut); code != 2 {
		t.Fatalf("exit %d, want 2; %s", code, errOut.String())
	}
	if code := Main([]string{"-h"}, &out, &errOut); code != 0 {
		t.Fatalf("-h: exit %d", code)
	}
}

func TestPayloadAndStamp(t *testing.T) {
	for _, size := range []int{32, 33, 256, 4096} {
		p := Payload(nil, 1764063000123456789, size)
		if len(p) != size {
			t.Fatalf("Payload size %d: got %d bytes: %s", size, len(p), p)
		}
		if ts, ok := parseStamp(p); !ok || ts != 1764063000123456789 {
			t.Fatalf("parseStamp(%s) = %d %v", p, ts, ok)
		}
	}
	// As the enclave subscriber hands it over: the rest of the event frame follows.
	frame := []byte(`{"t":0000000000000000042,"p":"xx"}},"seq":7,"ts":"2026-01-01T00:00:00Z"}`)
	if ts, ok := parseStamp(frame); !ok || ts != 42 {
		t.Fatalf("stamp in frame: %d %v", ts, ok)
	}
	if _, ok := parseStamp([]byte(`{"x":1}`)); ok {
		t.Fatal("stamp found where there is none")
	}
}

func TestFrameFields(t *testing.T) {
	ack := []byte(`{"type":"ack","request_id":"1234","status":"ok","topic":"t","ts":"x"}`)
	if frameType(ack) != "ack" {
		t.Fatal(frameType(ack))
	}
	if n, ok := uintField(ack, `"request_id":"`); !ok || n != 1234 {
		t.Fatal(n, ok)
	}
	e := []byte(`{"type":"error","request_id":"9","error":{"code":"TOPIC_NOT_FOUND","message":"m"},"ts":"x"}`)
	if frameType(e) != "error" || errorCode(e) != "TOPIC_NOT_FOUND" {
		t.Fatal(errorCode(e))
	}
	ev := []byte(`{"type":"event","topic":"t","message":{"id":"i","payload":{"t":5}},"seq":17,"ts":"x"}`)
	if n, ok := uintField(ev, `"seq":`); !ok || n != 17 {
		t.Fatal(n, ok)
	}
}

func TestProcParsers(t *testing.T) {
	rss, err := parseVmRSS([]byte("Name:\tenclave\nVmPeak:\t  999 kB\nVmRSS:\t   20480 kB\nThreads: 9\n"))
	if err != nil || rss != 20480 {
		t.Fatalf("rss %d %v", rss, err)
	}
	cpu, err := parseProcStatCPU([]byte("4242 (en clave) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 0 0"))
	if err != nil || cpu != 3*time.Second {
		t.Fatalf("cpu %v %v", cpu, err)
	}
	if _, err := ReadProcRSS(1 << 30); err == nil {
		t.Fatal("no such process, yet read")
	}
}

func TestResultFailures(t *testing.T) {
	var buf bytes.Buffer
	r := &Result{System: "x", Workload: WorkloadFanout, Nodes: []string{"n"}, Params: Defaults(Params{Workload: WorkloadFanout}),
		Sent: 10, Acked: 10, Expected: 100, Delivered: 90, Errors: map[string]int64{"SLOW_CONSUMER": 1}, Failures: []string{"delivered 90 events, expected 100"}}
	if r.OK() {
		t.Fatal("a run with failures is OK")
	}
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"delivered 90 of 100 expected (90.00%)", "errors: SLOW_CONSUMER 1", "FAIL: delivered 90"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
}
