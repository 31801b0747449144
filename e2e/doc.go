// Package e2e is the end-to-end suite of the shipped cluster: it builds the
// FROM-scratch image (deploy/Dockerfile.scratch) from a binary built here,
// starts docker-compose.yml's three nodes under a project name of its own,
// and checks them from the outside only (the host ports 8001-8003 on
// 127.0.0.1, and docker / docker-compose commands): the cluster forms, events
// cross nodes, topic admin works through every node, the leader is killed
// under continuous publishing and no acked message is lost, the killed node
// catches up, a node cut off by `docker network disconnect` refuses writes
// with UNAVAILABLE while the majority goes on, and a node recreated with a new
// IP address rejoins. Everything it created is removed at the end, also when
// a check fails or the run is interrupted.
//
// The tests carry the e2e build tag, so `go test ./...` skips them:
//
//	make e2e     # go test -tags e2e -v -count=1 -timeout 20m ./e2e/
//
// Environment: ENCLAVE_E2E_IMAGE uses that image instead of building one;
// ENCLAVE_E2E_COMPOSE picks the Compose command ("docker compose" or
// "docker-compose"; by default the first that works); ENCLAVE_E2E_SUBNET the
// /24 of the cluster network (by default a free one is picked);
// ENCLAVE_E2E_KEEP=1 leaves the cluster running after the run (for
// debugging; remove it with the command the run prints). Node logs are saved
// under bin/e2e-logs/.
package e2e
