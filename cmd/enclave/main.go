// Command enclave runs an MR-Enclave node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/mr-enclave/enclave/bench"
	"github.com/mr-enclave/enclave/broker"
	"github.com/mr-enclave/enclave/cluster"
	"github.com/mr-enclave/enclave/gateway"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "bench" {
		return bench.Main(args[1:], stdout, stderr)
	}
	cmd := "serve"
	if len(args) > 0 && (args[0] == "serve" || args[0] == "healthcheck") {
		cmd, args = args[0], args[1:]
	}
	cfg, err := loadConfig("enclave", args, getenv, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "enclave:", err)
		return 2
	}
	if cmd == "healthcheck" {
		return healthcheck(cfg, stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal the default action is restored, so a second
	// Ctrl-C during the graceful shutdown ends the process at once.
	go func() { <-ctx.Done(); stop() }()
	if err := serve(ctx, cfg, stderr); err != nil {
		fmt.Fprintln(stderr, "enclave:", err)
		return 1
	}
	return 0
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: cfg.LogLevel})).With("node", cfg.NodeID)
}

// serve runs the node until ctx is cancelled, then shuts down gracefully.
func serve(ctx context.Context, cfg Config, logOut io.Writer) error {
	log := newLogger(cfg, logOut)
	b := broker.New(broker.Config{
		RingSize:    cfg.RingSize,
		QueueSize:   cfg.QueueSize,
		Overflow:    cfg.Overflow,
		EncodeEvent: gateway.EncodeEvent,
	})
	single := len(cfg.Join) == 0 && cfg.BootstrapExpect == 1
	advertise, bind := cfg.AdvertiseAddr, ""
	switch {
	case advertise != "":
	case single:
		// Alone, the Raft and gossip ports need not be reachable from
		// elsewhere: keep them on loopback.
		advertise, bind = "127.0.0.1", "127.0.0.1"
	default:
		advertise = detectAdvertiseAddr()
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", cfg.Port, err)
	}
	node, err := cluster.Start(b, cluster.Config{
		NodeID:          cfg.NodeID,
		DataDir:         cfg.DataDir,
		AdvertiseAddr:   advertise,
		BindAddr:        bind,
		RaftPort:        cfg.RaftPort,
		GossipPort:      cfg.GossipPort,
		HTTPAddr:        net.JoinHostPort(advertise, strconv.Itoa(cfg.Port)),
		Join:            cfg.Join,
		BootstrapExpect: cfg.BootstrapExpect,
		LeaveOnShutdown: cfg.LeaveOnShutdown,
		ClusterKey:      cfg.ClusterKey,
		Logger:          log,
	})
	if err != nil {
		ln.Close()
		return fmt.Errorf("start cluster node: %w", err)
	}
	defer func() {
		if err := node.Close(); err != nil {
			log.Warn("cluster node shutdown", "err", err)
		}
	}()
	mode := "cluster"
	if single {
		mode = "single-node"
		// Serve only once the log has been replayed, so a restart never
		// shows a partial state.
		if err := node.WaitReady(ctx, 30*time.Second); err != nil {
			ln.Close()
			return fmt.Errorf("waiting for the node's own election: %w", err)
		}
	}
	gw := gateway.New(b, gateway.Config{
		MaxMessageBytes:   cfg.MaxMessageBytes,
		HeartbeatInterval: cfg.HeartbeatInterval,
		AllowedOrigins:    cfg.AllowedOrigins,
		Logger:            log,
		NodeID:            cfg.NodeID,
		Cluster:           clusterView{node},
	})
	srv := &http.Server{Handler: gw.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("enclave serving", "addr", ln.Addr().String(), "mode", mode, "raft", node.RaftAddr(), "gossip", node.GossipAddr(),
		"ring_size", cfg.RingSize, "queue_size", cfg.QueueSize, "overflow_policy", cfg.Overflow.String())

	select {
	case err := <-served:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Shutdown(shutdownCtx) }()
	if err := gw.Shutdown(shutdownCtx); err != nil {
		log.Warn("connections cut off at the shutdown timeout", "err", err)
	}
	if err := <-httpDone; err != nil {
		log.Warn("http shutdown", "err", err)
	}
	log.Info("stopped")
	return nil
}

// healthcheck asks the local node's /health; for container HEALTHCHECKs,
// which have no shell or curl.
func healthcheck(cfg Config, stderr io.Writer) int {
	client := http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(cfg.Port) + "/health")
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy: status", resp.StatusCode)
		return 1
	}
	return 0
}
