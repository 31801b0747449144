package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/mr-enclave/enclave/broker"
)

// maxRESTBody bounds a REST request body.
const maxRESTBody = 64 << 10

// Handler returns the HTTP handler: REST routes and /ws.
func (g *Gateway) Handler() http.Handler {
	r := chi.NewRouter()
	// HEAD is answered wherever GET is (curl -I, load balancer checks).
	r.Use(middleware.GetHead)
	r.Get("/ws", g.serveWS)
	r.Post("/topics", g.createTopic)
	r.Get("/topics", g.listTopics)
	r.Delete("/topics/{name}", g.deleteTopic)
	r.Get("/health", g.health)
	r.Get("/stats", g.stats)
	r.Get("/cluster", g.cluster)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "no route for "+r.Method+" "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		allowed := allowedMethods(r, req.URL.Path)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", req.Method+" is not allowed on "+req.URL.Path+"; use "+strings.Join(allowed, " or "))
	})
	return r
}

// allowedMethods lists the methods routed for path, for a 405's Allow
// header (RFC 9110 requires it; chi's custom 405 handler does not set it).
func allowedMethods(routes chi.Routes, path string) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		if routes.Match(chi.NewRouteContext(), m, path) {
			out = append(out, m)
			if m == http.MethodGet {
				out = append(out, http.MethodHead) // middleware.GetHead
			}
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	var body errorBody
	body.Error.Code, body.Error.Message = code, message
	writeJSON(w, status, body)
}

func (g *Gateway) writeBrokerError(w http.ResponseWriter, r *http.Request, err error, topic string) {
	code, status, msg := classify(err)
	msg = describeForTopic(code, msg, topic)
	if code == CodeInternal {
		g.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		g.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "code", code, "err", err)
	}
	writeError(w, status, code, msg)
}

func (g *Gateway) requestContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), g.cfg.RequestTimeout)
}

type topicStatus struct {
	Status string `json:"status"`
	Topic  string `json:"topic"`
}

func (g *Gateway) createTopic(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Name *string `json:"name"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRESTBody))
	err := dec.Decode(&body)
	if err == nil && dec.More() {
		err = errors.New("trailing data after the JSON object")
	}
	if err != nil {
		g.writeBrokerError(w, r, badRequestf("body must be a JSON object like {\"name\":\"orders\"}"), "")
		return
	}
	if body.Name == nil {
		g.writeBrokerError(w, r, badRequestf("name is required"), "")
		return
	}
	ctx, cancel := g.requestContext(r)
	defer cancel()
	if err := g.broker.CreateTopic(ctx, *body.Name); err != nil {
		g.writeBrokerError(w, r, err, *body.Name)
		return
	}
	writeJSON(w, http.StatusCreated, topicStatus{Status: "created", Topic: *body.Name})
}

func (g *Gateway) deleteTopic(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	ctx, cancel := g.requestContext(r)
	defer cancel()
	if err := g.broker.DeleteTopic(ctx, name); err != nil {
		g.writeBrokerError(w, r, err, name)
		return
	}
	writeJSON(w, http.StatusOK, topicStatus{Status: "deleted", Topic: name})
}

// topicView is one topic with subscribers counted across the cluster.
type topicView struct {
	broker.TopicStats
	subscribers int
}

func (g *Gateway) topics() []topicView {
	local := g.broker.Topics()
	var remote map[string]int
	if g.cfg.Cluster != nil {
		remote = g.cfg.Cluster.RemoteSubscribers()
	}
	out := make([]topicView, len(local))
	for i, t := range local {
		out[i] = topicView{TopicStats: t, subscribers: t.Subscribers + remote[t.Name]}
	}
	return out
}

func (g *Gateway) listTopics(w http.ResponseWriter, _ *http.Request) {
	type entry struct {
		Name        string `json:"name"`
		Subscribers int    `json:"subscribers"`
	}
	topics := g.topics()
	body := struct {
		Topics []entry `json:"topics"`
	}{Topics: make([]entry, 0, len(topics))}
	for _, t := range topics {
		body.Topics = append(body.Topics, entry{Name: t.Name, Subscribers: t.subscribers})
	}
	writeJSON(w, http.StatusOK, body)
}

func (g *Gateway) health(w http.ResponseWriter, _ *http.Request) {
	topics := g.topics()
	subscribers := 0
	for _, t := range topics {
		subscribers += t.subscribers
	}
	writeJSON(w, http.StatusOK, struct {
		UptimeSec   int64 `json:"uptime_sec"`
		Topics      int   `json:"topics"`
		Subscribers int   `json:"subscribers"`
	}{int64(time.Since(g.started) / time.Second), len(topics), subscribers})
}

func (g *Gateway) stats(w http.ResponseWriter, _ *http.Request) {
	type entry struct {
		Messages    uint64 `json:"messages"`
		Subscribers int    `json:"subscribers"`
	}
	body := struct {
		Topics map[string]entry `json:"topics"`
	}{Topics: make(map[string]entry)}
	for _, t := range g.topics() {
		body.Topics[t.Name] = entry{Messages: t.Messages, Subscribers: t.subscribers}
	}
	writeJSON(w, http.StatusOK, body)
}

func (g *Gateway) cluster(w http.ResponseWriter, _ *http.Request) {
	if g.cfg.Cluster != nil {
		writeJSON(w, http.StatusOK, g.cfg.Cluster.Status())
		return
	}
	writeJSON(w, http.StatusOK, ClusterStatus{
		NodeID:   g.cfg.NodeID,
		LeaderID: g.cfg.NodeID,
		Members:  []Member{{ID: g.cfg.NodeID, Address: g.cfg.AdvertiseAddr, Status: "alive", Voter: true}},
	})
}
