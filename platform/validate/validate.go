// Package validate collects field-level violations of a request and turns
// them into one INVALID_ARGUMENT status carrying google.rpc.BadRequest
// details, so a client learns every bad field at once. It holds generic
// checks only: an application's own rules (the reference shop's currency
// and SKU format) live in the application and add their violations with
// [Violations.Add].
//
//	var v validate.Violations
//	v.Email("email", req.GetEmail())
//	v.Length("name", req.GetName(), 1, 200)
//	if err := v.Err(); err != nil {
//		return nil, err
//	}
package validate

import (
	"fmt"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Violations accumulates field violations; the zero value is ready to use.
type Violations struct {
	list []*errdetails.BadRequest_FieldViolation
}

// Add records that field is invalid for reason.
func (v *Violations) Add(field, reason string) {
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: reason})
}

// Addf records a formatted reason.
func (v *Violations) Addf(field, format string, args ...any) {
	v.Add(field, fmt.Sprintf(format, args...))
}

// Length checks that s has min..max characters, is valid UTF-8 and holds
// no NUL byte; a required string (min >= 1) must also not be only white
// space.
func (v *Violations) Length(field, s string, min, max int) {
	n := utf8.RuneCountInString(s)
	switch {
	case !utf8.ValidString(s):
		v.Add(field, "must be valid UTF-8")
	case strings.ContainsRune(s, 0):
		// PostgreSQL text cannot hold NUL: it would fail at the database.
		v.Add(field, "must not contain NUL bytes")
	case n < min && min == 1:
		v.Add(field, "must not be empty")
	case min >= 1 && strings.TrimSpace(s) == "":
		v.Add(field, "must not be blank")
	case n < min:
		v.Addf(field, "must be at least %d characters", min)
	case n > max:
		v.Addf(field, "must be at most %d characters", max)
	}
}

// UUID checks that s is a UUID in canonical text form.
func (v *Violations) UUID(field, s string) {
	if s == "" {
		v.Add(field, "must not be empty")
		return
	}
	if u, err := uuid.Parse(s); err != nil || u.String() != strings.ToLower(s) || len(s) != 36 {
		v.Add(field, "must be a UUID in canonical form (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
	}
}

// Email checks that s is a plain address (local@domain) of at most 254
// characters, with no control, format or space characters: an invisible
// one (a zero-width space, a direction mark) would make a second address
// that looks, and delivers, like the first.
func (v *Violations) Email(field, s string) {
	if s == "" {
		v.Add(field, "must not be empty")
		return
	}
	invisible := strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || unicode.IsSpace(r) })
	addr, err := mail.ParseAddress(s)
	if len(s) > 254 || invisible || err != nil || addr.Address != s || addr.Name != "" || !strings.Contains(s[strings.LastIndex(s, "@")+1:], ".") {
		v.Add(field, "must be an email address like name@example.com")
	}
}

// Range checks min <= n <= max.
func (v *Violations) Range(field string, n, min, max int64) {
	if n < min || n > max {
		v.Addf(field, "must be between %d and %d", min, max)
	}
}

// Err returns nil, or an INVALID_ARGUMENT status naming every violation
// with google.rpc.BadRequest details.
func (v *Violations) Err() error {
	if len(v.list) == 0 {
		return nil
	}
	parts := make([]string, len(v.list))
	for i, f := range v.list {
		parts[i] = f.Field + ": " + f.Description
	}
	st := status.New(codes.InvalidArgument, "invalid request: "+strings.Join(parts, "; "))
	if withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: v.list}); err == nil {
		st = withDetails
	}
	return st.Err()
}
