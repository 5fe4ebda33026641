package store

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/mpfleet/mpfleet/internal/zaplog"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
)

// The embedded etcd member is local only: nothing off the machine may reach
// it, since whoever can write etcd can rewrite mpfleet's state. By default
// its clients connect over a unix socket in the data dir (DataDir/etcd is
// mode 0700, so only the controller's user can connect) and it has no peer
// listener at all: a single member has no peers. Other URLs must be
// loopback.
const (
	// EmbedSocket is the default client socket, relative to the data dir.
	EmbedSocket = "etcd/client.sock"
	// maxSocketPath is the longest unix socket path Linux takes (sun_path
	// holds 108 bytes with the terminating NUL).
	maxSocketPath = 107
	// unlistenedPeerURL is the peer URL a member without a peer listener
	// advertises: etcd needs one, nothing dials it.
	unlistenedPeerURL = "http://127.0.0.1:0"
	// unixAdvertiseURL is the client URL a member on a unix socket
	// advertises: etcd wants "host:port" there, which cannot name an
	// absolute socket path, and nothing dials it (the controller is the
	// member's only client).
	unixAdvertiseURL = "unix://localhost:0"
)

// EmbedConfig configures an embedded single-member etcd.
type EmbedConfig struct {
	// DataDir holds the member's data (DataDir/etcd).
	DataDir string
	// ClientURL is where it serves clients: empty for the unix socket
	// DataDir/etcd/client.sock, else unix:///absolute/path or
	// http://LOOPBACK:PORT (see CheckEmbedClientURL).
	ClientURL string
	// PeerURL is where it serves peers: empty for nowhere (a single member
	// has no peers), else http://LOOPBACK:PORT.
	PeerURL string
	// StartTimeout bounds the wait for the member to be ready (default 60s).
	StartTimeout time.Duration
	// Log, when set, receives etcd's log with component=etcd, filtered
	// at the log's own level: etcd's debug and info messages come at debug
	// (they are chatter at info), its warnings at warn, its errors (and
	// worse) at error; but what is noise for a local member (etcdNoise)
	// and everything while it stops (its servers report their closed
	// listeners as errors) come at debug. LogLevel is then unused.
	Log *slog.Logger
	// LogLevel of etcd's own logger to stderr when Log is nil (default
	// "fatal": etcd reports errors that matter through Err, and its
	// shutdown chatter is noise).
	LogLevel string
	// QuotaBytes is the member's backend quota (etcd's
	// --quota-backend-bytes; default DefaultQuotaBytes, 2 GiB). A write
	// that would pass it raises the NOSPACE alarm (see RecoverSpace).
	QuotaBytes int64
}

// CheckEmbedClientURL checks that u is a client URL that keeps the embedded
// etcd local: a unix socket with an absolute path (unix:///path), or plain
// http on a loopback address (127.0.0.1, ::1 or localhost) with a port. ""
// is the default socket.
func CheckEmbedClientURL(u string) error { return checkLocalURL(u, true) }

// CheckEmbedPeerURL checks that u is a peer URL that keeps the embedded etcd
// local: plain http on a loopback address with a port. "" is no peer
// listener.
func CheckEmbedPeerURL(u string) error { return checkLocalURL(u, false) }

func checkLocalURL(raw string, unix bool) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme == "unix" && unix:
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return fmt.Errorf("%q: want unix:///absolute/path (three slashes)", raw)
		}
		if len(u.Path) > maxSocketPath {
			return fmt.Errorf("%q: a unix socket path has at most %d bytes", raw, maxSocketPath)
		}
		return nil
	case u.Scheme == "http":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || port == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("%q: want http://LOOPBACK:PORT", raw)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			instead := "a loopback address (http://127.0.0.1:PORT)"
			if unix {
				instead = "a unix socket (unix:///path) or " + instead
			}
			return fmt.Errorf("%q is not local: the embedded etcd must not be reachable from other machines, since whoever can write to it can rewrite mpfleet's state; use %s, or an etcd cluster of your own with --etcd-endpoints", raw, instead)
		}
		return nil
	case unix:
		return fmt.Errorf("%q: want unix:///absolute/path or http://LOOPBACK:PORT (the embedded etcd is local only; https and unixs are not supported)", raw)
	default:
		return fmt.Errorf("%q: want http://LOOPBACK:PORT (the embedded etcd is local only)", raw)
	}
}

// Embedded is a running embedded etcd member.
type Embedded struct {
	e         *embed.Etcd
	clientURL string
	closing   *atomic.Bool
}

// StartEmbedded starts a single-member etcd in cfg.DataDir and waits until it
// serves. Data survives restarts.
func StartEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("embedded etcd: data dir is required")
	}
	if err := CheckEmbedClientURL(cfg.ClientURL); err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL %w", err)
	}
	if err := CheckEmbedPeerURL(cfg.PeerURL); err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL %w", err)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "fatal"
	}
	if cfg.QuotaBytes < 0 {
		return nil, fmt.Errorf("embedded etcd: quota %d bytes: must not be negative (an unlimited quota lets etcd fill the disk)", cfg.QuotaBytes)
	}
	if cfg.QuotaBytes == 0 {
		cfg.QuotaBytes = DefaultQuotaBytes
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	dir := filepath.Join(dataDir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	// The directory is the socket's guard: only its owner may enter it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "unix://" + filepath.Join(dataDir, EmbedSocket)
		if err := CheckEmbedClientURL(cfg.ClientURL); err != nil {
			return nil, fmt.Errorf("embedded etcd: client socket in data dir %s: %w (choose a shorter data dir, or a loopback client URL)", dataDir, err)
		}
	}
	cu, _ := url.Parse(cfg.ClientURL) // checked above
	adv := *cu
	if cu.Scheme == "unix" {
		au, _ := url.Parse(unixAdvertiseURL)
		adv = *au
	}
	ec := embed.NewConfig()
	ec.Name = "mpfleet"
	ec.Dir = dir
	ec.ListenClientUrls = []url.URL{*cu}
	ec.AdvertiseClientUrls = []url.URL{adv}
	ec.ListenPeerUrls = nil
	peer := unlistenedPeerURL
	if cfg.PeerURL != "" {
		pu, _ := url.Parse(cfg.PeerURL) // checked above
		ec.ListenPeerUrls = []url.URL{*pu}
		peer = pu.String()
	}
	pu, _ := url.Parse(peer)
	ec.AdvertisePeerUrls = []url.URL{*pu}
	ec.InitialCluster = ec.Name + "=" + pu.String()
	ec.LogLevel = cfg.LogLevel
	ec.LogOutputs = []string{"stderr"}
	closing := new(atomic.Bool)
	if cfg.Log != nil {
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaplog.New(cfg.Log.With("component", "etcd").Handler(), etcdLevel(closing)))
		// Not "debug": that would serve pprof and traces on the client URL.
		ec.LogLevel = "info"
	}
	// Keep history bounded: the controller's watch re-lists after a compaction.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"
	ec.QuotaBackendBytes = cfg.QuotaBytes
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start in %s: %w", dir, err)
	}
	t := time.NewTimer(cfg.StartTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-t.C:
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready after %s", cfg.StartTimeout)
	case <-ctx.Done():
		closing.Store(true)
		e.Close()
		return nil, ctx.Err()
	}
	return &Embedded{e: e, clientURL: cfg.ClientURL, closing: closing}, nil
}

// Endpoints returns the client endpoints to dial (unix:///path for a
// socket, which the etcd client takes as is).
func (e *Embedded) Endpoints() []string { return []string{e.clientURL} }

// Err reports a fatal error of the running member.
func (e *Embedded) Err() <-chan error { return e.e.Err() }

// Close stops the member.
func (e *Embedded) Close() {
	e.closing.Store(true)
	e.e.Close()
}

// etcdNoise are the messages of etcd that say nothing about a local member:
// it serves gRPC and HTTP on its one client URL by design, and has no auth
// tokens to sign. They come at debug.
var etcdNoise = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

// etcdLevel is the level of etcd's messages in the program's log: one step
// down from etcd's own (zaplog.Quieter), and debug for etcdNoise and for
// everything once closing is set.
func etcdLevel(closing *atomic.Bool) zaplog.Leveler {
	return func(e zapcore.Entry) slog.Level {
		if e.Message != "" && (etcdNoise[e.Message] || closing.Load()) {
			return slog.LevelDebug
		}
		return zaplog.Quieter(e)
	}
}
