package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is what one run measured.
type Result struct {
	System   string    `json:"system"`
	Workload string    `json:"workload"`
	Nodes    []string  `json:"nodes"`
	Params   Params    `json:"params"`
	Started  time.Time `json:"started"`
	Machine  Machine   `json:"machine"`

	// Sending phase, from the first publish to the last ack or event.
	Elapsed float64 `json:"elapsed_sec"`
	Sent    int64   `json:"sent"`
	Acked   int64   `json:"acked"`
	// AckRate is acked publishes per second.
	AckRate float64 `json:"acked_per_sec"`
	// Expected is acked publishes × subscribers; Delivered counts events
	// received by all subscribers.
	Expected     int64   `json:"expected"`
	Delivered    int64   `json:"delivered"`
	DeliveryRate float64 `json:"delivered_per_sec"`

	// AckLatency runs from each publish's intended send time to its ack
	// (the send time itself when unpaced); EventLatency from the intended
	// send time to the event's arrival at a subscriber. ByNode splits
	// EventLatency by the subscriber's node.
	AckLatency   *Summary      `json:"ack_latency,omitempty"`
	EventLatency *Summary      `json:"event_latency,omitempty"`
	ByNode       []NodeLatency `json:"event_latency_by_node,omitempty"`

	// Connections workload.
	Connections    int64    `json:"connections,omitempty"`
	ConnectRate    float64  `json:"connections_per_sec,omitempty"`
	ConnectLatency *Summary `json:"connect_latency,omitempty"`
	// Memory per node, when the server processes can be read.
	Servers []ServerUsage `json:"servers,omitempty"`

	// ClientCPU is the CPU this process used during the run, in cores.
	ClientCPU float64          `json:"client_cpu_cores"`
	Errors    map[string]int64 `json:"errors"`
	// Failures lists what makes the run fail (exit status 1).
	Failures []string `json:"failures,omitempty"`
}

// NodeLatency is the event latency of the subscribers on one node.
type NodeLatency struct {
	Node    string   `json:"node"`
	Index   int      `json:"index"`
	Latency *Summary `json:"latency"`
}

// ServerUsage is one server process's resource use during the run.
type ServerUsage struct {
	Node         string  `json:"node"`
	RSSBeforeKiB int64   `json:"rss_before_kib"`
	RSSAfterKiB  int64   `json:"rss_after_kib"`
	Conns        int64   `json:"connections,omitempty"`
	KiBPerConn   float64 `json:"kib_per_connection,omitempty"`
	CPUCores     float64 `json:"cpu_cores"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs    int    `json:"cpus"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
	Model   string `json:"cpu_model,omitempty"`
	LoadAvg string `json:"loadavg_at_start,omitempty"`
	Go      string `json:"go"`
}

// OK reports whether the run met its expectations.
func (r *Result) OK() bool { return len(r.Failures) == 0 }

// WriteJSON writes r as one indented JSON object.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// FormatRate writes a rate the way the tables do: 123, 12.3k, 1.23M.
func FormatRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

func fmtMS(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.1fms", v)
	case v >= 1:
		return fmt.Sprintf("%.2fms", v)
	default:
		return fmt.Sprintf("%.0fµs", v*1000)
	}
}

// WriteTable writes r for people: the parameters, one row per measured
// quantity, then delivery and errors.
func (r *Result) WriteTable(w io.Writer) error {
	p := r.Params
	fmt.Fprintf(w, "\n%s bench: %s on %d node(s): %s\n", r.System, r.Workload, len(r.Nodes), strings.Join(r.Nodes, ", "))
	rate := "max"
	if p.Rate > 0 {
		rate = fmt.Sprintf("%d/s", p.Rate)
	}
	switch r.Workload {
	case WorkloadConnections:
		fmt.Fprintf(w, "connections %d, hold %v\n", p.Connections, p.Hold)
	default:
		fmt.Fprintf(w, "publishers %d, depth %d, payload %d B, rate %s, subscribers %d, duration %v", p.Publishers, p.Depth, p.Size, rate, p.Subscribers, p.Duration)
		if p.Count > 0 {
			fmt.Fprintf(w, ", count %d", p.Count)
		}
		if r.Workload == WorkloadFanout && p.Rate == 0 {
			fmt.Fprintf(w, ", window %d", p.Window)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "machine: %d CPUs %s, load at start %s; client used %.2f cores\n\n", r.Machine.CPUs, r.Machine.Model, r.Machine.LoadAvg, r.ClientCPU)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\tcount\trate/s\tp50\tp90\tp99\tp99.9\tmax\t")
	row := func(name string, count int64, rate float64, s *Summary) {
		name = fmt.Sprintf("%-18s", name)
		rs := ""
		if rate > 0 {
			rs = FormatRate(rate)
		}
		if s == nil {
			fmt.Fprintf(tw, "%s\t%d\t%s\t-\t-\t-\t-\t-\t\n", name, count, rs)
			return
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, count, rs,
			fmtMS(s.P50), fmtMS(s.P90), fmtMS(s.P99), fmtMS(s.P999), fmtMS(s.Max))
	}
	if r.Workload == WorkloadConnections {
		row("connect+subscribe", r.Connections, r.ConnectRate, r.ConnectLatency)
	} else {
		row("acked publishes", r.Acked, r.AckRate, r.AckLatency)
		if p.Subscribers > 0 {
			row("events", r.Delivered, r.DeliveryRate, r.EventLatency)
			if len(r.ByNode) > 1 {
				for _, n := range r.ByNode {
					c := int64(0)
					if n.Latency != nil {
						c = int64(n.Latency.Count)
					}
					row(fmt.Sprintf("  on node %d", n.Index+1), c, 0, n.Latency)
				}
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.Workload != WorkloadConnections {
		fmt.Fprintf(w, "\nsent %d, acked %d", r.Sent, r.Acked)
		if p.Subscribers > 0 {
			pct := 100.0
			if r.Expected > 0 {
				pct = 100 * float64(r.Delivered) / float64(r.Expected)
			}
			fmt.Fprintf(w, "; delivered %d of %d expected (%.2f%%)", r.Delivered, r.Expected, pct)
		}
		fmt.Fprintf(w, "; %.2fs\n", r.Elapsed)
	}
	for _, s := range r.Servers {
		fmt.Fprintf(w, "server %s: RSS %.1f → %.1f MiB", s.Node, float64(s.RSSBeforeKiB)/1024, float64(s.RSSAfterKiB)/1024)
		if s.Conns > 0 {
			fmt.Fprintf(w, ", %d connections, %.1f KiB per connection", s.Conns, s.KiBPerConn)
		}
		fmt.Fprintf(w, ", CPU %.2f cores\n", s.CPUCores)
	}
	if len(r.Errors) == 0 {
		fmt.Fprintln(w, "errors: none")
	} else {
		codes := sortedCodes(r.Errors)
		parts := make([]string, len(codes))
		for i, c := range codes {
			parts[i] = fmt.Sprintf("%s %d", c, r.Errors[c])
		}
		fmt.Fprintf(w, "errors: %s\n", strings.Join(parts, ", "))
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "FAIL: %s\n", f)
	}
	return nil
}

func currentMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), OS: runtime.GOOS, Arch: runtime.GOARCH, Go: runtime.Version()}
	m.Model = cpuModel()
	m.LoadAvg = loadAvg()
	return m
}
