package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/platform/idempotency"
	"github.com/switchyard/switchyard/platform/outbox"
	"github.com/switchyard/switchyard/platform/watch"
)

// The edge answers with the status an error carries, wrapped or not; a
// database that cannot be reached is UNAVAILABLE; anything else is a bare
// INTERNAL.
func TestToStatus(t *testing.T) {
	t.Parallel()
	// A real failed connect: nothing listens on port 1.
	_, refused := pgconn.Connect(context.Background(), "postgres://postgres@127.0.0.1:1/none?connect_timeout=5")
	if refused == nil {
		t.Fatal("connecting to port 1 succeeded")
	}
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
		msg  string // "" for any
	}{
		{"status", status.Error(codes.NotFound, "order 7 not found"), codes.NotFound, "order 7 not found"},
		{"wrapped status", fmt.Errorf("get: %w", status.Error(codes.NotFound, "gone")), codes.NotFound, ""},
		{"key reused", idempotency.ErrKeyReused, codes.InvalidArgument, "idempotency_key: already used with a different request"},
		{"event too large, wrapped", fmt.Errorf("%w: 2000000 bytes, limit 900000", outbox.ErrEventTooLarge), codes.InvalidArgument, "outbox event too large for the transport: 2000000 bytes, limit 900000"},
		{"too many streams", watch.ErrTooManyStreams, codes.ResourceExhausted, ""},
		{"stopping", fmt.Errorf("watch order 7: %w", watch.ErrStopping), codes.Unavailable, ""},
		{"cancelled", fmt.Errorf("query: %w", context.Canceled), codes.Canceled, "request cancelled"},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "deadline exceeded"},
		{"database refused the connection", fmt.Errorf("begin: %w", refused), codes.Unavailable, "database unreachable; retry"},
		{"database shutting down", fmt.Errorf("read account: %w", &pgconn.PgError{Code: "57P01"}), codes.Unavailable, "database unreachable; retry"},
		{"constraint violation", &pgconn.PgError{Code: "23505", Message: "duplicate key"}, codes.Internal, "internal error"},
		{"anything else", io.ErrUnexpectedEOF, codes.Internal, "internal error"},
	} {
		got := status.Convert(toStatus(context.Background(), tc.err, "/test/M", slog.New(slog.DiscardHandler)))
		if got.Code() != tc.code || tc.msg != "" && got.Message() != tc.msg {
			t.Errorf("%s: toStatus(%v) = %v %q, want %v %q", tc.name, tc.err, got.Code(), got.Message(), tc.code, tc.msg)
		}
	}
	if toStatus(context.Background(), nil, "/test/M", slog.New(slog.DiscardHandler)) != nil {
		t.Error("toStatus(nil) is not nil")
	}
	if !errors.Is(fmt.Errorf("x: %w", idempotency.ErrKeyReused), idempotency.ErrKeyReused) {
		t.Error("a wrapped sentinel is no longer found by errors.Is")
	}
}
