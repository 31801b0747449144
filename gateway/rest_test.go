package gateway

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/mr-enclave/enclave/broker"
)

// checkRESTError fails unless body is exactly {"error":{"code","message"}}
// with code, and returns the message.
func checkRESTError(t *testing.T, body []byte, code string) string {
	t.Helper()
	var m map[string]map[string]any
	if err := json.Unmarshal(body, &m); err != nil || len(m) != 1 || len(m["error"]) != 2 {
		t.Fatalf("error body %s is not {\"error\":{\"code\",\"message\"}} (%v)", body, err)
	}
	msg, _ := m["error"]["message"].(string)
	if m["error"]["code"] != code || msg == "" {
		t.Fatalf("error body %s, want code %s and a message", body, code)
	}
	return msg
}

func TestRESTTopics(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{}, Config{})
	tests := []struct {
		name, method, path, body string
		status                   int
		want                     string // exact body, or the error code when it starts with "!"
	}{
		{"list with no topics", "GET", "/topics", "", 200, `{"topics":[]}`},
		{"create", "POST", "/topics", `{"name":"orders"}`, 201, `{"status":"created","topic":"orders"}`},
		{"create another", "POST", "/topics", `{"name":"a.b_c-9"}`, 201, `{"status":"created","topic":"a.b_c-9"}`},
		{"create existing", "POST", "/topics", `{"name":"orders"}`, 409, "!TOPIC_EXISTS"},
		{"create invalid name", "POST", "/topics", `{"name":"my orders"}`, 400, "!BAD_REQUEST"},
		{"create empty name", "POST", "/topics", `{"name":""}`, 400, "!BAD_REQUEST"},
		{"create overlong name", "POST", "/topics", `{"name":"` + strings.Repeat("n", 129) + `"}`, 400, "!BAD_REQUEST"},
		{"create name of 128", "POST", "/topics", `{"name":"` + strings.Repeat("n", 128) + `"}`, 201, `{"status":"created","topic":"` + strings.Repeat("n", 128) + `"}`},
		{"create without name", "POST", "/topics", `{}`, 400, "!BAD_REQUEST"},
		{"create with name not a string", "POST", "/topics", `{"name":5}`, 400, "!BAD_REQUEST"},
		{"create with malformed body", "POST", "/topics", `{"name":`, 400, "!BAD_REQUEST"},
		{"create with array body", "POST", "/topics", `["orders"]`, 400, "!BAD_REQUEST"},
		{"create with empty body", "POST", "/topics", ``, 400, "!BAD_REQUEST"},
		{"create with trailing data", "POST", "/topics", `{"name":"x"} {"name":"y"}`, 400, "!BAD_REQUEST"},
		{"list", "GET", "/topics", "", 200, `{"topics":[{"name":"a.b_c-9","subscribers":0},{"name":"` + strings.Repeat("n", 128) + `","subscribers":0},{"name":"orders","subscribers":0}]}`},
		{"delete", "DELETE", "/topics/a.b_c-9", "", 200, `{"status":"deleted","topic":"a.b_c-9"}`},
		{"delete again", "DELETE", "/topics/a.b_c-9", "", 404, "!TOPIC_NOT_FOUND"},
		{"delete unknown", "DELETE", "/topics/never", "", 404, "!TOPIC_NOT_FOUND"},
		{"delete invalid name", "DELETE", "/topics/bad%20name", "", 404, "!TOPIC_NOT_FOUND"},
		{"list after delete", "GET", "/topics", "", 200, `{"topics":[{"name":"` + strings.Repeat("n", 128) + `","subscribers":0},{"name":"orders","subscribers":0}]}`},
		{"unknown route", "GET", "/nope", "", 404, "!NOT_FOUND"},
		{"unknown nested route", "GET", "/topics/orders/messages", "", 404, "!NOT_FOUND"},
		{"wrong method", "PUT", "/topics", `{"name":"x"}`, 405, "!METHOD_NOT_ALLOWED"},
	}
	for _, tt := range tests {
		status, header, body := s.do(tt.method, tt.path, tt.body)
		if status != tt.status {
			t.Fatalf("%s: %s %s = %d %s, want %d", tt.name, tt.method, tt.path, status, body, tt.status)
		}
		if ct := header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", tt.name, ct)
		}
		if code, ok := strings.CutPrefix(tt.want, "!"); ok {
			checkRESTError(t, body, code)
		} else if got := strings.TrimSuffix(string(body), "\n"); got != tt.want {
			t.Fatalf("%s: body %s, want %s", tt.name, got, tt.want)
		}
	}
	for _, tt := range []struct{ method, path, allow string }{
		{"PUT", "/topics", "GET, HEAD, POST"},
		{"GET", "/topics/orders", "DELETE"},
		{"POST", "/health", "GET, HEAD"},
	} {
		status, header, _ := s.do(tt.method, tt.path, "")
		if status != 405 || header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d, Allow %q; want 405 with Allow %q", tt.method, tt.path, status, header.Get("Allow"), tt.allow)
		}
	}
	if status, header, body := s.do("HEAD", "/health", ""); status != 200 || header.Get("Content-Type") != "application/json" || len(body) != 0 {
		t.Errorf("HEAD /health: %d %q %q", status, header.Get("Content-Type"), body)
	}

	_, _, body := s.do("DELETE", "/topics/never", "")
	if msg := checkRESTError(t, body, CodeTopicNotFound); msg != "topic 'never' does not exist" {
		t.Errorf("404 message %q", msg)
	}
	_, _, body = s.do("POST", "/topics", `{"name":"orders"}`)
	if msg := checkRESTError(t, body, CodeTopicExists); msg != "topic 'orders' already exists" {
		t.Errorf("409 message %q", msg)
	}
}

func TestRESTHealthStatsCluster(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, broker.Config{RingSize: 3}, Config{NodeID: "node-7"})
	decode := func(path string) map[string]any {
		t.Helper()
		status, header, body := s.do("GET", path, "")
		if status != http.StatusOK || header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: %d %v %s", path, status, header, body)
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("GET %s: %v in %s", path, err, body)
		}
		return m
	}

	health := decode("/health")
	if got := frame(health).keys(); !reflect.DeepEqual(got, []string{"subscribers", "topics", "uptime_sec"}) {
		t.Fatalf("/health keys %v", got)
	}
	if up, ok := health["uptime_sec"].(float64); !ok || up < 0 || up != float64(int64(up)) {
		t.Fatalf("/health uptime_sec %v is not a whole number of seconds", health["uptime_sec"])
	}
	if health["topics"] != 0.0 || health["subscribers"] != 0.0 {
		t.Fatalf("/health of a new node: %v", health)
	}
	if stats := decode("/stats"); !reflect.DeepEqual(stats, map[string]any{"topics": map[string]any{}}) {
		t.Fatalf("/stats of a new node: %v", stats)
	}

	s.createTopic("orders")
	s.createTopic("quiet")
	a, b := s.dial(), s.dial()
	a.subscribe("orders", "a", 0)
	b.subscribe("orders", "b", 0)
	b.subscribe("quiet", "b", 0)
	pub := s.dial()
	for i := 0; i < 5; i++ { // more than RING_SIZE: messages counts them all
		pub.publish("orders", i)
	}

	health = decode("/health")
	if want := map[string]any{"topics": 2.0, "subscribers": 3.0}; health["topics"] != want["topics"] || health["subscribers"] != want["subscribers"] {
		t.Fatalf("/health %v, want %v", health, want)
	}
	wantStats := map[string]any{"topics": map[string]any{
		"orders": map[string]any{"messages": 5.0, "subscribers": 2.0},
		"quiet":  map[string]any{"messages": 0.0, "subscribers": 1.0},
	}}
	if stats := decode("/stats"); !reflect.DeepEqual(stats, wantStats) {
		t.Fatalf("/stats %v, want %v", stats, wantStats)
	}

	// Closing a connection releases its subscriptions.
	b.ws.Close()
	waitFor(t, wait, "b's subscriptions to go", func() bool { return decode("/health")["subscribers"] == 1.0 })

	cluster := decode("/cluster")
	if cluster["node_id"] != "node-7" || cluster["leader_id"] != "node-7" {
		t.Fatalf("/cluster %v", cluster)
	}
	members, _ := cluster["members"].([]any)
	if len(members) != 1 {
		t.Fatalf("/cluster members %v, want this node alone", cluster["members"])
	}
	m, _ := members[0].(map[string]any)
	if got := frame(m).keys(); !reflect.DeepEqual(got, []string{"address", "id", "status", "voter"}) || m["id"] != "node-7" || m["status"] != "alive" || m["voter"] != true {
		t.Fatalf("/cluster member %v", m)
	}
}
