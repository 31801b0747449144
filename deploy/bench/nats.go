package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mr-enclave/enclave/bench"
	"github.com/nats-io/nats.go"
)

// natsSystem drives nats-server through the official Go client over
// WebSocket: core NATS (publish + PING/PONG flush as the "ack") or a
// JetStream stream (PublishAsync, acked after the stream's replicas have
// stored the message; subscribers are ordered push consumers, which
// receive a message once it is stored).
type natsSystem struct {
	name      string
	urls      []string // ws://host:port, one per server
	jetstream bool
	consumers bool // JetStream: subscribers are ordered consumers (else core subscriptions)
	replicas  int
	maxMsgs   int64
	pids      bench.PIDStats
}

var (
	_ bench.System       = (*natsSystem)(nil)
	_ bench.ProcessStats = (*natsSystem)(nil)
)

func (s *natsSystem) Name() string    { return s.name }
func (s *natsSystem) Nodes() []string { return s.urls }

func (s *natsSystem) ServerStats(node int) (int64, time.Duration, bool) {
	return s.pids.ServerStats(node)
}

func (s *natsSystem) connect(ctx context.Context, node int, failed func(string)) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("enclave-bench"),
		nats.NoReconnect(),
		nats.Timeout(15 * time.Second),
		nats.PingInterval(time.Minute),
	}
	if failed != nil {
		opts = append(opts,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					failed("CLOSED")
				}
			}),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
				switch {
				case errors.Is(err, nats.ErrSlowConsumer):
					failed("SLOW_CONSUMER")
				default:
					failed("ASYNC_ERROR")
				}
			}))
	}
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(dl)))
	}
	return nats.Connect(s.urls[node], opts...)
}

// admin connects to the first server for stream administration; the
// caller closes the connection.
func (s *natsSystem) admin(ctx context.Context) (*nats.Conn, nats.JetStreamContext, error) {
	nc, err := s.connect(ctx, 0, nil)
	if err != nil {
		return nil, nil, err
	}
	js, err := nc.JetStream(nats.Context(ctx))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// Prepare creates the JetStream stream (R = replicas, max-msgs = RING_SIZE,
// file storage, discard old) named after the topic; core NATS needs
// nothing.
func (s *natsSystem) Prepare(ctx context.Context, topic string) error {
	if !s.jetstream {
		return nil
	}
	nc, js, err := s.admin(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg := &nats.StreamConfig{
		Name:      topic,
		Subjects:  []string{topic},
		Replicas:  s.replicas,
		MaxMsgs:   s.maxMsgs,
		Storage:   nats.FileStorage,
		Retention: nats.LimitsPolicy,
		Discard:   nats.DiscardOld,
	}
	for {
		_, err = js.AddStream(cfg)
		if err == nil || errors.Is(err, nats.ErrStreamNameAlreadyInUse) {
			return nil
		}
		// A cluster that has just elected its meta leader answers JetStream
		// requests before it knows all its peers: placement of a replicated
		// stream fails until it does (seen in a CI smoke run).
		if !strings.Contains(err.Error(), "no suitable peers") {
			return fmt.Errorf("add stream: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("add stream: %w (still after %v)", err, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (s *natsSystem) Cleanup(ctx context.Context, topic string) error {
	if !s.jetstream {
		return nil
	}
	nc, js, err := s.admin(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	return js.DeleteStream(topic)
}

type natsPublisher struct {
	nc    *nats.Conn
	js    nats.JetStreamContext
	topic string
	h     bench.PublisherHandler

	// JetStream: futures in send order, resolved by one goroutine.
	futures chan natsFuture
	// Core: the highest n published, acknowledged by a flush loop.
	published atomic.Int64
	kick      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type natsFuture struct {
	n uint64
	f nats.PubAckFuture
}

func (s *natsSystem) DialPublisher(ctx context.Context, node int, topic string, h bench.PublisherHandler) (bench.Publisher, error) {
	nc, err := s.connect(ctx, node, h.Failed)
	if err != nil {
		return nil, err
	}
	p := &natsPublisher{nc: nc, topic: topic, h: h, done: make(chan struct{})}
	if s.jetstream {
		p.js, err = nc.JetStream(nats.PublishAsyncMaxPending(bench.MaxDepth))
		if err != nil {
			nc.Close()
			return nil, err
		}
		p.futures = make(chan natsFuture, bench.MaxDepth)
		go p.resolveAcks()
	} else {
		p.published.Store(-1)
		p.kick = make(chan struct{}, 1)
		go p.flushLoop()
	}
	return p, nil
}

func (p *natsPublisher) Publish(n uint64, payload []byte) error {
	if p.js != nil {
		f, err := p.js.PublishAsync(p.topic, payload)
		if err != nil {
			return err
		}
		p.futures <- natsFuture{n, f}
		return nil
	}
	if err := p.nc.Publish(p.topic, payload); err != nil {
		return err
	}
	p.published.Store(int64(n))
	select {
	case p.kick <- struct{}{}:
	default:
	}
	return nil
}

// resolveAcks waits for each JetStream ack in send order.
func (p *natsPublisher) resolveAcks() {
	defer close(p.done)
	for fu := range p.futures {
		select {
		case <-fu.f.Ok():
			p.h.Done(fu.n, "")
		case err := <-fu.f.Err():
			p.h.Done(fu.n, jsCode(err))
		case <-time.After(30 * time.Second):
			p.h.Done(fu.n, "NO_ACK")
		}
	}
}

func jsCode(err error) string {
	var apiErr *nats.APIError
	switch {
	case errors.As(err, &apiErr):
		return fmt.Sprintf("JS_%d", apiErr.ErrorCode)
	case errors.Is(err, nats.ErrNoResponders):
		return "NO_RESPONDERS"
	case errors.Is(err, nats.ErrTimeout):
		return "TIMEOUT"
	default:
		return "PUBLISH_ERROR"
	}
}

// flushLoop acknowledges core publishes: after a PING/PONG round trip the
// server has processed every publish sent before it.
func (p *natsPublisher) flushLoop() {
	defer close(p.done)
	next := int64(0)
	for range p.kick {
		upto := p.published.Load()
		if upto < next {
			continue
		}
		code := ""
		if err := p.nc.FlushTimeout(30 * time.Second); err != nil {
			code = "FLUSH_FAILED"
		}
		for ; next <= upto; next++ {
			p.h.Done(uint64(next), code)
		}
	}
}

func (p *natsPublisher) Close() error {
	p.closeOnce.Do(func() {
		if p.futures != nil {
			close(p.futures)
		} else {
			close(p.kick)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
		p.nc.Close()
	})
	return nil
}

type natsSubscriber struct {
	nc  *nats.Conn
	sub *nats.Subscription
}

func (s *natsSystem) DialSubscriber(ctx context.Context, node int, topic string, h bench.SubscriberHandler) (bench.Subscriber, error) {
	nc, err := s.connect(ctx, node, h.Failed)
	if err != nil {
		return nil, err
	}
	cb := func(m *nats.Msg) { h.Event(m.Data, time.Now()) }
	var sub *nats.Subscription
	if s.consumers {
		// A consumer is created by a JetStream API request to the stream's
		// leader; with a thousand created at once on a busy 2-core machine
		// some take longer than the client's default 5 s.
		js, err := nc.JetStream(nats.MaxWait(30 * time.Second))
		if err != nil {
			nc.Close()
			return nil, err
		}
		sub, err = js.Subscribe(topic, cb, nats.OrderedConsumer(), nats.DeliverNew())
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("ordered consumer: %w", err)
		}
	} else {
		sub, err = nc.Subscribe(topic, cb)
		if err != nil {
			nc.Close()
			return nil, err
		}
	}
	// Generous pending limits: a slow subscriber shows as a lower delivery
	// rate, not as client-side drops.
	_ = sub.SetPendingLimits(1<<20, 1<<30)
	if err := nc.FlushTimeout(15 * time.Second); err != nil {
		nc.Close()
		return nil, err
	}
	return &natsSubscriber{nc: nc, sub: sub}, nil
}

func (s *natsSubscriber) Close() error {
	_ = s.sub.Unsubscribe()
	s.nc.Close()
	return nil
}
