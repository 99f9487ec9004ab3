// Package pgerr classifies PostgreSQL errors by what a caller can do about
// them. [Unreachable] errors mean the database could not be reached or
// went away (a restart, a network failure): the gRPC edge answers them
// with UNAVAILABLE, which clients retry. [Transient] errors add the
// failures a retry of the same transaction can overcome (a serialization
// failure, a deadlock, a statement timeout): the consumer retries them
// without spending an event's attempts.
package pgerr

import (
	"errors"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// unreachableStates are the SQLSTATEs, besides class 08
// (connection_exception), of a server that is going away, starting up or
// out of connections.
var unreachableStates = map[string]bool{
	"57P01": true, // admin_shutdown
	"57P02": true, // crash_shutdown
	"57P03": true, // cannot_connect_now
	"53300": true, // too_many_connections
}

// contendedStates are the SQLSTATEs of a transaction that lost a race or
// hit a limit it can pass on a retry.
var contendedStates = map[string]bool{
	"40001": true, // serialization_failure
	"40P01": true, // deadlock_detected
	"55P03": true, // lock_not_available
	"57014": true, // query_canceled (statement_timeout)
	"53400": true, // configuration_limit_exceeded
}

// Unreachable reports whether err means the database could not be reached
// or the connection to it broke: connecting failed, the network failed,
// the driver had already closed the connection, or the server answered
// that it is shutting down, starting up or out of connections. A
// PostgreSQL error is judged by its SQLSTATE alone.
func Unreachable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return unreachableStates[pe.Code] || len(pe.Code) == 5 && pe.Code[:2] == "08"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, pgconn.ErrConnClosed)
}

// conflictStates are the SQLSTATEs of a transaction that lost a race with
// another one over rows or locks.
var conflictStates = map[string]bool{
	"40001": true, // serialization_failure
	"40P01": true, // deadlock_detected
	"55P03": true, // lock_not_available (lock_timeout)
}

// Conflict reports whether err means the transaction lost a race with
// another one: a serialization failure, a deadlock, or a lock it waited
// for longer than lock_timeout. Retrying the same transaction may lose the
// same race; a smaller one holds fewer locks.
func Conflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && conflictStates[pe.Code]
}

// Transient reports whether err is [Unreachable], or means the transaction
// lost a race (serialization failure, deadlock, lock or statement timeout)
// or ran into a limit that a retry can pass. A PostgreSQL error is judged
// by its SQLSTATE alone.
func Transient(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return contendedStates[pe.Code] || Unreachable(err)
	}
	return Unreachable(err) || pgconn.Timeout(err) || errors.Is(err, pgx.ErrTxClosed)
}
