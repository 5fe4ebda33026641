// Package fleettest runs a fleet of the real mpfleet programs in the network
// lab of package github.com/mpfleet/mpfleet/test/lab, secured as in
// production: a throwaway CA (internal/testpki) signs the controller's
// certificate and one client certificate per agent, and mpfleetctl uses TLS
// and a bearer token. It is the one harness of the end-to-end tests
// (test/e2e) and the demo (test/demo), in the spirit of etcd's
// tests/framework: the PKI, the controller and the agents as processes with
// their flags, mpfleetctl in the ctl namespace, and the waits for what the
// controller shows (hosts IN_SYNC at a revision).
//
// A [Fleet] runs in a lab its caller brings up; the lab's Down stops every
// program the fleet started, also on failure. Functions return errors, so
// that a test fails with them and the demo prints them.
//
//	f, err := fleettest.New(l, fleettest.Config{Bin: "bin", Dir: dir})
//	err = f.StartController(ctx)
//	err = f.StartAgent(lab.Client)
//	out, err := f.Ctl(ctx, "apply", "-f", "deploy/examples/lab-two-links.yaml")
//	revs, err := f.Revisions(ctx)
//	err = f.WaitHosts(ctx, 30*time.Second, []lab.Host{lab.Client}, fleettest.InSync(revs))
package fleettest
