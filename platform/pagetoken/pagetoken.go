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

// latest bounds the times a token may name: PostgreSQL refuses timestamps
// far outside the years 1970 to 9999, and a forged token must be a bad
// request, not a failed query.
var latest = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()

// Decode returns the item a token names; ok is false for anything Encode
// did not produce (the id must be a UUID, the time within 1970 to 9999).
func Decode(tok string) (t time.Time, id string, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return time.Time{}, "", false
	}
	ts, id, found := strings.Cut(string(b), "/")
	micros, err := strconv.ParseInt(ts, 10, 64)
	if !found || err != nil || micros < 0 || micros >= latest || uuid.Validate(id) != nil || len(id) != 36 {
		return time.Time{}, "", false
	}
	return time.UnixMicro(micros), id, true
}

// EncodeSeq returns the token for the item at seq of a sequence that only
// grows in commit order (an identity column written under a lock), the
// order to page through when several items share a timestamp.
func EncodeSeq(seq int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte("s" + strconv.FormatInt(seq, 10)))
}

// DecodeSeq returns the seq a token of EncodeSeq names; ok is false for
// anything EncodeSeq did not produce.
func DecodeSeq(tok string) (seq int64, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) < 2 || b[0] != 's' {
		return 0, false
	}
	seq, err = strconv.ParseInt(string(b[1:]), 10, 64)
	return seq, err == nil && seq > 0
}
