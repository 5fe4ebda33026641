package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/mpfleet/mpfleet/internal/audit"
	"github.com/mpfleet/mpfleet/internal/store"
	pb "github.com/mpfleet/mpfleet/proto/mpfleet/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type auditService struct {
	pb.UnimplementedAuditServiceServer
	c *Controller
}

func (s *auditService) ListAuditEvents(ctx context.Context, req *pb.ListAuditEventsRequest) (*pb.ListAuditEventsResponse, error) {
	n, pos, err := page(req.GetPageSize(), req.GetPageToken(), "a")
	if err != nil {
		return nil, err
	}
	q := store.AuditQuery{
		Filter: audit.Filter{Actor: req.GetActor(), Resource: req.GetResource(), Action: req.GetAction(), Host: req.GetHost()},
		Limit:  n,
	}
	if pos != "" {
		if q.AfterSeq, err = strconv.ParseUint(pos, 10, 64); err != nil {
			return nil, invalid("page_token", "is not a page token of this list")
		}
	}
	if t := req.GetStartTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, invalid("start_time", "%v", err)
		}
		q.Start = t.AsTime()
	}
	if t := req.GetEndTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, invalid("end_time", "%v", err)
		}
		q.End = t.AsTime()
	}
	if !q.Start.IsZero() && !q.End.IsZero() && !q.End.After(q.Start) {
		return nil, invalid("end_time", "must be after start_time")
	}
	evs, next, err := s.c.store.ListAudit(ctx, q)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListAuditEventsResponse{Events: evs}
	if next != 0 {
		resp.NextPageToken = encodeToken("a", strconv.FormatUint(next, 10))
	}
	return resp, nil
}

func (s *auditService) WatchAuditEvents(req *pb.WatchAuditEventsRequest, stream pb.AuditService_WatchAuditEventsServer) error {
	ctx := stream.Context()
	f := audit.Filter{Actor: req.GetActor(), Resource: req.GetResource(), Action: req.GetAction(), Host: req.GetHost()}
	last := req.GetAfterSequence()
	if last == 0 {
		h, err := s.c.store.AuditHead(ctx)
		if err != nil {
			return toStatus(err)
		}
		last = h
	}
	for {
		// Subscribe first, then catch up from etcd: nothing falls between.
		sub, _, _, _ := s.c.cache.Subscribe(1024)
		for {
			evs, next, err := s.c.store.ListAudit(ctx, store.AuditQuery{AfterSeq: last, Limit: 500})
			if err != nil {
				sub.Close()
				return toStatus(err)
			}
			for _, ev := range evs {
				if f.Match(ev) {
					if err := stream.Send(ev); err != nil {
						sub.Close()
						return err
					}
				}
				last = ev.GetSequence()
			}
			if next == 0 {
				break
			}
		}
		err := s.follow(ctx, sub, f, &last, stream)
		sub.Close()
		if !resubscribe(err) {
			return err
		}
		// Catch up again from etcd.
	}
}

func (s *auditService) follow(ctx context.Context, sub *store.Subscription, f audit.Filter, last *uint64, stream pb.AuditService_WatchAuditEventsServer) error {
	return follow(ctx, sub, func(ev store.Event) error {
		a := ev.Audit
		if a == nil || a.GetSequence() <= *last {
			return nil
		}
		if a.GetSequence() != *last+1 {
			return store.ErrResync // a gap: read it from etcd
		}
		*last = a.GetSequence()
		if f.Match(a) {
			return stream.Send(a)
		}
		return nil
	})
}

func (s *auditService) VerifyAuditLog(ctx context.Context, _ *pb.VerifyAuditLogRequest) (*pb.VerifyAuditLogResponse, error) {
	r, err := s.c.store.VerifyAudit(ctx)
	return r, toStatus(err)
}

// auditFailure records a failed mutating call. Invalid requests are not
// recorded: they change nothing and are answered with the reason.
func (c *Controller) auditFailure(ctx context.Context, action, resource, reason string, err error) {
	code := statusCode(err)
	if code == codes.InvalidArgument.String() || errors.Is(err, context.Canceled) {
		return
	}
	cl := callerFrom(ctx)
	ev := &pb.AuditEvent{
		Time:        timestamppb.Now(),
		Actor:       cl.Actor,
		Action:      action,
		Resource:    resource,
		Result:      pb.AuditResult_AUDIT_RESULT_FAILURE,
		StatusCode:  code,
		Error:       err.Error(),
		RequestId:   cl.RequestID,
		PeerAddress: cl.Peer,
		Reason:      reason,
	}
	// Detach from the request: record the failure even if the caller left.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	if _, aerr := c.store.AppendAudit(actx, ev); aerr != nil {
		c.log.Error("audit: cannot record failure", "action", action, "resource", resource, "err", aerr)
	}
}

// written ends a mutating call after its store write: a failure is audited
// and becomes the call's status; after a success, it waits until the cache
// reflects the write (rev).
func (c *Controller) written(ctx context.Context, action, resource, reason string, rev int64, err error) error {
	if err != nil {
		c.auditFailure(ctx, action, resource, reason, err)
		return toStatus(err)
	}
	c.waitCache(ctx, rev)
	return nil
}

// auditKeyFile is the default audit key file in the data dir.
const auditKeyFile = "audit.key"

// loadAuditKey reads --audit-key-file, which must exist, or by default
// <data-dir>/audit.key, which is generated on first start. A key file that
// cannot be read or is too short stops the controller.
func loadAuditKey(f Flags, log *slog.Logger) (*audit.Key, error) {
	path := f.AuditKeyFile
	var k *audit.Key
	if path != "" {
		var err error
		if k, err = audit.LoadKeyFile(path); err != nil {
			return nil, fmt.Errorf("--audit-key-file: %w", err)
		}
	} else {
		path = filepath.Join(f.DataDir, auditKeyFile)
		var created bool
		var err error
		if k, created, err = audit.LoadOrCreateKeyFile(path); err != nil {
			return nil, fmt.Errorf("audit key (--audit-key-file, by default <data-dir>/%s): %w", auditKeyFile, err)
		}
		if created {
			log.Info("generated a new audit key", "file", path, "key-id", k.ID())
			if len(f.EtcdEndpoints) > 0 {
				log.Warn("with --etcd-endpoints every controller replica needs the same audit key: copy this file to the others and give it with --audit-key-file", "file", path)
			}
		}
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn("the audit key file can be read by other users; make it mode 0600", "file", path, "mode", st.Mode().Perm().String())
	}
	log.Info("audit chain keyed", "key-id", k.ID(), "key-file", path)
	return k, nil
}

// keyAuditChain makes sure the audit chain continues with this controller's
// key before it serves (see store.KeyAuditChain): a chain keyed with another
// key stops the controller.
func keyAuditChain(ctx context.Context, st *store.Store, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	added, err := st.KeyAuditChain(ctx)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if added {
		log.Info("audit key introduced: the existing events are unkeyed, every new one is keyed", "key-id", st.AuditKeyID())
	}
	return nil
}
