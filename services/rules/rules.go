// Package rules holds the shop's business rules that more than one service
// applies: the one currency, the SKU format and what an amount of money
// must be. Generic checks (lengths, UUIDs, ranges) are in platform/validate;
// rules only one service applies (a price's upper bound, a top-up's) stay
// in that service.
package rules

import (
	"regexp"

	moneyv1 "github.com/switchyard/switchyard/gen/go/switchyard/money/v1"
	"github.com/switchyard/switchyard/platform/validate"
)

// Currency is the one currency the shop accepts.
const Currency = "USD"

// Money returns minor units (cents) of [Currency].
func Money(minor int64) *moneyv1.Money {
	return &moneyv1.Money{Currency: Currency, AmountMinor: minor}
}

var skuRE = regexp.MustCompile(`^[A-Z0-9_-]{1,64}$`)

// IsSKU reports whether s is a SKU: 1-64 characters of A-Z 0-9 - _.
func IsSKU(s string) bool { return skuRE.MatchString(s) }

// SKU records a violation of field unless s is a SKU.
func SKU(v *validate.Violations, field, s string) {
	if !IsSKU(s) {
		v.Add(field, "must be 1-64 characters of A-Z 0-9 - _")
	}
}

// Amount records a violation of field unless m is present, in [Currency]
// and positive (a price, a top-up). The violation names the sub-field at
// fault (field.currency, field.amount_minor).
func Amount(v *validate.Violations, field string, m *moneyv1.Money) {
	switch {
	case m == nil:
		v.Add(field, "is required")
	case m.GetCurrency() != Currency:
		v.Addf(field+".currency", "must be %q", Currency)
	case m.GetAmountMinor() < 0:
		v.Add(field+".amount_minor", "must not be negative")
	case m.GetAmountMinor() == 0:
		v.Add(field+".amount_minor", "must be positive")
	}
}
