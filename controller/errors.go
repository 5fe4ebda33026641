package controller

import (
	"context"
	"errors"
	"fmt"

	"github.com/mpfleet/mpfleet/internal/policy"
	"github.com/mpfleet/mpfleet/internal/store"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// toStatus converts an internal error to a gRPC status, once, at the service
// edge. Error classes are matched with errors.Is/As, never by string.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if st := storeStatus(err); st != nil {
		return st
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var inv *policy.InvalidError
	if errors.As(err, &inv) {
		return invalidStatus(inv.Violations)
	}
	for _, c := range classCodes {
		if errors.Is(err, c.class) {
			return status.Error(c.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// classCode is the gRPC code of an error class.
type classCode struct {
	class error
	code  codes.Code
}

// classCodes are the codes of the error classes, in the order toStatus
// tries them.
var classCodes = []classCode{
	{store.ErrNotFound, codes.NotFound}, {store.ErrAlreadyExists, codes.AlreadyExists},
	{store.ErrConflict, codes.Aborted}, {store.ErrFailedPrecondition, codes.FailedPrecondition},
	{store.ErrContention, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded}, {context.Canceled, codes.Canceled},
}

// invalidStatus is INVALID_ARGUMENT with a google.rpc.BadRequest naming each
// bad field.
func invalidStatus(vs policy.Violations) error {
	msg := (&policy.InvalidError{Violations: vs}).Error()
	st := status.New(codes.InvalidArgument, msg)
	br := &errdetails.BadRequest{}
	for _, v := range vs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field: v.Field, Description: v.Description,
		})
	}
	if d, err := st.WithDetails(br); err == nil {
		return d.Err()
	}
	return st.Err()
}

// invalid is a single-field INVALID_ARGUMENT.
func invalid(field, format string, args ...any) error {
	return invalidStatus(policy.Violations{{Field: field, Description: fmt.Sprintf(format, args...)}})
}
