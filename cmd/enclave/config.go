package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// Config is the node's configuration: each setting comes from its flag, else
// its environment variable, else the default.
type Config struct {
	Port              int
	RingSize          int
	QueueSize         int
	LogLevel          slog.Level
	Overflow          broker.OverflowPolicy
	MaxMessageBytes   int
	HeartbeatInterval time.Duration
	AllowedOrigins    []string
	NodeID            string
	ShutdownTimeout   time.Duration
	DataDir           string
	RaftPort          int
	GossipPort        int
	AdvertiseAddr     string
	Join              []string
	BootstrapExpect   int
	LeaveOnShutdown   bool
	ClusterKey        []byte
}

type setting struct {
	env, flag, def, help string
	apply                func(c *Config, v string) error
}

func settings() []setting {
	hostname, _ := os.Hostname()
	return []setting{
		{"PORT", "port", "8000", "HTTP and WebSocket port", func(c *Config, v string) error {
			return parseInt(v, 1, 65535, &c.Port)
		}},
		{"RING_SIZE", "ring-size", "100", "events kept per topic for last_n replay", func(c *Config, v string) error {
			return parseInt(v, 1, 1_000_000, &c.RingSize)
		}},
		{"QUEUE_SIZE", "queue-size", "100", "outbound queue per subscription, in events", func(c *Config, v string) error {
			return parseInt(v, 1, 1_000_000, &c.QueueSize)
		}},
		{"LOG_LEVEL", "log-level", "INFO", "DEBUG, INFO, WARN or ERROR", func(c *Config, v string) error {
			return c.LogLevel.UnmarshalText([]byte(v))
		}},
		{"OVERFLOW_POLICY", "overflow-policy", "drop_oldest", "drop_oldest or disconnect", func(c *Config, v string) error {
			p, ok := broker.ParseOverflowPolicy(v)
			if !ok {
				return errors.New("must be drop_oldest or disconnect")
			}
			c.Overflow = p
			return nil
		}},
		{"MAX_MESSAGE_BYTES", "max-message-bytes", "1048576", "largest accepted WebSocket frame", func(c *Config, v string) error {
			return parseInt(v, 256, 64<<20, &c.MaxMessageBytes)
		}},
		{"HEARTBEAT_INTERVAL", "heartbeat-interval", "30s", "idle time before a heartbeat; three silent intervals close the connection (Go duration or seconds)", func(c *Config, v string) error {
			return parseDuration(v, &c.HeartbeatInterval)
		}},
		{"ALLOWED_ORIGINS", "allowed-origins", "*", "browser Origins allowed to open /ws, comma-separated; * allows all", func(c *Config, v string) error {
			c.AllowedOrigins = splitList(v)
			return nil
		}},
		{"NODE_ID", "node-id", hostname, "stable identity of this node", func(c *Config, v string) error {
			if v == "" {
				return errors.New("must not be empty")
			}
			c.NodeID = v
			return nil
		}},
		{"DATA_DIR", "data-dir", "./data", "Raft log, stable store and snapshots", func(c *Config, v string) error {
			if v == "" {
				return errors.New("must not be empty")
			}
			c.DataDir = v
			return nil
		}},
		{"RAFT_PORT", "raft-port", "7947", "Raft transport port (also carries writes forwarded to the leader)", func(c *Config, v string) error {
			return parseInt(v, 1, 65535, &c.RaftPort)
		}},
		{"GOSSIP_PORT", "gossip-port", "7946", "memberlist port, TCP and UDP", func(c *Config, v string) error {
			return parseInt(v, 1, 65535, &c.GossipPort)
		}},
		{"ADVERTISE_ADDR", "advertise-addr", "", "IP address peers use to reach this node (default: first non-loopback IPv4)", func(c *Config, v string) error {
			if v != "" && net.ParseIP(v) == nil {
				return fmt.Errorf("%q is not an IP address", v)
			}
			c.AdvertiseAddr = v
			return nil
		}},
		{"JOIN", "join", "", "comma-separated gossip addresses (host:port) of peers; empty = single-node", func(c *Config, v string) error {
			c.Join = splitList(v)
			return nil
		}},
		{"BOOTSTRAP_EXPECT", "bootstrap-expect", "1", "servers to wait for before the cluster bootstraps", func(c *Config, v string) error {
			return parseInt(v, 1, 99, &c.BootstrapExpect)
		}},
		{"LEAVE_ON_SHUTDOWN", "leave-on-shutdown", "false", "on SIGTERM, leave the cluster for good (removed from Raft) instead of only stopping", func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q is not a boolean", v)
			}
			c.LeaveOnShutdown = b
			return nil
		}},
		{"CLUSTER_KEY", "cluster-key", "", "base64 key of 16, 24 or 32 bytes that encrypts gossip (membership and event copies); the same on every node", func(c *Config, v string) error {
			if v == "" {
				c.ClusterKey = nil
				return nil
			}
			key, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				return errors.New("must be base64 (try: openssl rand -base64 32)")
			}
			if n := len(key); n != 16 && n != 24 && n != 32 {
				return fmt.Errorf("decodes to %d bytes; it must be 16, 24 or 32", n)
			}
			c.ClusterKey = key
			return nil
		}},
		{"SHUTDOWN_TIMEOUT", "shutdown-timeout", "10s", "time given to connections to flush and close on SIGTERM", func(c *Config, v string) error {
			return parseDuration(v, &c.ShutdownTimeout)
		}},
	}
}

func splitList(v string) []string {
	var out []string
	for _, item := range strings.Split(v, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func parseInt(v string, min, max int, dst *int) error {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return fmt.Errorf("%q is not an integer", v)
	}
	if n < min || n > max {
		return fmt.Errorf("%d is outside %d..%d", n, min, max)
	}
	*dst = n
	return nil
}

func parseDuration(v string, dst *time.Duration) error {
	v = strings.TrimSpace(v)
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.Atoi(v)
		if err2 != nil {
			return fmt.Errorf("%q is not a duration like 30s", v)
		}
		d = time.Duration(secs) * time.Second
	}
	if d <= 0 {
		return fmt.Errorf("%q must be positive", v)
	}
	*dst = d
	return nil
}

// loadConfig reads flags from args and the environment through getenv.
func loadConfig(name string, args []string, getenv func(string) string, usageOut io.Writer) (Config, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(usageOut)
	all := settings()
	values := make(map[string]*string, len(all))
	for _, s := range all {
		values[s.flag] = fs.String(s.flag, s.def, fmt.Sprintf("%s (env %s)", s.help, s.env))
	}
	fs.Usage = func() {
		fmt.Fprintf(usageOut, "Usage: %s [serve|healthcheck] [flags]\n       %s bench --workload publish|fanout|latency|connections [flags]   (%s bench --help)\n\nEvery flag can also be set by its environment variable; a flag wins over the variable.\n\n", name, name, name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var cfg Config
	for _, s := range all {
		v := s.def
		if env := getenv(s.env); env != "" {
			v = env
		}
		if set[s.flag] {
			v = *values[s.flag]
		}
		if err := s.apply(&cfg, v); err != nil {
			return Config{}, fmt.Errorf("%s (--%s): %w", s.env, s.flag, err)
		}
	}
	return cfg, nil
}
