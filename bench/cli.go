package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options is the parsed command line of `enclave bench`.
type Options struct {
	Params
	Nodes       []Node
	PIDs        []int
	JSON        bool
	AllowErrors bool
	Quiet       bool
}

// rateFlag reads --rate as a number of publishes per second or "max".
type rateFlag struct{ v *int }

func (r rateFlag) String() string {
	if r.v == nil || *r.v == 0 {
		return "0"
	}
	if *r.v < 0 {
		return "max"
	}
	return strconv.Itoa(*r.v)
}

func (r rateFlag) Set(s string) error {
	if s == "max" {
		*r.v = -1
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return errors.New(`must be a number of publishes per second or "max"`)
	}
	if n == 0 {
		n = -1
	}
	*r.v = n
	return nil
}

const usageHead = `Usage: enclave bench --workload publish|fanout|latency|connections [flags]

Drives one or more enclave nodes over the WebSocket protocol and prints what
it measured: rates, latency percentiles (p50/p90/p99/p99.9/max), delivered vs
expected events and errors by code. Clients are spread over --nodes round
robin. Latency runs from each publish's intended send time (start + i/rate),
so a stalled sender counts against the server (no coordinated omission).
The run stops by itself after --duration (or --count publishes) plus at most
--drain for the tail. Exit status: 0 when every publish was acked and every
expected event delivered without error, 1 otherwise (unless --allow-errors),
2 for a usage error.

Workloads (defaults in brackets):
  publish      acked publish throughput: --publishers [4] connections, each
               with up to --depth [64] un-acked publishes, --size [256] B
               payloads, as fast as acks come (or at --rate).
  fanout       --subscribers [1000] on one topic, --publishers [1] at --rate
               [100]/s; --rate max publishes as fast as the slowest
               subscriber keeps up (at most --window [64] events ahead).
  latency      publish → event latency: --publishers [1] at --rate [1000]/s,
               --subscribers [one per node]; figures per subscriber node.
  connections  --connections [1000] idle subscribed connections held for
               --hold [2s]; with --server-pid, server RSS per connection.

Flags:
`

// ParseArgs parses the bench subcommand's arguments.
func ParseArgs(args []string, usageOut io.Writer) (Options, error) {
	return ParseArgsWith("enclave bench", usageHead, args, usageOut, nil)
}

// ParseArgsWith parses the bench flags plus those that register adds (the
// NATS harness adds its own), with name and head for the usage text.
func ParseArgsWith(name, head string, args []string, usageOut io.Writer, register func(*flag.FlagSet)) (Options, error) {
	var o Options
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(usageOut)
	if register != nil {
		register(fs)
	}
	nodes := fs.String("nodes", "ws://127.0.0.1:8000/ws", "comma-separated nodes: ws://host:port/ws, http://host:port or host:port")
	pids := fs.String("server-pid", "", "comma-separated PIDs of the nodes' server processes, in --nodes order (local only): RSS and CPU are read from /proc")
	fs.StringVar(&o.Workload, "workload", "", "publish, fanout, latency or connections")
	fs.StringVar(&o.Topic, "topic", "", "topic to use, created via REST if missing (default: a fresh bench-XXXXXXXX, deleted afterwards)")
	fs.IntVar(&o.Publishers, "publishers", 0, "publishing connections")
	fs.IntVar(&o.Depth, "depth", 0, "un-acked publishes in flight per publisher (default 64)")
	fs.IntVar(&o.Size, "size", 0, "payload size in bytes, at least 32 (default 256)")
	fs.IntVar(&o.Subscribers, "subscribers", 0, "subscribing connections")
	fs.Var(rateFlag{&o.Rate}, "rate", `publishes per second over all publishers, or "max"`)
	fs.IntVar(&o.Window, "window", 0, "fanout at --rate max: publishes ahead of the slowest subscriber (default 64; keep it below the server's QUEUE_SIZE)")
	fs.IntVar(&o.Connections, "connections", 0, "connections workload: connections to open")
	fs.DurationVar(&o.Duration, "duration", 0, "bound on the sending phase (default 10s)")
	fs.Int64Var(&o.Count, "count", 0, "bound on publishes sent (default: --duration only)")
	fs.DurationVar(&o.Drain, "drain", 0, "bound on waiting for the last acks and events (default 10s)")
	fs.DurationVar(&o.Hold, "hold", 0, "connections workload: how long to hold them before reading memory (default 2s)")
	fs.BoolVar(&o.JSON, "json", false, "print the result as JSON on stdout")
	fs.BoolVar(&o.AllowErrors, "allow-errors", false, "exit 0 even when events were lost or errors occurred")
	fs.BoolVar(&o.Quiet, "quiet", false, "no progress lines on stderr")
	fs.Usage = func() {
		fmt.Fprint(usageOut, head)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(*nodes, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		n, err := ParseNode(s)
		if err != nil {
			return o, err
		}
		o.Nodes = append(o.Nodes, n)
	}
	if len(o.Nodes) == 0 {
		return o, errors.New("--nodes is empty")
	}
	if *pids != "" {
		for _, s := range strings.Split(*pids, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || pid < 0 {
				return o, fmt.Errorf("--server-pid: %q is not a PID", s)
			}
			o.PIDs = append(o.PIDs, pid)
		}
		if len(o.PIDs) != len(o.Nodes) {
			return o, fmt.Errorf("--server-pid has %d PIDs for %d nodes", len(o.PIDs), len(o.Nodes))
		}
	}
	p := Defaults(o.Params)
	if p.Workload == WorkloadLatency && p.Subscribers == 0 {
		p.Subscribers = len(o.Nodes)
	}
	if err := p.Validate(); err != nil {
		return o, err
	}
	return o, nil
}

// Main runs `enclave bench` with args and returns the exit status.
func Main(args []string, stdout, stderr io.Writer) int {
	o, err := ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "enclave bench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Execute(ctx, NewEnclave(o.Nodes, o.PIDs), o, stdout, stderr)
}

// Execute runs one workload against sys as the options say, prints the
// result (table or JSON) on stdout and returns the exit status. The NATS
// harness in deploy/bench uses it too.
func Execute(ctx context.Context, sys System, o Options, stdout, stderr io.Writer) int {
	RaiseFileLimit()
	var prog io.Writer
	if !o.Quiet {
		prog = stderr
	}
	// A hard bound over everything, in case a server stops answering.
	p := Defaults(o.Params)
	ctx, cancel := context.WithTimeout(ctx, p.Duration+p.Drain+p.Hold+5*time.Minute)
	defer cancel()
	res, err := Run(ctx, sys, o.Params, prog)
	if err != nil {
		fmt.Fprintf(stderr, "%s bench: %v\n", sys.Name(), err)
		return 1
	}
	if o.JSON {
		err = res.WriteJSON(stdout)
	} else {
		err = res.WriteTable(stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if !res.OK() {
		if o.AllowErrors {
			fmt.Fprintf(stderr, "%s bench: %s (allowed by --allow-errors)\n", sys.Name(), strings.Join(res.Failures, "; "))
			return 0
		}
		fmt.Fprintf(stderr, "%s bench: FAIL: %s\n", sys.Name(), strings.Join(res.Failures, "; "))
		return 1
	}
	return 0
}
