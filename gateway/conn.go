package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mr-enclave/enclave/broker"
)

const (
	// maxControlFrames bounds replies (acks, errors, pongs) waiting to be
	// written. A client that lets this many pile up is not reading.
	maxControlFrames = 1024
	// maxSubscriptionsPerConn bounds the queues one connection can own.
	maxSubscriptionsPerConn = 1000
	// maxInflightPublishes bounds one connection's publishes awaiting commit.
	maxInflightPublishes = 256
	// closeGrace is how long a peer has to answer our close frame.
	closeGrace = 2 * time.Second
)

type subKey struct{ topic, clientID string }

type outFrame struct {
	op   byte
	data []byte
}

// conn is one WebSocket client.
type conn struct {
	g      *Gateway
	id     uint64
	ws     *websocket.Conn
	raw    net.Conn   // the socket, for the writer's batched writes
	wmu    sync.Mutex // shared with the lockedConn gorilla writes through
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	opened time.Time

	// lastRead is when the last frame or pong arrived, as time since opened:
	// monotonic, so a step of the wall clock cannot reap idle connections.
	lastRead  atomic.Int64
	heartbeat *time.Timer
	pipe      publishPipeline

	mu         sync.Mutex
	control    []outFrame
	ready      []*broker.Subscription
	subs       map[subKey]*broker.Subscription
	writing    bool
	closing    bool   // no more events are taken; replies are until closeSent is set
	closeFrame []byte // sent once everything queued before it is written
	closeSent  bool
	flushed    chan struct{} // closed when the writer stops after closing
	closeCause string
}

// hijackWrapper hands gorilla a socket whose writes take the connection's
// write lock.
type hijackWrapper struct {
	http.ResponseWriter
	wmu *sync.Mutex
	raw *net.Conn
}

func (h hijackWrapper) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response does not support hijacking")
	}
	nc, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	*h.raw = nc
	return lockedConn{Conn: nc, mu: h.wmu}, rw, nil
}

func (g *Gateway) serveWS(w http.ResponseWriter, r *http.Request) {
	if g.draining.Load() {
		writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "server is shutting down")
		return
	}
	c := &conn{g: g, id: g.nextConnID.Add(1), opened: time.Now(), flushed: make(chan struct{})}
	ws, err := g.upgrader.Upgrade(hijackWrapper{ResponseWriter: w, wmu: &c.wmu, raw: &c.raw}, r, nil)
	if err != nil {
		g.log.Info("websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return // gorilla has answered with an HTTP error
	}
	c.ws = ws
	c.log = g.log.With("conn", c.id, "remote", r.RemoteAddr)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.pipe.c = c
	c.pipe.cond.L = &c.pipe.mu
	ws.SetReadLimit(g.hardReadLimit())
	ws.SetPingHandler(func(data string) error {
		c.touch()
		c.enqueue(outFrame{op: opPong, data: []byte(data)})
		return nil
	})
	ws.SetPongHandler(func(string) error { c.touch(); return nil })
	ws.SetCloseHandler(func(code int, _ string) error {
		if code == websocket.CloseNoStatusReceived {
			code = websocket.CloseNormalClosure
		}
		c.closeWith(code, "", "client closed")
		return nil
	})
	if !g.track(c) {
		c.closeWith(websocket.CloseGoingAway, "server shutting down", "shutdown")
	}
	c.touch()
	// Armed after the assignment, so the callback always sees the timer.
	c.heartbeat = time.AfterFunc(time.Hour, c.onHeartbeat)
	c.heartbeat.Reset(g.cfg.HeartbeatInterval)
	c.log.Info("websocket opened")
	// The reader runs on a goroutine of its own and the handler returns, so
	// net/http's response buffer and the handler's grown stack are released:
	// an idle connection then holds only the reader's small stack and its
	// read buffer. The gateway owns the goroutine through g.conns; Shutdown
	// waits for it.
	go func() {
		c.readLoop()
		c.teardown()
		g.untrack(c)
	}()
}

func (c *conn) touch() { c.lastRead.Store(int64(time.Since(c.opened))) }

func (c *conn) readLoop() {
	max := c.g.cfg.MaxMessageBytes
	for {
		mt, r, err := c.ws.NextReader()
		if err != nil {
			c.noteReadError(err)
			return
		}
		c.touch()
		bufp := readBufPool.Get().(*bytes.Buffer)
		bufp.Reset()
		n, err := bufp.ReadFrom(io.LimitReader(r, int64(max)+1))
		if err == nil && n > int64(max) {
			_, err = io.Copy(io.Discard, r)
			if err == nil {
				c.replyError(sniffRequestID(bufp.Bytes()), badRequestf("message too large: the limit is "+itoa(max)+" bytes"), "")
			}
		} else if err == nil && mt != websocket.TextMessage {
			c.replyError(sniffRequestID(bufp.Bytes()), badRequestf("binary frames are not supported: send JSON text frames"), "")
		} else if err == nil {
			c.handle(bufp.Bytes())
		}
		if bufp.Cap() <= maxPooledBuf {
			readBufPool.Put(bufp)
		}
		if err != nil {
			c.noteReadError(err)
			return
		}
	}
}

var readBufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (c *conn) noteReadError(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeCause != "" {
		return
	}
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		c.closeCause = "client closed"
	case errors.Is(err, websocket.ErrReadLimit):
		c.closeCause = "frame far beyond the size limit"
		c.closeSent = true // gorilla has sent close 1009
	default:
		c.closeCause = "read: " + err.Error()
	}
}

func (c *conn) handle(data []byte) {
	req, err := DecodeRequest(data)
	if err != nil {
		c.replyError(req.RequestID, err, req.Topic)
		return
	}
	if req.Type != TypePublish {
		// Anything but a publish waits for this connection's earlier
		// publishes, so a later subscribe or ping sees them committed.
		c.pipe.wait()
	}
	switch req.Type {
	case TypePing:
		c.enqueue(outFrame{op: opText, data: encodePong(req.RequestID, time.Now())})
	case TypeSubscribe:
		c.subscribe(req)
	case TypeUnsubscribe:
		c.unsubscribe(req)
	case TypePublish:
		c.publish(req)
	}
}

func (c *conn) subscribe(req Request) {
	if c.g.draining.Load() {
		c.replyError(req.RequestID, broker.ErrClosed, req.Topic)
		return
	}
	key := subKey{req.Topic, req.ClientID}
	c.mu.Lock()
	existing := c.subs[key]
	count := len(c.subs)
	c.mu.Unlock()
	if existing != nil && !existing.Ended() {
		c.ack(req.RequestID, req.Topic)
		return
	}
	if existing == nil && count >= maxSubscriptionsPerConn {
		c.replyError(req.RequestID, badRequestf("too many subscriptions on one connection (the limit is "+itoa(maxSubscriptionsPerConn)+")"), req.Topic)
		return
	}
	sub, err := c.g.broker.Subscribe(req.Topic, req.ClientID, req.LastN, c)
	if err != nil {
		c.replyError(req.RequestID, err, req.Topic)
		return
	}
	c.mu.Lock()
	if c.subs == nil {
		c.subs = make(map[subKey]*broker.Subscription)
	}
	c.subs[key] = sub
	closing := c.closing
	c.mu.Unlock()
	if closing {
		c.g.broker.Unsubscribe(sub)
		return
	}
	c.ack(req.RequestID, req.Topic)
	sub.Start() // after the ack, so the ack precedes the replay
}

func (c *conn) unsubscribe(req Request) {
	key := subKey{req.Topic, req.ClientID}
	c.mu.Lock()
	sub := c.subs[key]
	delete(c.subs, key)
	c.mu.Unlock()
	if sub != nil {
		c.g.broker.Unsubscribe(sub)
	} else if !c.g.broker.HasTopic(req.Topic) {
		c.replyError(req.RequestID, broker.ErrTopicNotFound, req.Topic)
		return
	}
	c.ack(req.RequestID, req.Topic)
}

func (c *conn) publish(req Request) {
	if c.g.draining.Load() {
		c.replyError(req.RequestID, broker.ErrClosed, req.Topic)
		return
	}
	p := c.g.broker.Publish(req.Topic, req.Message)
	if done, ok := p.(broker.Done); ok && c.pipe.idle() {
		c.replyPublish(req.RequestID, req.Topic, done.Result, done.Err)
		return
	}
	c.pipe.push(pendingPublish{requestID: req.RequestID, topic: req.Topic, pending: p})
}

func (c *conn) replyPublish(requestID, topic string, res broker.Result, err error) {
	if err == nil {
		err = res.Err
	}
	if err != nil && errors.Is(err, context.Canceled) && c.ctx.Err() != nil {
		// The connection is gone; nobody reads the reply.
		c.log.Debug("publish abandoned: connection closed", "request_id", requestID)
		return
	}
	if err != nil {
		c.replyError(requestID, err, topic)
		return
	}
	c.ack(requestID, topic)
}

func (c *conn) ack(requestID, topic string) {
	c.enqueue(outFrame{op: opText, data: encodeAck(requestID, topic, time.Now())})
}

func (c *conn) replyError(requestID string, err error, topic string) {
	code, _, msg := classify(err)
	msg = describeForTopic(code, msg, topic)
	level := slog.LevelInfo
	if code == CodeInternal {
		level = slog.LevelError
	}
	c.log.Log(context.Background(), level, "request refused", "code", code, "request_id", requestID, "err", err)
	c.enqueue(outFrame{op: opText, data: encodeError(requestID, code, msg, time.Now())})
}

// enqueue queues a reply. Replies are taken until the close frame is sent,
// so a request read while a closing connection flushes (during a shutdown)
// is still answered. A client with maxControlFrames unread replies is not
// reading and is disconnected.
func (c *conn) enqueue(f outFrame) {
	c.mu.Lock()
	if c.closeSent {
		c.mu.Unlock()
		return
	}
	if len(c.control) >= maxControlFrames {
		c.mu.Unlock()
		c.closeWith(websocket.ClosePolicyViolation, "too many unread replies", "client not reading replies")
		return
	}
	c.control = append(c.control, f)
	c.startWriterLocked()
	c.mu.Unlock()
}

// Wake implements broker.Waker: sub has events or has ended.
func (c *conn) Wake(sub *broker.Subscription) {
	c.mu.Lock()
	if !c.closing {
		c.ready = append(c.ready, sub)
		c.startWriterLocked()
	}
	c.mu.Unlock()
}

// closeWith queues a close frame after everything already queued and stops
// accepting new frames.
func (c *conn) closeWith(code int, reason, cause string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return
	}
	c.closing = true
	if c.closeCause == "" {
		c.closeCause = cause
	}
	c.closeFrame = closePayload(code, reason)
	c.startWriterLocked()
}

// pipelineDrained runs when the last publish in flight has been answered:
// a close frame held back for it can now be written.
func (c *conn) pipelineDrained() {
	c.mu.Lock()
	if c.closeFrame != nil {
		c.startWriterLocked()
	}
	c.mu.Unlock()
}

func (c *conn) startWriterLocked() {
	if !c.writing && !c.closeSent {
		c.writing = true
		go c.writeLoop()
	}
}

// writeLoop runs while there is something to write and then exits; the next
// enqueue or Wake starts it again. Each round takes every pending reply and
// every ready subscription's queue and writes them in one socket write.
func (c *conn) writeLoop() {
	scratch := writeScratchPool.Get().(*writeScratch)
	buf, events := scratch.buf[:0], scratch.events[:0]
	var control []outFrame
	var ready []*broker.Subscription
	defer func() {
		if cap(buf) <= maxPooledBuf {
			scratch.buf, scratch.events = buf[:0], events[:0]
			writeScratchPool.Put(scratch)
		}
	}()
	for {
		c.mu.Lock()
		control, c.control = c.control, control[:0]
		ready, c.ready = c.ready, ready[:0]
		if len(control) == 0 && len(ready) == 0 {
			// The close frame waits for the acks of publishes still being
			// committed: a publisher told 1001 without its ack would resend
			// a message that was committed. The pipeline restarts this
			// writer once it has answered them (pipelineDrained).
			if c.closeFrame != nil && !c.closeSent && c.pipe.idle() {
				c.closeSent = true
				frame := c.closeFrame
				c.mu.Unlock()
				buf = appendFrame(buf[:0], opClose, frame)
				c.write(buf)
				time.AfterFunc(closeGrace, func() { c.raw.Close() })
				c.mu.Lock()
			}
			c.writing = false
			if c.closing {
				select {
				case <-c.flushed:
				default:
					close(c.flushed)
				}
			}
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()

		buf = buf[:0]
		for i, f := range control {
			buf = appendFrame(buf, f.op, f.data)
			control[i] = outFrame{}
		}
		for i, sub := range ready {
			var end broker.EndReason
			events, end = sub.Drain(events[:0])
			for j, e := range events {
				buf = appendFrame(buf, opText, e.Frame)
				events[j] = nil
				if len(buf) >= writeBufSize {
					if !c.write(buf) {
						return
					}
					buf = buf[:0]
				}
			}
			buf = c.endSubscription(buf, sub, end)
			ready[i] = nil
		}
		if len(buf) > 0 && !c.write(buf) {
			return
		}
	}
}

// endSubscription tells the client why a subscription ended, if it did.
func (c *conn) endSubscription(buf []byte, sub *broker.Subscription, end broker.EndReason) []byte {
	switch end {
	case broker.EndTopicDeleted:
		c.forget(sub)
		return appendFrame(buf, opText, encodeInfo(sub.Topic(), "topic_deleted", time.Now()))
	case broker.EndSlowConsumer:
		c.forget(sub)
		msg := "subscription to '" + sub.Topic() + "' fell " + itoa(c.g.broker.Config().QueueSize) + " events behind"
		buf = appendFrame(buf, opText, encodeError("", CodeSlowConsumer, msg, time.Now()))
		c.log.Info("slow consumer disconnected", "topic", sub.Topic(), "client_id", sub.ClientID())
		c.closeWith(websocket.ClosePolicyViolation, "slow consumer", "slow consumer")
	}
	return buf
}

func (c *conn) forget(sub *broker.Subscription) {
	key := subKey{sub.Topic(), sub.ClientID()}
	c.mu.Lock()
	if c.subs[key] == sub {
		delete(c.subs, key)
	}
	c.mu.Unlock()
}

// write sends buf in one socket write; on failure the connection is closed
// and the writer stops for good.
func (c *conn) write(buf []byte) bool {
	c.wmu.Lock()
	_ = c.raw.SetWriteDeadline(time.Now().Add(c.g.cfg.WriteTimeout))
	_, err := c.raw.Write(buf)
	c.wmu.Unlock()
	if err == nil {
		return true
	}
	c.mu.Lock()
	c.closing, c.closeSent, c.writing = true, true, false
	if c.closeCause == "" {
		c.closeCause = "write: " + err.Error()
	}
	select {
	case <-c.flushed:
	default:
		close(c.flushed)
	}
	c.mu.Unlock()
	c.raw.Close()
	return false
}

func (c *conn) onHeartbeat() {
	interval := c.g.cfg.HeartbeatInterval
	idle := time.Since(c.opened) - time.Duration(c.lastRead.Load())
	switch {
	case idle >= 3*interval:
		c.mu.Lock()
		if c.closeCause == "" {
			c.closeCause = "no answer for three heartbeat intervals"
		}
		c.mu.Unlock()
		c.raw.Close()
		return
	case idle >= interval:
		now := time.Now()
		c.enqueue(outFrame{op: opText, data: encodeInfo("", "ping", now)})
		c.enqueue(outFrame{op: opPing, data: nil})
		c.heartbeat.Reset(interval)
	default:
		c.heartbeat.Reset(interval - idle)
	}
}

// teardown runs when the reader stops: it releases every subscription, lets
// the writer flush a close frame for a bounded time, and closes the socket.
func (c *conn) teardown() {
	c.heartbeat.Stop()
	c.cancel()
	c.closeWith(websocket.CloseNormalClosure, "", "")
	c.mu.Lock()
	subs := c.subs
	c.subs = nil
	writing := c.writing
	cause := c.closeCause
	c.mu.Unlock()
	for _, s := range subs {
		c.g.broker.Unsubscribe(s)
	}
	c.pipe.wait()
	if writing {
		select {
		case <-c.flushed:
		case <-time.After(closeGrace):
		}
	}
	c.raw.Close()
	c.log.Info("websocket closed", "cause", cause, "duration", time.Since(c.opened).Round(time.Millisecond))
}
