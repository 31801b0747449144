package bench

import (
	"context"
	"time"
)

// System is a broker as a workload sees it: something to publish to and
// subscribe at, on one or more nodes. Enclave implements it over the
// WebSocket protocol; the NATS harness in deploy/bench implements it with
// the official NATS client, so both are measured by the same code.
type System interface {
	// Name labels the system in reports ("enclave", "nats-ws", ...).
	Name() string
	// Nodes lists the nodes' addresses; clients are spread over them.
	Nodes() []string
	// Prepare makes sure topic exists on every node before any client uses
	// it (creating it where needed); Cleanup undoes what Prepare created.
	Prepare(ctx context.Context, topic string) error
	Cleanup(ctx context.Context, topic string) error
	// DialPublisher opens one publishing connection to node.
	DialPublisher(ctx context.Context, node int, topic string, h PublisherHandler) (Publisher, error)
	// DialSubscriber opens one connection to node and subscribes it to
	// topic; it returns once the subscription is in place (acked).
	DialSubscriber(ctx context.Context, node int, topic string, h SubscriberHandler) (Subscriber, error)
}

// ProcessStats is implemented by systems that can read their server
// processes' resource use (from /proc, given their PIDs).
type ProcessStats interface {
	// ServerStats returns node's resident memory and the CPU time its
	// process has used so far; ok is false when it is not known.
	ServerStats(node int) (rssKiB int64, cpu time.Duration, ok bool)
}

// PublisherHandler receives a publisher's outcomes. Done is called once per
// Publish, with the n given to it and "" on success or an error code, from
// the publisher's own reader goroutine. Failed reports an error that belongs
// to no publish (the connection closed, say).
type PublisherHandler struct {
	Done   func(n uint64, code string)
	Failed func(code string)
}

// Publisher is one connection that publishes. Publish is called from one
// goroutine at a time and must not wait for the acknowledgement.
type Publisher interface {
	Publish(n uint64, payload []byte) error
	Close() error
}

// SubscriberHandler receives a subscriber's events: Event with the
// message's payload (the bytes published, or a slice that starts with them)
// and the time it was read; Failed with an error code (a seq out of order,
// the connection closed, an error frame).
type SubscriberHandler struct {
	Event  func(payload []byte, at time.Time)
	Failed func(code string)
}

// Subscriber is one subscribed connection.
type Subscriber interface {
	Close() error
}
