package controller

// The controller program's settings: flags, also read from the
// environment and a config file (program.Parse).

import (
	"time"

	"github.com/mpfleet/mpfleet/internal/metrics"
	"github.com/mpfleet/mpfleet/internal/store"
	"github.com/spf13/pflag"
)

// Flags are the controller's settings.
type Flags struct {
	Listen          string
	DataDir         string
	EtcdEndpoints   []string
	EtcdPrefix      string
	EtcdClientURL   string
	EtcdPeerURL     string
	EtcdCAFile      string
	EtcdCertFile    string
	EtcdKeyFile     string
	TLSCertFile     string
	TLSKeyFile      string
	TLSClientCAFile string
	TokensFile      string
	ReloadInterval  time.Duration
	Insecure        bool
	LogLevel        string
	Config          string
	AuditMaxEvents  uint64
	AuditMaxAge     time.Duration
	AuditMaxBytes   uint64
	EtcdQuotaBytes  uint64
	EtcdReqTimeout  time.Duration
	AuditKeyFile    string
	ReplicaName     string
	DrainRate       float64
	DrainTimeout    time.Duration
	Metrics         metrics.Flags
}

func flagSet(f *Flags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("mpfleet-controller", pflag.ContinueOnError)
	fs.StringVar(&f.Listen, "listen", "127.0.0.1:7400", "gRPC listen address")
	fs.StringVar(&f.DataDir, "data-dir", "/var/lib/mpfleet", "directory of the embedded etcd (unused with --etcd-endpoints) and of the default --audit-key-file")
	fs.StringSliceVar(&f.EtcdEndpoints, "etcd-endpoints", nil, "use this existing etcd cluster (comma-separated URLs) instead of an embedded one")
	fs.StringVar(&f.EtcdPrefix, "etcd-prefix", store.DefaultPrefix, "etcd key prefix of all mpfleet data")
	fs.StringVar(&f.EtcdClientURL, "etcd-client-url", "", "client URL of the embedded etcd: a unix socket (unix:///path) or http://LOOPBACK:PORT; nothing else is allowed (default: unix socket <data-dir>/"+store.EmbedSocket+")")
	fs.StringVar(&f.EtcdPeerURL, "etcd-peer-url", "", "peer URL of the embedded etcd, http://LOOPBACK:PORT (default: none; a single member has no peers)")
	fs.StringVar(&f.EtcdCAFile, "etcd-ca-file", "", "CA bundle to verify an external etcd's TLS certificate")
	fs.StringVar(&f.EtcdCertFile, "etcd-cert-file", "", "client certificate for an external etcd")
	fs.StringVar(&f.EtcdKeyFile, "etcd-key-file", "", "client key for an external etcd")
	f.EtcdQuotaBytes = uint64(store.DefaultQuotaBytes)
	fs.Var((*byteSize)(&f.EtcdQuotaBytes), "etcd-quota-bytes", "backend quota of the embedded etcd (e.g. 2GiB, 8GiB); past it etcd refuses writes (NOSPACE) until space is freed (an external etcd has its own --quota-backend-bytes)")
	fs.DurationVar(&f.EtcdReqTimeout, "etcd-request-timeout", 5*time.Second, "longest wait for one etcd request; a call whose request gets no answer in time fails with UNAVAILABLE")
	fs.StringVar(&f.TLSCertFile, "tls-cert-file", "", "server certificate (PEM); enables TLS")
	fs.StringVar(&f.TLSKeyFile, "tls-key-file", "", "server key (PEM)")
	fs.StringVar(&f.TLSClientCAFile, "tls-client-ca-file", "", "CA bundle to verify client certificates (agents' mutual TLS)")
	fs.StringVar(&f.TokensFile, "tokens-file", "", "YAML list of {name, role, tokenSHA256[, host][, expires]} bearer tokens (agent tokens name their host)")
	fs.DurationVar(&f.ReloadInterval, "reload-interval", 2*time.Second, "how often to check the tokens file, TLS certificate and client CA for changes and reload them (0: only on SIGHUP)")
	fs.BoolVar(&f.Insecure, "insecure", false, "allow plaintext without authentication on a non-loopback --listen (never in production)")
	fs.Uint64Var(&f.AuditMaxEvents, "audit-retention-events", 200000, "keep at most this many audit events (0: no limit); the leader prunes the oldest")
	fs.DurationVar(&f.AuditMaxAge, "audit-retention-age", 0, "drop audit events older than this, e.g. 8760h (0: no limit)")
	f.AuditMaxBytes = defaultAuditMaxBytes
	fs.Var((*byteSize)(&f.AuditMaxBytes), "audit-retention-bytes", "keep the audit log within this size (its events' stored values; estimated for a large log), e.g. 256MiB (0: no limit); the leader prunes the oldest. Keep it well under etcd's quota")
	fs.StringVar(&f.ReplicaName, "replica-name", "", "this replica's name in etcd (agent session keys, leader election): unique among the replicas and the same across restarts, so a restarted replica takes its hosts back at once (default: <host name>:<listen port>)")
	fs.Float64Var(&f.DrainRate, "drain-rate", 200, "on SIGTERM, how many agents per second to tell to move to another replica (each releases its host first, so another replica takes it at once); 0 ends every agent stream at once")
	fs.DurationVar(&f.DrainTimeout, "drain-timeout", 30*time.Second, "longest drain on SIGTERM; the agent streams still open then are ended (keep the service manager's stop timeout above it)")
	fs.StringVar(&f.AuditKeyFile, "audit-key-file", "", "secret key (hex, 32+ bytes) that keys the audit chain's hashes; every replica needs the same file (default: <data-dir>/audit.key, generated on first start)")
	f.Metrics.Register(fs)
	fs.StringVar(&f.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.Config, "config", "", "YAML file of settings (keys are flag names)")
	return fs
}

// Usage is the controller's --help text header.
const Usage = `mpfleet-controller serves the mpfleet API and keeps the fleet's desired state
in etcd: an embedded single member in --data-dir by default, or an existing
cluster given by --etcd-endpoints.

Every flag can also be set in the environment (MPFLEET_CONTROLLER_LISTEN for
--listen, ...) or in a --config YAML file; the command line wins, then the
environment, then the file.

Plaintext without authentication is allowed on loopback only. On any other
address give --tls-cert-file/--tls-key-file (and --tls-client-ca-file for
agents, --tokens-file for people), or --insecure.
`
