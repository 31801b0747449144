package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

// specVariables are the environment variables the contract lists.
var specVariables = []string{
	"PORT", "RING_SIZE", "QUEUE_SIZE", "LOG_LEVEL", "OVERFLOW_POLICY", "MAX_MESSAGE_BYTES",
	"HEARTBEAT_INTERVAL", "ALLOWED_ORIGINS", "NODE_ID", "DATA_DIR", "RAFT_PORT", "GOSSIP_PORT",
	"ADVERTISE_ADDR", "JOIN", "BOOTSTRAP_EXPECT",
}

func envOf(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

// TestConfigPrecedence checks, setting by setting, the default, that the
// environment overrides it and that the flag overrides the environment.
func TestConfigPrecedence(t *testing.T) {
	hostname, _ := os.Hostname()
	tests := []struct {
		env, flag       string
		get             func(Config) any
		def             string // the default, as fmt.Sprint of the field
		envVal, envWant string
		flagVal, want   string
	}{
		{"PORT", "port", func(c Config) any { return c.Port }, "8000", "9000", "9000", "9100", "9100"},
		{"RING_SIZE", "ring-size", func(c Config) any { return c.RingSize }, "100", "5", "5", "7", "7"},
		{"QUEUE_SIZE", "queue-size", func(c Config) any { return c.QueueSize }, "100", "4", "4", "8", "8"},
		{"LOG_LEVEL", "log-level", func(c Config) any { return c.LogLevel }, "INFO", "debug", "DEBUG", "ERROR", "ERROR"},
		{"OVERFLOW_POLICY", "overflow-policy", func(c Config) any { return c.Overflow }, "drop_oldest", "disconnect", "disconnect", "drop_oldest", "drop_oldest"},
		{"MAX_MESSAGE_BYTES", "max-message-bytes", func(c Config) any { return c.MaxMessageBytes }, "1048576", "4096", "4096", "2048", "2048"},
		{"HEARTBEAT_INTERVAL", "heartbeat-interval", func(c Config) any { return c.HeartbeatInterval }, "30s", "5", "5s", "250ms", "250ms"},
		{"ALLOWED_ORIGINS", "allowed-origins", func(c Config) any { return c.AllowedOrigins }, "[*]", "https://a.example, https://b.example,", "[https://a.example https://b.example]", "https://c.example", "[https://c.example]"},
		{"NODE_ID", "node-id", func(c Config) any { return c.NodeID }, hostname, "n-env", "n-env", "n-flag", "n-flag"},
		{"DATA_DIR", "data-dir", func(c Config) any { return c.DataDir }, "./data", "/var/lib/enclave", "/var/lib/enclave", "/tmp/x", "/tmp/x"},
		{"RAFT_PORT", "raft-port", func(c Config) any { return c.RaftPort }, "7947", "8947", "8947", "9947", "9947"},
		{"GOSSIP_PORT", "gossip-port", func(c Config) any { return c.GossipPort }, "7946", "8946", "8946", "9946", "9946"},
		{"ADVERTISE_ADDR", "advertise-addr", func(c Config) any { return c.AdvertiseAddr }, "", "10.0.0.5", "10.0.0.5", "10.0.0.6", "10.0.0.6"},
		{"JOIN", "join", func(c Config) any { return c.Join }, "[]", "n1:7946,n2:7946", "[n1:7946 n2:7946]", "n3:7946", "[n3:7946]"},
		{"BOOTSTRAP_EXPECT", "bootstrap-expect", func(c Config) any { return c.BootstrapExpect }, "1", "3", "3", "5", "5"},
		{"SHUTDOWN_TIMEOUT", "shutdown-timeout", func(c Config) any { return c.ShutdownTimeout }, "10s", "3s", "3s", "1m", "1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			load := func(args []string, env map[string]string) string {
				t.Helper()
				cfg, err := loadConfig("enclave", args, envOf(env), io.Discard)
				if err != nil {
					t.Fatalf("loadConfig(%v, %v): %v", args, env, err)
				}
				return fmt.Sprint(tt.get(cfg))
			}
			if got := load(nil, nil); got != tt.def {
				t.Errorf("default %s = %q, want %q", tt.env, got, tt.def)
			}
			env := map[string]string{tt.env: tt.envVal}
			if got := load(nil, env); got != tt.envWant {
				t.Errorf("%s=%q gives %q, want %q", tt.env, tt.envVal, got, tt.envWant)
			}
			if got := load([]string{"--" + tt.flag, tt.flagVal}, env); got != tt.want {
				t.Errorf("--%s=%q over %s=%q gives %q, want %q", tt.flag, tt.flagVal, tt.env, tt.envVal, got, tt.want)
			}
			if got := load([]string{"-" + tt.flag + "=" + tt.flagVal}, nil); got != tt.want {
				t.Errorf("-%s=%q gives %q, want %q", tt.flag, tt.flagVal, got, tt.want)
			}
		})
	}
	// An empty variable counts as unset.
	cfg, err := loadConfig("enclave", nil, envOf(map[string]string{"PORT": "", "NODE_ID": ""}), io.Discard)
	if err != nil || cfg.Port != 8000 || cfg.NodeID != hostname {
		t.Errorf("empty PORT and NODE_ID: %+v, %v; want the defaults", cfg, err)
	}
}

// TestConfigInvalid checks that a bad value, from the environment or a
// flag, is an error naming the variable and its flag.
func TestConfigInvalid(t *testing.T) {
	tests := []struct{ env, flag, value string }{
		{"PORT", "port", "http"},
		{"PORT", "port", "0"},
		{"PORT", "port", "65536"},
		{"RING_SIZE", "ring-size", "0"},
		{"RING_SIZE", "ring-size", "ten"},
		{"QUEUE_SIZE", "queue-size", "-1"},
		{"LOG_LEVEL", "log-level", "verbose"},
		{"OVERFLOW_POLICY", "overflow-policy", "block"},
		{"MAX_MESSAGE_BYTES", "max-message-bytes", "10"},
		{"MAX_MESSAGE_BYTES", "max-message-bytes", "1MB"},
		{"HEARTBEAT_INTERVAL", "heartbeat-interval", "soon"},
		{"HEARTBEAT_INTERVAL", "heartbeat-interval", "0"},
		{"HEARTBEAT_INTERVAL", "heartbeat-interval", "-5s"},
		{"RAFT_PORT", "raft-port", "x"},
		{"GOSSIP_PORT", "gossip-port", "99999"},
		{"ADVERTISE_ADDR", "advertise-addr", "not-an-ip"},
		{"BOOTSTRAP_EXPECT", "bootstrap-expect", "0"},
		{"SHUTDOWN_TIMEOUT", "shutdown-timeout", "never"},
	}
	for _, tt := range tests {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			_, envErr := loadConfig("enclave", nil, envOf(map[string]string{tt.env: tt.value}), io.Discard)
			_, flagErr := loadConfig("enclave", []string{"--" + tt.flag + "=" + tt.value}, envOf(nil), io.Discard)
			for _, err := range []error{envErr, flagErr} {
				if err == nil {
					t.Fatalf("%s=%q accepted", tt.env, tt.value)
				}
				if msg := err.Error(); !strings.Contains(msg, tt.env) || !strings.Contains(msg, "--"+tt.flag) {
					t.Errorf("error %q does not name %s and --%s", msg, tt.env, tt.flag)
				}
			}
		})
	}
	// Values that must not be empty cannot be emptied by a flag either.
	for _, f := range []string{"node-id", "data-dir"} {
		if _, err := loadConfig("enclave", []string{"--" + f + "="}, envOf(nil), io.Discard); err == nil {
			t.Errorf("--%s= accepted", f)
		}
	}
	if _, err := loadConfig("enclave", []string{"extra"}, envOf(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Errorf("a stray argument gives %v", err)
	}
	if _, err := loadConfig("enclave", []string{"--no-such-flag"}, envOf(nil), io.Discard); err == nil {
		t.Error("an unknown flag was accepted")
	}

	// The command itself exits 2 and says why on stderr.
	var stdout, stderr bytes.Buffer
	if code := run(nil, envOf(map[string]string{"QUEUE_SIZE": "lots"}), &stdout, &stderr); code != 2 {
		t.Fatalf("run with QUEUE_SIZE=lots exited %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "QUEUE_SIZE") || !strings.Contains(stderr.String(), `"lots"`) {
		t.Fatalf("stderr %q does not explain the bad QUEUE_SIZE", stderr.String())
	}
}

// TestHelp checks that --help (and -h, and after a subcommand) exits 0 and
// lists every variable.
func TestHelp(t *testing.T) {
	var want []string
	for _, s := range settings() {
		want = append(want, s.env, "-"+s.flag)
	}
	want = append(want, specVariables...)
	for _, args := range [][]string{{"--help"}, {"-h"}, {"serve", "--help"}, {"healthcheck", "-help"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, envOf(nil), &stdout, &stderr); code != 0 {
			t.Fatalf("run %v exited %d (stderr %q), want 0", args, code, stderr.String())
		}
		for _, w := range want {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("run %v: help does not mention %s:\n%s", args, w, stdout.String())
			}
		}
	}
	_, err := loadConfig("enclave", []string{"--help"}, envOf(nil), io.Discard)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("loadConfig(--help) = %v, want flag.ErrHelp", err)
	}
}
