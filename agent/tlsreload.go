package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	ossignal "os/signal"
	"sync"
	"syscall"

	"github.com/mpfleet/mpfleet/internal/transport"
)

// clientTLS returns the agent's TLS as the flags ask, or nil for
// plaintext. Its credentials follow the files: each new connection to a
// controller takes the certificate, key and CA bundle in force, which are
// read again when one of the files changed (looked at, at most once a
// second, when a connection is made) and on SIGHUP (watchTLS). Files that
// do not load keep the ones in force and are logged once per change; an
// open stream keeps the certificate it was opened with.
func clientTLS(f Flags, log *slog.Logger) (*transport.ClientReloader, error) {
	info := transport.TLSInfo{
		CertFile: f.TLSCertFile, KeyFile: f.TLSKeyFile, TrustedCAFile: f.TLSCAFile, ServerName: f.ServerName,
		CALabel: "--tls-ca-file", KeyPairLabel: "TLS key pair",
	}
	if info.Empty() {
		return nil, nil
	}
	if (f.TLSCertFile == "") != (f.TLSKeyFile == "") {
		return nil, errors.New("--tls-cert-file and --tls-key-file must be given together")
	}
	return transport.NewClientReloader(info, transport.ReloaderOptions{
		OnChange: func(err error) { logTLSReload(log, "a TLS file changed", err) },
	})
}

func logTLSReload(log *slog.Logger, why string, err error) {
	if err != nil {
		log.Warn("TLS files reload failed; keeping the ones in force", "reason", why, "err", err)
		return
	}
	log.Info("TLS files reloaded; new connections use them", "reason", why)
}

// startTLSReload takes SIGHUP (which would otherwise end the process) and
// reloads r's files on each, until ctx ends or stop is called; r nil: there
// is nothing to reload, which SIGHUP logs.
func startTLSReload(ctx context.Context, r *transport.ClientReloader, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	ossignal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { watchTLS(ctx, r, hup, log) })
	return func() {
		ossignal.Stop(hup)
		cancel()
		wg.Wait()
	}
}

// watchTLS reloads r's files at each signal on hup until ctx ends.
func watchTLS(ctx context.Context, r *transport.ClientReloader, hup <-chan os.Signal, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if r == nil {
				log.Info("SIGHUP: no TLS files to reload")
				continue
			}
			logTLSReload(log, "SIGHUP", r.Reload())
		}
	}
}
