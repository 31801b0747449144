package gateway

import (
	"context"
	"errors"
	"net/http"

	"github.com/mr-enclave/enclave/broker"
)

// Protocol error codes.
const (
	CodeBadRequest    = "BAD_REQUEST"
	CodeTopicNotFound = "TOPIC_NOT_FOUND"
	CodeTopicExists   = "TOPIC_EXISTS"
	CodeSlowConsumer  = "SLOW_CONSUMER"
	CodeUnauthorized  = "UNAUTHORIZED"
	CodeUnavailable   = "UNAVAILABLE"
	CodeInternal      = "INTERNAL"
)

// errorMapping is the one table from broker sentinels to protocol codes and
// HTTP statuses.
var errorMapping = []struct {
	err    error
	code   string
	status int
}{
	{broker.ErrTopicNotFound, CodeTopicNotFound, http.StatusNotFound},
	{broker.ErrTopicExists, CodeTopicExists, http.StatusConflict},
	{broker.ErrInvalidTopicName, CodeBadRequest, http.StatusBadRequest},
	{broker.ErrUnavailable, CodeUnavailable, http.StatusServiceUnavailable},
	{broker.ErrClosed, CodeUnavailable, http.StatusServiceUnavailable},
	{context.DeadlineExceeded, CodeUnavailable, http.StatusServiceUnavailable},
	// The client went away (or the node is stopping) before the commit
	// answered: the outcome is unknown, not an internal failure.
	{context.Canceled, CodeUnavailable, http.StatusServiceUnavailable},
}

// classify maps err to a protocol code, HTTP status and client-facing text.
// Unknown errors are INTERNAL and their text is not shown to clients.
func classify(err error) (code string, status int, message string) {
	var bad *badRequest
	if errors.As(err, &bad) {
		return CodeBadRequest, http.StatusBadRequest, bad.msg
	}
	for _, m := range errorMapping {
		if errors.Is(err, m.err) {
			return m.code, m.status, err.Error()
		}
	}
	return CodeInternal, http.StatusInternalServerError, "internal error"
}

// badRequest is an input the protocol rejects.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badRequestf(msg string) error { return &badRequest{msg: msg} }
