package grpcerr_test

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/platform/grpcerr"
)

var errFull = grpcerr.New(codes.ResourceExhausted, "full")

// An Error answers with its code whether returned as it is or wrapped, and
// a wrapped one with the whole text; errors.Is still finds it.
func TestStatusThroughWrapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		msg  string
	}{
		{"as it is", errFull, "full"},
		{"wrapped", fmt.Errorf("reserve: %w", errFull), "reserve: full"},
		{"wrapped twice", fmt.Errorf("order 7: %w", fmt.Errorf("reserve: %w", errFull)), "order 7: reserve: full"},
		{"joined", errors.Join(errors.New("first"), errFull), "first\nfull"},
	} {
		st, ok := status.FromError(tc.err)
		if !ok || st.Code() != codes.ResourceExhausted || st.Message() != tc.msg {
			t.Errorf("%s: FromError = %v, %v; want RESOURCE_EXHAUSTED %q", tc.name, st, ok, tc.msg)
		}
		if !errors.Is(tc.err, errFull) {
			t.Errorf("%s: errors.Is does not find the sentinel", tc.name)
		}
	}
}
