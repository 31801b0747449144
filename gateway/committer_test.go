package gateway

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// delayedCommitter commits like Raft does as seen from the gateway: Submit
// returns at once and the command is applied, in submission order, delay
// later. The gateway's tests use it to drive the asynchronous publish path
// (the pipeline) that production takes, where MemoryCommitter answers at
// once.
type delayedCommitter struct {
	applier   broker.Applier
	delay     time.Duration
	queue     chan *delayedCommand
	stop      chan struct{}
	submitted atomic.Int64
}

type delayedCommand struct {
	cmd  broker.Command
	due  time.Time
	res  broker.Result
	done chan struct{}
}

func (d *delayedCommand) Wait(ctx context.Context) (broker.Result, error) {
	select {
	case <-d.done:
		return d.res, nil
	case <-ctx.Done():
		return broker.Result{}, ctx.Err()
	}
}

var _ broker.Committer = (*delayedCommitter)(nil)

// newDelayedCommitter starts the committer's apply loop; it stops when the
// test ends.
func newDelayedCommitter(t *testing.T, a broker.Applier, delay time.Duration) *delayedCommitter {
	d := &delayedCommitter{applier: a, delay: delay, queue: make(chan *delayedCommand, 4096), stop: make(chan struct{})}
	go d.applyLoop()
	t.Cleanup(func() { close(d.stop) })
	return d
}

func (d *delayedCommitter) Submit(cmd broker.Command) broker.Pending {
	cmd.TS = time.Now().UTC()
	c := &delayedCommand{cmd: cmd, due: time.Now().Add(d.delay), done: make(chan struct{})}
	select {
	case d.queue <- c:
		d.submitted.Add(1)
		return c
	case <-d.stop:
		return broker.Done{Err: broker.ErrClosed}
	}
}

func (d *delayedCommitter) applyLoop() {
	for {
		select {
		case c := <-d.queue:
			select {
			case <-time.After(time.Until(c.due)):
			case <-d.stop:
				return
			}
			c.res = d.applier.Apply(c.cmd)
			close(c.done)
		case <-d.stop:
			return
		}
	}
}

// newDelayedTestServer is newTestServer with every command committed delay
// after it was submitted.
func newDelayedTestServer(t *testing.T, bcfg broker.Config, gcfg Config, delay time.Duration) (*testServer, *delayedCommitter) {
	t.Helper()
	s := newTestServer(t, bcfg, gcfg)
	d := newDelayedCommitter(t, s.broker, delay)
	s.broker.SetCommitter(d)
	return s, d
}
