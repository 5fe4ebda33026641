package transport

import (
	"crypto/tls"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// DefaultCheckInterval is how often, at most, a ClientReloader looks at its
// files, unless ReloaderOptions says otherwise.
const DefaultCheckInterval = time.Second

// ReloaderOptions tune a ClientReloader.
type ReloaderOptions struct {
	// Interval is the least time between two looks at the files, taken
	// at handshakes (default DefaultCheckInterval).
	Interval time.Duration
	// OnChange, if set, is called after the ClientReloader found its files
	// changed and read them: with nil when the new files are in force,
	// else with why they are not (the configuration in force stays). It
	// is called once per change, not once per handshake, outside any lock
	// of the reloader, from the goroutine of the handshake that looked.
	OnChange func(err error)
}

// ClientReloader is a client's TLS configuration that follows its files:
// the key pair and the CA bundle of a TLSInfo are read again when one of
// them changed (modification time, size or the file itself: an atomic
// rename, as config management and Kubernetes secrets make, counts),
// which a handshake checks at most once per Interval, and on Reload. A set
// of files that does not load (missing, unreadable, a key that is not the
// certificate's) keeps the configuration in force.
//
// Each handshake takes the whole configuration in force at that moment,
// rather than a client certificate through GetClientCertificate, so that
// the CA bundle reloads too (a client's tls.Config has no per-handshake
// hook for its roots) while the standard verification of the server, its
// name included, stays as it is.
type ClientReloader struct {
	info     TLSInfo
	interval time.Duration
	onChange func(error)

	mu      sync.Mutex
	cfg     *tls.Config                      // in force
	creds   credentials.TransportCredentials // gRPC's TLS credentials of cfg
	loaded  []FileStamp                      // the files as they were when cfg was read
	failed  []FileStamp                      // as they were at the last read that failed; nil: none since
	checked time.Time                        // the last look at the files
}

// NewClientReloader reads info's files as TLSInfo.ClientConfig does, and
// fails as it does.
func NewClientReloader(info TLSInfo, opts ReloaderOptions) (*ClientReloader, error) {
	r := &ClientReloader{info: info, interval: opts.Interval, onChange: opts.OnChange}
	if r.interval <= 0 {
		r.interval = DefaultCheckInterval
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = time.Now()
	if err := r.loadLocked(r.stamps()); err != nil {
		return nil, err
	}
	return r, nil
}

// Config returns the configuration for a new handshake, having looked at
// the files first if Interval has passed since the last look. The caller
// must not modify it.
func (r *ClientReloader) Config() *tls.Config {
	cfg, _ := r.current()
	return cfg
}

// Reload reads the files now, changed or not. On error the configuration
// in force stays, and the same files are not reported to OnChange again.
func (r *ClientReloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = time.Now()
	return r.loadLocked(r.stamps())
}

// Credentials returns gRPC transport credentials whose every handshake
// uses the configuration in force (see Config): new connections present
// the new certificate and verify with the new CA bundle; connections
// already open are left as they are.
func (r *ClientReloader) Credentials() credentials.TransportCredentials {
	return &reloadingCreds{r: r}
}

// current is Config with its gRPC credentials.
func (r *ClientReloader) current() (*tls.Config, credentials.TransportCredentials) {
	r.mu.Lock()
	changed, err := r.checkLocked(time.Now())
	cfg, creds := r.cfg, r.creds
	r.mu.Unlock()
	if changed && r.onChange != nil {
		r.onChange(err)
	}
	return cfg, creds
}

// checkLocked reads the files again if Interval has passed since the last
// look and they changed since they were last read. It reports whether it
// read them, and how that went. r.mu is held.
func (r *ClientReloader) checkLocked(now time.Time) (changed bool, err error) {
	if now.Sub(r.checked) < r.interval {
		return false, nil
	}
	r.checked = now
	st := r.stamps()
	if sameStamps(st, r.loaded) || (r.failed != nil && sameStamps(st, r.failed)) {
		return false, nil
	}
	return true, r.loadLocked(st)
}

// loadLocked reads the files, which looked like st just before. r.mu is
// held.
func (r *ClientReloader) loadLocked(st []FileStamp) error {
	cfg, err := r.info.ClientConfig()
	if err != nil {
		r.failed = st
		return err
	}
	r.cfg, r.creds, r.loaded, r.failed = cfg, credentials.NewTLS(cfg), st, nil
	return nil
}

func (r *ClientReloader) stamps() []FileStamp {
	var st []FileStamp
	for _, p := range []string{r.info.CertFile, r.info.KeyFile, r.info.TrustedCAFile} {
		if p != "" {
			st = append(st, StampOf(p))
		}
	}
	return st
}

// FileStamp is what a file looked like — its modification time, size and
// identity (inode) — to tell whether it changed; the zero FileStamp is a
// file that could not be looked at.
type FileStamp struct{ fi os.FileInfo }

// StampOf looks at the file at path, through symbolic links (as Kubernetes
// mounts secrets).
func StampOf(path string) FileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return FileStamp{}
	}
	return FileStamp{fi: fi}
}

// Same reports whether s and o show the same file, unchanged.
func (s FileStamp) Same(o FileStamp) bool {
	if s.fi == nil || o.fi == nil {
		return s.fi == nil && o.fi == nil
	}
	return s.fi.ModTime().Equal(o.fi.ModTime()) && s.fi.Size() == o.fi.Size() && os.SameFile(s.fi, o.fi)
}

func sameStamps(a, b []FileStamp) bool {
	return slices.EqualFunc(a, b, FileStamp.Same)
}
