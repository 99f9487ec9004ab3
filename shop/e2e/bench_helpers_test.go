package e2e

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	customersv1 "github.com/switchyard/switchyard/gen/go/switchyard/customers/v1"
	paymentsv1 "github.com/switchyard/switchyard/gen/go/switchyard/payments/v1"
	"github.com/switchyard/switchyard/shop/stack"
)

// benchDial connects to a stack's service for the rest of the benchmark.
func benchDial(b *testing.B, st *stack.Stack, name string) *grpc.ClientConn {
	b.Helper()
	c, err := grpc.NewClient(st.Addr(name), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// benchBuyer registers a customer and tops its account up with more than a
// benchmark spends, and returns its id.
func benchBuyer(ctx context.Context, b *testing.B, st *stack.Stack, email string) string {
	b.Helper()
	custs := customersv1.NewCustomerServiceClient(benchDial(b, st, "customers"))
	pay := paymentsv1.NewPaymentServiceClient(benchDial(b, st, "payments"))
	c, err := custs.RegisterCustomer(ctx, &customersv1.RegisterCustomerRequest{Email: email, Name: "Bench"})
	if err != nil {
		b.Fatal(err)
	}
	id := c.GetCustomer().GetCustomerId()
	for {
		_, err := pay.TopUp(ctx, &paymentsv1.TopUpRequest{CustomerId: id, Amount: usd(1_000_000_000), IdempotencyKey: "bench-" + id})
		if err == nil {
			return id
		}
		if status.Code(err) != codes.NotFound {
			b.Fatalf("top up %s: %v", id, err)
		}
		time.Sleep(50 * time.Millisecond) // the account opens once payments consumes the registration
	}
}
