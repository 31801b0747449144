package gateway

import (
	"sync"

	"github.com/mr-enclave/enclave/broker"
)

type pendingPublish struct {
	requestID string
	topic     string
	pending   broker.Pending
}

// publishPipeline lets one connection have many publishes in flight while
// acking them in the order they were sent. Its goroutine exists only while
// publishes are waiting.
//
// Lock order: conn.mu, then publishPipeline.mu (the writer asks idle()
// under conn.mu); run never holds p.mu while it replies.
type publishPipeline struct {
	c       *conn
	mu      sync.Mutex
	cond    sync.Cond
	queue   []pendingPublish
	running bool
}

func (p *publishPipeline) idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue) == 0
}

// push adds a submitted publish, waiting while maxInflightPublishes are
// already in flight.
func (p *publishPipeline) push(pp pendingPublish) {
	p.mu.Lock()
	for len(p.queue) >= maxInflightPublishes {
		p.cond.Wait()
	}
	p.queue = append(p.queue, pp)
	if !p.running {
		p.running = true
		go p.run()
	}
	p.mu.Unlock()
}

func (p *publishPipeline) run() {
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.running = false
			p.queue = nil
			p.cond.Broadcast()
			p.mu.Unlock()
			p.c.pipelineDrained()
			return
		}
		next := p.queue[0]
		p.mu.Unlock()

		res, err := next.pending.Wait(p.c.ctx)
		p.c.replyPublish(next.requestID, next.topic, res, err)

		p.mu.Lock()
		p.queue[0] = pendingPublish{}
		p.queue = p.queue[1:]
		p.cond.Broadcast()
		p.mu.Unlock()
	}
}

// wait blocks until every publish in flight has been answered.
func (p *publishPipeline) wait() {
	p.mu.Lock()
	for len(p.queue) > 0 {
		p.cond.Wait()
	}
	p.mu.Unlock()
}
