package policy

import (
	"fmt"
	"testing"

	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

func TestAssign(t *testing.T) {
	groups := map[string]*pb.Group{
		"web":   {Selector: &pb.Selector{MatchLabels: map[string]string{"role": "web"}}},
		"fra":   {Selector: &pb.Selector{MatchLabels: map[string]string{"site": "fra"}}},
		"empty": {},
	}
	for labels, want := range map[string]string{
		"role=web":          "[web]",
		"role=web,site=fra": "[fra web]",
		"role=db":           "[]",
		"":                  "[]",
	} {
		l, err := ParseLabelSelector(labels)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(Assign(groups, l)); got != want {
			t.Errorf("Assign(%s) = %s, want %s", labels, got, want)
		}
	}
	for _, bad := range []string{"a", "=b", "bad key=x"} {
		if _, err := ParseLabelSelector(bad); err == nil {
			t.Errorf("ParseLabelSelector(%q) accepted", bad)
		}
	}
}
