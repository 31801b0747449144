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

	"github.com/mr-enclave/enclave/broker"
	"github.com/mr-enclave/enclave/gateway"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
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
	gw := gateway.New(b, gateway.Config{
		MaxMessageBytes:   cfg.MaxMessageBytes,
		HeartbeatInterval: cfg.HeartbeatInterval,
		AllowedOrigins:    cfg.AllowedOrigins,
		Logger:            log,
		NodeID:            cfg.NodeID,
		AdvertiseAddr:     "127.0.0.1:" + strconv.Itoa(cfg.Port),
	})
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(cfg.Port))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", cfg.Port, err)
	}
	srv := &http.Server{Handler: gw.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("enclave serving", "addr", ln.Addr().String(), "mode", "single-node",
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
