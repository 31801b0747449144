package gateway

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mr-enclave/enclave/broker"
)

const testUUID = "550e8400-e29b-41d4-a716-446655440000"

func TestDecodeRequestValid(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	tests := []struct {
		name  string
		frame string
		want  Request
	}{
		{"ping", `{"type":"ping"}`, Request{Type: TypePing}},
		{"ping with request_id", `{"type":"ping","request_id":"p-1"}`, Request{Type: TypePing, RequestID: "p-1"}},
		{"ping ignores other fields", `{"type":"ping","topic":"not a topic!","last_n":-5}`, Request{Type: TypePing}},
		{"subscribe without last_n", `{"type":"subscribe","topic":"orders","client_id":"c1"}`,
			Request{Type: TypeSubscribe, Topic: "orders", ClientID: "c1"}},
		{"subscribe last_n 0", `{"type":"subscribe","topic":"orders","client_id":"c1","last_n":0}`,
			Request{Type: TypeSubscribe, Topic: "orders", ClientID: "c1"}},
		{"subscribe last_n 5 with request_id", `{"type":"subscribe","topic":"orders","client_id":"c1","last_n":5,"request_id":"r-sub-1"}`,
			Request{Type: TypeSubscribe, Topic: "orders", ClientID: "c1", LastN: 5, RequestID: "r-sub-1"}},
		// null is treated like an absent optional field (as for request_id).
		{"subscribe last_n null is the default", `{"type":"subscribe","topic":"orders","client_id":"c1","last_n":null}`,
			Request{Type: TypeSubscribe, Topic: "orders", ClientID: "c1"}},
		{"subscribe last_n beyond int64 is capped", `{"type":"subscribe","topic":"orders","client_id":"c1","last_n":99999999999999999999}`,
			Request{Type: TypeSubscribe, Topic: "orders", ClientID: "c1", LastN: 1 << 30}},
		{"subscribe last_n huge is capped", `{"type":"subscribe","topic":"orders","client_id":"c1","last_n":9000000000000}`,
			Request{Type: TypeSubscribe, Topic: "orders", ClientID: "c1", LastN: 1 << 30}},
		{"unsubscribe", `{"type":"unsubscribe","topic":"a.b_c-D9","client_id":"c1","request_id":"u"}`,
			Request{Type: TypeUnsubscribe, Topic: "a.b_c-D9", ClientID: "c1", RequestID: "u"}},
		{"topic of 128 characters", `{"type":"unsubscribe","topic":"` + long(128) + `","client_id":"c1"}`,
			Request{Type: TypeUnsubscribe, Topic: long(128), ClientID: "c1"}},
		{"client_id of 256 bytes", `{"type":"subscribe","topic":"t","client_id":"` + long(256) + `"}`,
			Request{Type: TypeSubscribe, Topic: "t", ClientID: long(256)}},
		{"request_id of 256 bytes", `{"type":"ping","request_id":"` + long(256) + `"}`,
			Request{Type: TypePing, RequestID: long(256)}},
		{"publish object payload, compacted", "{\"type\":\"publish\",\"topic\":\"orders\",\"request_id\":\"r-pub-1\",\"message\":{\"id\":\"" + testUUID + "\",\"payload\":{ \"order_id\" : 123,\n \"items\": [1, 2] }}}",
			Request{Type: TypePublish, Topic: "orders", RequestID: "r-pub-1", Message: broker.Message{ID: testUUID, Payload: []byte(`{"order_id":123,"items":[1,2]}`)}}},
		{"publish string payload", `{"type":"publish","topic":"t","message":{"id":"` + testUUID + `","payload":"h\u00e9llo \"x\""}}`,
			Request{Type: TypePublish, Topic: "t", Message: broker.Message{ID: testUUID, Payload: []byte(`"h\u00e9llo \"x\""`)}}},
		{"publish number payload", `{"type":"publish","topic":"t","message":{"id":"` + testUUID + `","payload":-1.5e3}}`,
			Request{Type: TypePublish, Topic: "t", Message: broker.Message{ID: testUUID, Payload: []byte(`-1.5e3`)}}},
		{"publish null payload", `{"type":"publish","topic":"t","message":{"id":"` + testUUID + `","payload":null}}`,
			Request{Type: TypePublish, Topic: "t", Message: broker.Message{ID: testUUID, Payload: []byte(`null`)}}},
		{"publish uppercase UUID", `{"type":"publish","topic":"t","message":{"id":"550E8400-E29B-41D4-A716-446655440000","payload":[]}}`,
			Request{Type: TypePublish, Topic: "t", Message: broker.Message{ID: "550E8400-E29B-41D4-A716-446655440000", Payload: []byte(`[]`)}}},
		{"unknown fields are ignored", `{"type":"ping","request_id":"r","extra":{"a":[1,2,3]}}`, Request{Type: TypePing, RequestID: "r"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeRequest([]byte(tt.frame))
			if err != nil {
				t.Fatalf("DecodeRequest(%s): %v", tt.frame, err)
			}
			if len(got.Message.Payload) == 0 {
				got.Message.Payload = nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("DecodeRequest(%s)\n got %+v (payload %s)\nwant %+v (payload %s)", tt.frame, got, got.Message.Payload, tt.want, tt.want.Message.Payload)
			}
		})
	}
}

func TestDecodeRequestBadRequest(t *testing.T) {
	sub := func(extra string) string {
		return `{"type":"subscribe","request_id":"r1","topic":"orders","client_id":"c1"` + extra + `}`
	}
	pub := func(message string) string {
		return `{"type":"publish","request_id":"r1","topic":"orders","message":` + message + `}`
	}
	tests := []struct {
		name      string
		frame     string
		requestID string // the request_id returned for correlation
		msg       string // part of the error text
	}{
		{"empty frame", ``, "", "malformed JSON"},
		{"malformed JSON", `{"type":"ping",`, "", "malformed JSON"},
		{"malformed JSON after request_id", `{"request_id":"r1","type":"ping",`, "r1", "malformed JSON"},
		{"trailing data", `{"type":"ping","request_id":"r1"} {}`, "r1", "malformed JSON"},
		{"single quotes", `{'type':'ping'}`, "", "malformed JSON"},
		{"array", `[{"type":"ping"}]`, "", "JSON object"},
		{"string", `"ping"`, "", "JSON object"},
		{"number", `42`, "", "JSON object"},
		{"null", `null`, "", "type is required"},
		{"invalid UTF-8", "{\"type\":\"ping\",\"request_id\":\"r\xff\"}", "", "UTF-8"},
		{"invalid UTF-8 in a payload", "{\"type\":\"publish\",\"topic\":\"t\",\"message\":{\"id\":\"" + testUUID + "\",\"payload\":\"\xc3\x28\"}}", "", "UTF-8"},
		{"missing type", `{"request_id":"r1","topic":"orders"}`, "r1", "type is required"},
		{"empty type", `{"type":"","request_id":"r1"}`, "r1", "type is required"},
		{"type not a string", `{"type":1,"request_id":"r1"}`, "r1", "type"},
		{"unknown type", `{"type":"publishh","request_id":"r1"}`, "r1", "unknown type"},
		{"type is case-sensitive", `{"type":"PING","request_id":"r1"}`, "r1", "unknown type"},
		{"subscribe missing topic", `{"type":"subscribe","request_id":"r1","client_id":"c1"}`, "r1", "topic is required"},
		{"unsubscribe missing topic", `{"type":"unsubscribe","request_id":"r1","client_id":"c1"}`, "r1", "topic is required"},
		{"publish missing topic", `{"type":"publish","request_id":"r1","message":{"id":"` + testUUID + `","payload":1}}`, "r1", "topic is required"},
		{"empty topic", `{"type":"subscribe","request_id":"r1","topic":"","client_id":"c1"}`, "r1", "topic is required"},
		{"null topic", `{"type":"subscribe","request_id":"r1","topic":null,"client_id":"c1"}`, "r1", "topic is required"},
		{"topic not a string", `{"type":"subscribe","request_id":"r1","topic":7,"client_id":"c1"}`, "r1", "topic"},
		{"topic with a space", `{"type":"subscribe","request_id":"r1","topic":"my orders","client_id":"c1"}`, "r1", "invalid topic name"},
		{"topic with a slash", `{"type":"publish","request_id":"r1","topic":"a/b","message":{"id":"` + testUUID + `","payload":1}}`, "r1", "invalid topic name"},
		{"topic with non-ASCII letter", `{"type":"unsubscribe","request_id":"r1","topic":"café","client_id":"c1"}`, "r1", "invalid topic name"},
		{"topic of 129 characters", `{"type":"subscribe","request_id":"r1","topic":"` + strings.Repeat("t", 129) + `","client_id":"c1"}`, "r1", "invalid topic name"},
		{"subscribe missing client_id", `{"type":"subscribe","request_id":"r1","topic":"orders"}`, "r1", "client_id is required"},
		{"unsubscribe missing client_id", `{"type":"unsubscribe","request_id":"r1","topic":"orders"}`, "r1", "client_id is required"},
		{"empty client_id", `{"type":"subscribe","request_id":"r1","topic":"orders","client_id":""}`, "r1", "client_id is required"},
		{"client_id not a string", `{"type":"subscribe","request_id":"r1","topic":"orders","client_id":5}`, "r1", "client_id"},
		{"client_id of 257 bytes", `{"type":"subscribe","request_id":"r1","topic":"orders","client_id":"` + strings.Repeat("c", 257) + `"}`, "r1", "client_id is longer"},
		{"last_n negative", sub(`,"last_n":-1`), "r1", "last_n"},
		{"last_n far below zero", sub(`,"last_n":-99999999999999999999`), "r1", "last_n"},
		{"last_n fraction", sub(`,"last_n":1.5`), "r1", "last_n"},
		{"last_n exponent", sub(`,"last_n":1e2`), "r1", "last_n"},
		{"last_n string", sub(`,"last_n":"5"`), "r1", "last_n"},
		{"last_n boolean", sub(`,"last_n":true`), "r1", "last_n"},
		{"last_n object", sub(`,"last_n":{}`), "r1", "last_n"},
		{"publish missing message", `{"type":"publish","request_id":"r1","topic":"orders"}`, "r1", "message is required"},
		{"publish null message", pub(`null`), "r1", "message is required"},
		{"publish message not an object", pub(`"hello"`), "r1", "message"},
		{"publish missing id", pub(`{"payload":{"a":1}}`), "r1", "message.id is required"},
		{"publish empty id", pub(`{"id":"","payload":{"a":1}}`), "r1", "message.id is required"},
		{"publish id not a string", pub(`{"id":123,"payload":{"a":1}}`), "r1", "id"},
		{"publish invalid UUID", pub(`{"id":"not-a-uuid","payload":{"a":1}}`), "r1", "not a valid UUID"},
		{"publish UUID one digit short", pub(`{"id":"550e8400-e29b-41d4-a716-44665544000","payload":1}`), "r1", "not a valid UUID"},
		{"publish missing payload", pub(`{"id":"` + testUUID + `"}`), "r1", "message.payload is required"},
		{"request_id not a string", `{"type":"ping","request_id":5}`, "", "request_id"},
		{"request_id an object", `{"type":"ping","request_id":{"id":"r1"}}`, "", "request_id"},
		{"request_id of 257 bytes", `{"type":"ping","request_id":"` + strings.Repeat("r", 257) + `"}`, "", "request_id is longer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := DecodeRequest([]byte(tt.frame))
			if err == nil {
				t.Fatalf("DecodeRequest(%s) = %+v, want BAD_REQUEST", tt.frame, req)
			}
			code, status, msg := classify(err)
			if code != CodeBadRequest || status != 400 {
				t.Errorf("classified as %s/%d, want BAD_REQUEST/400", code, status)
			}
			if !strings.Contains(msg, tt.msg) {
				t.Errorf("error %q does not mention %q", msg, tt.msg)
			}
			if req.RequestID != tt.requestID {
				t.Errorf("request_id for correlation = %q, want %q", req.RequestID, tt.requestID)
			}
		})
	}
}

// decodeObject parses a server frame and checks the fields every frame has:
// exactly the keys in want, and ts in RFC 3339 UTC.
func decodeObject(t *testing.T, data []byte, want ...string) map[string]any {
	t.Helper()
	if !json.Valid(data) {
		t.Fatalf("invalid JSON: %s", data)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
	if got := frame(m).keys(); !reflect.DeepEqual(got, want) {
		t.Fatalf("keys of %s = %v, want %v", data, got, want)
	}
	if ts, ok := m["ts"]; ok {
		checkTS(t, ts)
	}
	return m
}

// checkTS fails unless ts is an RFC 3339 timestamp in UTC and returns it.
func checkTS(t *testing.T, ts any) time.Time {
	t.Helper()
	s, _ := ts.(string)
	parsed, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("ts %v is not RFC 3339: %v", ts, err)
	}
	if !strings.HasSuffix(s, "Z") {
		t.Fatalf("ts %q is not in UTC", s)
	}
	return parsed
}

func TestEncodeEvent(t *testing.T) {
	zone := time.FixedZone("UTC+5", 5*3600)
	ts := time.Date(2025, 1, 15, 15, 30, 0, 123456789, zone)
	payloads := []string{
		`{"order_id":123}`,
		`{"nested":{"list":[1,"two",null,true,{"x":-1.5e-3}]},"s":"quote \" backslash \\ unicode \u00e9 \ud83d\ude00 <>&"}`,
		`"just a string"`,
		`[]`,
		`0`,
		`null`,
	}
	for _, p := range payloads {
		e := &broker.Event{Topic: "orders.eu-1_x", Seq: 42, TS: ts, Message: broker.Message{ID: testUUID, Payload: []byte(p)}}
		data := EncodeEvent(e)
		m := decodeObject(t, data, "message", "seq", "topic", "ts", "type")
		if m["type"] != "event" || m["topic"] != "orders.eu-1_x" || m["seq"] != float64(42) {
			t.Errorf("event %s: wrong type, topic or seq", data)
		}
		if got := checkTS(t, m["ts"]); !got.Equal(ts.Truncate(time.Microsecond)) {
			t.Errorf("ts %v, want %v", got, ts)
		}
		msg, _ := m["message"].(map[string]any)
		if got := frame(msg).keys(); !reflect.DeepEqual(got, []string{"id", "payload"}) {
			t.Errorf("message keys %v, want [id payload]", got)
		}
		if msg["id"] != testUUID {
			t.Errorf("message.id %v", msg["id"])
		}
		var want any
		if err := json.Unmarshal([]byte(p), &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(msg["payload"], want) {
			t.Errorf("payload %#v, want %#v", msg["payload"], want)
		}
	}
}

func TestEncodeReplies(t *testing.T) {
	now := time.Date(2025, 1, 15, 10, 30, 0, 0, time.FixedZone("PST", -8*3600))
	odd := "r \"quoted\" \\ é \u2028 </script>"
	tests := []struct {
		name   string
		data   []byte
		keys   []string
		fields map[string]any
	}{
		{"ack", encodeAck("r-sub-1", "orders", now), []string{"request_id", "status", "topic", "ts", "type"},
			map[string]any{"type": "ack", "request_id": "r-sub-1", "status": "ok", "topic": "orders"}},
		{"ack without request_id", encodeAck("", "orders", now), []string{"status", "topic", "ts", "type"},
			map[string]any{"type": "ack", "status": "ok", "topic": "orders"}},
		{"ack with odd request_id", encodeAck(odd, "orders", now), []string{"request_id", "status", "topic", "ts", "type"},
			map[string]any{"request_id": odd}},
		{"pong", encodePong("ping-1", now), []string{"request_id", "ts", "type"},
			map[string]any{"type": "pong", "request_id": "ping-1"}},
		{"pong without request_id", encodePong("", now), []string{"ts", "type"},
			map[string]any{"type": "pong"}},
		{"error", encodeError("r-pub-1", CodeTopicNotFound, "topic 'orders' does not exist", now), []string{"error", "request_id", "ts", "type"},
			map[string]any{"type": "error", "request_id": "r-pub-1", "error": map[string]any{"code": "TOPIC_NOT_FOUND", "message": "topic 'orders' does not exist"}}},
		{"error without request_id, odd message", encodeError("", CodeBadRequest, odd, now), []string{"error", "ts", "type"},
			map[string]any{"type": "error", "error": map[string]any{"code": "BAD_REQUEST", "message": odd}}},
		{"info topic_deleted", encodeInfo("orders", "topic_deleted", now), []string{"msg", "topic", "ts", "type"},
			map[string]any{"type": "info", "topic": "orders", "msg": "topic_deleted"}},
		{"info heartbeat", encodeInfo("", "ping", now), []string{"msg", "ts", "type"},
			map[string]any{"type": "info", "msg": "ping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := decodeObject(t, tt.data, tt.keys...)
			for k, v := range tt.fields {
				if !reflect.DeepEqual(m[k], v) {
					t.Errorf("%s = %#v, want %#v", k, m[k], v)
				}
			}
			if got := checkTS(t, m["ts"]); !got.Equal(now) {
				t.Errorf("ts %v, want %v", got, now)
			}
			if !bytes.Contains(tt.data, []byte(`"ts":"2025-01-15T18:30:00`)) {
				t.Errorf("ts not rendered in UTC: %s", tt.data)
			}
		})
	}
}
