package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/mr-enclave/enclave/broker"
)

// Client frame types.
const (
	TypeSubscribe   = "subscribe"
	TypeUnsubscribe = "unsubscribe"
	TypePublish     = "publish"
	TypePing        = "ping"
)

// maxClientIDLen bounds client_id, which the server keeps per subscription.
const maxClientIDLen = 256

// maxRequestIDLen bounds request_id, which the server echoes.
const maxRequestIDLen = 256

// Request is one decoded and validated client frame.
type Request struct {
	Type      string
	RequestID string
	Topic     string
	ClientID  string
	LastN     int
	Message   broker.Message
}

type wireRequest struct {
	Type      *string         `json:"type"`
	RequestID *string         `json:"request_id"`
	Topic     *string         `json:"topic"`
	ClientID  *string         `json:"client_id"`
	LastN     json.RawMessage `json:"last_n"`
	Message   *struct {
		ID      *string         `json:"id"`
		Payload json.RawMessage `json:"payload"`
	} `json:"message"`
}

// DecodeRequest parses and validates one text frame. On error it still
// returns the request_id when the frame carried a readable one, so the error
// can be correlated.
func DecodeRequest(data []byte) (Request, error) {
	var w wireRequest
	if !utf8.Valid(data) {
		// The request_id is echoed if it is readable and not itself the
		// invalid part.
		id := sniffRequestID(data)
		if strings.ContainsRune(id, utf8.RuneError) {
			id = ""
		}
		return Request{RequestID: id}, badRequestf("frame is not valid UTF-8")
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return Request{RequestID: sniffRequestID(data)}, badRequestf(describeJSONError(err))
	}
	var req Request
	if w.RequestID != nil {
		if len(*w.RequestID) > maxRequestIDLen {
			return req, badRequestf(fmt.Sprintf("request_id is longer than %d bytes", maxRequestIDLen))
		}
		req.RequestID = *w.RequestID
	}
	if w.Type == nil || *w.Type == "" {
		return req, badRequestf("type is required")
	}
	req.Type = *w.Type
	switch req.Type {
	case TypePing:
		return req, nil
	case TypeSubscribe, TypeUnsubscribe, TypePublish:
	default:
		return req, badRequestf(fmt.Sprintf("unknown type %q: use subscribe, unsubscribe, publish or ping", req.Type))
	}
	if w.Topic == nil || *w.Topic == "" {
		return req, badRequestf("topic is required")
	}
	req.Topic = *w.Topic
	if !broker.ValidTopicName(req.Topic) {
		return req, badRequestf(broker.ErrInvalidTopicName.Error())
	}
	if req.Type == TypePublish {
		return req, decodePublish(&req, &w)
	}
	if w.ClientID == nil || *w.ClientID == "" {
		return req, badRequestf("client_id is required")
	}
	if len(*w.ClientID) > maxClientIDLen {
		return req, badRequestf(fmt.Sprintf("client_id is longer than %d bytes", maxClientIDLen))
	}
	req.ClientID = *w.ClientID
	if req.Type == TypeSubscribe && len(w.LastN) > 0 && !bytes.Equal(w.LastN, []byte("null")) {
		n, err := strconv.ParseInt(string(w.LastN), 10, 64)
		if errors.Is(err, strconv.ErrRange) && n > 0 {
			err = nil // beyond int64, and so beyond any ring: capped below
		}
		if err != nil || n < 0 {
			return req, badRequestf("last_n must be an integer >= 0")
		}
		if n > 1<<30 {
			n = 1 << 30
		}
		req.LastN = int(n)
	}
	return req, nil
}

func decodePublish(req *Request, w *wireRequest) error {
	if w.Message == nil {
		return badRequestf("message is required")
	}
	if w.Message.ID == nil || *w.Message.ID == "" {
		return badRequestf("message.id is required")
	}
	if _, err := uuid.Parse(*w.Message.ID); err != nil {
		return badRequestf(fmt.Sprintf("message.id %q is not a valid UUID", *w.Message.ID))
	}
	if len(w.Message.Payload) == 0 {
		return badRequestf("message.payload is required")
	}
	// Compacted, so the event is the publisher's value without its
	// formatting; the payload was validated by Unmarshal already.
	var compact bytes.Buffer
	compact.Grow(len(w.Message.Payload))
	if err := json.Compact(&compact, w.Message.Payload); err != nil {
		return badRequestf("message.payload is not valid JSON")
	}
	req.Message = broker.Message{ID: *w.Message.ID, Payload: compact.Bytes()}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return "frame must be a JSON object"
		}
		return fmt.Sprintf("field %s must not be a %s", typeErr.Field, typeErr.Value)
	}
	return "malformed JSON: " + err.Error()
}

// sniffRequestID extracts a top-level string request_id from a frame that
// did not decode as a whole (wrong field types, or cut off at the size
// limit), so the error reply can still be correlated.
func sniffRequestID(data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return ""
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := tok.(string)
		if key == "request_id" {
			v, err := dec.Token()
			s, ok := v.(string)
			if err != nil || !ok || len(s) > maxRequestIDLen {
				return ""
			}
			return s
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}

// tsLayout is RFC 3339 in UTC with a fixed microsecond fraction, which every
// common RFC 3339 parser (Python's fromisoformat included) reads.
const tsLayout = "2006-01-02T15:04:05.000000Z07:00"

func appendTS(dst []byte, ts time.Time) []byte {
	return ts.UTC().AppendFormat(dst, tsLayout)
}

// appendJSONString appends s as a JSON string.
func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s) // cannot fail for a string
	return append(dst, b...)
}

// EncodeEvent renders an event frame. The broker calls it once per event and
// every subscriber shares the bytes. Topic names and UUIDs need no escaping;
// the payload is the publisher's validated JSON, copied as is.
func EncodeEvent(e *broker.Event) []byte {
	buf := make([]byte, 0, 96+len(e.Topic)+len(e.Message.ID)+len(e.Message.Payload))
	buf = append(buf, `{"type":"event","topic":"`...)
	buf = append(buf, e.Topic...)
	buf = append(buf, `","message":{"id":"`...)
	buf = append(buf, e.Message.ID...)
	buf = append(buf, `","payload":`...)
	buf = append(buf, e.Message.Payload...)
	buf = append(buf, `},"seq":`...)
	buf = strconv.AppendUint(buf, e.Seq, 10)
	buf = append(buf, `,"ts":"`...)
	buf = appendTS(buf, e.TS)
	buf = append(buf, `"}`...)
	return buf
}

func appendRequestID(buf []byte, requestID string) []byte {
	if requestID == "" {
		return buf
	}
	buf = append(buf, `,"request_id":`...)
	return appendJSONString(buf, requestID)
}

func encodeAck(requestID, topic string, now time.Time) []byte {
	buf := make([]byte, 0, 128)
	buf = append(buf, `{"type":"ack"`...)
	buf = appendRequestID(buf, requestID)
	buf = append(buf, `,"status":"ok","topic":`...)
	buf = appendJSONString(buf, topic)
	buf = append(buf, `,"ts":"`...)
	buf = appendTS(buf, now)
	return append(buf, `"}`...)
}

func encodePong(requestID string, now time.Time) []byte {
	buf := make([]byte, 0, 96)
	buf = append(buf, `{"type":"pong"`...)
	buf = appendRequestID(buf, requestID)
	buf = append(buf, `,"ts":"`...)
	buf = appendTS(buf, now)
	return append(buf, `"}`...)
}

func encodeError(requestID, code, message string, now time.Time) []byte {
	buf := make([]byte, 0, 128+len(message))
	buf = append(buf, `{"type":"error"`...)
	buf = appendRequestID(buf, requestID)
	buf = append(buf, `,"error":{"code":"`...)
	buf = append(buf, code...)
	buf = append(buf, `","message":`...)
	buf = appendJSONString(buf, message)
	buf = append(buf, `},"ts":"`...)
	buf = appendTS(buf, now)
	return append(buf, `"}`...)
}

func encodeInfo(topic, msg string, now time.Time) []byte {
	buf := make([]byte, 0, 96)
	buf = append(buf, `{"type":"info"`...)
	if topic != "" {
		buf = append(buf, `,"topic":`...)
		buf = appendJSONString(buf, topic)
	}
	buf = append(buf, `,"msg":`...)
	buf = appendJSONString(buf, msg)
	buf = append(buf, `,"ts":"`...)
	buf = appendTS(buf, now)
	return append(buf, `"}`...)
}
