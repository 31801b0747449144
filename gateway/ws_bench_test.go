package gateway

// Benchmarks through real sockets on loopback (127.0.0.1 only).
//
//   - BenchmarkWSFanout: delivered events/s with 1,000 WebSocket subscribers
//     on one topic, one WebSocket publisher. The publisher keeps at most
//     benchWindow events ahead of the slowest subscriber, so no queue
//     overflows and every event reaches every subscriber (drops are
//     reported and must be 0); the figure is the sustained delivery rate.
//   - BenchmarkWSLatency: publish→event latency at fixed rates (1 subscriber
//     at 1,000 msg/s; 100 and 1,000 subscribers at 100 msg/s), measured from
//     each message's intended send time, so a stall of the publisher counts
//     against the server (no coordinated omission).
//   - BenchmarkWSIdleConnMemory: server memory per idle connection that has
//     done one subscribe, with 5,000 connections. The server runs in a child
//     process (this test binary re-executed in server mode), so the clients'
//     memory is not counted; see the function's comment.
//
// Clients are minimal RFC 6455 clients over net.Conn (handshake, masked text
// frames out, unmasked frames in, counted by their headers without JSON
// decoding) so that, on a 2-core machine, as little CPU as possible goes to
// the client side of the measurement. Identifiers here start with bench to
// stay clear of the behaviour tests in this package.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// benchServe starts a broker and gateway with production defaults (apart
// from a long heartbeat, so no heartbeat falls inside a measurement) on
// 127.0.0.1.
func benchServe(tb testing.TB, bcfg broker.Config) (*broker.Broker, *Gateway, *httptest.Server) {
	tb.Helper()
	bcfg.EncodeEvent = EncodeEvent
	br := broker.New(bcfg)
	g := New(br, Config{
		HeartbeatInterval: 10 * time.Minute,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		NodeID:            "bench",
	})
	srv := httptest.NewServer(g.Handler())
	tb.Cleanup(srv.Close)
	return br, g, srv
}

func benchCreateTopic(tb testing.TB, baseURL, name string) {
	tb.Helper()
	resp, err := http.Post(baseURL+"/topics", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
	if err != nil {
		tb.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		tb.Fatalf("create topic %s: status %d", name, resp.StatusCode)
	}
}

// benchConn is a minimal WebSocket client.
type benchConn struct {
	nc   net.Conn
	br   *bufio.Reader
	wbuf []byte
	rbuf []byte
	hdr  [8]byte // header scratch, so reading a frame does not allocate
}

func benchDial(addr string, readBuf int) (*benchConn, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	req := "GET /ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(nc, readBuf)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("upgrade: status %d", resp.StatusCode)
	}
	_ = nc.SetDeadline(time.Time{})
	return &benchConn{nc: nc, br: br}, nil
}

// send writes one masked text frame. The masking key is zero, which the
// protocol allows and which leaves the payload as is.
func (c *benchConn) send(payload []byte) error {
	b := append(c.wbuf[:0], 0x81)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xFFFF:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, 0, 0, 0, 0)
	b = append(b, payload...)
	c.wbuf = b
	_, err := c.nc.Write(b)
	return err
}

// header reads a server frame's header and returns its opcode and length.
func (c *benchConn) header() (op byte, n int, err error) {
	h := c.hdr[:2]
	if _, err = io.ReadFull(c.br, h); err != nil {
		return 0, 0, err
	}
	if h[1]&0x80 != 0 {
		return 0, 0, errors.New("server frame is masked")
	}
	op = h[0] & 0x0F
	n = int(h[1] & 0x7F)
	switch n {
	case 126:
		ext := c.hdr[:2]
		if _, err = io.ReadFull(c.br, ext); err != nil {
			return 0, 0, err
		}
		n = int(binary.BigEndian.Uint16(ext))
	case 127:
		ext := c.hdr[:8]
		if _, err = io.ReadFull(c.br, ext); err != nil {
			return 0, 0, err
		}
		n = int(binary.BigEndian.Uint64(ext))
	}
	return op, n, nil
}

// skip reads one frame and discards its payload.
func (c *benchConn) skip() (op byte, err error) {
	op, n, err := c.header()
	if err != nil {
		return 0, err
	}
	_, err = c.br.Discard(n)
	return op, err
}

// read reads one frame; the payload is valid until the next read.
func (c *benchConn) read() (op byte, payload []byte, err error) {
	op, n, err := c.header()
	if err != nil {
		return 0, nil, err
	}
	if cap(c.rbuf) < n {
		c.rbuf = make([]byte, n)
	}
	c.rbuf = c.rbuf[:n]
	_, err = io.ReadFull(c.br, c.rbuf)
	return op, c.rbuf, err
}

// subscribe sends a subscribe and waits (bounded) for its ack.
func (c *benchConn) subscribe(topic, clientID string) error {
	req := `{"type":"subscribe","topic":"` + topic + `","client_id":"` + clientID + `"}`
	if err := c.send([]byte(req)); err != nil {
		return err
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	defer c.nc.SetReadDeadline(time.Time{})
	op, p, err := c.read()
	if err != nil {
		return err
	}
	if op != opText || !bytes.Contains(p, []byte(`"type":"ack"`)) {
		return fmt.Errorf("subscribe: got %q, want an ack", p)
	}
	return nil
}

// benchDialMany opens n subscribed connections with up to 32 dials at once.
func benchDialMany(tb testing.TB, addr, topic string, n, readBuf int) []*benchConn {
	tb.Helper()
	conns := make([]*benchConn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				c, err := benchDial(addr, readBuf)
				if err == nil {
					err = c.subscribe(topic, "c"+strconv.Itoa(i))
					conns[i] = c
				}
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	tb.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.nc.Close()
			}
		}
	})
	if err := <-errs; err != nil {
		tb.Fatal(err)
	}
	return conns
}

// benchRaiseFileLimit raises the soft RLIMIT_NOFILE to at least need (up to
// the hard limit) and fails if that is not enough.
func benchRaiseFileLimit(tb testing.TB, need uint64) {
	tb.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		tb.Fatal(err)
	}
	if rl.Cur >= need {
		return
	}
	rl.Cur = min(need, rl.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		tb.Fatal(err)
	}
	if rl.Cur < need {
		tb.Fatalf("need %d file descriptors, the hard limit is %d: raise it (ulimit -Hn)", need, rl.Max)
	}
}

// benchPublishFrame renders a publish with a distinct UUID per n.
func benchPublishFrame(dst []byte, topic string, n int) []byte {
	dst = append(dst[:0], `{"type":"publish","topic":"`...)
	dst = append(dst, topic...)
	dst = append(dst, `","message":{"id":"00000000-0000-4000-8000-`...)
	dst = fmt.Appendf(dst, "%012d", n)
	dst = append(dst, `","payload":{"order_id":123,"customer":"c-42","items":[{"sku":"A-1","qty":2}],"total":99.5}}}`...)
	return dst
}

// benchAckReader drains a publisher's replies and counts acks; any other
// reply is an error.
func benchAckReader(c *benchConn, acks *atomic.Int64, failure *atomic.Value) {
	for {
		op, p, err := c.read()
		if err != nil {
			return
		}
		if op != opText {
			continue
		}
		if !bytes.Contains(p, []byte(`"type":"ack"`)) {
			failure.CompareAndSwap(nil, fmt.Sprintf("publisher got %s", p))
			continue
		}
		acks.Add(1)
	}
}

const (
	benchSubscribers = 1000
	// benchWindow is how far the publisher may run ahead of the slowest
	// subscriber: below QUEUE_SIZE (100), so nothing is dropped.
	benchWindow = 64
)

type benchCounter struct {
	n atomic.Int64
	_ [56]byte // one cache line per counter
}

// BenchmarkWSFanout measures delivered events/s to 1,000 WebSocket
// subscribers of one topic. One op is one published event; events/s counts
// deliveries (b.N × subscribers) over the time until the last subscriber has
// received the last event.
func BenchmarkWSFanout(b *testing.B) {
	benchRaiseFileLimit(b, 2*benchSubscribers+256)
	br, _, srv := benchServe(b, broker.Config{})
	addr := srv.Listener.Addr().String()
	benchCreateTopic(b, srv.URL, "bench")
	subs := benchDialMany(b, addr, "bench", benchSubscribers, 64<<10)
	counters := make([]benchCounter, len(subs))
	var readers sync.WaitGroup
	for i, c := range subs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				op, err := c.skip()
				if err != nil {
					return
				}
				if op == opText {
					counters[i].n.Add(1)
				}
			}
		}()
	}
	pub, err := benchDial(addr, 64<<10)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pub.nc.Close() })
	var acks atomic.Int64
	var failure atomic.Value
	go benchAckReader(pub, &acks, &failure)

	minReceived := func() int64 {
		m := counters[0].n.Load()
		for i := 1; i < len(counters); i++ {
			m = min(m, counters[i].n.Load())
		}
		return m
	}
	// waitFor spins (yielding) until every subscriber has received at least
	// n events; bounded by a deadline without progress.
	waitFor := func(n int64) {
		last, lastProgress := int64(-1), time.Now()
		for {
			m := minReceived()
			if m >= n {
				return
			}
			if m != last {
				last, lastProgress = m, time.Now()
			} else if time.Since(lastProgress) > 30*time.Second {
				b.Fatalf("subscribers stalled at %d events, waiting for %d", m, n)
			}
			runtime.Gosched()
		}
	}

	frame := make([]byte, 0, 256)
	var cachedMin int64
	b.ResetTimer()
	cpu0 := benchCPU()
	for i := 0; i < b.N; i++ {
		if int64(i)-cachedMin > benchWindow {
			cachedMin = minReceived()
			if int64(i)-cachedMin > benchWindow {
				waitFor(int64(i) - benchWindow)
				cachedMin = minReceived()
			}
		}
		frame = benchPublishFrame(frame, "bench", i)
		if err := pub.send(frame); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(int64(b.N))
	b.StopTimer()
	b.ReportMetric((benchCPU()-cpu0).Seconds()/b.Elapsed().Seconds(), "cpu-cores")

	elapsed := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)*float64(len(subs))/elapsed, "events/s")
	var dropped uint64
	for _, t := range br.Topics() {
		dropped += t.Dropped
	}
	b.ReportMetric(float64(dropped), "dropped")
	if f := failure.Load(); f != nil {
		b.Fatal(f)
	}
	if dropped != 0 {
		b.Fatalf("%d events dropped", dropped)
	}
	// Every subscriber received exactly b.N events (more would be a bug).
	for i := range counters {
		if got := counters[i].n.Load(); got != int64(b.N) {
			b.Fatalf("subscriber %d received %d events, want %d", i, got, b.N)
		}
	}
	for _, c := range subs {
		c.nc.Close()
	}
	readers.Wait()
}

// BenchmarkWSLatency measures publish→event latency at a fixed rate: 1
// subscriber at 1,000 msg/s, 100 subscribers at 100 msg/s and 1,000
// subscribers at 100 msg/s. At these rates the server writes each event to
// each socket on its own (nothing to coalesce), so the fan-out cases are
// dominated by one write syscall per delivery.
// Each message's latency at each subscriber runs from the message's intended
// send time (start + i/rate), not from when the publisher actually got to
// send it, so a stalled publisher counts against the server. One op is one
// message (ns/op is the publishing interval); -benchtime=1000x gives 1 s of
// traffic at 1,000 msg/s and 10 s at 100 msg/s. The percentiles are over every (message,
// subscriber) pair.
func BenchmarkWSLatency(b *testing.B) {
	for _, tc := range []struct{ nsubs, rate int }{
		{1, 1000},
		{100, 100},              // 10,000 deliveries/s
		{benchSubscribers, 100}, // 100,000 deliveries/s, written one event at a time
	} {
		nsubs, rate := tc.nsubs, tc.rate
		b.Run(fmt.Sprintf("subs=%d/rate=%d", nsubs, rate), func(b *testing.B) {
			benchRaiseFileLimit(b, 2*uint64(nsubs)+256)
			_, _, srv := benchServe(b, broker.Config{})
			addr := srv.Listener.Addr().String()
			benchCreateTopic(b, srv.URL, "lat")
			subs := benchDialMany(b, addr, "lat", nsubs, 16<<10)

			interval := time.Second / time.Duration(rate)
			var start time.Time // set before the first publish; read after an event
			var startSet atomic.Bool
			// Per subscriber, indexed by seq-1; -1 marks an event that was
			// never received (dropped by the overflow policy).
			lat := make([][]time.Duration, nsubs)
			var readers sync.WaitGroup
			var bad atomic.Value
			for i, c := range subs {
				lat[i] = make([]time.Duration, b.N)
				for j := range lat[i] {
					lat[i][j] = -1
				}
				readers.Add(1)
				go func() {
					defer readers.Done()
					for seq := 0; seq < b.N; { // the newest event is never dropped
						op, p, err := c.read()
						if err != nil {
							bad.CompareAndSwap(nil, fmt.Sprintf("subscriber %d: %v", i, err))
							return
						}
						now := time.Now()
						if op != opText {
							continue
						}
						var ok bool
						seq, ok = benchSeq(p)
						if !ok || seq > b.N || !startSet.Load() {
							bad.CompareAndSwap(nil, fmt.Sprintf("subscriber %d: unexpected %s", i, p))
							return
						}
						intended := start.Add(time.Duration(seq-1) * interval)
						lat[i][seq-1] = now.Sub(intended)
					}
				}()
			}
			pub, err := benchDial(addr, 16<<10)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { pub.nc.Close() })
			var acks atomic.Int64
			var failure atomic.Value
			go benchAckReader(pub, &acks, &failure)

			frame := make([]byte, 0, 256)
			b.ResetTimer()
			cpu0 := benchCPU()
			start = time.Now().Add(5 * time.Millisecond)
			startSet.Store(true)
			err = benchPacer(start, interval, b.N, func(i int) error {
				frame = benchPublishFrame(frame, "lat", i)
				return pub.send(frame)
			})
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan struct{})
			go func() { readers.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				for _, c := range subs {
					c.nc.Close()
				}
				<-done
				b.Fatal("subscribers did not receive the last event within 30s")
			}
			b.StopTimer()
			b.ReportMetric((benchCPU()-cpu0).Seconds()/b.Elapsed().Seconds(), "cpu-cores")
			if f := bad.Load(); f != nil {
				b.Fatal(f)
			}
			if f := failure.Load(); f != nil {
				b.Fatal(f)
			}
			all := make([]time.Duration, 0, b.N*nsubs)
			for _, l := range lat {
				for _, d := range l {
					if d >= 0 {
						all = append(all, d)
					}
				}
			}
			b.ReportMetric(float64(b.N*nsubs-len(all)), "dropped")
			slices.Sort(all)
			pct := func(p float64) float64 {
				i := int(p * float64(len(all)-1))
				return float64(all[i].Nanoseconds()) / 1e3
			}
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
			b.ReportMetric(pct(0.999), "p99.9-µs")
			b.ReportMetric(float64(all[len(all)-1].Nanoseconds())/1e3, "max-µs")
		})
	}
}

// benchCPU returns the user+system CPU time this process has used.
func benchCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPacer runs send(i) for i in [0, n) at start + i*interval and returns
// when the last send is done.
//
// time.Sleep wakes up to a millisecond late here (the runtime's timers poll
// with millisecond timeouts), which would count as latency. So the pacer
// sleeps in the kernel (nanosleep, about 0.1 ms late) until 250 µs before
// each send and yields in a loop for the rest: sends leave within a few µs
// of their intended time. (Also tried: a locked OS thread with a 1 ns timer
// slack and GOMAXPROCS raised by one for it; no better, noisier.)
func benchPacer(start time.Time, interval time.Duration, n int, send func(i int) error) error {
	const spin = 250 * time.Microsecond
	for i := 0; i < n; i++ {
		t := start.Add(time.Duration(i) * interval)
		if d := time.Until(t); d > spin {
			ts := syscall.NsecToTimespec(int64(d - spin))
			_ = syscall.Nanosleep(&ts, nil)
		}
		for time.Until(t) > 0 {
			runtime.Gosched()
		}
		if err := send(i); err != nil {
			return err
		}
	}
	return nil
}

// benchSeq extracts an event frame's seq without decoding the JSON.
func benchSeq(p []byte) (int, bool) {
	i := bytes.Index(p, []byte(`"seq":`))
	if i < 0 {
		return 0, false
	}
	p = p[i+len(`"seq":`):]
	n, j := 0, 0
	for ; j < len(p) && p[j] >= '0' && p[j] <= '9'; j++ {
		n = n*10 + int(p[j]-'0')
	}
	return n, j > 0 && n > 0
}

const (
	benchIdleConns     = 5000
	benchChildEnv      = "ENCLAVE_BENCH_MEM_CHILD"
	benchChildProfile  = "ENCLAVE_BENCH_MEM_PROFILE" // optional: heap profile path, written after the connections are open
	benchChildAddrLine = "ENCLAVE-BENCH-ADDR "
)

// benchMem is what the server process reports about itself, after a GC and
// after returning freed memory to the OS.
type benchMem struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	RSSKiB     uint64 `json:"rss_kib"`
	Goroutines int    `json:"goroutines"`
}

// BenchmarkWSIdleConnMemory measures server memory per idle WebSocket
// connection that has done one subscribe, with 5,000 connections.
//
// Method: the server (broker + gateway, production defaults) runs in a child
// process, this test binary re-executed with ENCLAVE_BENCH_MEM_CHILD=1, so
// the 5,000 client connections held by this process are not counted. The
// child serves /bench/mem, which runs runtime.GC and debug.FreeOSMemory and
// reports HeapInuse, StackInuse and VmRSS. KiB/conn is the growth of
// HeapInuse+StackInuse between a baseline (after 50 connections were opened
// and closed, to warm pools) and the moment all 5,000 connections are open
// and acked, divided by 5,000; rss-KiB/conn is the same for VmRSS. Each
// connection's subscription has its QUEUE_SIZE (100) event queue allocated.
func BenchmarkWSIdleConnMemory(b *testing.B) {
	if os.Getenv(benchChildEnv) == "1" {
		benchMemChild(b)
		return
	}
	benchRaiseFileLimit(b, benchIdleConns+512)
	for i := 0; i < b.N; i++ {
		benchMeasureIdleMemory(b)
	}
}

func benchMeasureIdleMemory(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", "-test.bench=^BenchmarkWSIdleConnMemory$", "-test.benchtime=1x")
	cmd.Env = append(os.Environ(), benchChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close() // the child stops when its stdin closes
		if err := cmd.Wait(); err != nil {
			b.Errorf("server process: %v", err)
		}
	}()
	sc := bufio.NewScanner(stdout)
	addr := ""
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), benchChildAddrLine); ok {
			addr = a
			break
		}
	}
	if addr == "" {
		b.Fatal("server process did not report its address")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	base := "http://" + addr
	benchCreateTopic(b, base, "idle")

	warm := benchDialMany(b, addr, "idle", 50, 4096)
	for _, c := range warm {
		c.nc.Close()
	}
	// The server notices the closes asynchronously: wait until it has.
	benchWaitSubscribers(b, base, 0)
	before := benchReadMem(b, base)

	b.ResetTimer()
	conns := benchDialMany(b, addr, "idle", benchIdleConns, 4096)
	b.StopTimer()
	benchWaitSubscribers(b, base, benchIdleConns)
	after := benchReadMem(b, base)

	n := float64(len(conns))
	goMem := float64(after.HeapInuse+after.StackInuse) - float64(before.HeapInuse+before.StackInuse)
	b.ReportMetric(goMem/n/1024, "KiB/conn")
	b.ReportMetric((float64(after.HeapInuse)-float64(before.HeapInuse))/n/1024, "heap-KiB/conn")
	b.ReportMetric((float64(after.StackInuse)-float64(before.StackInuse))/n/1024, "stack-KiB/conn")
	b.ReportMetric((float64(after.RSSKiB)-float64(before.RSSKiB))/n, "rss-KiB/conn")
	b.ReportMetric(float64(after.Goroutines-before.Goroutines)/n, "goroutines/conn")
	for _, c := range conns {
		c.nc.Close()
	}
}

func benchWaitSubscribers(b *testing.B, base string, want int) {
	b.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/health")
		if err != nil {
			b.Fatal(err)
		}
		var h struct {
			Subscribers int `json:"subscribers"`
		}
		err = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		if h.Subscribers == want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("server has %d subscribers, want %d", h.Subscribers, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func benchReadMem(b *testing.B, base string) benchMem {
	b.Helper()
	resp, err := http.Get(base + "/bench/mem")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var m benchMem
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		b.Fatal(err)
	}
	return m
}

// benchMemChild is the server process of BenchmarkWSIdleConnMemory: it
// serves until its stdin is closed.
func benchMemChild(b *testing.B) {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	br := broker.New(broker.Config{EncodeEvent: EncodeEvent})
	g := New(br, Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NodeID: "bench"})
	mux := http.NewServeMux()
	mux.Handle("/", g.Handler())
	mux.HandleFunc("/bench/mem", func(w http.ResponseWriter, _ *http.Request) {
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		m := benchMem{HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, Sys: ms.Sys, RSSKiB: benchRSS(), Goroutines: runtime.NumGoroutine()}
		if path := os.Getenv(benchChildProfile); path != "" {
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
		_ = json.NewEncoder(w).Encode(m)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("\n%s%s\n", benchChildAddrLine, ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = g.Shutdown(ctx)
	_ = srv.Close()
}

// benchRSS reads this process's resident set size in KiB.
func benchRSS() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
