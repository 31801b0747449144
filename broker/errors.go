package broker

import "errors"

// Sentinel errors. The gateway maps each to a protocol code in one table.
var (
	ErrTopicNotFound    = errors.New("topic does not exist")
	ErrTopicExists      = errors.New("topic already exists")
	ErrInvalidTopicName = errors.New("invalid topic name: use 1-128 letters, digits, '.', '_' or '-'")
	ErrUnavailable      = errors.New("no quorum: the change cannot be committed now")
	ErrClosed           = errors.New("broker is shutting down")
)
