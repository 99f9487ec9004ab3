// Package grpcerr makes errors that carry their gRPC status. A package
// declares its sentinel errors with [New] and the code a client should get
// (ErrKeyReused is INVALID_ARGUMENT); callers compare them with errors.Is
// and wrap them with %w to add context; a handler returns them as they
// are. The gRPC edge (package service) answers with the code of any error
// that has a GRPCStatus method, wrapped or not, so neither handlers nor
// the edge map codes by hand. The answer's message is the whole error
// text, context included.
package grpcerr

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is an error with the gRPC code it answers with.
type Error struct {
	code codes.Code
	msg  string
}

// New returns an error with text msg that answers with code.
func New(code codes.Code, msg string) *Error { return &Error{code: code, msg: msg} }

// Error returns the error's text.
func (e *Error) Error() string { return e.msg }

// GRPCStatus returns the status the error answers with; status.FromError
// and status.Code find it through wrapping.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }
