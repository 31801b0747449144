package gateway

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

// Config holds the gateway's limits. Zero values take the spec's defaults.
type Config struct {
	MaxMessageBytes   int           // largest accepted frame (default 1 MiB)
	HeartbeatInterval time.Duration // idle time before a heartbeat (default 30s)
	WriteTimeout      time.Duration // a socket write slower than this closes the connection (default 10s)
	AllowedOrigins    []string      // browser Origins allowed on /ws; "*" or empty allows all
	RequestTimeout    time.Duration // bound on a REST write's commit (default 10s)
	Logger            *slog.Logger
	Cluster           ClusterView // nil reports a lone node
	NodeID            string
	AdvertiseAddr     string
}

func (c Config) withDefaults() Config {
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 1 << 20
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 30 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// ClusterView is what the gateway needs to know about the cluster.
type ClusterView interface {
	Status() ClusterStatus
	// RemoteSubscribers counts subscriptions per topic on the other nodes.
	RemoteSubscribers() map[string]int
}

// ClusterStatus is the body of GET /cluster.
type ClusterStatus struct {
	NodeID   string   `json:"node_id"`
	LeaderID string   `json:"leader_id"`
	Members  []Member `json:"members"`
}

// Member is one node as GET /cluster shows it.
type Member struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Status  string `json:"status"`
	Voter   bool   `json:"voter"`
}

// Gateway serves the WebSocket and REST protocol over one broker.
type Gateway struct {
	cfg      Config
	broker   *broker.Broker
	log      *slog.Logger
	upgrader websocket.Upgrader
	started  time.Time

	nextConnID atomic.Uint64
	draining   atomic.Bool

	mu    sync.Mutex
	conns map[*conn]struct{}
	idle  *sync.Cond // signalled when conns shrinks
}

// New returns a gateway over b.
func New(b *broker.Broker, cfg Config) *Gateway {
	cfg = cfg.withDefaults()
	g := &Gateway{cfg: cfg, broker: b, log: cfg.Logger, started: time.Now(), conns: make(map[*conn]struct{})}
	g.idle = sync.NewCond(&g.mu)
	g.upgrader = websocket.Upgrader{
		HandshakeTimeout: 10 * time.Second,
		// Frames larger than this are read in several steps; 2 KiB holds
		// typical requests whole and keeps idle connections small.
		ReadBufferSize: 2048,
		// A write buffer pool means gorilla holds no per-connection write
		// buffer; our writer batches frames itself.
		WriteBufferPool: &sync.Pool{},
		CheckOrigin:     g.checkOrigin,
		Error:           upgradeError,
	}
	return g
}

// upgradeError answers a refused upgrade with the JSON error body every
// other endpoint uses: an Origin outside ALLOWED_ORIGINS is UNAUTHORIZED,
// anything else (no upgrade headers, a wrong version) BAD_REQUEST.
func upgradeError(w http.ResponseWriter, _ *http.Request, status int, reason error) {
	code := CodeBadRequest
	if status == http.StatusForbidden {
		code = CodeUnauthorized
	}
	writeError(w, status, code, reason.Error())
}

// hardReadLimit is the frame size beyond which gorilla closes the
// connection with 1009; frames between MaxMessageBytes and it are read,
// discarded and answered with BAD_REQUEST.
func (g *Gateway) hardReadLimit() int64 {
	max := int64(g.cfg.MaxMessageBytes)
	return max*4 + 64<<10
}

func (g *Gateway) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || len(g.cfg.AllowedOrigins) == 0 {
		return true
	}
	for _, allowed := range g.cfg.AllowedOrigins {
		if allowed == "*" || strings.EqualFold(allowed, origin) {
			return true
		}
	}
	return false
}

func (g *Gateway) track(c *conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conns[c] = struct{}{}
	return !g.draining.Load()
}

func (g *Gateway) untrack(c *conn) {
	g.mu.Lock()
	delete(g.conns, c)
	g.idle.Broadcast()
	g.mu.Unlock()
}

// Connections counts open WebSocket connections.
func (g *Gateway) Connections() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

// Shutdown refuses new connections, publishes and subscribes, lets every
// connection flush what is queued and sends each a close frame (1001), then
// waits for them to go until ctx ends, when the rest are cut off.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.draining.Store(true)
	g.mu.Lock()
	for c := range g.conns {
		c.closeWith(websocket.CloseGoingAway, "server shutting down", "shutdown")
	}
	g.mu.Unlock()

	done := make(chan struct{})
	go func() {
		g.mu.Lock()
		for len(g.conns) > 0 {
			g.idle.Wait()
		}
		g.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		g.mu.Lock()
		for c := range g.conns {
			c.raw.Close()
		}
		g.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// describeForTopic words topic errors the way the spec shows them.
func describeForTopic(code, msg, topic string) string {
	if topic == "" {
		return msg
	}
	switch code {
	case CodeTopicNotFound:
		return "topic '" + topic + "' does not exist"
	case CodeTopicExists:
		return "topic '" + topic + "' already exists"
	}
	return msg
}
