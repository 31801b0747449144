// Package gateway translates the wire protocol into broker calls: chi routes
// for REST, the WebSocket handler built on gorilla/websocket, the frame
// types, their decoding and validation, and the one table that maps broker
// errors to protocol codes and HTTP statuses.
//
// It knows the broker's API and the small ClusterView interface, nothing of
// Raft or memberlist.
//
// Each WebSocket connection has one reader (the HTTP handler's goroutine)
// and, only while there is something to send, one writer goroutine that
// drains the connection's control frames and every ready subscription queue
// into a single socket write. Idle connections therefore hold no writer
// goroutine and no write buffer.
//
// Lock order: broker locks, then conn.mu (the broker wakes a connection with
// its topic lock held), then conn.wmu (socket writes). conn.mu is never held
// while calling the broker or writing to the socket.
package gateway
