package cluster

import (
	"fmt"
	"io"

	"github.com/hashicorp/raft"
	"github.com/mr-enclave/enclave/broker"
)

// fsm applies committed log entries to the broker on every node.
type fsm struct {
	broker *broker.Broker
	// onApplied is told each entry's results on the node that applied it;
	// the leader uses it to carry events to peers.
	onApplied func(cmds []broker.Command, results []broker.Result)
	// afterApply is told the index of every entry applied.
	afterApply func(index uint64)
	// beforeApply is a test hook.
	beforeApply func(index uint64)

	// index is the last entry applied or restored. Raft calls Apply,
	// Snapshot and Restore from one goroutine, so it needs no lock.
	index uint64
}

var _ raft.FSM = (*fsm)(nil)

// Apply decodes and applies one entry. An entry that cannot be decoded
// panics: a corrupt log must stop the node, not let it diverge.
func (f *fsm) Apply(l *raft.Log) any {
	if f.beforeApply != nil {
		f.beforeApply(l.Index)
	}
	f.index = l.Index
	if f.afterApply != nil {
		defer f.afterApply(l.Index)
	}
	if l.Type != raft.LogCommand || len(l.Data) == 0 {
		return nil
	}
	switch entryOp(l.Data[0]) {
	case entryCommandBatch:
		cmds, err := decodeBatch(l.Data[1:])
		if err != nil {
			panic(fmt.Sprintf("cluster: undecodable log entry %d: %v", l.Index, err))
		}
		results := make([]broker.Result, len(cmds))
		for i := range cmds {
			results[i] = f.broker.Apply(cmds[i])
		}
		if f.onApplied != nil {
			f.onApplied(cmds, results)
		}
		return results
	default:
		panic(fmt.Sprintf("cluster: unknown entry op %d at index %d", l.Data[0], l.Index))
	}
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return snapshot{index: f.index, state: f.broker.State()}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	index, st, err := decodeState(data)
	if err != nil {
		return err
	}
	f.broker.Restore(st)
	// Forwarded commands committed in entries the snapshot covers wait for
	// their local apply, which will never come as an Apply call: tell the
	// node how far the state now reaches. Raft sets its own applied index
	// only after Restore returns, so it cannot be read here.
	if index > 0 {
		f.index = index
		if f.afterApply != nil {
			f.afterApply(index)
		}
	}
	return nil
}

// snapshot is the state as of entry index (the last command entry
// applied; entries after it up to raft's snapshot index carry no state).
type snapshot struct {
	index uint64
	state broker.State
}

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(encodeState(s.index, s.state)); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("write snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}
