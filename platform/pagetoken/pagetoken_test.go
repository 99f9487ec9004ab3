package pagetoken_test

import (
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
	for _, tok := range []string{"", "!!", "AA", "MTIz", "eC8wOTQxZWM1ZS1iOWEzLTQ1OWEtYmIyZS1kYTJkYzQ2ZDM5NDU"} {
		if _, _, ok := pagetoken.Decode(tok); ok {
			t.Errorf("Decode(%q) accepted a forged token", tok)
		}
	}
}
