package fleettest

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/mpfleet/mpfleet/internal/testpki"
	"github.com/mpfleet/mpfleet/test/lab"
)

// ControllerPort is the controller's gRPC port on the management network.
const ControllerPort = "7400"

// FleetRole is the role label of the lab's extra hosts, h1 to hN.
const FleetRole = "mptcp-fleet"

// Roles are the role labels of the lab's client and server, the ones
// deploy/examples/lab-*.yaml select.
var Roles = map[lab.Host]string{lab.Client: "mptcp-client", lab.Server: "mptcp-server"}

// Groups are the groups of deploy/examples/lab-*.yaml that select the
// client and the server.
var Groups = map[lab.Host]string{lab.Client: "groups/lab-clients", lab.Server: "groups/lab-servers"}

// RoleOf is the role label of a lab host: Roles for the client and the
// server, FleetRole for the others.
func RoleOf(h lab.Host) string {
	if r, ok := Roles[h]; ok {
		return r
	}
	return FleetRole
}

// Config says how to run a fleet. Bin and Dir are required.
type Config struct {
	// Bin is the directory holding the programs (Programs).
	Bin string
	// Dir holds what the fleet writes: its PKI (Dir/pki), the controller's
	// data (Dir/controller), each agent's state (Dir/state-<host>) and the
	// programs' logs (Dir/controller.log, Dir/agent-<host>.log). The caller
	// makes it and removes it after the lab is down.
	Dir string
	// Name names the CA ("mpfleet <Name> CA <lab prefix>") and the operator
	// the token is for ("<Name>-operator"). By default "test".
	Name string
	// LogLevel is the programs' --log-level. By default "info".
	LogLevel string
	// ControllerFlags are extra flags of every start of the controller.
	ControllerFlags []string
	// AgentFlags are extra flags of every start of every agent.
	AgentFlags []string
	// HostFlags are extra flags of every start of the agent of one host,
	// after AgentFlags.
	HostFlags map[lab.Host][]string
	// WorkDir is mpfleetctl's working directory, against which relative
	// manifest paths resolve. By default the caller's.
	WorkDir string
	// OnStart, if set, is called before each program starts with the host
	// whose namespace it runs in, its name and its arguments.
	OnStart func(h lab.Host, program string, args []string)
}

// KeyPair is a certificate and its key, as files.
type KeyPair struct{ Cert, Key string }

// PKI is the fleet's throwaway PKI, as files under Dir/pki.
type PKI struct {
	// CA is the CA certificate, which every program trusts.
	CA string
	// Controller is the controller's server certificate, for its address
	// on the management network.
	Controller KeyPair
	// Agents are the agents' client certificates, whose common name is the
	// host id and which bind the host's role label (RoleOf).
	Agents map[lab.Host]KeyPair
	// Tokens is the controller's tokens file, which grants Token the admin
	// role.
	Tokens string
	// Token is the operator's bearer token.
	Token string
}

// Fleet is the controller and the agents of a lab, run as processes. Its
// methods are safe for concurrent use.
type Fleet struct {
	// Lab is the lab the fleet runs in.
	Lab *lab.Lab
	// PKI is the fleet's certificates and token.
	PKI PKI

	cfg Config

	mu         sync.Mutex
	controller *lab.Process
	agents     map[lab.Host]*lab.Process
	logs       []string
}

// New makes the PKI of a fleet in the lab l, with an agent certificate for
// the client, the server and every extra host, and starts nothing.
func New(l *lab.Lab, cfg Config) (*Fleet, error) {
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, fmt.Errorf("fleettest: Config.Bin %q and Config.Dir %q: both are required", cfg.Bin, cfg.Dir)
	}
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	f := &Fleet{Lab: l, cfg: cfg, agents: map[lab.Host]*lab.Process{}}
	if err := f.makePKI(); err != nil {
		return nil, fmt.Errorf("fleettest: PKI: %w", err)
	}
	return f, nil
}

func (f *Fleet) makePKI() error {
	dir := filepath.Join(f.cfg.Dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := testpki.NewCA(fmt.Sprintf("mpfleet %s CA %s", f.cfg.Name, f.Lab.Prefix()))
	if err != nil {
		return err
	}
	p := PKI{Agents: map[lab.Host]KeyPair{}, Tokens: filepath.Join(dir, "tokens.yaml")}
	if p.CA, err = ca.WriteCA(dir); err != nil {
		return err
	}
	p.Controller.Cert, p.Controller.Key, err = ca.WriteLeaf(dir, "controller", testpki.Leaf{
		CommonName: "mpfleet-controller", IPs: []netip.Addr{f.Lab.ControllerAddr()}, Server: true,
	})
	if err != nil {
		return err
	}
	for _, h := range append([]lab.Host{lab.Client, lab.Server}, f.Lab.FleetHosts()...) {
		// The certificate binds the host's role: with authentication on,
		// the labels an agent reports do not choose its group.
		c, k, err := ca.WriteLeaf(dir, "agent-"+string(h), testpki.Leaf{CommonName: f.HostID(h), Client: true,
			Labels: map[string]string{"role": RoleOf(h)}})
		if err != nil {
			return err
		}
		p.Agents[h] = KeyPair{c, k}
	}
	tok, sum, err := testpki.Token()
	if err != nil {
		return err
	}
	p.Token = tok
	tokens := fmt.Sprintf("- name: %s-operator\n  role: admin\n  tokenSHA256: %s\n", f.cfg.Name, sum)
	if err := os.WriteFile(p.Tokens, []byte(tokens), 0o600); err != nil {
		return err
	}
	f.PKI = p
	return nil
}

// HostID is the fleet host id of a lab host: its namespace's name.
func (f *Fleet) HostID(h lab.Host) string { return f.Lab.NSName(h) }

// HostName is the API resource name of a lab host, "hosts/<id>".
func (f *Fleet) HostName(h lab.Host) string { return "hosts/" + f.HostID(h) }

// ControllerAddr is the controller's gRPC address on the management
// network.
func (f *Fleet) ControllerAddr() string {
	return net.JoinHostPort(f.Lab.ControllerAddr().String(), ControllerPort)
}

// DataDir is the controller's --data-dir, where its embedded etcd keeps
// its data.
func (f *Fleet) DataDir() string { return filepath.Join(f.cfg.Dir, "controller") }

// logFile opens (appending) the log of a program, keeping its path for
// Logs.
func (f *Fleet) logFile(name string) (*os.File, error) {
	p := filepath.Join(f.cfg.Dir, name+".log")
	lf, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	if !slices.Contains(f.logs, p) {
		f.logs = append(f.logs, p)
	}
	f.mu.Unlock()
	return lf, nil
}

// Logs returns the paths of the programs' logs, in the order the programs
// first started.
func (f *Fleet) Logs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.logs)
}

// LogTails returns the last n lines of every program's log, each under a
// "---- last lines of <file>:" line, for a failure's report.
func (f *Fleet) LogTails(n int) string {
	var b strings.Builder
	for _, p := range f.Logs() {
		fmt.Fprintf(&b, "---- last lines of %s:\n%s\n", filepath.Base(p), tail(p, n))
	}
	return b.String()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
