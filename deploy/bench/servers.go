package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// natsServers is a set of nats-server processes this harness started on
// 127.0.0.1, each with a WebSocket listener (no TLS). Stop ends them by PID.
type natsServers struct {
	dir  string
	cmds []*exec.Cmd
	ws   []string // ws://127.0.0.1:port
	nats []string // nats://127.0.0.1:port
}

// startNATS starts n servers from bin with configs written into a fresh
// temporary directory: one server alone, or n in a cluster, with JetStream
// when js is set. Ports: client base+i, websocket base+10+i, cluster route
// base+20+i, monitoring base+30+i.
func startNATS(ctx context.Context, bin string, n int, js bool, base int, logf func(string, ...any)) (*natsServers, error) {
	dir, err := os.MkdirTemp("", "enclave-natsbench-")
	if err != nil {
		return nil, err
	}
	s := &natsServers{dir: dir}
	var routes []string
	for i := 0; i < n; i++ {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", base+20+i))
	}
	for i := 0; i < n; i++ {
		var b strings.Builder
		fmt.Fprintf(&b, "server_name: n%d\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n", i+1, base+i, base+30+i)
		fmt.Fprintf(&b, "websocket {\n  listen: \"127.0.0.1:%d\"\n  no_tls: true\n}\n", base+10+i)
		if js {
			fmt.Fprintf(&b, "jetstream {\n  store_dir: %q\n}\n", filepath.Join(dir, fmt.Sprintf("n%d", i+1)))
		}
		if n > 1 {
			fmt.Fprintf(&b, "cluster {\n  name: bench\n  listen: 127.0.0.1:%d\n  routes: [\n", base+20+i)
			for j, r := range routes {
				if j != i {
					fmt.Fprintf(&b, "    %s\n", r)
				}
			}
			b.WriteString("  ]\n}\n")
		}
		conf := filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1))
		if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
			s.Stop()
			return nil, err
		}
		logFile, err := os.Create(filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)))
		if err != nil {
			s.Stop()
			return nil, err
		}
		cmd := exec.Command(bin, "-c", conf)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			logFile.Close()
			s.Stop()
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		logFile.Close()
		s.cmds = append(s.cmds, cmd)
		s.ws = append(s.ws, fmt.Sprintf("ws://127.0.0.1:%d", base+10+i))
		s.nats = append(s.nats, fmt.Sprintf("nats://127.0.0.1:%d", base+i))
		logf("started nats-server n%d (pid %d): client %d, websocket %d", i+1, cmd.Process.Pid, base+i, base+10+i)
	}
	if err := s.waitReady(ctx, js); err != nil {
		for i := range s.cmds {
			if data, rerr := os.ReadFile(filepath.Join(dir, fmt.Sprintf("n%d.log", i+1))); rerr == nil {
				lines := strings.Split(strings.TrimSpace(string(data)), "\n")
				fmt.Fprintf(os.Stderr, "natsbench: n%d log (last lines):\n%s\n", i+1, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
		s.Stop()
		return nil, err
	}
	return s, nil
}

// waitReady waits (bounded) until every server accepts WebSocket clients
// and, with JetStream, the cluster answers JetStream requests.
func (s *natsServers) waitReady(ctx context.Context, js bool) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for i, u := range s.ws {
		for {
			if c, err := net.DialTimeout("tcp", strings.TrimPrefix(u, "ws://"), time.Second); err == nil {
				c.Close()
				break
			}
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return fmt.Errorf("nats-server n%d never listened (see %s): %w", i+1, s.dir, err)
			}
		}
	}
	if !js {
		return nil
	}
	var lastErr error
	for {
		nc, err := nats.Connect(s.ws[0], nats.Timeout(2*time.Second))
		if err == nil {
			var jsc nats.JetStreamContext
			jsc, err = nc.JetStream(nats.MaxWait(2 * time.Second))
			if err == nil {
				_, err = jsc.AccountInfo()
			}
			nc.Close()
			if err == nil {
				return nil
			}
		}
		lastErr = err
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return fmt.Errorf("JetStream not ready (see %s): %v", s.dir, lastErr)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// PIDs returns the servers' process IDs.
func (s *natsServers) PIDs() []int {
	out := make([]int, len(s.cmds))
	for i, c := range s.cmds {
		out[i] = c.Process.Pid
	}
	return out
}

// Stop ends the servers this harness started (SIGTERM, then SIGKILL after
// 10 s) and removes their directory.
func (s *natsServers) Stop() {
	for _, c := range s.cmds {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range s.cmds {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	s.cmds = nil
	if s.dir != "" && os.Getenv("NATSBENCH_KEEP") == "" {
		_ = os.RemoveAll(s.dir)
	}
}
