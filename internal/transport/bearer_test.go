package transport_test

import (
	"testing"

	"github.com/mpfleet/mpfleet/internal/transport"
)

func TestBearer(t *testing.T) {
	md, err := transport.Bearer{Token: "s3cret"}.GetRequestMetadata(t.Context())
	if err != nil || md["authorization"] != "Bearer s3cret" {
		t.Errorf("metadata %v, %v; want authorization: Bearer s3cret", md, err)
	}
	if (transport.Bearer{Secure: true}).RequireTransportSecurity() != true || (transport.Bearer{}).RequireTransportSecurity() {
		t.Error("RequireTransportSecurity does not follow Secure")
	}
}
