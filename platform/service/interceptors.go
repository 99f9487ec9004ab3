package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/platform/pgerr"
	"github.com/switchyard/switchyard/platform/telemetry"
)

// exempt lists the methods that answer before the service is ready.
func exempt(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") || strings.HasPrefix(method, "/grpc.reflection.")
}

var errNotReady = status.Error(codes.Unavailable, "service is starting: database or broker not reachable yet")

// observe logs a finished RPC (with its trace id, through ctx) and records
// its metrics.
func observe(ctx context.Context, logger *slog.Logger, metrics *telemetry.Metrics, method string, start time.Time, err error) {
	if exempt(method) {
		return
	}
	code := status.Code(err)
	d := time.Since(start)
	metrics.ObserveRPC(method, code, d)
	level := slog.LevelInfo
	if code == codes.Internal || code == codes.Unknown {
		level = slog.LevelError
	}
	logger.Log(ctx, level, "rpc", "method", telemetry.ShortMethod(method), "code", code.String(), "duration_ms", float64(d.Microseconds())/1000)
}

func unaryGuard(ready *atomic.Bool, logger *slog.Logger, metrics *telemetry.Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		defer func() { observe(ctx, logger, metrics, info.FullMethod, start, err) }()
		if !ready.Load() && !exempt(info.FullMethod) {
			return nil, errNotReady
		}
		defer func() {
			if r := recover(); r != nil {
				logger.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, status.Error(codes.Internal, "internal error")
			}
		}()
		resp, err = handler(ctx, req)
		return resp, toStatus(ctx, err, info.FullMethod, logger)
	}
}

func streamGuard(ready *atomic.Bool, logger *slog.Logger, metrics *telemetry.Metrics) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		start := time.Now()
		defer func() { observe(ss.Context(), logger, metrics, info.FullMethod, start, err) }()
		if !ready.Load() && !exempt(info.FullMethod) {
			return errNotReady
		}
		defer func() {
			if r := recover(); r != nil {
				logger.ErrorContext(ss.Context(), "panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return toStatus(ss.Context(), handler(srv, ss), info.FullMethod, logger)
	}
}

// toStatus turns a handler's error into the answer, in this one place. An
// error that carries a gRPC status (a status, or an error with a GRPCStatus
// method such as the platform's sentinel errors, wrapped or not) answers
// with it; a cancelled or expired request with its code; a database that
// cannot be reached (restarting, a broken connection) with UNAVAILABLE, so
// that clients retry; anything else is INTERNAL, logged and not leaked.
func toStatus(ctx context.Context, err error, method string, logger *slog.Logger) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request cancelled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case pgerr.Unreachable(err):
		logger.WarnContext(ctx, "request failed: database unreachable", "method", method, "error", err)
		return status.Error(codes.Unavailable, "database unreachable; retry")
	}
	logger.ErrorContext(ctx, "request failed", "method", method, "error", err)
	return status.Error(codes.Internal, "internal error")
}
