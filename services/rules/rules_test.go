package rules_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	"github.com/switchyard/switchyard/platform/validate"
	"github.com/switchyard/switchyard/services/rules"
)

func TestIsSKU(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"BOOK-1": true, "A_B": true, strings.Repeat("X", 64): true,
		"": false, "book": false, "A B": false, "A\x00": false, strings.Repeat("X", 65): false,
	} {
		if got := rules.IsSKU(s); got != want {
			t.Errorf("IsSKU(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestAmount(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		m     *moneyv1.Money
		field string // the violated field, "" for none
	}{
		{"positive USD", rules.Money(1500), ""},
		{"missing", nil, "price"},
		{"another currency", &moneyv1.Money{Currency: "EUR", AmountMinor: 1500}, "price.currency"},
		{"no currency", &moneyv1.Money{AmountMinor: 1500}, "price.currency"},
		{"negative", rules.Money(-1), "price.amount_minor"},
		{"zero", rules.Money(0), "price.amount_minor"},
	} {
		var v validate.Violations
		rules.Amount(&v, "price", tc.m)
		if got := violatedField(t, v.Err()); got != tc.field {
			t.Errorf("%s: Amount(%v) violates %q, want %q", tc.name, tc.m, got, tc.field)
		}
	}
}

func TestSKU(t *testing.T) {
	t.Parallel()
	for s, field := range map[string]string{"BOOK-1": "", "book": "sku", "": "sku"} {
		var v validate.Violations
		rules.SKU(&v, "sku", s)
		if got := violatedField(t, v.Err()); got != field {
			t.Errorf("SKU(%q) violates %q, want %q", s, got, field)
		}
	}
}

// violatedField returns the one field err's BadRequest names, or "" for a
// nil err.
func violatedField(t *testing.T, err error) string {
	t.Helper()
	if err == nil {
		return ""
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%v is not a status", err)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	t.Fatal(errors.New("no BadRequest with one field violation in " + err.Error()))
	return ""
}
