package pagetoken_test

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/switchyard/switchyard/platform/pagetoken"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	at := time.UnixMicro(1_795_480_000_123_456)
	id := "0941ec5e-b9a3-459a-bb2e-da2dc46d3945"
	gotT, gotID, ok := pagetoken.Decode(pagetoken.Encode(at, id))
	if !ok || !gotT.Equal(at) || gotID != id {
		t.Fatalf("Decode(Encode) = %v %q %v", gotT, gotID, ok)
	}
}

func TestForgedTokens(t *testing.T) {
	t.Parallel()
	const id = "/0941ec5e-b9a3-459a-bb2e-da2dc46d3945"
	outOfRange := []string{
		base64.RawURLEncoding.EncodeToString([]byte("-300000000000000000" + id)), // PostgreSQL: timestamp out of range
		base64.RawURLEncoding.EncodeToString([]byte("9223372036854775807" + id)),
	}
	for _, tok := range append([]string{"", "!!", "AA", "MTIz", "eC8wOTQxZWM1ZS1iOWEzLTQ1OWEtYmIyZS1kYTJkYzQ2ZDM5NDU"}, outOfRange...) {
		if _, _, ok := pagetoken.Decode(tok); ok {
			t.Errorf("Decode(%q) accepted a forged token", tok)
		}
	}
}
