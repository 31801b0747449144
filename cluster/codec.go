package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

// entryOp is the first byte of every Raft log entry this package writes.
// Values are stored in logs: new ones are only appended.
type entryOp byte

const (
	entryCommandBatch entryOp = 1 // one or more broker commands, applied in order
)

var errTruncated = errors.New("truncated")

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.buf) == 0 {
		d.err = errTruncated
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}

// raw returns the next length-prefixed field, aliasing the input.
func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if uint64(len(d.buf)) < n {
		d.err = errTruncated
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

// bytes and string copy, so decoded values never alias a reused buffer.
func (d *decoder) bytes() []byte {
	b := d.raw()
	if b == nil {
		return nil
	}
	return append(make([]byte, 0, len(b)), b...)
}

func (d *decoder) string() string { return string(d.raw()) }

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendCommand(dst []byte, c *broker.Command) []byte {
	dst = append(dst, byte(c.Op))
	dst = appendString(dst, c.Topic)
	dst = binary.AppendVarint(dst, c.TS.UnixNano())
	dst = appendString(dst, c.Message.ID)
	return appendBytes(dst, c.Message.Payload)
}

func (d *decoder) command() broker.Command {
	var c broker.Command
	c.Op = broker.Op(d.byte())
	c.Topic = d.string()
	c.TS = time.Unix(0, d.varint()).UTC()
	c.Message.ID = d.string()
	c.Message.Payload = d.bytes()
	return c
}

func commandSize(c *broker.Command) int {
	return 1 + len(c.Topic) + len(c.Message.ID) + len(c.Message.Payload) + 4*binary.MaxVarintLen64
}

// encodeBatch renders a command batch log entry.
func encodeBatch(cmds []broker.Command) []byte {
	size := 1 + binary.MaxVarintLen64
	for i := range cmds {
		size += commandSize(&cmds[i])
	}
	buf := make([]byte, 0, size)
	buf = append(buf, byte(entryCommandBatch))
	buf = binary.AppendUvarint(buf, uint64(len(cmds)))
	for i := range cmds {
		buf = appendCommand(buf, &cmds[i])
	}
	return buf
}

// decodeBatch parses the body of a command batch entry (after the op byte).
func decodeBatch(body []byte) ([]broker.Command, error) {
	d := decoder{buf: body}
	n := d.uvarint()
	if d.err == nil && n > uint64(len(body)) {
		return nil, fmt.Errorf("batch claims %d commands in %d bytes", n, len(body))
	}
	cmds := make([]broker.Command, 0, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		cmds = append(cmds, d.command())
	}
	if d.err != nil {
		return nil, d.err
	}
	return cmds, nil
}

// Result codes carried over the forwarding link.
const (
	resultOK byte = iota
	resultTopicNotFound
	resultTopicExists
	resultInvalidTopic
	resultUnavailable
	resultClosed
	resultInternal
)

var resultErrors = []struct {
	code byte
	err  error
}{
	{resultTopicNotFound, broker.ErrTopicNotFound},
	{resultTopicExists, broker.ErrTopicExists},
	{resultInvalidTopic, broker.ErrInvalidTopicName},
	{resultUnavailable, broker.ErrUnavailable},
	{resultClosed, broker.ErrClosed},
}

func errorCode(err error) byte {
	if err == nil {
		return resultOK
	}
	for _, m := range resultErrors {
		if errors.Is(err, m.err) {
			return m.code
		}
	}
	return resultInternal
}

func codeError(code byte) error {
	if code == resultOK {
		return nil
	}
	for _, m := range resultErrors {
		if m.code == code {
			return m.err
		}
	}
	return errors.New("leader failed to commit the command")
}

// appendOutcome encodes a forwarded command's outcome: the state machine's
// refusal or the infrastructure error, and the committed seq and ts.
func appendOutcome(dst []byte, index uint64, res broker.Result, err error) []byte {
	dst = binary.AppendUvarint(dst, index)
	dst = append(dst, errorCode(err), errorCode(res.Err))
	dst = binary.AppendUvarint(dst, res.Seq)
	dst = binary.AppendUvarint(dst, res.Epoch)
	return binary.AppendVarint(dst, res.TS.UnixNano())
}

func (d *decoder) outcome() (uint64, broker.Result, error) {
	index := d.uvarint()
	errCode := d.byte()
	resCode := d.byte()
	res := broker.Result{Err: codeError(resCode), Seq: d.uvarint(), Epoch: d.uvarint(), TS: time.Unix(0, d.varint()).UTC()}
	return index, res, codeError(errCode)
}

// Snapshot versions. Version 1 holds the state only; version 2 puts, after
// the version byte, the index of the last entry the state includes, which
// Restore needs (raft does not pass it to the FSM) to release forwarded
// commands the snapshot covers. Both are read.
const (
	snapshotVersionNoIndex = 1
	snapshotVersion        = 2
)

// encodeState encodes st, which includes every entry up to index.
func encodeState(index uint64, st broker.State) []byte {
	size := 16
	for _, t := range st.Topics {
		size += len(t.Name) + 32
		for _, e := range t.Ring {
			size += len(e.Message.ID) + len(e.Message.Payload) + 3*binary.MaxVarintLen64
		}
	}
	buf := make([]byte, 0, size)
	buf = append(buf, snapshotVersion)
	buf = binary.AppendUvarint(buf, index)
	buf = binary.AppendUvarint(buf, st.Creations)
	buf = binary.AppendUvarint(buf, uint64(len(st.Topics)))
	for _, t := range st.Topics {
		buf = appendString(buf, t.Name)
		buf = binary.AppendUvarint(buf, t.Epoch)
		buf = binary.AppendUvarint(buf, t.Count)
		buf = binary.AppendUvarint(buf, t.LastSeq)
		buf = binary.AppendUvarint(buf, uint64(len(t.Ring)))
		for _, e := range t.Ring {
			buf = binary.AppendUvarint(buf, e.Seq)
			buf = binary.AppendVarint(buf, e.TS.UnixNano())
			buf = appendString(buf, e.Message.ID)
			buf = appendBytes(buf, e.Message.Payload)
		}
	}
	return buf
}

// decodeState decodes a snapshot; index is 0 for a version 1 snapshot,
// which does not say.
func decodeState(data []byte) (index uint64, st broker.State, err error) {
	d := decoder{buf: data}
	switch v := d.byte(); {
	case d.err != nil:
	case v == snapshotVersion:
		index = d.uvarint()
	case v != snapshotVersionNoIndex:
		return 0, broker.State{}, fmt.Errorf("snapshot version %d is not supported", v)
	}
	st.Creations = d.uvarint()
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		t := broker.TopicState{Name: d.string(), Epoch: d.uvarint(), Count: d.uvarint(), LastSeq: d.uvarint()}
		k := d.uvarint()
		if d.err == nil && k > uint64(len(d.buf)) {
			return 0, broker.State{}, errTruncated
		}
		for j := uint64(0); j < k && d.err == nil; j++ {
			e := &broker.Event{Topic: t.Name, Seq: d.uvarint(), TS: time.Unix(0, d.varint()).UTC()}
			e.Message.ID = d.string()
			e.Message.Payload = d.bytes()
			t.Ring = append(t.Ring, e)
		}
		st.Topics = append(st.Topics, t)
	}
	if d.err != nil {
		return 0, broker.State{}, fmt.Errorf("decode snapshot: %w", d.err)
	}
	return index, st, nil
}
