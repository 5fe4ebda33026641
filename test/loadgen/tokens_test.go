package loadgen_test

import (
	"strings"
	"testing"

	"github.com/mpfleet/mpfleet/test/loadgen"
)

func TestParseTokens(t *testing.T) {
	one, err := loadgen.ParseTokens("# every agent\n\n  s3cret  \n")
	if err != nil {
		t.Fatal(err)
	}
	if one("a-1") != "s3cret" || one("b-2") != "s3cret" {
		t.Errorf("one token: %q, %q; want s3cret for every host", one("a-1"), one("b-2"))
	}
	per, err := loadgen.ParseTokens("a-1 t1\na-2 t2\n")
	if err != nil {
		t.Fatal(err)
	}
	if per("a-1") != "t1" || per("a-2") != "t2" || per("a-3") != "" {
		t.Errorf("per host: %q, %q, %q; want t1, t2 and none", per("a-1"), per("a-2"), per("a-3"))
	}
	for _, tc := range []struct{ text, want string }{
		{"", "no token"},
		{"# only a comment\n", "no token"},
		{"a b c\n", "line 1: 3 fields"},
		{"Bad_Host t\n", "not a valid host id"},
		{"t1\nt2\n", "every line is HOST TOKEN"},
		{"a-1 t1\na-1 t2\n", "listed twice"},
	} {
		if _, err := loadgen.ParseTokens(tc.text); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseTokens(%q) = %v; want an error with %q", tc.text, err, tc.want)
		}
	}
}
