//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// nodes are the compose services; their NODE_ID is the service name.
var nodes = []string{"node-1", "node-2", "node-3"}

// cluster is one compose project: the three nodes and what the suite made
// around them (image, side network).
type cluster struct {
	repo       string
	project    string
	compose    []string // "docker-compose" or "docker compose"
	composeVer string
	image      string
	builtImage bool // the suite built image and removes it at the end
	subnet     *net.IPNet
	ports      map[string]int // host port per node
	clusterNet string         // docker network of the cluster
	sideNet    string         // network a cut-off node is moved to, so its host port still works
	logDir     string
	upAt       time.Time // when compose up was started
	m          *measurements

	teardownOnce sync.Once
}

// measurements are what the run prints at the end, also after a failure.
type measurements struct {
	mu    sync.Mutex
	lines []string
	kv    []string
}

func (m *measurements) note(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lines = append(m.lines, fmt.Sprintf(format, args...))
}

func (m *measurements) set(key, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kv = append(m.kv, key+"="+value)
}

func (m *measurements) summary() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.kv, " ")
}

func (m *measurements) report() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.lines)
}

// run runs a command with a time limit and returns its combined output.
func run(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(out.String(), 40))
	}
	return out.String(), nil
}

func docker(timeout time.Duration, args ...string) (string, error) {
	return run(timeout, nil, "docker", args...)
}

// mustDocker runs docker and fails the test on error.
func mustDocker(t testing.TB, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := docker(timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// composeEnv is the environment every compose command gets.
func (c *cluster) composeEnv() []string {
	return []string{
		"ENCLAVE_IMAGE=" + c.image,
		"ENCLAVE_E2E_SUBNET=" + c.subnet.String(),
		"NODE1_PORT=" + strconv.Itoa(c.ports["node-1"]),
		"NODE2_PORT=" + strconv.Itoa(c.ports["node-2"]),
		"NODE3_PORT=" + strconv.Itoa(c.ports["node-3"]),
	}
}

func (c *cluster) composeArgs(args ...string) []string {
	base := append(slices.Clone(c.compose[1:]),
		"-p", c.project,
		"-f", filepath.Join(c.repo, "docker-compose.yml"),
		"-f", filepath.Join(c.repo, "e2e", "compose.e2e.yml"))
	return append(base, args...)
}

func (c *cluster) composeRun(timeout time.Duration, args ...string) (string, error) {
	return run(timeout, c.composeEnv(), c.compose[0], c.composeArgs(args...)...)
}

func (c *cluster) mustCompose(t testing.TB, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := c.composeRun(timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// container is the id of node's container (created, running or stopped).
func (c *cluster) container(t testing.TB, node string) string {
	t.Helper()
	out := mustDocker(t, 30*time.Second, "ps", "-a", "-q",
		"--filter", "label=com.docker.compose.project="+c.project,
		"--filter", "label=com.docker.compose.service="+node)
	ids := strings.Fields(out)
	if len(ids) != 1 {
		t.Fatalf("expected one container for %s, found %q", node, out)
	}
	return ids[0]
}

// ipOf is node's address on the cluster network ("" when not attached).
func (c *cluster) ipOf(t testing.TB, node string) string {
	t.Helper()
	out := mustDocker(t, 30*time.Second, "inspect", "-f", "{{json .NetworkSettings.Networks}}", c.container(t, node))
	var nets map[string]struct {
		IPAddress string `json:"IPAddress"`
	}
	if err := json.Unmarshal([]byte(out), &nets); err != nil {
		t.Fatalf("inspect networks of %s: %v (%s)", node, err, out)
	}
	return nets[c.clusterNet].IPAddress
}

func (c *cluster) url(node, path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", c.ports[node], path)
}

func (c *cluster) wsURL(node string) string {
	return fmt.Sprintf("ws://127.0.0.1:%d/ws", c.ports[node])
}

// pickCompose finds a Compose command: ENCLAVE_E2E_COMPOSE, else
// `docker compose` (v2), else Debian's `docker-compose`.
func pickCompose(t testing.TB) ([]string, string) {
	t.Helper()
	candidates := [][]string{{"docker", "compose"}, {"docker-compose"}}
	if v := os.Getenv("ENCLAVE_E2E_COMPOSE"); v != "" {
		candidates = [][]string{strings.Fields(v)}
	}
	var errs []string
	for _, cmd := range candidates {
		out, err := run(30*time.Second, nil, cmd[0], append(slices.Clone(cmd[1:]), "version")...)
		if err == nil {
			return cmd, strings.TrimSpace(strings.Split(out, "\n")[0])
		}
		errs = append(errs, err.Error())
	}
	t.Fatalf("no Docker Compose found (tried docker compose and docker-compose):\n%s", strings.Join(errs, "\n"))
	return nil, ""
}

// pickSubnet returns ENCLAVE_E2E_SUBNET, or a /24 that overlaps no Docker
// network and no address of this machine.
func pickSubnet(t testing.TB) *net.IPNet {
	t.Helper()
	if v := os.Getenv("ENCLAVE_E2E_SUBNET"); v != "" {
		_, n, err := net.ParseCIDR(v)
		if err != nil {
			t.Fatalf("ENCLAVE_E2E_SUBNET=%q: %v", v, err)
		}
		return n
	}
	var used []*net.IPNet
	ids := strings.Fields(mustDocker(t, 30*time.Second, "network", "ls", "-q"))
	for _, id := range ids {
		// One at a time: a network removed meanwhile (by anyone) is skipped.
		out, err := docker(30*time.Second, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", id)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(out) {
			if _, n, err := net.ParseCIDR(s); err == nil {
				used = append(used, n)
			}
		}
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				used = append(used, ipn)
			}
		}
	}
	var r [2]byte
	_, _ = rand.Read(r[:])
	start := int(binary.BigEndian.Uint16(r[:]) % 200)
	for i := 0; i < 200; i++ {
		third := 20 + (start+i)%200
		_, cand, _ := net.ParseCIDR(fmt.Sprintf("10.213.%d.0/24", third))
		if !slices.ContainsFunc(used, func(u *net.IPNet) bool { return u.Contains(cand.IP) || cand.Contains(u.IP) }) {
			return cand
		}
	}
	t.Fatal("no free /24 in 10.213.0.0/16 for the cluster network; set ENCLAVE_E2E_SUBNET")
	return nil
}

// hostIP is the address with the given last byte in the cluster's /24.
func (c *cluster) hostIP(last int) string {
	ip := slices.Clone(c.subnet.IP.To4())
	ip[3] = byte(last)
	return net.IP(ip).String()
}

func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repository")
	}
	root := filepath.Dir(filepath.Dir(file))
	if _, err := os.Stat(filepath.Join(root, "docker-compose.yml")); err != nil {
		t.Fatalf("no docker-compose.yml at the repository root %s: %v", root, err)
	}
	return root
}

func hostPort(t testing.TB, envName string, def int) int {
	t.Helper()
	if v := os.Getenv(envName); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", envName, v, err)
		}
		return p
	}
	return def
}

// buildImage builds the binary for linux and the FROM-scratch image around it.
func (c *cluster) buildImage(t testing.TB) {
	t.Helper()
	if v := os.Getenv("ENCLAVE_E2E_IMAGE"); v != "" {
		c.image = v
		mustDocker(t, 30*time.Second, "image", "inspect", "-f", "{{.Id}}", v)
		return
	}
	staging := filepath.Join(c.repo, "bin", "docker")
	if err := os.MkdirAll(filepath.Join(staging, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The go that runs the tests (go test puts its GOROOT first in PATH).
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(staging, "enclave"), "./cmd/enclave")
	cmd.Dir = c.repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/enclave: %v\n%s", err, out)
	}
	c.image = "mr-enclave-e2e:" + c.project
	if _, err := run(10*time.Minute, nil, "docker", "build", "-q", "-f", filepath.Join(c.repo, "deploy", "Dockerfile.scratch"), "-t", c.image, c.repo); err != nil {
		t.Fatal(err)
	}
	c.builtImage = true
	size := mustDocker(t, 30*time.Second, "image", "inspect", "-f", "{{.Size}}", c.image)
	n, _ := strconv.ParseInt(size, 10, 64)
	c.m.note("image %s built in %s: %.1f MB", c.image, time.Since(start).Round(100*time.Millisecond), float64(n)/1e6)
	c.m.set("image_mb", fmt.Sprintf("%.1f", float64(n)/1e6))
}

// startCluster prepares everything and runs `compose up`. Teardown is
// registered before anything is created.
func startCluster(t *testing.T) *cluster {
	if _, err := docker(30*time.Second, "info", "-f", "{{.ServerVersion}}"); err != nil {
		t.Fatalf("no Docker daemon reachable (the e2e suite needs one): %v", err)
	}
	var r [3]byte
	_, _ = rand.Read(r[:])
	c := &cluster{
		repo:    repoRoot(t),
		project: "enclave-e2e-" + hex.EncodeToString(r[:]),
		m:       &measurements{},
		ports: map[string]int{
			"node-1": hostPort(t, "NODE1_PORT", 8001),
			"node-2": hostPort(t, "NODE2_PORT", 8002),
			"node-3": hostPort(t, "NODE3_PORT", 8003),
		},
	}
	c.logDir = filepath.Join(c.repo, "bin", "e2e-logs")
	c.compose, c.composeVer = pickCompose(t)
	t.Logf("compose: %s (%s); project %s", strings.Join(c.compose, " "), c.composeVer, c.project)
	for _, n := range nodes {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(c.ports[n]))
		if err != nil {
			t.Fatalf("host port %d (for %s) is taken: %v; stop what uses it or set NODE1_PORT..NODE3_PORT", c.ports[n], n, err)
		}
		ln.Close()
	}
	c.subnet = pickSubnet(t)

	// From here on, everything is removed at the end, whatever happens.
	t.Cleanup(func() { c.teardown(t) })
	stopSignals := onSignal(func() { c.teardown(t) })
	t.Cleanup(stopSignals)

	c.buildImage(t)
	t.Logf("image %s, cluster subnet %s", c.image, c.subnet)

	c.upAt = time.Now()
	c.mustCompose(t, 5*time.Minute, "up", "-d", "--no-build")
	c.m.note("compose up: %s", secs(time.Since(c.upAt)))
	out := mustDocker(t, 30*time.Second, "network", "ls", "-q",
		"--filter", "label=com.docker.compose.project="+c.project,
		"--filter", "label=com.docker.compose.network=cluster")
	ids := strings.Fields(out)
	if len(ids) != 1 {
		t.Fatalf("expected one compose network 'cluster', found %q", out)
	}
	c.clusterNet = mustDocker(t, 30*time.Second, "network", "inspect", "-f", "{{.Name}}", ids[0])
	c.sideNet = c.project + "_side"
	mustDocker(t, 30*time.Second, "network", "create", "--label", "enclave-e2e="+c.project, c.sideNet)
	return c
}

// onSignal runs f (once) on SIGINT or SIGTERM and exits, so an interrupted
// run removes its containers too. It returns a function that stops watching.
func onSignal(f func()) func() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "e2e: %v: tearing the cluster down\n", sig)
			f()
			os.Exit(130)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// teardown saves the nodes' logs, prints the measurements and removes the
// project's containers, networks and volumes, the side network and the
// image the suite built.
func (c *cluster) teardown(t *testing.T) {
	c.teardownOnce.Do(func() {
		c.saveLogs(t)
		for _, l := range c.m.report() {
			t.Log("measured: " + l)
		}
		t.Logf("E2E SUMMARY: %s failed=%v", c.m.summary(), t.Failed())
		if os.Getenv("ENCLAVE_E2E_KEEP") == "1" {
			t.Logf("ENCLAVE_E2E_KEEP=1: left running; remove with: %s %s; docker network rm %s",
				strings.Join(c.compose, " "), strings.Join(c.composeArgs("down", "-v"), " "), c.sideNet)
			return
		}
		if _, err := c.composeRun(3*time.Minute, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Errorf("teardown: %v", err)
			// Whatever compose could not remove, remove by label.
			if ids, _ := docker(time.Minute, "ps", "-a", "-q", "--filter", "label=com.docker.compose.project="+c.project); strings.TrimSpace(ids) != "" {
				_, _ = docker(2*time.Minute, append([]string{"rm", "-f", "-v"}, strings.Fields(ids)...)...)
			}
			if ids, _ := docker(time.Minute, "network", "ls", "-q", "--filter", "label=com.docker.compose.project="+c.project); strings.TrimSpace(ids) != "" {
				_, _ = docker(time.Minute, append([]string{"network", "rm"}, strings.Fields(ids)...)...)
			}
			if ids, _ := docker(time.Minute, "volume", "ls", "-q", "--filter", "label=com.docker.compose.project="+c.project); strings.TrimSpace(ids) != "" {
				_, _ = docker(time.Minute, append([]string{"volume", "rm", "-f"}, strings.Fields(ids)...)...)
			}
		}
		if c.sideNet != "" {
			if _, err := docker(time.Minute, "network", "rm", c.sideNet); err != nil && !strings.Contains(err.Error(), "No such network") && !strings.Contains(err.Error(), "not found") {
				t.Errorf("teardown: %v", err)
			}
		}
		if c.builtImage {
			if _, err := docker(time.Minute, "rmi", c.image); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
	})
}

// saveLogs writes every node's log to bin/e2e-logs/<project>.log and, after
// a failure, shows the end of each.
func (c *cluster) saveLogs(t *testing.T) {
	out, err := c.composeRun(time.Minute, "logs", "--no-color", "--timestamps")
	if err != nil {
		t.Logf("compose logs: %v", err)
	}
	if err := os.MkdirAll(c.logDir, 0o755); err == nil {
		path := filepath.Join(c.logDir, c.project+".log")
		if err := os.WriteFile(path, []byte(out), 0o644); err == nil {
			t.Logf("node logs: %s", path)
		}
	}
	if t.Failed() {
		byNode := map[string][]string{}
		for _, line := range strings.Split(out, "\n") {
			prefix, _, _ := strings.Cut(line, "|")
			for _, n := range nodes {
				if strings.Contains(prefix, n) {
					byNode[n] = append(byNode[n], line)
					break
				}
			}
		}
		for _, n := range nodes {
			lines := byNode[n]
			if len(lines) > 40 {
				lines = lines[len(lines)-40:]
			}
			t.Logf("last log lines of %s:\n%s", n, strings.Join(lines, "\n"))
		}
	}
}

// waitFor polls cond every interval until it holds or timeout passes, and
// returns how long it took. cond's text says what it saw, for the failure.
func waitFor(t testing.TB, timeout, interval time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	last := ""
	for {
		ok, seen := cond()
		if ok {
			return time.Since(start)
		}
		last = seen
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last seen: %s", what, timeout, last)
		}
		time.Sleep(interval)
	}
}
