package store

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Default loopback URLs of the embedded etcd member: next to the controller's
// 7400, and away from etcd's well-known 2379/2380 so that a real etcd on the
// same machine is never confused with mpfleet's.
const (
	DefaultEmbedClientURL = "http://127.0.0.1:7401"
	DefaultEmbedPeerURL   = "http://127.0.0.1:7402"
)

// EmbedConfig configures an embedded single-member etcd.
type EmbedConfig struct {
	// DataDir holds the member's data (DataDir/etcd).
	DataDir string
	// ClientURL and PeerURL are where it listens; loopback by default.
	ClientURL string
	PeerURL   string
	// StartTimeout bounds the wait for the member to be ready (default 60s).
	StartTimeout time.Duration
	// LogLevel of etcd's own logger (default "fatal": etcd reports errors
	// that matter through Err, and its shutdown chatter is noise).
	LogLevel string
}

// Embedded is a running embedded etcd member.
type Embedded struct {
	e         *embed.Etcd
	clientURL string
}

// StartEmbedded starts a single-member etcd in cfg.DataDir and waits until it
// serves. Data survives restarts.
func StartEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("embedded etcd: data dir is required")
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = DefaultEmbedClientURL
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = DefaultEmbedPeerURL
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "fatal"
	}
	cu, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client url %q: %w", cfg.ClientURL, err)
	}
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer url %q: %w", cfg.PeerURL, err)
	}
	dir := filepath.Join(cfg.DataDir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	ec := embed.NewConfig()
	ec.Name = "mpfleet"
	ec.Dir = dir
	ec.ListenClientUrls = []url.URL{*cu}
	ec.AdvertiseClientUrls = []url.URL{*cu}
	ec.ListenPeerUrls = []url.URL{*pu}
	ec.AdvertisePeerUrls = []url.URL{*pu}
	ec.InitialCluster = ec.Name + "=" + pu.String()
	ec.LogLevel = cfg.LogLevel
	ec.LogOutputs = []string{"stderr"}
	// Keep history bounded: the controller's watch re-lists after a compaction.
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = "1h"
	ec.QuotaBackendBytes = 2 << 30
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
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not ready after %s", cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Embedded{e: e, clientURL: cu.String()}, nil
}

// Endpoints returns the client endpoints to dial.
func (e *Embedded) Endpoints() []string { return []string{e.clientURL} }

// Err reports a fatal error of the running member.
func (e *Embedded) Err() <-chan error { return e.e.Err() }

// Close stops the member.
func (e *Embedded) Close() {
	e.e.Close()
}
