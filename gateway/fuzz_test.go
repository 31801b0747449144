package gateway

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/mr-enclave/enclave/broker"
)

// FuzzDecodeRequest checks that DecodeRequest never panics and that whatever
// it accepts satisfies the protocol's validation rules, including that an
// accepted publish renders as a valid event frame.
func FuzzDecodeRequest(f *testing.F) {
	seeds := []string{
		`{"type":"ping"}`,
		`{"type":"ping","request_id":"ping-1"}`,
		`{"type":"subscribe","topic":"orders","client_id":"c1","last_n":5,"request_id":"r-sub-1"}`,
		`{"type":"subscribe","topic":"orders","client_id":"c1","last_n":null}`,
		`{"type":"subscribe","topic":"orders","client_id":"c1","last_n":99999999999999999999}`,
		`{"type":"unsubscribe","topic":"orders","client_id":"c1","request_id":"u"}`,
		`{"type":"publish","topic":"orders","request_id":"r-pub-1","message":{"id":"` + testUUID + `","payload":{"order_id":123}}}`,
		`{"type":"publish","topic":"t","message":{"id":"{` + testUUID + `}","payload":"x"}}`,
		`{"type":"publish","topic":"t","message":{"id":"urn:uuid:` + testUUID + `","payload":[1,{"a":null}]}}`,
		`{"type":"publish","topic":"t","message":{"id":"550e8400e29b41d4a716446655440000","payload":  1.5e3 }}`,
		`{"type":"publish","topic":"t","message":{"id":"` + testUUID + `","payload":"\u0000\ud800"}}`,
		`{"type":"subscribe","topic":"orders","client_id":"c1","last_n":-1}`,
		`{"type":"subscribe","topic":"orders","client_id":"c1","last_n":"5"}`,
		`{"type":"subscribe","topic":"or ders","client_id":"c1"}`,
		`{"type":"publish","topic":"orders","message":{"id":"nope","payload":1}}`,
		`{"type":"publish","topic":"orders","message":{"id":"` + testUUID + `"}}`,
		`{"TYPE":"Ping","Request_ID":"x"}`,
		`{"type":"ping","request_id":5}`,
		`{"type":"ping","type":"subscribe"}`,
		`{"request_id":"r1","type":`,
		`[]`, `null`, `"ping"`, `0`, ``, `{`, `}`, "\xff\xfe", "{\"type\":\"ping\",\"request_id\":\"\xc3\x28\"}",
		`{"type":"subscribe","topic":"` + strings.Repeat("a", 129) + `","client_id":"c"}`,
		`{"type":"ping","request_id":"` + strings.Repeat("r", 300) + `"}`,
		strings.Repeat(`{"a":[`, 100) + strings.Repeat(`]}`, 100),
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeRequest(data)
		if len(req.RequestID) > maxRequestIDLen {
			t.Fatalf("request_id of %d bytes returned", len(req.RequestID))
		}
		if err != nil {
			if code, _, _ := classify(err); code != CodeBadRequest {
				t.Fatalf("error %v classified as %s, want BAD_REQUEST", err, code)
			}
			return
		}
		if req.LastN < 0 {
			t.Fatalf("LastN %d < 0", req.LastN)
		}
		switch req.Type {
		case TypePing:
			return
		case TypeSubscribe, TypeUnsubscribe, TypePublish:
		default:
			t.Fatalf("accepted unknown type %q", req.Type)
		}
		if !broker.ValidTopicName(req.Topic) {
			t.Fatalf("accepted invalid topic %q", req.Topic)
		}
		if req.Type != TypePublish {
			if req.ClientID == "" || len(req.ClientID) > maxClientIDLen {
				t.Fatalf("accepted client_id %q", req.ClientID)
			}
			return
		}
		if _, err := uuid.Parse(req.Message.ID); err != nil {
			t.Fatalf("accepted message.id %q: %v", req.Message.ID, err)
		}
		p := req.Message.Payload
		if len(p) == 0 || !json.Valid(p) {
			t.Fatalf("accepted payload %q", p)
		}
		// The event built from it is valid JSON carrying the same message.
		frame := EncodeEvent(&broker.Event{Topic: req.Topic, Seq: 1, TS: time.Unix(0, 0), Message: req.Message})
		var ev struct {
			Topic   string `json:"topic"`
			Message struct {
				ID      string          `json:"id"`
				Payload json.RawMessage `json:"payload"`
			} `json:"message"`
		}
		if err := json.Unmarshal(frame, &ev); err != nil {
			t.Fatalf("event frame %q is not valid JSON: %v", frame, err)
		}
		if ev.Topic != req.Topic || ev.Message.ID != req.Message.ID || !bytes.Equal(ev.Message.Payload, p) {
			t.Fatalf("event frame %q does not carry the published message", frame)
		}
	})
}
