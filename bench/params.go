package bench

import (
	"errors"
	"fmt"
	"time"
)

// Workload names.
const (
	WorkloadPublish     = "publish"
	WorkloadFanout      = "fanout"
	WorkloadLatency     = "latency"
	WorkloadConnections = "connections"
)

// Workloads lists the workload names in the order `make bench` runs them.
var Workloads = []string{WorkloadPublish, WorkloadFanout, WorkloadLatency, WorkloadConnections}

// Params says what a workload does. Zero values take the workload's
// defaults (see Defaults).
type Params struct {
	Workload    string        `json:"workload"`
	Topic       string        `json:"topic"`
	Publishers  int           `json:"publishers"`
	Depth       int           `json:"depth"` // un-acked publishes in flight per publisher
	Size        int           `json:"size"`  // payload bytes (the JSON value of message.payload)
	Subscribers int           `json:"subscribers"`
	Rate        int           `json:"rate"`   // publishes/s over all publishers; 0 = as fast as acks (and Window) allow
	Window      int           `json:"window"` // fan-out at rate 0: how far publishing may run ahead of the slowest subscriber
	Connections int           `json:"connections"`
	Duration    time.Duration `json:"duration_ns"` // bound on the sending phase
	Count       int64         `json:"count"`       // bound on the publishes sent (0 = Duration only)
	Drain       time.Duration `json:"drain_ns"`    // bound on waiting for outstanding acks and events
	Hold        time.Duration `json:"hold_ns"`     // connections: how long they stay open before memory is read
}

// Limits that keep every run bounded.
const (
	MaxDuration    = time.Hour
	MaxClients     = 100_000
	MaxDepth       = 65_536
	MaxSize        = 16 << 20
	minPayloadSize = 32
)

// Defaults returns p with each unset field given its workload's default.
func Defaults(p Params) Params {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&p.Size, 256)
	def(&p.Depth, 64)
	def(&p.Window, 64)
	if p.Duration == 0 {
		p.Duration = 10 * time.Second
	}
	if p.Drain == 0 {
		p.Drain = 10 * time.Second
	}
	if p.Hold == 0 {
		p.Hold = 2 * time.Second
	}
	switch p.Workload {
	case WorkloadPublish:
		def(&p.Publishers, 4)
	case WorkloadFanout:
		def(&p.Publishers, 1)
		def(&p.Subscribers, 1000)
		if p.Rate < 0 {
			p.Rate = 0
		} else if p.Rate == 0 {
			p.Rate = 100
		}
	case WorkloadLatency:
		def(&p.Publishers, 1)
		def(&p.Rate, 1000)
		// Subscribers defaults to one per node (set by Run, which knows the nodes).
	case WorkloadConnections:
		def(&p.Connections, 1000)
	}
	if p.Rate < 0 {
		p.Rate = 0
	}
	return p
}

// Validate checks p after Defaults.
func (p Params) Validate() error {
	switch p.Workload {
	case WorkloadPublish, WorkloadFanout, WorkloadLatency, WorkloadConnections:
	case "":
		return errors.New("a workload is required: publish, fanout, latency or connections")
	default:
		return fmt.Errorf("unknown workload %q: use publish, fanout, latency or connections", p.Workload)
	}
	check := func(name string, v, lo, hi int) error {
		if v < lo || v > hi {
			return fmt.Errorf("--%s %d is outside %d..%d", name, v, lo, hi)
		}
		return nil
	}
	for _, c := range []struct {
		name      string
		v, lo, hi int
	}{
		{"publishers", p.Publishers, 0, MaxClients},
		{"subscribers", p.Subscribers, 0, MaxClients},
		{"connections", p.Connections, 0, MaxClients},
		{"depth", p.Depth, 1, MaxDepth},
		{"window", p.Window, 1, MaxDepth},
		{"size", p.Size, minPayloadSize, MaxSize},
		{"rate", p.Rate, 0, 10_000_000},
	} {
		if err := check(c.name, c.v, c.lo, c.hi); err != nil {
			return err
		}
	}
	if p.Workload != WorkloadConnections && p.Publishers < 1 {
		return errors.New("--publishers must be at least 1")
	}
	if p.Workload == WorkloadConnections && p.Connections < 1 {
		return errors.New("--connections must be at least 1")
	}
	if p.Workload == WorkloadFanout && p.Subscribers < 1 {
		return errors.New("--subscribers must be at least 1 for fanout")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"duration", p.Duration}, {"drain", p.Drain}, {"hold", p.Hold}} {
		if d.v <= 0 || d.v > MaxDuration {
			return fmt.Errorf("--%s %v is outside (0, %v]", d.name, d.v, MaxDuration)
		}
	}
	if p.Count < 0 {
		return errors.New("--count must be >= 0")
	}
	if p.Rate > 0 && p.Rate < p.Publishers {
		return fmt.Errorf("--rate %d is below one publish per second per publisher (%d publishers)", p.Rate, p.Publishers)
	}
	return nil
}
