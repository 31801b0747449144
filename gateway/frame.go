package gateway

import (
	"encoding/binary"
	"net"
	"sync"

	"github.com/mr-enclave/enclave/broker"
)

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// appendFrame appends one unmasked, unfragmented server frame.
func appendFrame(buf []byte, op byte, payload []byte) []byte {
	buf = append(buf, 0x80|op)
	n := len(payload)
	switch {
	case n < 126:
		buf = append(buf, byte(n))
	case n <= 0xFFFF:
		buf = append(buf, 126, byte(n>>8), byte(n))
	default:
		buf = append(buf, 127)
		buf = binary.BigEndian.AppendUint64(buf, uint64(n))
	}
	return append(buf, payload...)
}

// closePayload is a close frame's body: status code then reason.
func closePayload(code int, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	p := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	return append(p, reason...)
}

const (
	writeBufSize = 64 << 10 // a batch is written once it reaches this size
	maxPooledBuf = 1 << 20  // larger buffers are left to the GC
)

// writeScratch is what a writer needs while it runs: the batch buffer and
// room for drained events. Pooled, so only connections that are writing hold
// one.
type writeScratch struct {
	buf    []byte
	events []*broker.Event
}

var writeScratchPool = sync.Pool{New: func() any {
	return &writeScratch{buf: make([]byte, 0, writeBufSize), events: make([]*broker.Event, 0, 128)}
}}

// lockedConn serialises writes to the socket: the connection's writer and
// gorilla's own control writes (the close reply, protocol-error closes) each
// write whole frames under mu, so frames never interleave.
type lockedConn struct {
	net.Conn
	mu *sync.Mutex
}

func (c lockedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.Write(p)
}
