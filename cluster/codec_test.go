package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

var codecTS = time.Date(2025, 1, 15, 10, 30, 0, 123456789, time.UTC)

func sampleCommands() []broker.Command {
	return []broker.Command{
		{Op: broker.OpCreateTopic, Topic: "orders", TS: codecTS},
		{Op: broker.OpPublish, Topic: "orders", TS: codecTS, Message: broker.Message{ID: "550e8400-e29b-41d4-a716-446655440000", Payload: []byte(`{"order_id":123}`)}},
		{Op: broker.OpPublish, Topic: "orders", TS: codecTS.Add(time.Nanosecond), Message: broker.Message{ID: "x", Payload: nil}},
		{Op: broker.OpPublish, Topic: strings.Repeat("a", 128), TS: time.Unix(0, 0).UTC(), Message: broker.Message{ID: "é", Payload: bytes.Repeat([]byte{0, 0xff}, 300)}},
		{Op: broker.OpDeleteTopic, Topic: "orders", TS: time.Unix(-1, 5).UTC()},
	}
}

func commandsDiff(want, got []broker.Command) error {
	if len(want) != len(got) {
		return fmt.Errorf("%d commands, want %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.Op != g.Op || w.Topic != g.Topic || !w.TS.Equal(g.TS) || w.Message.ID != g.Message.ID || !bytes.Equal(w.Message.Payload, g.Message.Payload) {
			return fmt.Errorf("command %d = %+v, want %+v", i, g, w)
		}
	}
	return nil
}

func TestBatchRoundTrip(t *testing.T) {
	for n := 0; n <= len(sampleCommands()); n++ {
		cmds := sampleCommands()[:n]
		enc := encodeBatch(cmds)
		if entryOp(enc[0]) != entryCommandBatch {
			t.Fatalf("entry op %d", enc[0])
		}
		got, err := decodeBatch(enc[1:])
		if err != nil {
			t.Fatalf("decode %d commands: %v", n, err)
		}
		if err := commandsDiff(cmds, got); err != nil {
			t.Fatal(err)
		}
	}
}

// Decoded values must not alias the input: Raft and the forwarding reader
// reuse their buffers.
func TestBatchDecodeDoesNotAlias(t *testing.T) {
	enc := encodeBatch(sampleCommands())
	got, err := decodeBatch(enc[1:])
	if err != nil {
		t.Fatal(err)
	}
	for i := range enc {
		enc[i] = 0xAA
	}
	if err := commandsDiff(sampleCommands(), got); err != nil {
		t.Fatalf("decoded commands changed with the buffer: %v", err)
	}
}

func TestBatchTruncatedIsAnError(t *testing.T) {
	body := encodeBatch(sampleCommands())[1:]
	for i := 0; i < len(body); i++ {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("decodeBatch of %d of %d bytes panicked: %v", i, len(body), r)
				}
			}()
			if cmds, err := decodeBatch(body[:i]); err == nil {
				t.Fatalf("decodeBatch of %d of %d bytes: no error, %d commands", i, len(body), len(cmds))
			}
		}()
	}
}

func TestBatchHugeCountIsAnError(t *testing.T) {
	for _, count := range []uint64{1 << 62, 1 << 31, 1000} {
		body := binary.AppendUvarint(nil, count)
		body = append(body, 3, 1, 'a')
		if _, err := decodeBatch(body); err == nil {
			t.Errorf("count %d in %d bytes decoded without error", count, len(body))
		}
	}
}

func sampleState() broker.State {
	ev := func(topic string, seq uint64, id string, p string) *broker.Event {
		return &broker.Event{Topic: topic, Seq: seq, TS: codecTS.Add(time.Duration(seq)), Message: broker.Message{ID: id, Payload: []byte(p)}}
	}
	return broker.State{
		Creations: 7,
		Topics: []broker.TopicState{
			{Name: "a", Epoch: 3, Count: 250, LastSeq: 250, Ring: []*broker.Event{ev("a", 249, "m249", `1`), ev("a", 250, "m250", `{"k":"v"}`)}},
			{Name: "empty", Epoch: 5, Count: 0, LastSeq: 0},
			{Name: "z.Z_9-", Epoch: 7, Count: 1, LastSeq: 1, Ring: []*broker.Event{ev("z.Z_9-", 1, "", "")}},
		},
	}
}

func TestStateRoundTrip(t *testing.T) {
	for _, st := range []broker.State{{}, sampleState()} {
		index, got, err := decodeState(encodeState(1234, st))
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if index != 1234 {
			t.Fatalf("snapshot index %d, want 1234", index)
		}
		if err := stateDiff(st, got); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	}
}

func TestStateTruncatedIsAnError(t *testing.T) {
	data := encodeState(99, sampleState())
	for i := 0; i < len(data); i++ {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("decodeState of %d of %d bytes panicked: %v", i, len(data), r)
				}
			}()
			if _, _, err := decodeState(data[:i]); err == nil {
				t.Fatalf("decodeState of %d of %d bytes: no error", i, len(data))
			}
		}()
	}
}

// Snapshots written before the index was recorded still restore, with no
// index.
func TestStateVersion1Decodes(t *testing.T) {
	v2 := encodeState(7, sampleState())
	// Version 1 is version 2 without the index (one byte for 7).
	v1 := append([]byte{snapshotVersionNoIndex}, v2[2:]...)
	index, st, err := decodeState(v1)
	if err != nil {
		t.Fatalf("decode version 1: %v", err)
	}
	if index != 0 {
		t.Errorf("version 1 snapshot index %d, want 0", index)
	}
	if err := stateDiff(sampleState(), st); err != nil {
		t.Fatalf("version 1: %v", err)
	}
}

func TestStateUnknownVersionIsAnError(t *testing.T) {
	data := encodeState(0, sampleState())
	data[0] = snapshotVersion + 1
	if _, _, err := decodeState(data); err == nil {
		t.Fatal("a snapshot of an unknown version decoded")
	}
}

// The forwarding link carries outcomes as codes: each sentinel error, as a
// refusal or as an infrastructure failure, comes back matching errors.Is.
func TestOutcomeRoundTrip(t *testing.T) {
	sentinels := []error{nil, broker.ErrTopicNotFound, broker.ErrTopicExists, broker.ErrInvalidTopicName, broker.ErrUnavailable, broker.ErrClosed}
	for _, infra := range sentinels {
		for _, refusal := range sentinels[:4] {
			res := broker.Result{Err: refusal, Seq: 42, Epoch: 9, TS: codecTS}
			wrapped := infra
			if infra != nil {
				wrapped = fmt.Errorf("context: %w", infra)
			}
			d := decoder{buf: appendOutcome(nil, 77, res, wrapped)}
			index, got, err := d.outcome()
			if d.err != nil {
				t.Fatalf("decode: %v", d.err)
			}
			if index != 77 || got.Seq != 42 || got.Epoch != 9 || !got.TS.Equal(codecTS) {
				t.Errorf("outcome = %d %+v", index, got)
			}
			if (infra == nil) != (err == nil) || (infra != nil && !errors.Is(err, infra)) {
				t.Errorf("infrastructure error %v came back as %v", infra, err)
			}
			if (refusal == nil) != (got.Err == nil) || (refusal != nil && !errors.Is(got.Err, refusal)) {
				t.Errorf("refusal %v came back as %v", refusal, got.Err)
			}
		}
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte{1, 3, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	for n := 0; n <= len(sampleCommands()); n++ {
		enc := encodeBatch(sampleCommands()[:n])
		f.Add(enc[1:])
		f.Add(enc[1 : len(enc)/2+1])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		cmds, err := decodeBatch(body)
		if err != nil {
			return
		}
		if uint64(len(cmds)) > uint64(len(body)) {
			t.Fatalf("%d commands out of %d bytes", len(cmds), len(body))
		}
		// What decodes re-encodes to the same commands.
		again, err := decodeBatch(encodeBatch(cmds)[1:])
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if err := commandsDiff(cmds, again); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeState(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{snapshotVersion})
	f.Add([]byte{snapshotVersionNoIndex})
	f.Add(encodeState(0, broker.State{}))
	data := encodeState(42, sampleState())
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		index, st, err := decodeState(data)
		if err != nil {
			return
		}
		againIndex, again, err := decodeState(encodeState(index, st))
		if err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		if againIndex != index {
			t.Fatalf("index %d re-encoded as %d", index, againIndex)
		}
		if err := stateDiff(st, again); err != nil {
			t.Fatal(err)
		}
	})
}

// The leader decodes forwarded frames from the network: a uvarint id and a
// command, then (the other way) an outcome. Neither may panic.
func FuzzDecodeForwardFrames(f *testing.F) {
	cmd := sampleCommands()[1]
	f.Add(appendCommand(binary.AppendUvarint(nil, 1), &cmd))
	f.Add(appendOutcome(binary.AppendUvarint(nil, 1), 5, broker.Result{Seq: 3, TS: codecTS}, broker.ErrUnavailable))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		d := decoder{buf: frame}
		d.uvarint()
		d.command()
		d = decoder{buf: frame}
		d.uvarint()
		d.outcome()
	})
}
