package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// dialParallelism bounds concurrent connection attempts.
const dialParallelism = 16

type paddedCounter struct {
	n atomic.Int64
	_ [56]byte // one cache line each
}

// runner holds one run's shared state.
type runner struct {
	sys   System
	p     Params
	nodes []string
	topic string
	prog  io.Writer

	start   time.Time
	stop    chan struct{} // closed when sending must end
	stopped sync.Once

	sent      atomic.Int64
	acked     atomic.Int64
	ackFailed atomic.Int64
	lastAck   atomic.Int64 // unix ns
	lastEvent atomic.Int64 // unix ns

	ackHist  Histogram
	nodeHist []*Histogram
	subCount []paddedCounter

	// Fan-out flow control (rate 0): the publisher parks on wake while it
	// is more than Window ahead of the slowest subscriber.
	waiting atomic.Bool
	wake    chan struct{}
	slowIdx atomic.Int64

	errMu sync.Mutex
	errs  map[string]int64
}

func (r *runner) addErr(code string) {
	r.errMu.Lock()
	r.errs[code]++
	r.errMu.Unlock()
}

func (r *runner) errCount() int64 {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	var n int64
	for _, c := range r.errs {
		n += c
	}
	return n
}

func (r *runner) endSending() { r.stopped.Do(func() { close(r.stop) }) }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Run runs the workload p.Workload against sys and returns what it
// measured. progress, when not nil, gets a status line every second.
// Run is bounded: sending stops after p.Duration (or p.Count publishes),
// waiting for the tail after p.Drain more.
func Run(ctx context.Context, sys System, p Params, progress io.Writer) (*Result, error) {
	nodes := sys.Nodes()
	if len(nodes) == 0 {
		return nil, errors.New("no nodes")
	}
	p = Defaults(p)
	if p.Workload == WorkloadLatency && p.Subscribers == 0 {
		p.Subscribers = len(nodes)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.Topic == "" {
		p.Topic = "bench-" + randomHex(4)
	}
	r := &runner{
		sys: sys, p: p, nodes: nodes, topic: p.Topic, prog: progress,
		stop: make(chan struct{}), wake: make(chan struct{}, 1),
		errs: map[string]int64{},
	}
	res := &Result{System: sys.Name(), Workload: p.Workload, Nodes: nodes, Params: p, Started: time.Now().UTC(), Machine: currentMachine()}

	prepCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := sys.Prepare(prepCtx, p.Topic)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("preparing topic %q: %w", p.Topic, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = sys.Cleanup(cctx, p.Topic)
	}()

	cpu0 := selfCPU()
	wall0 := time.Now()
	if p.Workload == WorkloadConnections {
		err = r.runConnections(ctx, res)
	} else {
		err = r.runPubSub(ctx, res)
	}
	if err != nil {
		return nil, err
	}
	if wall := time.Since(wall0).Seconds(); wall > 0 {
		res.ClientCPU = (selfCPU() - cpu0).Seconds() / wall
	}
	res.Errors = r.errs
	if n := r.errCount(); n > 0 {
		res.Failures = append(res.Failures, fmt.Sprintf("%d errors", n))
	}
	if res.Expected != res.Delivered {
		res.Failures = append(res.Failures, fmt.Sprintf("delivered %d events, expected %d", res.Delivered, res.Expected))
	}
	if p.Workload != WorkloadConnections && res.Acked == 0 {
		res.Failures = append(res.Failures, "no publish was acked")
	}
	return res, nil
}

// dialAll opens n connections with bounded parallelism; client i goes to
// node i mod len(nodes). It stops at the first failure.
func dialAll[T any](ctx context.Context, n, nodes int, dial func(ctx context.Context, i, node int) (T, error)) ([]T, error) {
	out := make([]T, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, dialParallelism)
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(ctx, i, i%nodes)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = fmt.Errorf("client %d (node %d): %w", i, i%nodes+1, err)
				}
				cancel()
				return
			}
			out[i] = c
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return out, first
}

func closeAll[T interface{ Close() error }](cs []T) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range cs {
		if any(c) == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = c.Close()
		}()
	}
	wg.Wait()
}

// parseStamp reads the intended send time (unix ns) from a payload that
// starts with {"t":<digits>.
func parseStamp(p []byte) (int64, bool) {
	const key = `"t":`
	i := indexOf(p, key)
	if i < 0 {
		return 0, false
	}
	p = p[i+len(key):]
	var n int64
	j := 0
	for ; j < len(p) && j < 19 && p[j] >= '0' && p[j] <= '9'; j++ {
		n = n*10 + int64(p[j]-'0')
	}
	return n, j > 0
}

func indexOf(p []byte, s string) int {
	// Short payload prefixes: a plain scan beats bytes.Index's setup.
	for i := 0; i+len(s) <= len(p); i++ {
		if string(p[i:i+len(s)]) == s {
			return i
		}
	}
	return -1
}

// Payload renders a payload of exactly size bytes (size >= 32):
// {"t":<intended send time, unix ns>,"p":"xxxx…"}.
func Payload(dst []byte, intended int64, size int) []byte {
	dst = append(dst[:0], `{"t":`...)
	dst = fmt.Appendf(dst, "%019d", intended)
	dst = append(dst, `,"p":"`...)
	if pad := size - 2 - len(dst); pad > 0 {
		dst = slices.Grow(dst, pad+2)
		n := len(dst)
		dst = dst[:n+pad]
		for i := n; i < len(dst); i++ {
			dst[i] = 'x'
		}
	}
	return append(dst, `"}`...)
}

func (r *runner) runPubSub(ctx context.Context, res *Result) error {
	p := r.p
	n := len(r.nodes)
	r.nodeHist = make([]*Histogram, n)
	for i := range r.nodeHist {
		r.nodeHist[i] = new(Histogram)
	}
	r.subCount = make([]paddedCounter, p.Subscribers)

	var stats0 []procSample
	if ps, ok := r.sys.(ProcessStats); ok {
		stats0 = sampleProcs(ps, n)
	}

	subs, err := dialAll(ctx, p.Subscribers, n, func(ctx context.Context, i, node int) (Subscriber, error) {
		hist := r.nodeHist[node]
		cnt := &r.subCount[i].n
		return r.sys.DialSubscriber(ctx, node, r.topic, SubscriberHandler{
			Event: func(payload []byte, at time.Time) {
				cnt.Add(1)
				now := at.UnixNano()
				r.lastEvent.Store(now)
				if t, ok := parseStamp(payload); ok {
					hist.Record(time.Duration(now - t))
				} else {
					r.addErr("BAD_PAYLOAD")
				}
				if r.waiting.Load() {
					select {
					case r.wake <- struct{}{}:
					default:
					}
				}
			},
			Failed: r.addErr,
		})
	})
	defer closeAll(subs)
	if err != nil {
		return fmt.Errorf("subscribing: %w", err)
	}

	type pubState struct {
		pub      Publisher
		intended []atomic.Int64 // by n mod Depth
		inflight chan struct{}
	}
	states := make([]*pubState, p.Publishers)
	pubs, err := dialAll(ctx, p.Publishers, n, func(ctx context.Context, i, node int) (Publisher, error) {
		st := &pubState{intended: make([]atomic.Int64, p.Depth), inflight: make(chan struct{}, p.Depth)}
		states[i] = st
		pub, err := r.sys.DialPublisher(ctx, node, r.topic, PublisherHandler{
			Done: func(seq uint64, code string) {
				now := time.Now().UnixNano()
				if code == "" {
					r.ackHist.Record(time.Duration(now - st.intended[seq%uint64(p.Depth)].Load()))
					r.acked.Add(1)
					r.lastAck.Store(now)
				} else {
					r.ackFailed.Add(1)
					r.addErr(code)
				}
				select {
				case <-st.inflight:
				default:
					r.addErr("UNEXPECTED_ACK")
				}
			},
			Failed: r.addErr,
		})
		st.pub = pub
		return pub, err
	})
	defer closeAll(pubs)
	if err != nil {
		return fmt.Errorf("connecting publishers: %w", err)
	}

	r.start = time.Now().Add(10 * time.Millisecond)
	deadline := r.start.Add(p.Duration)
	stopTimer := time.AfterFunc(time.Until(deadline), r.endSending)
	defer stopTimer.Stop()
	ctxStop := context.AfterFunc(ctx, r.endSending)
	defer ctxStop()

	progDone := make(chan struct{})
	var progWG sync.WaitGroup
	if r.prog != nil {
		progWG.Add(1)
		go func() { defer progWG.Done(); r.progress(progDone) }()
	}

	var global atomic.Int64 // unpaced: next publish index
	var wg sync.WaitGroup
	for k, st := range states {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.publishLoop(k, st.pub, st.intended, st.inflight, &global)
		}()
	}
	wg.Wait()
	r.endSending()

	// Drain: wait for every ack and every expected event, bounded.
	drainEnd := time.Now().Add(p.Drain)
	for time.Now().Before(drainEnd) && ctx.Err() == nil {
		acksDone := r.acked.Load()+r.ackFailed.Load() >= r.sent.Load()
		if acksDone && r.delivered() >= r.acked.Load()*int64(p.Subscribers) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	close(progDone)
	progWG.Wait()

	res.Sent = r.sent.Load()
	res.Acked = r.acked.Load()
	if missing := res.Sent - res.Acked - r.ackFailed.Load(); missing > 0 {
		r.errMu.Lock()
		r.errs["NO_ACK"] += missing
		r.errMu.Unlock()
	}
	res.Expected = res.Acked * int64(p.Subscribers)
	res.Delivered = r.delivered()
	if la := r.lastAck.Load(); la > 0 {
		if d := time.Duration(la - r.start.UnixNano()).Seconds(); d > 0 {
			res.AckRate = float64(res.Acked) / d
		}
	}
	if le := r.lastEvent.Load(); le > 0 {
		if d := time.Duration(le - r.start.UnixNano()).Seconds(); d > 0 {
			res.DeliveryRate = float64(res.Delivered) / d
		}
	}
	end := max(r.lastAck.Load(), r.lastEvent.Load())
	if end > 0 {
		res.Elapsed = time.Duration(end - r.start.UnixNano()).Seconds()
	}
	res.AckLatency = r.ackHist.Summarize()
	if p.Subscribers > 0 {
		all := new(Histogram)
		for i, h := range r.nodeHist {
			all.Merge(h)
			res.ByNode = append(res.ByNode, NodeLatency{Node: r.nodes[i], Index: i, Latency: h.Summarize()})
		}
		res.EventLatency = all.Summarize()
	}
	if ps, ok := r.sys.(ProcessStats); ok {
		res.Servers = serverUsage(r.nodes, stats0, sampleProcs(ps, n), nil)
	}
	return nil
}

func (r *runner) delivered() int64 {
	var t int64
	for i := range r.subCount {
		t += r.subCount[i].n.Load()
	}
	return t
}

// caughtUp reports whether every subscriber has received at least target
// events. It checks the last known slowest subscriber first, so the common
// case costs one load.
func (r *runner) caughtUp(target int64) bool {
	slow := r.slowIdx.Load()
	if r.subCount[slow].n.Load() < target {
		return false
	}
	for i := range r.subCount {
		if r.subCount[i].n.Load() < target {
			r.slowIdx.Store(int64(i))
			return false
		}
	}
	return true
}

// publishLoop is publisher k's sending loop.
func (r *runner) publishLoop(k int, pub Publisher, intended []atomic.Int64, inflight chan struct{}, global *atomic.Int64) {
	p := r.p
	P := int64(p.Publishers)
	depth := uint64(p.Depth)
	var interval time.Duration
	if p.Rate > 0 {
		interval = time.Duration(float64(time.Second) / float64(p.Rate))
	}
	flow := p.Rate == 0 && p.Subscribers > 0
	var payload []byte
	for j := uint64(0); ; j++ {
		var g int64
		var at time.Time
		if interval > 0 {
			g = int64(j)*P + int64(k)
			at = r.start.Add(time.Duration(g) * interval)
			if !at.Before(r.start.Add(p.Duration)) {
				return
			}
		} else {
			g = global.Add(1) - 1
		}
		if p.Count > 0 && g >= p.Count {
			return
		}
		if flow && !r.waitFanout(g-int64(p.Window)) {
			return
		}
		if interval > 0 && !r.pace(at) {
			return
		}
		select {
		case inflight <- struct{}{}:
		case <-r.stop:
			return
		}
		select {
		case <-r.stop:
			<-inflight
			return
		default:
		}
		if interval == 0 {
			at = time.Now()
		}
		t := at.UnixNano()
		intended[j%depth].Store(t)
		payload = Payload(payload, t, p.Size)
		r.sent.Add(1)
		if err := pub.Publish(j, payload); err != nil {
			r.sent.Add(-1)
			<-inflight
			r.addErr("SEND")
			return
		}
	}
}

// waitFanout blocks until every subscriber has received target events
// (nothing to wait for when target <= 0); false when sending must stop.
func (r *runner) waitFanout(target int64) bool {
	if target <= 0 || r.caughtUp(target) {
		return true
	}
	// Ask for a wake-up on ready events; re-check after asking so that no
	// event slips between the check and the ask.
	r.waiting.Store(true)
	defer r.waiting.Store(false)
	timer := time.NewTimer(5 * time.Millisecond)
	defer timer.Stop()
	for !r.caughtUp(target) {
		select {
		case <-r.wake:
		case <-timer.C:
			timer.Reset(5 * time.Millisecond)
		case <-r.stop:
			return false
		}
	}
	return true
}

// pace waits until at, precisely: a kernel sleep to 200 µs before it (Go's
// timers can wake a millisecond late), then yielding until it. False when
// sending must stop.
func (r *runner) pace(at time.Time) bool {
	const spin = 200 * time.Microsecond
	if d := time.Until(at); d > spin {
		select {
		case <-r.stop:
			return false
		default:
		}
		ts := syscall.NsecToTimespec(int64(d - spin))
		_ = syscall.Nanosleep(&ts, nil)
	}
	for time.Until(at) > 0 {
		runtime.Gosched()
	}
	return true
}

func (r *runner) progress(done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastAcked, lastDelivered int64
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		acked, delivered := r.acked.Load(), r.delivered()
		line := fmt.Sprintf("%s %s %5.1fs  sent %d  acked %d (%s/s)", r.sys.Name(), r.p.Workload,
			time.Since(r.start).Seconds(), r.sent.Load(), acked, FormatRate(float64(acked-lastAcked)))
		if r.p.Subscribers > 0 {
			line += fmt.Sprintf("  delivered %d (%s/s)", delivered, FormatRate(float64(delivered-lastDelivered)))
		}
		line += fmt.Sprintf("  errors %d", r.errCount())
		if r.ackHist.Count() > 0 {
			line += "  ack p99 " + fmtMS(ms(r.ackHist.Quantile(0.99)))
		}
		fmt.Fprintln(r.prog, line)
		lastAcked, lastDelivered = acked, delivered
	}
}

type procSample struct {
	ok  bool
	rss int64
	cpu time.Duration
	at  time.Time
}

func sampleProcs(ps ProcessStats, n int) []procSample {
	out := make([]procSample, n)
	for i := range out {
		rss, cpu, ok := ps.ServerStats(i)
		out[i] = procSample{ok: ok, rss: rss, cpu: cpu, at: time.Now()}
	}
	return out
}

func serverUsage(nodes []string, before, after []procSample, conns []int64) []ServerUsage {
	var out []ServerUsage
	for i := range before {
		b, a := before[i], after[i]
		if !b.ok || !a.ok {
			continue
		}
		u := ServerUsage{Node: nodes[i], RSSBeforeKiB: b.rss, RSSAfterKiB: a.rss}
		if wall := a.at.Sub(b.at).Seconds(); wall > 0 {
			u.CPUCores = (a.cpu - b.cpu).Seconds() / wall
		}
		if conns != nil && conns[i] > 0 {
			u.Conns = conns[i]
			u.KiBPerConn = float64(a.rss-b.rss) / float64(conns[i])
		}
		out = append(out, u)
	}
	return out
}

func (r *runner) runConnections(ctx context.Context, res *Result) error {
	p := r.p
	n := len(r.nodes)
	noop := SubscriberHandler{Event: func([]byte, time.Time) {}, Failed: r.addErr}
	// Warm up: open and close a few connections per node, so one-time
	// allocations (pools, first stacks) are not counted per connection.
	warm, err := dialAll(ctx, min(p.Connections, 16*n), n, func(ctx context.Context, _, node int) (Subscriber, error) {
		return r.sys.DialSubscriber(ctx, node, r.topic, noop)
	})
	closeAll(warm)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	time.Sleep(500 * time.Millisecond) // let the servers notice the closes

	ps, hasStats := r.sys.(ProcessStats)
	var before []procSample
	if hasStats {
		before = sampleProcs(ps, n)
	}
	var connHist Histogram
	var opened atomic.Int64
	progDone := make(chan struct{})
	var progWG sync.WaitGroup
	r.start = time.Now()
	if r.prog != nil {
		progWG.Add(1)
		go func() {
			defer progWG.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-progDone:
					return
				case <-t.C:
					fmt.Fprintf(r.prog, "%s connections %5.1fs  open %d of %d  errors %d\n", r.sys.Name(), time.Since(r.start).Seconds(), opened.Load(), p.Connections, r.errCount())
				}
			}
		}()
	}
	conns, err := dialAll(ctx, p.Connections, n, func(ctx context.Context, _, node int) (Subscriber, error) {
		t0 := time.Now()
		s, err := r.sys.DialSubscriber(ctx, node, r.topic, noop)
		if err == nil {
			connHist.Record(time.Since(t0))
			opened.Add(1)
		}
		return s, err
	})
	defer closeAll(conns)
	elapsed := time.Since(r.start)
	if err != nil {
		close(progDone)
		progWG.Wait()
		return fmt.Errorf("connecting (%d open): %w", opened.Load(), err)
	}
	res.Connections = opened.Load()
	res.ConnectRate = float64(res.Connections) / elapsed.Seconds()
	res.ConnectLatency = connHist.Summarize()
	res.Elapsed = elapsed.Seconds()
	select {
	case <-time.After(p.Hold):
	case <-ctx.Done():
	}
	close(progDone)
	progWG.Wait()
	if hasStats {
		perNode := make([]int64, n)
		for i := 0; i < p.Connections; i++ {
			perNode[i%n]++
		}
		res.Servers = serverUsage(r.nodes, before, sampleProcs(ps, n), perNode)
	}
	return nil
}

// sortedCodes returns the error codes in r.errs, sorted.
func sortedCodes(m map[string]int64) []string {
	out := make([]string, 0, len(m))
	for c := range m {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}
