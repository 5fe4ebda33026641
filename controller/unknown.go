package controller

// Unknown fields: what a client or an agent sends under field numbers this
// controller does not know is dropped before anything is stored, so that no
// caller can park bytes in etcd that nobody validated (and that a newer
// controller would then read as real fields).

import (
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// dropUnknown clears the unknown fields of m and of every message inside it.
// (Requests carry no google.protobuf.Any, whose value would need decoding.)
func dropUnknown(m proto.Message) {
	if m != nil {
		dropUnknownFields(m.ProtoReflect())
	}
}

func dropUnknownFields(m protoreflect.Message) {
	if !m.IsValid() {
		return
	}
	if len(m.GetUnknown()) > 0 {
		m.SetUnknown(nil)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			if fd.Message() != nil {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					dropUnknownFields(l.Get(i).Message())
				}
			}
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					dropUnknownFields(mv.Message())
					return true
				})
			}
		case fd.Message() != nil:
			dropUnknownFields(v.Message())
		}
		return true
	})
}

// knownFieldsOnly is an agent's stream whose every received message has
// its unknown fields dropped: hellos, reports and events alike.
type knownFieldsOnly struct {
	pb.AgentService_ConnectServer
}

func (s knownFieldsOnly) Recv() (*pb.ConnectRequest, error) {
	m, err := s.AgentService_ConnectServer.Recv()
	if err == nil {
		dropUnknown(m)
	}
	return m, err
}
