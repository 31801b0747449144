package main

// Interop test: the real enclave binary, driven by an independent client,
// Debian's python3-websockets (10.4), as a user of the README would.
//
// It skips when /usr/bin/python3 with the websockets module is missing and
// the CI environment variable is unset; with CI set it fails instead, so CI
// cannot silently stop running it (.ci/run installs python3-websockets).
// Note that `python3` on a developer's PATH may be another Python without
// websockets: the test uses /usr/bin/python3.

import (
	"bytes"
	_ "embed"
	"fmt"
	"io"
	"net"
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
)

// interopPython is Debian's interpreter, where python3-websockets installs;
// ENCLAVE_INTEROP_PYTHON overrides it.
func interopPython() string {
	if p := os.Getenv("ENCLAVE_INTEROP_PYTHON"); p != "" {
		return p
	}
	return "/usr/bin/python3"
}

//go:embed testdata/interop.py
var interopScript []byte

// interopRequirePython returns the interpreter, or skips or fails the test
// when it cannot import websockets.
func interopRequirePython(t *testing.T) string {
	t.Helper()
	python := interopPython()
	out, err := exec.Command(python, "-c", "import websockets; print(websockets.__version__)").CombinedOutput()
	if err == nil {
		t.Logf("python3-websockets %s", strings.TrimSpace(string(out)))
		return python
	}
	msg := fmt.Sprintf("%s with the websockets module is needed (apt-get install python3-websockets): %v %s", python, err, out)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// interopFreePort asks the kernel for a free TCP port on 127.0.0.1.
func interopFreePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// interopBuild builds this command into dir.
func interopBuild(t *testing.T, dir string) string {
	t.Helper()
	// go test puts its own GOROOT/bin first on the test's PATH.
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("the go tool is needed to build the server:", err)
	}
	bin := filepath.Join(dir, "enclave")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// waitHealthy polls base+"/health" until it answers 200, the server exits
// (died is then true: exited has been received from) or d passes.
func waitHealthy(base string, exited <-chan error, d time.Duration) (died bool, err error) {
	client := http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(d); ; {
		resp, err := client.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return false, nil
			}
		}
		select {
		case err := <-exited:
			return true, fmt.Errorf("server exited before it was ready: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("server not ready after %v: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// interopDieWithTest makes a child process get SIGKILL if the test process
// dies first (say at -timeout), so no server is left running.
func interopDieWithTest() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitOutput waits until out contains every one of want, failing after d.
func waitOutput(t *testing.T, out *syncBuffer, d time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		s := out.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(s, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in output after %v:\n%s", missing, d, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const (
	interopMaxMessageBytes = 4096
	interopHeartbeat       = "1s"
)

// TestInteropPythonWebsockets starts the real binary and runs
// testdata/interop.py against it with python3-websockets, then checks the
// interactive client `python3 -m websockets` the README shows, and finally
// that SIGTERM closes connections with 1001 and exits 0 (the script sends it).
func TestInteropPythonWebsockets(t *testing.T) {
	python := interopRequirePython(t)
	dir := t.TempDir()
	bin := interopBuild(t, dir)
	script := filepath.Join(dir, "interop.py")
	if err := os.WriteFile(script, interopScript, 0o644); err != nil {
		t.Fatal(err)
	}

	port := interopFreePort(t)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	server := exec.Command(bin)
	server.Dir = dir
	server.Env = append(os.Environ(),
		"PORT="+strconv.Itoa(port),
		"MAX_MESSAGE_BYTES="+strconv.Itoa(interopMaxMessageBytes),
		"HEARTBEAT_INTERVAL="+interopHeartbeat,
		"LOG_LEVEL=DEBUG",
		"NODE_ID=interop",
		"DATA_DIR="+filepath.Join(dir, "data"),
		"RAFT_PORT="+strconv.Itoa(interopFreePort(t)),
		"GOSSIP_PORT="+strconv.Itoa(interopFreePort(t)),
		"JOIN=",
	)
	server.SysProcAttr = interopDieWithTest()
	var serverLog syncBuffer
	server.Stdout, server.Stderr = &serverLog, &serverLog
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- server.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = server.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("server log:\n%s", serverLog.String())
		}
	})

	if died, err := waitHealthy(base, exited, 20*time.Second); err != nil {
		stopped = died
		t.Fatal(err)
	}

	t.Run("interactive client", func(t *testing.T) {
		interopInteractive(t, python, port)
	})

	t.Run("protocol", func(t *testing.T) {
		cmd := exec.Command(python, script, base, strconv.Itoa(interopMaxMessageBytes), strconv.Itoa(server.Process.Pid))
		cmd.SysProcAttr = interopDieWithTest()
		var out syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("interop.py: %v\n%s", err, out.String())
			}
		case <-time.After(90 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("interop.py did not finish within 90s:\n%s", out.String())
		}
		t.Logf("interop.py:\n%s", out.String())
		if !strings.Contains(out.String(), "INTEROP OK") {
			t.Fatal("interop.py did not report INTEROP OK")
		}
	})

	// The script ended by sending SIGTERM: the server must exit 0.
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Fatalf("server exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = server.Process.Signal(syscall.SIGTERM)
		t.Fatal("server still running 20s after the script sent SIGTERM")
	}
	if !strings.Contains(serverLog.String(), "stopped") {
		t.Errorf("server log has no 'stopped' line")
	}
}

// interopInteractive drives `python3 -m websockets ws://127.0.0.1:PORT/ws`,
// the README's interactive client, through its standard input.
func interopInteractive(t *testing.T, python string, port int) {
	resp, err := http.Post("http://127.0.0.1:"+strconv.Itoa(port)+"/topics", "application/json", strings.NewReader(`{"name":"cli"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create topic cli: status %d", resp.StatusCode)
	}

	cmd := exec.Command(python, "-m", "websockets", "ws://127.0.0.1:"+strconv.Itoa(port)+"/ws")
	cmd.SysProcAttr = interopDieWithTest()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	defer func() {
		if !exited {
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	send := func(line string) {
		t.Helper()
		if _, err := io.WriteString(stdin, line+"\n"); err != nil {
			t.Fatalf("write to python3 -m websockets: %v\n%s", err, out.String())
		}
	}
	waitOutput(t, &out, 15*time.Second, "Connected to ws://127.0.0.1:")
	send(`{"type":"ping","request_id":"cli-ping"}`)
	waitOutput(t, &out, 10*time.Second, `< {"type":"pong","request_id":"cli-ping"`)
	send(`{"type":"subscribe","topic":"cli","client_id":"me","request_id":"cli-sub"}`)
	waitOutput(t, &out, 10*time.Second, `< {"type":"ack","request_id":"cli-sub","status":"ok","topic":"cli"`)
	send(`{"type":"publish","topic":"cli","message":{"id":"550e8400-e29b-41d4-a716-446655440000","payload":{"hello":"world"}},"request_id":"cli-pub"}`)
	waitOutput(t, &out, 10*time.Second,
		`< {"type":"ack","request_id":"cli-pub","status":"ok","topic":"cli"`,
		`< {"type":"event","topic":"cli","message":{"id":"550e8400-e29b-41d4-a716-446655440000","payload":{"hello":"world"}},"seq":1,"ts":"`)
	send(`not json`)
	waitOutput(t, &out, 10*time.Second, `< {"type":"error","error":{"code":"BAD_REQUEST"`)
	// End of input (^D) closes the connection normally.
	stdin.Close()
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Fatalf("python3 -m websockets: %v\n%s", err, out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("python3 -m websockets did not exit after end of input:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "Connection closed: 1000 (OK)") {
		t.Fatalf("no normal close in output:\n%s", out.String())
	}
}
