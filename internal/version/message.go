package version

import (
	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Message is i in the API's form, as VersionService.GetVersion returns it
// (mpfleetctl shows its own build in the same form).
func (i Info) Message() *mpfleetv1.GetVersionResponse {
	m := &mpfleetv1.GetVersionResponse{
		Version: i.Version, Commit: i.Commit, Modified: i.Modified, GoVersion: i.GoVersion, Platform: i.Platform,
	}
	if !i.Date.IsZero() {
		m.BuildTime = timestamppb.New(i.Date)
	}
	return m
}

// FromMessage is the Info a GetVersionResponse describes.
func FromMessage(m *mpfleetv1.GetVersionResponse) Info {
	i := Info{
		Version: m.GetVersion(), Commit: m.GetCommit(), Modified: m.GetModified(),
		GoVersion: m.GetGoVersion(), Platform: m.GetPlatform(),
	}
	if m.GetBuildTime() != nil {
		i.Date = m.GetBuildTime().AsTime()
	}
	return i
}
