package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
	"github.com/mr-enclave/enclave/gateway"
)

// startNode serves one in-process single node (broker + gateway, in-memory
// commits) on 127.0.0.1.
func startNode(t *testing.T) (*httptest.Server, *broker.Broker) {
	t.Helper()
	b := broker.New(broker.Config{EncodeEvent: gateway.EncodeEvent})
	g := gateway.New(b, gateway.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NodeID: "bench-test"})
	srv := httptest.NewServer(g.Handler())
	t.Cleanup(srv.Close)
	return srv, b
}

// TestWorkloads runs every workload for about a second against an
// in-process node, through the same entry point as `enclave bench`.
func TestWorkloads(t *testing.T) {
	srv, b := startNode(t)
	pid := os.Getpid() // the server runs in this process: RSS/CPU readable
	for _, args := range [][]string{
		{"--workload", "publish", "--publishers", "2", "--depth", "16", "--duration", "1s"},
		{"--workload", "publish", "--rate", "500", "--count", "200", "--duration", "1s"},
		{"--workload", "fanout", "--subscribers", "20", "--rate", "200", "--duration", "1s"},
		{"--workload", "fanout", "--subscribers", "20", "--rate", "max", "--window", "32", "--duration", "1s"},
		{"--workload", "latency", "--subscribers", "2", "--rate", "500", "--duration", "1s", "--size", "1024"},
		{"--workload", "connections", "--connections", "100", "--hold", "200ms"},
	} {
		t.Run(strings.Join(args[1:4], "_"), func(t *testing.T) {
			args := append(args, "--nodes", srv.URL, "--server-pid", itoa(pid), "--json", "--quiet")
			o, err := ParseArgs(args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			if code := Execute(context.Background(), NewEnclave(o.Nodes, o.PIDs), o, &out, &errOut); code != 0 {
				t.Fatalf("exit %d\n%s\n%s", code, errOut.String(), out.String())
			}
			var res Result
			if err := jsonUnmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if !res.OK() || len(res.Errors) != 0 {
				t.Fatalf("failures %v errors %v", res.Failures, res.Errors)
			}
			switch res.Workload {
			case WorkloadConnections:
				if res.Connections != 100 || res.ConnectLatency == nil || len(res.Servers) != 1 || res.Servers[0].Conns != 100 {
					t.Fatalf("connections result %+v", res)
				}
			default:
				if res.Acked == 0 || res.Acked != res.Sent || res.AckLatency == nil || res.Delivered != res.Expected {
					t.Fatalf("result %+v", res)
				}
				if res.Params.Subscribers > 0 && (res.EventLatency == nil || res.Delivered == 0) {
					t.Fatalf("no events: %+v", res)
				}
				if res.Params.Count > 0 && res.Sent != res.Params.Count {
					t.Fatalf("sent %d, count %d", res.Sent, res.Params.Count)
				}
			}
		})
	}
	// Each run deletes the topic it created.
	deadline := time.Now().Add(5 * time.Second)
	for len(b.Topics()) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(b.Topics()); n != 0 {
		t.Fatalf("%d topics left behind", n)
	}
}

// TestBadTopicFails: a topic the server refuses to create ends the run
// before any measurement, with exit status 1 and the server's error code.
func TestBadTopicFails(t *testing.T) {
	srv, _ := startNode(t)
	o, err := ParseArgs([]string{"--nodes", srv.URL, "--workload", "publish", "--topic", "bad name!", "--duration", "1s", "--quiet"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := Execute(context.Background(), NewEnclave(o.Nodes, nil), o, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), "BAD_REQUEST") {
		t.Fatalf("stderr: %s", errOut.String())
	}
}

// TestErrorsFailTheRun: publishes the server rejects are counted by code
// and make the exit status 1, unless --allow-errors.
func TestErrorsFailTheRun(t *testing.T) {
	srv, _ := startNode(t)
	// A payload over the server's frame limit is answered BAD_REQUEST.
	sys := NewEnclave([]Node{mustNode(t, srv.URL)}, nil)
	for _, allow := range []bool{false, true} {
		o := Options{Params: Params{Workload: WorkloadPublish, Publishers: 1, Count: 5, Duration: time.Second, Drain: 2 * time.Second, Size: 1<<20 + 1024}, Nodes: sys.nodes, AllowErrors: allow, Quiet: true}
		var out, errOut bytes.Buffer
		code := Execute(context.Background(), sys, o, &out, &errOut)
		want := 1
		if allow {
			want = 0
		}
		if code != want {
			t.Fatalf("allow=%v: exit %d, want %d\n%s\n%s", allow, code, want, out.String(), errOut.String())
		}
		if !strings.Contains(out.String(), "BAD_REQUEST 5") {
			t.Fatalf("errors by code missing:\n%s", out.String())
		}
	}
}

func mustNode(t *testing.T, s string) Node {
	n, err := ParseNode(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func itoa(n int) string { return strconv.Itoa(n) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
