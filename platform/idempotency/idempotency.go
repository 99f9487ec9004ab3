// Package idempotency makes a mutating RPC safe to retry: the first call
// with an idempotency key stores its response in the same transaction as its
// changes; a later call with the same key gets that response back and
// changes nothing.
//
// A key is scoped: callers pass the resource it protects as part of the
// scope ("CreateOrder/<customer id>", "AdjustStock/<sku>"), so the same key
// chosen by two customers is two keys, and nobody gets another's answer or
// is refused because of another's request. Keys are kept for a retention
// period ([Prune]); a retry after it runs the request again.
package idempotency

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/platform/grpcerr"
	"github.com/switchyard/switchyard/platform/migrate"
)

// Schema creates the idempotency_keys table.
const Schema = `
CREATE TABLE IF NOT EXISTS idempotency_keys (
	scope        text NOT NULL,
	key          text NOT NULL,
	request_hash bytea NOT NULL,
	response     bytea,
	created_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (scope, key)
);
`

// Migrate creates the idempotency_keys table if it does not exist.
func Migrate(ctx context.Context, db migrate.Querier) error {
	return migrate.EnsureTable(ctx, db, "idempotency_keys", Schema)
}

// Prune deletes keys older than retention and returns how many it deleted.
// The service skeleton runs it periodically.
func Prune(ctx context.Context, db migrate.Querier, retention time.Duration) (int64, error) {
	tag, err := db.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)`, retention.Seconds())
	if err != nil {
		return 0, fmt.Errorf("idempotency: prune: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ErrKeyReused is returned when a key comes back with a different request;
// it answers INVALID_ARGUMENT, naming the request's idempotency_key field.
var ErrKeyReused error = grpcerr.New(codes.InvalidArgument, "idempotency_key: already used with a different request")

// Do runs fn once per (scope, key) inside tx and returns its response; with
// a key seen before it returns the stored response instead. A concurrent
// call with the same key waits for the first to commit. An empty key runs fn
// without any bookkeeping. The request is hashed so that reusing a key for a
// different request fails with ErrKeyReused rather than returning a stale
// answer.
func Do[T proto.Message](ctx context.Context, tx pgx.Tx, scope, key string, req proto.Message, fn func() (T, error)) (resp T, replayed bool, err error) {
	if key == "" {
		resp, err = fn()
		return resp, false, err
	}
	sum, err := hash(req)
	if err != nil {
		return resp, false, err
	}
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, scope, key, sum)
	if err != nil {
		return resp, false, fmt.Errorf("idempotency: claim key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		// The conflict waited for the key's first call to commit.
		resp, found, err := stored[T](ctx, tx, scope, key, sum)
		if err == nil && !found {
			err = fmt.Errorf("idempotency: key %s of %s was pruned while in use", key, scope)
		}
		return resp, err == nil, err
	}
	resp, err = fn()
	if err != nil {
		return resp, false, err
	}
	out, err := proto.Marshal(resp)
	if err != nil {
		return resp, false, fmt.Errorf("idempotency: encode response: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2`, scope, key, out); err != nil {
		return resp, false, fmt.Errorf("idempotency: store response: %w", err)
	}
	return resp, false, nil
}

// Lookup returns the response a committed [Do] stored for (scope, key),
// reading only: for a caller that would refuse a new request anyway (an
// overloaded service) but must answer the retry of one already done. found
// is false for a key not used yet, or whose first call has not committed;
// a key used with a different request is [ErrKeyReused].
func Lookup[T proto.Message](ctx context.Context, db Reader, scope, key string, req proto.Message) (resp T, found bool, err error) {
	if key == "" {
		return resp, false, nil
	}
	sum, err := hash(req)
	if err != nil {
		return resp, false, err
	}
	return stored[T](ctx, db, scope, key, sum)
}

// Reader runs a query returning one row: a pool, a connection or a
// transaction.
type Reader interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// hash is what identifies a request under its key.
func hash(req proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("idempotency: hash request: %w", err)
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

// stored reads the response kept for (scope, key), if the key is there,
// checking that it was used with the request whose hash is sum.
func stored[T proto.Message](ctx context.Context, db Reader, scope, key string, sum []byte) (resp T, found bool, err error) {
	var h, out []byte
	err = db.QueryRow(ctx, `SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2`, scope, key).Scan(&h, &out)
	if errors.Is(err, pgx.ErrNoRows) {
		return resp, false, nil
	}
	if err != nil {
		return resp, false, fmt.Errorf("idempotency: read key: %w", err)
	}
	if string(h) != string(sum) {
		return resp, false, ErrKeyReused
	}
	resp = resp.ProtoReflect().Type().New().Interface().(T)
	if err := proto.Unmarshal(out, resp); err != nil {
		return resp, false, fmt.Errorf("idempotency: decode stored response: %w", err)
	}
	return resp, true, nil
}
