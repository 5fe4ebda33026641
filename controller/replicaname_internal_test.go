package controller

import (
	"net"
	"os"
	"strings"
	"testing"
)

// A replica's default name is stable across restarts (host name and listen
// port), unless the port is not known (then it is unique to the process).
func TestReplicaName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if got := replicaName("east-1", &net.TCPAddr{Port: 7400}); got != "east-1" {
		t.Errorf("given name: got %q", got)
	}
	a := replicaName("", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7400})
	b := replicaName("", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7400})
	if a != host+":7400" || a != b {
		t.Errorf("default names %q, %q: want %q for both", a, b, host+":7400")
	}
	if c := replicaName("", &net.TCPAddr{Port: 7401}); c == a {
		t.Errorf("another port gave the same name %q", c)
	}
	x := replicaName("", &net.TCPAddr{Port: 0})
	y := replicaName("", &net.UnixAddr{Name: "/run/x"})
	if x == y || !strings.HasPrefix(x, host+"-") {
		t.Errorf("names without a port %q, %q: want distinct process-unique names", x, y)
	}
}
