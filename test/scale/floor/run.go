package floor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/mpfleet/mpfleet/internal/program"
	"github.com/spf13/pflag"
)

// Usage is mpfleet-floor's --help text header.
const Usage = `mpfleet-floor is the least a gRPC server can do to hold mpfleet agent
streams, for the scale benchmark's grpc-go floor (test/scale -floor): the
controller's transport options (keepalive, buffer sizes, message size), no
interceptors, no authentication, plaintext. AgentService.Connect takes the
hello, sends the current desired configuration and then only reads.

It prints "floor GRPC_ADDR http://HTTP_ADDR" first. POST
/fanout?group=G&revision=R there (body: a DesiredConfig, protobuf, optional)
encodes ConnectResponse{desired} once and sends it on every stream from
4×GOMAXPROCS goroutines, answering when every send returned; GET /runtime
answers the Go runtime's figures (goroutines, stacks, heap) after a forced
GC.
`

// Run runs mpfleet-floor until ctx ends.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("mpfleet-floor", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "gRPC address")
	httpListen := fs.String("http-listen", "127.0.0.1:0", "HTTP address of /fanout and /runtime")
	fs.String("log-level", "warn", "debug, info, warn or error")
	fs.String(program.ConfigFlag, "", "YAML file of settings (keys are flag names)")
	log, done, err := program.Start(fs, args, stderr, program.Spec{Usage: Usage, EnvPrefix: "MPFLEET_FLOOR_", NoArgs: true})
	if done || err != nil {
		return err
	}
	glis, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	hlis, err := net.Listen("tcp", *httpListen)
	if err != nil {
		_ = glis.Close()
		return fmt.Errorf("--http-listen: %w", err)
	}
	s := NewServer()
	gsrv := s.Register()
	hsrv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- gsrv.Serve(glis) }()
	go func() { errc <- hsrv.Serve(hlis) }()
	if _, err := fmt.Fprintf(stdout, "floor %s http://%s\n", glis.Addr(), hlis.Addr()); err != nil {
		log.Warn("stdout", "err", err)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	gsrv.Stop()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = hsrv.Shutdown(sctx)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}
