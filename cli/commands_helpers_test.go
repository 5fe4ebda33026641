package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// TestParentsNameEverySubcommand checks that every parent command, run
// without a subcommand, names exactly its subcommands.
func TestParentsNameEverySubcommand(t *testing.T) {
	a := &app{}
	parents := 0
	for _, cmd := range allCommands(a.rootCommand()) {
		if !cmd.HasParent() || !cmd.HasSubCommands() || cmd.Name() == "completion" {
			continue
		}
		parents++
		err := cmd.RunE(cmd, nil)
		if !IsUsageError(err) {
			t.Errorf("%s without a subcommand: %v, want a usage error", cmd.CommandPath(), err)
			continue
		}
		_, list, ok := strings.Cut(err.Error(), "(one of: ")
		if !ok {
			t.Errorf("%s without a subcommand: %q names no subcommands", cmd.CommandPath(), err)
			continue
		}
		got := strings.Split(strings.TrimSuffix(list, ")"), ", ")
		var want []string
		for _, c := range cmd.Commands() {
			want = append(want, c.Name())
		}
		slices.Sort(got)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s names its subcommands wrongly (-want +got):\n%s", cmd.CommandPath(), diff)
		}
	}
	if parents < 7 {
		t.Errorf("found %d parent commands, want at least 7 (get, describe, delete, label, audit, watch, rollout)", parents)
	}
}

// TestListCommandsTakeLimit checks that every command that lists pages has
// --limit, named for what it lists.
func TestListCommandsTakeLimit(t *testing.T) {
	want := map[string]string{
		"mpfleetctl get groups":    "list at most N groups (0: all)",
		"mpfleetctl get hosts":     "list at most N hosts (0: all)",
		"mpfleetctl revisions":     "list at most N revisions (0: all)",
		"mpfleetctl rollout list":  "list at most N rollouts (0: all)",
		"mpfleetctl audit list":    "list at most N events (0: all)",
		"mpfleetctl get":           "",
		"mpfleetctl rollout start": "",
	}
	a := &app{}
	got := map[string]string{}
	for _, cmd := range allCommands(a.rootCommand()) {
		if _, ok := want[cmd.CommandPath()]; !ok {
			continue
		}
		got[cmd.CommandPath()] = ""
		if f := cmd.Flags().Lookup("limit"); f != nil {
			got[cmd.CommandPath()] = f.Usage
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("--limit of the list commands (-want +got):\n%s", diff)
	}
}

// pager is a list method serving items 1..n in pages, or the same page
// token forever when loop is set; it records the page sizes asked for.
type pager struct {
	n     int
	loop  bool
	sizes []int32
}

func (p *pager) list(_ context.Context, req *mpfleetv1.ListGroupsRequest, _ ...grpc.CallOption) (*mpfleetv1.ListGroupsResponse, error) {
	p.sizes = append(p.sizes, req.GetPageSize())
	start := 0
	if req.GetPageToken() != "" {
		if _, err := fmt.Sscanf(req.GetPageToken(), "at-%d", &start); err != nil {
			return nil, err
		}
	}
	resp := &mpfleetv1.ListGroupsResponse{}
	for i := start; i < min(p.n, start+int(req.GetPageSize())); i++ {
		resp.Groups = append(resp.Groups, &mpfleetv1.Group{Name: fmt.Sprintf("groups/g%d", i+1)})
	}
	if next := start + len(resp.Groups); next < p.n {
		resp.NextPageToken = fmt.Sprintf("at-%d", next)
	}
	if p.loop {
		resp.NextPageToken = "at-0"
	}
	return resp, nil
}

func TestListPages(t *testing.T) {
	tests := []struct {
		name      string
		n, limit  int
		wantCount int
		wantSizes []int32
	}{
		{"one page", 3, 0, 3, []int32{maxPageSize}},
		{"every page", 2500, 0, 2500, []int32{maxPageSize, maxPageSize, maxPageSize}},
		{"limit within a page", 2500, 5, 5, []int32{5}},
		{"limit across pages", 2500, 1500, 1500, []int32{maxPageSize, 500}},
		{"limit above the count", 3, 10, 3, []int32{10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &pager{n: tt.n}
			got, err := listPages(context.Background(), &app{}, "list groups", tt.limit, p.list,
				&mpfleetv1.ListGroupsRequest{}, (*mpfleetv1.ListGroupsResponse).GetGroups)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.wantCount || got[len(got)-1].GetName() != fmt.Sprintf("groups/g%d", tt.wantCount) {
				t.Errorf("got %d groups, last %q; want %d", len(got), got[len(got)-1].GetName(), tt.wantCount)
			}
			if diff := cmp.Diff(tt.wantSizes, p.sizes); diff != "" {
				t.Errorf("page sizes asked for (-want +got):\n%s", diff)
			}
		})
	}

	p := &pager{n: 5, loop: true}
	_, err := listPages(context.Background(), &app{}, "list groups", 0, p.list,
		&mpfleetv1.ListGroupsRequest{}, (*mpfleetv1.ListGroupsResponse).GetGroups)
	if want := `list groups: controller returned page token "at-0" twice`; err == nil || err.Error() != want {
		t.Errorf("a page token served twice: %v, want %s", err, want)
	}
}

func TestLabelEdit(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		overwrite bool
		want      map[string]string
		wantErr   string
	}{
		{"set and remove", []string{"rack=r1", "zone-"}, false, map[string]string{"role": "web", "rack": "r1"}, ""},
		{"same value", []string{"role=web"}, false, map[string]string{"role": "web", "zone": "a"}, ""},
		{"empty value", []string{"rack="}, false, map[string]string{"role": "web", "zone": "a", "rack": ""}, ""},
		{"change refused", []string{"role=db"}, false, nil, "label host: h1 already has role=web: give --overwrite to change it"},
		{"change with overwrite", []string{"role=db"}, true, map[string]string{"role": "db", "zone": "a"}, ""},
		{"no key", []string{"=v"}, false, nil, `label host: "=v": want KEY=VALUE or KEY-`},
		{"neither", []string{"role"}, false, nil, `label host: "role": want KEY=VALUE or KEY-`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := labelEdit{overwrite: tt.overwrite}
			labels := map[string]string{"role": "web", "zone": "a"}
			err := e.parse(tt.args)
			if err == nil {
				err = e.apply("h1", labels)
			}
			switch {
			case tt.wantErr != "":
				if err == nil || err.Error() != tt.wantErr || !IsUsageError(err) {
					t.Errorf("error %v, want usage error %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			default:
				if diff := cmp.Diff(tt.want, labels); diff != "" {
					t.Errorf("labels (-want +got):\n%s", diff)
				}
			}
		})
	}
}
