package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mpfleet/mpfleet/internal/policy"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// stateFile is the name of the agent's state in --state-dir.
const stateFile = "state.json"

// stateVersion is the format of the state file.
const stateVersion = 1

// savedState is the state file: the last configuration the agent applied
// and the controller confirmed (or the last assignment that told it to
// leave the kernel alone), as protojson so that an operator can read it.
type savedState struct {
	Version int             `json:"version"`
	SavedAt time.Time       `json:"saved_at"`
	Desired json.RawMessage `json:"desired"`
}

// loadState reads the state file of dir. No file is (nil, nil).
func loadState(dir string) (*pb.DesiredConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state %s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("state %s: version %d, want %d", filepath.Join(dir, stateFile), s.Version, stateVersion)
	}
	d := &pb.DesiredConfig{}
	if err := protojson.Unmarshal(s.Desired, d); err != nil {
		return nil, fmt.Errorf("state %s: desired: %w", filepath.Join(dir, stateFile), err)
	}
	if err := validateDesired(d); err != nil {
		return nil, fmt.Errorf("state %s: %w", filepath.Join(dir, stateFile), err)
	}
	return d, nil
}

// saveState writes d as dir's state file atomically (writeAtomic), so that
// a crash leaves the old or the new state, never a torn one.
func saveState(dir string, d *pb.DesiredConfig, now time.Time) error {
	raw, err := protojson.Marshal(d)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	b, err := json.MarshalIndent(savedState{Version: stateVersion, SavedAt: now.UTC(), Desired: raw}, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return writeAtomic(dir, stateFile, b)
}

// maxDesiredSize bounds a DesiredConfig the agent accepts: the limit the
// controller enforces on every group.
const maxDesiredSize = policy.MaxDesiredSize

// validateDesired checks a desired configuration from the controller (or the
// state file) before anything is done with it.
func validateDesired(d *pb.DesiredConfig) error {
	var vs policy.Violations
	if n := proto.Size(d); n > maxDesiredSize {
		vs = append(vs, policy.FieldViolation{Field: "desired", Description: fmt.Sprintf("is %d bytes; at most %d are accepted", n, maxDesiredSize)})
		return vs.Err()
	}
	switch d.GetAssignment() {
	case pb.DesiredConfig_ASSIGNMENT_MANAGED:
		policy.GroupIDFromName(&vs, "desired.group", d.GetGroup())
		if d.GetRevision() <= 0 {
			vs = append(vs, policy.FieldViolation{Field: "desired.revision", Description: fmt.Sprintf("is %d; must be positive", d.GetRevision())})
		}
		policy.ValidatePolicy(&vs, "desired.policy", d.GetPolicy())
	case pb.DesiredConfig_ASSIGNMENT_UNMANAGED, pb.DesiredConfig_ASSIGNMENT_CONFLICT:
	default:
		vs = append(vs, policy.FieldViolation{Field: "desired.assignment", Description: fmt.Sprintf("unknown assignment %d", d.GetAssignment())})
	}
	return vs.Err()
}
