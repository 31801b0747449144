package main

import (
	"net"

	"github.com/mr-enclave/enclave/cluster"
	"github.com/mr-enclave/enclave/gateway"
)

// clusterView shows a cluster.Node to the gateway.
type clusterView struct{ node *cluster.Node }

var _ gateway.ClusterView = clusterView{}

func (v clusterView) Status() gateway.ClusterStatus {
	st := gateway.ClusterStatus{NodeID: v.node.ID(), LeaderID: v.node.LeaderID(), Members: []gateway.Member{}}
	for _, m := range v.node.Members() {
		st.Members = append(st.Members, gateway.Member{ID: m.ID, Address: m.Address, Status: m.Status, Voter: m.Voter})
	}
	return st
}

func (v clusterView) RemoteSubscribers() map[string]int { return v.node.RemoteSubscribers() }

// detectAdvertiseAddr picks the first non-loopback IPv4 address, so a node
// in a container or VM advertises the address its peers can reach.
func detectAdvertiseAddr() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
