package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mpfleet/mpfleet/internal/transport"
)

// credStore holds the controller's credentials — bearer tokens, its TLS
// certificate and the client CA — and reloads them from their files on
// SIGHUP and when a file changes, without a restart and without dropping
// healthy streams: new handshakes and calls see the new credentials at once;
// open streams whose token was revoked or expired, or whose client
// certificate no longer verifies, are closed. A reload that fails (a file
// missing or bad) keeps the credentials in force and is logged.
type credStore struct {
	f   Flags
	log *slog.Logger

	tokens atomic.Pointer[tokenSet]
	tls    atomic.Pointer[tls.Config] // the config for new handshakes; nil: plaintext

	mu      sync.Mutex
	streams map[*openStream]struct{}
	stamps  map[string]transport.FileStamp // what each file looked like when loaded

	reloads atomic.Int64 // successful reloads (tests wait on it)
}

// openStream is a stream the authenticator let in, with what let it in.
type openStream struct {
	cancel context.CancelFunc
	token  []byte              // sum of the bearer token, if one
	chain  []*x509.Certificate // verified client certificate chain, if one
	actor  string
}

// newCredStore loads the credentials the flags name.
func newCredStore(f Flags, log *slog.Logger) (*credStore, error) {
	c := &credStore{f: f, log: log, streams: map[*openStream]struct{}{}, stamps: map[string]transport.FileStamp{}}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *credStore) files() []string {
	var out []string
	for _, p := range []string{c.f.TokensFile, c.f.TLSCertFile, c.f.TLSKeyFile, c.f.TLSClientCAFile} {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// load reads every file; nothing changes unless all of them are good.
func (c *credStore) load() error {
	stamps := map[string]transport.FileStamp{}
	for _, p := range c.files() {
		stamps[p] = transport.StampOf(p)
	}
	var ts *tokenSet
	if c.f.TokensFile != "" {
		var err error
		if ts, err = loadTokens(c.f.TokensFile); err != nil {
			return err
		}
	}
	var cfg *tls.Config
	if c.f.TLSCertFile != "" {
		var err error
		cfg, err = transport.TLSInfo{
			CertFile: c.f.TLSCertFile, KeyFile: c.f.TLSKeyFile, TrustedCAFile: c.f.TLSClientCAFile,
			ClientAuth: tls.VerifyClientCertIfGiven, CALabel: "--tls-client-ca-file", KeyPairLabel: "TLS key pair",
		}.ServerConfig()
		if err != nil {
			return err
		}
	}
	c.tokens.Store(ts)
	c.tls.Store(cfg)
	c.mu.Lock()
	c.stamps = stamps
	c.mu.Unlock()
	return nil
}

// serverTLS is the TLS configuration of the listener: every handshake takes
// the configuration in force at that moment.
func (c *credStore) serverTLS() *tls.Config {
	if c.tls.Load() == nil {
		return nil
	}
	return transport.DynamicServerConfig(c.tls.Load)
}

// reload loads the files again and closes the streams the new credentials
// no longer admit.
func (c *credStore) reload(why string) {
	if err := c.load(); err != nil {
		c.log.Error("credentials reload failed; keeping the ones in force", "reason", why, "err", err)
		return
	}
	c.reloads.Add(1)
	closed := c.sweep()
	c.log.Info("credentials reloaded", "reason", why, "streams_closed", closed)
}

// admits reports whether the credentials in force still admit a stream.
func (c *credStore) admits(s *openStream, now time.Time) bool {
	if s.token != nil {
		ts := c.tokens.Load()
		if ts == nil {
			return false
		}
		e, ok := ts.bySum(s.token)
		return ok && !e.expired(now)
	}
	if len(s.chain) > 0 {
		cfg := c.tls.Load()
		if cfg == nil || cfg.ClientCAs == nil {
			return false
		}
		inter := x509.NewCertPool()
		for _, ic := range s.chain[1:] {
			inter.AddCert(ic)
		}
		_, err := s.chain[0].Verify(x509.VerifyOptions{Roots: cfg.ClientCAs, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: now})
		return err == nil
	}
	return true
}

// sweep closes the open streams the credentials no longer admit.
func (c *credStore) sweep() int {
	now := time.Now()
	c.mu.Lock()
	var gone []*openStream
	for s := range c.streams {
		if !c.admits(s, now) {
			gone = append(gone, s)
		}
	}
	c.mu.Unlock()
	for _, s := range gone {
		c.log.Warn("closing a stream whose credential was revoked or expired", "actor", s.actor)
		s.cancel()
	}
	return len(gone)
}

func (c *credStore) track(s *openStream) func() {
	c.mu.Lock()
	c.streams[s] = struct{}{}
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.streams, s)
		c.mu.Unlock()
	}
}

// changed reports whether a file differs from when it was loaded.
func (c *credStore) changed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for p, st := range c.stamps {
		if !transport.StampOf(p).Same(st) {
			return true
		}
	}
	return false
}

// notifyHUP starts taking SIGHUP (which would otherwise end the process)
// for watch; call stop when done.
func notifyHUP() (hup <-chan os.Signal, stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch, func() { signal.Stop(ch) }
}

// watch reloads on SIGHUP and, every interval (0: never), when a file
// changed, and closes streams whose token expired, until ctx ends.
func (c *credStore) watch(ctx context.Context, hup <-chan os.Signal, interval time.Duration) {
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			c.reload("SIGHUP")
		case <-tick:
			if c.changed() {
				c.reload("a credentials file changed")
			} else {
				c.sweep() // tokens that expired meanwhile
			}
		}
	}
}

// errExpired is wrapped by the error of an expired token.
var errExpired = errors.New("token expired")
