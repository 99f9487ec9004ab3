package pgerr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/switchyard/switchyard/platform/pgerr"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	// A real failed connect: nothing listens on port 1.
	_, refused := pgconn.Connect(context.Background(), "postgres://postgres@127.0.0.1:1/none?connect_timeout=5")
	if refused == nil {
		t.Fatal("connecting to port 1 succeeded")
	}
	pg := func(code string) error { return fmt.Errorf("read account: %w", &pgconn.PgError{Code: code}) }
	for _, tc := range []struct {
		name                   string
		err                    error
		unreachable, transient bool
	}{
		{"connect refused", fmt.Errorf("begin: %w", refused), true, true},
		{"network error", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, true, true},
		{"connection closed by the driver", fmt.Errorf("query: %w", pgconn.ErrConnClosed), true, true},
		{"admin_shutdown", pg("57P01"), true, true},
		{"crash_shutdown", pg("57P02"), true, true},
		{"cannot_connect_now", pg("57P03"), true, true},
		{"connection_failure", pg("08006"), true, true},
		{"too_many_connections", pg("53300"), true, true},
		{"serialization_failure", pg("40001"), false, true},
		{"deadlock_detected", pg("40P01"), false, true},
		{"lock_not_available", pg("55P03"), false, true},
		{"statement_timeout", pg("57014"), false, true},
		{"configuration_limit_exceeded", pg("53400"), false, true},
		{"transaction closed", fmt.Errorf("commit: %w", pgx.ErrTxClosed), false, true},
		{"unique_violation", pg("23505"), false, false},
		{"check_violation", pg("23514"), false, false},
		{"no rows", pgx.ErrNoRows, false, false},
		{"unexpected EOF outside the driver", io.ErrUnexpectedEOF, false, false},
		{"cancelled", context.Canceled, false, false},
		{"plain", errors.New("boom"), false, false},
	} {
		if got := pgerr.Unreachable(tc.err); got != tc.unreachable {
			t.Errorf("%s: Unreachable(%v) = %v, want %v", tc.name, tc.err, got, tc.unreachable)
		}
		if got := pgerr.Transient(tc.err); got != tc.transient {
			t.Errorf("%s: Transient(%v) = %v, want %v", tc.name, tc.err, got, tc.transient)
		}
	}
}
