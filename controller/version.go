package controller

import (
	"context"

	"github.com/mpfleet/mpfleet/internal/version"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// versionService answers VersionService: the build of this replica.
type versionService struct {
	pb.UnimplementedVersionServiceServer
}

func (versionService) GetVersion(context.Context, *pb.GetVersionRequest) (*pb.GetVersionResponse, error) {
	return version.Get().Message(), nil
}
