// Command natsbench runs the workloads of `enclave bench` against
// nats-server, driven by the official NATS Go client over WebSocket, so
// that MR-Enclave and NATS are measured by the same code on the same
// machine in the same run. It is a module of its own so that the broker
// does not depend on the NATS client.
//
//	natsbench --system nats-ws   --workload publish ...   # core NATS, one server
//	natsbench --system jetstream --workload publish ...   # JetStream R3, three servers
//	natsbench report DIR                                  # compare the JSON results in DIR
//
// By default it starts the nats-server processes itself (configs in a
// temporary directory, 127.0.0.1 only) and stops them by PID when done;
// --external uses servers already running at --nodes instead.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mr-enclave/enclave/bench"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usageHead = `Usage: natsbench --system nats-ws|jetstream --workload publish|fanout|latency|connections [flags]
       natsbench report DIR

Runs a workload of enclave bench against nats-server through the NATS Go
client over WebSocket. nats-ws: core NATS on one server; a publish counts as
acknowledged once a PING/PONG round trip after it returned (the server has
processed it; nothing is stored). jetstream: a stream named after the topic
with --replicas copies and max-msgs --max-msgs on a --servers cluster; a
publish is acknowledged by JetStream once stored by a quorum; subscribers are
ordered push consumers (DeliverNew), which get a message once it is stored,
except in the connections workload (plain subscriptions: the connection's
memory is measured, not 5,000 consumers'). Every other flag means what it
means for enclave bench.

Flags:
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "report" {
		return report(args[1:], stdout, stderr)
	}
	var (
		system   string
		servers  int
		replicas int
		maxMsgs  int64
		bin      string
		portBase int
		external bool
		jsSub    string
	)
	o, err := bench.ParseArgsWith("natsbench", usageHead, args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&system, "system", "nats-ws", "nats-ws (core NATS) or jetstream")
		fs.IntVar(&servers, "servers", 0, "nats-server processes to start (default: 1 for nats-ws, 3 for jetstream)")
		fs.IntVar(&replicas, "replicas", 0, "JetStream stream replicas (default: min(3, servers))")
		fs.Int64Var(&maxMsgs, "max-msgs", 100, "JetStream stream max-msgs (enclave's RING_SIZE)")
		fs.StringVar(&bin, "nats-server", "nats-server", "nats-server binary")
		fs.IntVar(&portBase, "port-base", 14200, "first port of the started servers (client base+i, websocket base+10+i, route base+20+i, monitoring base+30+i)")
		fs.StringVar(&jsSub, "js-subscribe", "auto", "jetstream subscribers: consumer (ordered push consumers, DeliverNew), core (plain subscriptions on the stream's subject) or auto (consumer, except core for the connections workload)")
		fs.BoolVar(&external, "external", false, "use running servers at --nodes (ws://host:port) instead of starting them")
	})
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "natsbench:", err)
		return 2
	}
	sys := &natsSystem{name: system, maxMsgs: maxMsgs}
	switch system {
	case "nats-ws":
		if servers == 0 {
			servers = 1
		}
	case "jetstream":
		sys.jetstream = true
		if servers == 0 {
			servers = 3
		}
		if replicas == 0 {
			replicas = min(3, servers)
		}
		sys.replicas = replicas
		switch jsSub {
		case "consumer":
			sys.consumers = true
		case "core":
		case "auto":
			sys.consumers = o.Workload != bench.WorkloadConnections
		default:
			fmt.Fprintf(stderr, "natsbench: --js-subscribe %q: use consumer, core or auto\n", jsSub)
			return 2
		}
		sys.name = fmt.Sprintf("nats-jetstream-r%d", replicas)
	default:
		fmt.Fprintf(stderr, "natsbench: --system %q: use nats-ws or jetstream\n", system)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if external {
		for _, n := range o.Nodes {
			sys.urls = append(sys.urls, "ws://"+hostOf(n.HTTP))
		}
		sys.pids = o.PIDs
	} else {
		logf := func(format string, a ...any) {
			if !o.Quiet {
				fmt.Fprintf(stderr, "natsbench: "+format+"\n", a...)
			}
		}
		s, err := startNATS(ctx, bin, servers, sys.jetstream, portBase, logf)
		if err != nil && ctx.Err() == nil {
			// Once more from scratch: a cluster that did not form in time
			// (seen once in a full run) usually does on a second start.
			fmt.Fprintf(stderr, "natsbench: %v; starting the servers again\n", err)
			s, err = startNATS(ctx, bin, servers, sys.jetstream, portBase, logf)
		}
		if err != nil {
			fmt.Fprintln(stderr, "natsbench:", err)
			return 1
		}
		defer s.Stop()
		sys.urls, sys.pids = s.ws, s.PIDs()
	}
	return bench.Execute(ctx, sys, o, stdout, stderr)
}

func hostOf(httpURL string) string {
	for _, p := range []string{"http://", "https://"} {
		if len(httpURL) > len(p) && httpURL[:len(p)] == p {
			return httpURL[len(p):]
		}
	}
	return httpURL
}
