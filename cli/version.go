package cli

import (
	"encoding/json"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/mpfleet/mpfleet/internal/version"
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// addVersionFlag gives root --version, which prints mpfleetctl's version
// line (as the daemons' --version does) and exits. It has no shorthand.
func addVersionFlag(root *cobra.Command) {
	root.Version = version.Get().String()
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.Flags().Bool("version", false, "print mpfleetctl's version and exit")
}

func (a *app) versionCommand() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show mpfleetctl's version and the controller's",
		Long: `version prints the version of mpfleetctl (the client) and of the controller
replica that answers (the server, VersionService.GetVersion; any viewer,
operator or admin may ask): the release (git describe), the commit, its
date, and the Go release and platform that built it.

When the controller cannot be reached, the client's version is printed all
the same, then the error, and the exit status is 1.`,
		Example: `  mpfleetctl version
  mpfleetctl version --client
  mpfleetctl version -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			vs := versions{Client: version.Get().Message()}
			var err error
			if !clientOnly {
				vs.Server, err = callService(cmd.Context(), a, "server version", mpfleetv1.NewVersionServiceClient,
					mpfleetv1.VersionServiceClient.GetVersion, &mpfleetv1.GetVersionRequest{})
			}
			if perr := a.printVersions(vs); err == nil {
				err = perr
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print the client's version only; do not contact the controller")
	return cmd
}

// versions are the builds version prints; Server is nil when the controller
// was not asked or did not answer.
type versions struct {
	Client, Server *mpfleetv1.GetVersionResponse
}

// printVersions prints vs as "Client: …" and "Server: …" lines, or, for json
// and yaml, as {"client": …, "server": …} in the API's form.
func (a *app) printVersions(vs versions) error {
	if a.output == "table" {
		a.printf("Client: mpfleetctl %s\n", terminalSafe(version.FromMessage(vs.Client).String()))
		if vs.Server != nil {
			a.printf("Server: mpfleet-controller %s\n", terminalSafe(version.FromMessage(vs.Server).String()))
		}
		return nil
	}
	var out struct {
		Client json.RawMessage `json:"client"`
		Server json.RawMessage `json:"server,omitempty"`
	}
	var err error
	if out.Client, err = rawJSON(vs.Client); err != nil {
		return err
	}
	if vs.Server != nil {
		if out.Server, err = rawJSON(vs.Server); err != nil {
			return err
		}
	}
	return a.printPlain(out)
}

// rawJSON is m in the API's JSON form, to embed in a larger document.
func rawJSON(m proto.Message) (json.RawMessage, error) {
	return marshalJSON(m, false)
}
