package validate_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/platform/validate"
)

func TestLength(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		s        string
		min, max int
		ok       bool
	}{
		{"fits", "Ada", 1, 10, true},
		{"optional empty", "", 0, 10, true},
		{"required empty", "", 1, 10, false},
		{"blank", "   ", 1, 10, false},
		{"too long", strings.Repeat("x", 11), 0, 10, false},
		{"runes, not bytes", "ääääää", 1, 6, true},
		{"invalid UTF-8", "\xff", 0, 10, false},
		{"NUL byte", "A\x00B", 0, 10, false},
		{"NUL alone", "\x00", 0, 10, false},
	} {
		var v validate.Violations
		v.Length("f", tc.s, tc.min, tc.max)
		err := v.Err()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Length(%q, %d, %d) = %v, want ok=%v", tc.name, tc.s, tc.min, tc.max, err, tc.ok)
		}
		if err != nil && status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: code %v, want InvalidArgument", tc.name, status.Code(err))
		}
	}
}

func TestEmail(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		email string
		ok    bool
	}{
		{"ada@example.com", true},
		{"ada.lovelace+shop@example.co.uk", true},
		{"", false},
		{"ada", false},
		{"ada@localhost", false},
		{"Ada <ada@example.com>", false},
		{"ada@example.com\u200b", false}, // zero-width space: the same mailbox, a second account
		{"a\u202e@ex.com", false},        // right-to-left override
		{"ada@exa\u00admple.com", false}, // soft hyphen
		{"ada@example.com\n", false},
	} {
		var v validate.Violations
		v.Email("email", c.email)
		if ok := v.Err() == nil; ok != c.ok {
			t.Errorf("Email(%q): valid %v, want %v", c.email, ok, c.ok)
		}
	}
}
