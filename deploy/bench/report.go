package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mr-enclave/enclave/bench"
)

// Result files are named SETUP__CASE.json (run.sh writes them). Setups are
// compared in these pairs, ours first.
var pairs = [][2]string{
	{"enclave-1node", "nats-ws-1node"},
	{"enclave-3node", "jetstream-r3-3node"},
	{"enclave-compose", "jetstream-r3-3node"},
}

type entry struct {
	setup, kase string
	r           *bench.Result
}

// report prints the results in dir as Markdown: one table per case, then
// the ratios of each pair.
func report(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: natsbench report DIR")
		return 2
	}
	files, err := filepath.Glob(filepath.Join(args[0], "*__*.json"))
	if err != nil || len(files) == 0 {
		fmt.Fprintf(stderr, "natsbench report: no SETUP__CASE.json files in %s\n", args[0])
		return 1
	}
	byCase := map[string][]entry{}
	var cases []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		var r bench.Result
		if err := json.Unmarshal(data, &r); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", f, err)
			return 1
		}
		setup, kase, _ := strings.Cut(strings.TrimSuffix(filepath.Base(f), ".json"), "__")
		if _, ok := byCase[kase]; !ok {
			cases = append(cases, kase)
		}
		byCase[kase] = append(byCase[kase], entry{setup, kase, &r})
	}
	sort.Strings(cases)
	for _, k := range cases {
		es := byCase[k]
		sort.Slice(es, func(i, j int) bool { return setupOrder(es[i].setup) < setupOrder(es[j].setup) })
		writeCase(stdout, k, es)
	}
	writeRatios(stdout, cases, byCase)
	return 0
}

func setupOrder(s string) int {
	for i, p := range pairs {
		for j, n := range p {
			if n == s {
				return i*2 + j
			}
		}
	}
	return 100
}

func msf(v float64) string {
	if v < 1 {
		return fmt.Sprintf("%.3f", v)
	}
	if v < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func lat(s *bench.Summary) (p50, p90, p99, max string) {
	if s == nil {
		return "–", "–", "–", "–"
	}
	return msf(s.P50), msf(s.P90), msf(s.P99), msf(s.Max)
}

func errs(r *bench.Result) string {
	if len(r.Errors) == 0 {
		return "0"
	}
	var parts []string
	for c, n := range r.Errors {
		parts = append(parts, fmt.Sprintf("%s %d", c, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func serverCPU(r *bench.Result) string {
	if len(r.Servers) == 0 {
		return "–"
	}
	var t float64
	for _, s := range r.Servers {
		t += s.CPUCores
	}
	return fmt.Sprintf("%.2f", t)
}

func params(r *bench.Result) string {
	p := r.Params
	if r.Workload == bench.WorkloadConnections {
		return fmt.Sprintf("%d conns", p.Connections)
	}
	rate := "max"
	if p.Rate > 0 {
		rate = fmt.Sprintf("%d/s", p.Rate)
	}
	s := fmt.Sprintf("%d pub × depth %d, %d B, rate %s", p.Publishers, p.Depth, p.Size, rate)
	if p.Subscribers > 0 {
		s += fmt.Sprintf(", %d subs", p.Subscribers)
	}
	return s + fmt.Sprintf(", %v", p.Duration)
}

func writeCase(w io.Writer, kase string, es []entry) {
	fmt.Fprintf(w, "\n#### %s (%s)\n\n", kase, params(es[0].r))
	if es[0].r.Workload == bench.WorkloadConnections {
		fmt.Fprintln(w, "| setup | connections | opened/s | connect+subscribe p50 / p99 ms | server RSS KiB per connection | errors |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|")
		for _, e := range es {
			r := e.r
			p50, _, p99, _ := lat(r.ConnectLatency)
			fmt.Fprintf(w, "| %s | %d | %s | %s / %s | %s | %s |\n", e.setup, r.Connections, bench.FormatRate(r.ConnectRate), p50, p99, kibPerConn(r), errs(r))
		}
		return
	}
	fmt.Fprintln(w, "| setup | acked/s | ack p50 / p99 ms | events/s | event p50 / p90 / p99 / max ms | delivered / expected | errors | server CPU | client CPU |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|---:|---:|")
	for _, e := range es {
		r := e.r
		a50, _, a99, _ := lat(r.AckLatency)
		e50, e90, e99, emax := lat(r.EventLatency)
		ev, del := "–", "–"
		if r.Params.Subscribers > 0 {
			ev = bench.FormatRate(r.DeliveryRate)
			del = fmt.Sprintf("%d / %d", r.Delivered, r.Expected)
		}
		fmt.Fprintf(w, "| %s | %s | %s / %s | %s | %s / %s / %s / %s | %s | %s | %s | %.2f |\n",
			e.setup, bench.FormatRate(r.AckRate), a50, a99, ev, e50, e90, e99, emax, del, errs(r), serverCPU(r), r.ClientCPU)
		if len(r.ByNode) > 1 {
			for _, n := range r.ByNode {
				n50, n90, n99, nmax := lat(n.Latency)
				fmt.Fprintf(w, "| %s, subscribers on node %d | | | | %s / %s / %s / %s | | | | |\n", e.setup, n.Index+1, n50, n90, n99, nmax)
			}
		}
	}
}

func kibPerConn(r *bench.Result) string {
	var conns int64
	var kib float64
	for _, s := range r.Servers {
		conns += s.Conns
		kib += float64(s.RSSAfterKiB - s.RSSBeforeKiB)
	}
	if conns == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", kib/float64(conns))
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func writeRatios(w io.Writer, cases []string, byCase map[string][]entry) {
	fmt.Fprintln(w, "\n#### Ratios, ours ÷ theirs (throughput: above 1 is better for us; latency and memory: below 1 is better for us)")
	fmt.Fprintln(w, "\n| case | ours vs theirs | acked/s | events/s | ack p99 | event p50 | event p99 | KiB/conn |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|")
	for _, k := range cases {
		find := func(setup string) *bench.Result {
			for _, e := range byCase[k] {
				if e.setup == setup {
					return e.r
				}
			}
			return nil
		}
		for _, p := range pairs {
			a, b := find(p[0]), find(p[1])
			if a == nil || b == nil {
				continue
			}
			get := func(s *bench.Summary, f func(*bench.Summary) float64) float64 {
				if s == nil {
					return 0
				}
				return f(s)
			}
			p99 := func(s *bench.Summary) float64 { return s.P99 }
			p50 := func(s *bench.Summary) float64 { return s.P50 }
			kib := func(r *bench.Result) float64 {
				var v float64
				fmt.Sscanf(kibPerConn(r), "%g", &v)
				return v
			}
			fmt.Fprintf(w, "| %s | %s vs %s | %s | %s | %s | %s | %s | %s |\n", k, p[0], p[1],
				ratio(a.AckRate, b.AckRate), ratio(a.DeliveryRate, b.DeliveryRate),
				ratio(get(a.AckLatency, p99), get(b.AckLatency, p99)),
				ratio(get(a.EventLatency, p50), get(b.EventLatency, p50)),
				ratio(get(a.EventLatency, p99), get(b.EventLatency, p99)),
				ratio(kib(a), kib(b)))
		}
	}
}
