// Package pagetoken encodes the cursor of a paged list RPC: the sort time and
// the id of the last item returned, so the next page starts right after it
// (keyset pagination: stable while items are added, no OFFSET scans).
// Tokens are opaque to clients; one that does not decode is a client error.
package pagetoken

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Encode returns the token for the item (t, id).
func Encode(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "/" + id))
}

// Decode returns the item a token names; ok is false for anything Encode
// did not produce (the id must be a UUID).
func Decode(tok string) (t time.Time, id string, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return time.Time{}, "", false
	}
	ts, id, found := strings.Cut(string(b), "/")
	micros, err := strconv.ParseInt(ts, 10, 64)
	if !found || err != nil || uuid.Validate(id) != nil || len(id) != 36 {
		return time.Time{}, "", false
	}
	return time.UnixMicro(micros), id, true
}
