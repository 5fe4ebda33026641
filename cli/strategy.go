package cli

import (
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	mpfleetv1 "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
)

// strategyFlags are the flags that build a RolloutStrategy.
type strategyFlags struct {
	canary, batch, bake, stepTimeout, maxFailures string
	noRollback                                    bool
}

func (s *strategyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.canary, "canary", "", "hosts in the canary step (`N|N%`: a number of hosts, or a percentage of the group's)")
	fs.StringVar(&s.batch, "batch", "", "hosts per batch after the canary (`N|N%`: a number of hosts, or a percentage of the group's)")
	fs.StringVar(&s.bake, "bake", "", "how long (`DURATION`) a host must stay IN_SYNC and healthy at the target to count as succeeded, e.g. 30s")
	fs.StringVar(&s.stepTimeout, "step-timeout", "", "how long (`DURATION`) a step's hosts have to succeed, e.g. 5m")
	fs.StringVar(&s.maxFailures, "max-failures", "", "how many failed hosts (`N`) are tolerated before the rollout halts")
	fs.BoolVar(&s.noRollback, "no-rollback", false, "when halted, leave moved hosts on the target revision instead of moving them back")
}

// startFlags are the flags of rollout start and rollback: the strategy, the
// revision to move the hosts to (--to, its usage given to register), why,
// and whether to follow the rollout.
type startFlags struct {
	strategyFlags
	to, reason string
	wait       bool
}

func (f *startFlags) register(fs *pflag.FlagSet, toUsage string) {
	f.strategyFlags.register(fs)
	fs.StringVar(&f.to, "to", "", toUsage)
	fs.StringVar(&f.reason, "reason", "", "why (recorded in the rollout and the audit log)")
	fs.BoolVar(&f.wait, "wait", false, "follow the rollout until it ends; exit non-zero unless it succeeded")
}

// strategyFlagNames are the flags of strategyFlags.
var strategyFlagNames = []string{"canary", "batch", "bake", "step-timeout", "max-failures", "no-rollback"}

// strategy returns the strategy the flags given describe, or nil when none
// is given: the controller then uses the group's rollout_strategy, or its
// default.
func (s *strategyFlags) strategy(fs *pflag.FlagSet) (*mpfleetv1.RolloutStrategy, error) {
	given := false
	for _, n := range strategyFlagNames {
		given = given || fs.Changed(n)
	}
	if !given {
		return nil, nil
	}
	st := &mpfleetv1.RolloutStrategy{NoRollback: s.noRollback}
	var err error
	if fs.Changed("canary") {
		if err := parseCountOrPercent("canary", s.canary, &st.CanaryCount, &st.CanaryPercent); err != nil {
			return nil, err
		}
	}
	if fs.Changed("batch") {
		if err := parseCountOrPercent("batch", s.batch, &st.BatchSize, &st.BatchPercent); err != nil {
			return nil, err
		}
	}
	if fs.Changed("bake") {
		if st.BakeTime, err = parseStrategyDuration("bake", s.bake); err != nil {
			return nil, err
		}
	}
	if fs.Changed("step-timeout") {
		if st.StepTimeout, err = parseStrategyDuration("step-timeout", s.stepTimeout); err != nil {
			return nil, err
		}
	}
	if fs.Changed("max-failures") {
		n, err := strconv.ParseInt(strings.TrimSpace(s.maxFailures), 10, 32)
		if err != nil || n < 0 {
			return nil, usagef("--max-failures %q: want a number of hosts from 0", s.maxFailures)
		}
		st.MaxFailures = int32(n)
	}
	return st, nil
}

// parseCountOrPercent parses the value of --canary or --batch into count,
// N (hosts, from 1), or into percent, N% (of the group's hosts, 1 to 100).
func parseCountOrPercent(flag, s string, count, percent *int32) error {
	t := strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseInt(strings.TrimSpace(p), 10, 32)
		if err != nil || v < 1 || v > 100 {
			return usagef("--%s %q: want a percentage from 1%% to 100%%", flag, s)
		}
		*percent = int32(v)
		return nil
	}
	v, err := strconv.ParseInt(t, 10, 32)
	if err != nil || v < 1 {
		return usagef("--%s %q: want a number of hosts from 1, or a percentage such as 25%%", flag, s)
	}
	*count = int32(v)
	return nil
}

func parseStrategyDuration(flag, s string) (*durationpb.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || d <= 0 {
		return nil, usagef("--%s %q: want a positive duration such as 30s or 5m", flag, s)
	}
	return durationpb.New(d), nil
}

// parseRevision parses the value of --to.
func parseRevision(s string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 1 {
		return 0, usagef("--to %q: want a revision number from 1", s)
	}
	return n, nil
}
