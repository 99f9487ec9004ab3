package validate_test

import (
	"testing"

	"github.com/switchyard/switchyard/platform/validate"
)

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
