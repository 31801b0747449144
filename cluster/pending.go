package cluster

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// pending is a submitted command; it resolves exactly once.
type pending struct {
	done    chan struct{}
	res     broker.Result
	err     error
	timeout time.Duration
	index   uint64 // Raft index of the entry that committed it, on the leader
	topic   string
	// abandoned is set when Wait gave up on the commit: a command not yet
	// in the log is then dropped rather than committed unseen.
	abandoned atomic.Bool
}

func newPending(timeout time.Duration) *pending {
	return &pending{done: make(chan struct{}), timeout: timeout}
}

func (p *pending) resolve(res broker.Result, err error) {
	p.res, p.err = res, err
	close(p.done)
}

// Wait returns the outcome, or ErrUnavailable when the commit takes longer
// than the node's commit timeout (no quorum, or a leader that vanished).
func (p *pending) Wait(ctx context.Context) (broker.Result, error) {
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.res, p.err
	case <-ctx.Done():
		p.abandoned.Store(true)
		return broker.Result{}, ctx.Err()
	case <-t.C:
		p.abandoned.Store(true)
		return broker.Result{}, broker.ErrUnavailable
	}
}

// committedIndex is the Raft index of the committing entry, or 0 when the
// outcome is not (yet) known. Reading index only after done is closed keeps
// it free of races with the goroutine that resolves it.
func (p *pending) committedIndex() uint64 {
	select {
	case <-p.done:
		return p.index
	default:
		return 0
	}
}
